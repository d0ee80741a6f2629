"""What every backend shares: the columns of a run and of a journal entry, decoding rows
to records, and the errors a write raises."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .._errors import LeaseLostError, RunIdConflictError
from .._records import EntryStatus, JournalEntry, Run, RunStatus, Signal
from ._store import Fence, NewEntry

__all__ = [
    "BLOB_THRESHOLD",
    "JOURNAL_COLUMNS",
    "RUN_COLUMNS",
    "blob_hash",
    "child_run_id_taken",
    "entry_from_row",
    "has_blob",
    "journal_params",
    "json_or_none",
    "lease_lost",
    "run_from_row",
    "run_id_conflict",
    "signal_from_row",
]

# Values whose JSON is longer than this go to the content-addressed blob table.
BLOB_THRESHOLD = 4096
RUN_COLUMNS = (
    "run_id, workflow, status, args, result, error, parent_run_id, parent_seq, created_at, "
    "updated_at, wake_at, lease_owner, lease_expires_at, fence, attempts"
)
JOURNAL_COLUMNS = (
    "run_id, seq, kind, name, status, input, input_ref, output, output_ref, error, "
    "started_at, finished_at, attempts, delivery, after_delivery, after_seq"
)


def blob_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def has_blob(entry: NewEntry) -> bool:
    """Whether writing the entry stores a blob (a write before the journal insert)."""
    return any(
        v is not None and len(v) > BLOB_THRESHOLD for v in (entry.input_json, entry.output_json)
    )


def json_or_none(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def journal_params(
    fence: Fence,
    entry: NewEntry,
    values: tuple[str | None, str | None, str | None, str | None],
) -> tuple[Any, ...]:
    """The entry's values in JOURNAL_COLUMNS order; ``values`` are (input, input_ref,
    output, output_ref). Each column keeps one Python type (a batch sends them as arrays)."""
    return (
        fence.run_id,
        int(entry.seq),
        entry.kind,
        entry.name,
        entry.status,
        *values,
        entry.error_json,
        None if entry.started_at is None else float(entry.started_at),
        None if entry.finished_at is None else float(entry.finished_at),
        int(entry.attempts),
        _int(entry.delivery),
        _int(entry.after_delivery),
        _int(entry.after_seq),
    )


def _int(value: int | None) -> int | None:
    return None if value is None else int(value)


def run_from_row(row: tuple[Any, ...]) -> Run:
    return Run(
        run_id=row[0],
        workflow=row[1],
        status=RunStatus(row[2]),
        args=json.loads(row[3]),
        result=json_or_none(row[4]),
        error=json_or_none(row[5]),
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
        input=json_or_none(row[5]),
        output=json_or_none(row[6]),
        error=json_or_none(row[7]),
        started_at=row[8],
        finished_at=row[9],
        attempts=row[10],
        delivery=row[11],
        after_delivery=row[12],
        after_seq=row[13],
    )


def signal_from_row(run_id: str, row: tuple[Any, ...]) -> Signal:
    # row: id, name, value, created_at
    return Signal(row[0], run_id, row[1], json_or_none(row[2]), row[3])


def lease_lost(fence: Fence) -> LeaseLostError:
    return LeaseLostError(
        f"run {fence.run_id!r}: lease lost (fence {fence.fence}); write rejected",
        run_id=fence.run_id,
    )


def run_id_conflict(run_id: str, existing: str, wanted: str) -> RunIdConflictError:
    return RunIdConflictError(
        f"run_id {run_id!r} already belongs to a run of workflow {existing!r}, "
        f"not {wanted!r}; choose another run_id",
        run_id=run_id,
    )


def child_run_id_taken(run_id: str) -> RunIdConflictError:
    return RunIdConflictError(
        f"run_id {run_id!r} is already taken; a child run needs a new run_id", run_id=run_id
    )
