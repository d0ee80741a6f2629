"""Storage layer: the ``Store`` protocol and its backends. Nothing else imports drivers."""

from __future__ import annotations

from ._sqlite import SQLiteStore
from ._store import Fence, InDoubt, NewEffect, NewEntry, NewRun, Store, WorkerInfo
from ._url import open_store, redact_url

__all__ = [
    "Fence",
    "InDoubt",
    "NewEffect",
    "NewEntry",
    "NewRun",
    "SQLiteStore",
    "Store",
    "WorkerInfo",
    "open_store",
    "redact_url",
]
