"""Runs and journal entries as plain JSON data, for programs and agents.

The keys of :func:`run_detail` are part of the public contract (DESIGN section 10):
``run_id``, ``workflow``, ``status``, ``result``, ``error``, ``events``; each event has
``seq``, ``kind``, ``name``, ``status``. Everything else here may grow, never shrink.
Times are ISO 8601 strings in UTC, durations milliseconds.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from .._records import JournalEntry, Run

__all__ = ["duration_ms", "entry_view", "iso_time", "run_detail", "run_summary"]


def iso_time(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


def duration_ms(entry: JournalEntry) -> float | None:
    if entry.started_at is None or entry.finished_at is None:
        return None
    return round((entry.finished_at - entry.started_at) * 1000, 1)


def run_summary(run: Run) -> dict[str, Any]:
    """One run, without its journal (``tether runs --json``)."""
    return {
        "run_id": run.run_id,
        "workflow": run.workflow,
        "status": run.status.value,
        "result": run.result,
        "error": run.error,
        "parent_run_id": run.parent_run_id,
        "created_at": iso_time(run.created_at),
        "updated_at": iso_time(run.updated_at),
        "wake_at": iso_time(run.wake_at),
        "attempts": run.attempts,
    }


def entry_view(entry: JournalEntry) -> dict[str, Any]:
    """One journal entry (an *event* of ``tether show --json``)."""
    return {
        "seq": entry.seq,
        "kind": entry.kind,
        "name": entry.name,
        "status": entry.status.value,
        "input": entry.input,
        "output": entry.output,
        "error": entry.error,
        "started_at": iso_time(entry.started_at),
        "finished_at": iso_time(entry.finished_at),
        "duration_ms": duration_ms(entry),
        "attempts": entry.attempts,
        "delivery": entry.delivery,
    }


def run_detail(run: Run, entries: list[JournalEntry]) -> dict[str, Any]:
    """One run with its arguments and its journal (``tether show --json``)."""
    detail = run_summary(run)
    detail["args"] = run.args
    detail["events"] = [entry_view(entry) for entry in entries]
    return detail
