"""Row shapes shared by every backend: the columns of a run, and decoding rows to records."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .._records import EntryStatus, JournalEntry, Run, RunStatus

__all__ = ["BLOB_THRESHOLD", "RUN_COLUMNS", "blob_hash", "entry_from_row", "run_from_row"]

# Values whose JSON is longer than this go to the content-addressed blob table.
BLOB_THRESHOLD = 4096
RUN_COLUMNS = (
    "run_id, workflow, status, args, result, error, parent_run_id, parent_seq, created_at, "
    "updated_at, wake_at, lease_owner, lease_expires_at, fence, attempts"
)


def blob_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def run_from_row(row: tuple[Any, ...]) -> Run:
    return Run(
        run_id=row[0],
        workflow=row[1],
        status=RunStatus(row[2]),
        args=json.loads(row[3]),
        result=None if row[4] is None else json.loads(row[4]),
        error=None if row[5] is None else json.loads(row[5]),
        parent_run_id=row[6],
        parent_seq=row[7],
        created_at=row[8],
        updated_at=row[9],
        wake_at=row[10],
        lease_owner=row[11],
        lease_expires_at=row[12],
        fence=row[13],
        attempts=row[14],
    )


def entry_from_row(row: tuple[Any, ...]) -> JournalEntry:
    # row: run_id, seq, kind, name, status, input, output, error, started, finished, attempts
    return JournalEntry(
        run_id=row[0],
        seq=row[1],
        kind=row[2],
        name=row[3],
        status=EntryStatus(row[4]),
        input=None if row[5] is None else json.loads(row[5]),
        output=None if row[6] is None else json.loads(row[6]),
        error=None if row[7] is None else json.loads(row[7]),
        started_at=row[8],
        finished_at=row[9],
        attempts=row[10],
        delivery=row[11],
        after_delivery=row[12],
        after_seq=row[13],
    )
