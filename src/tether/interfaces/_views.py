"""Runs and journal entries as plain JSON data, for programs and agents.

The keys of :func:`run_detail` are part of the public contract (DESIGN section 10):
``run_id``, ``workflow``, ``status``, ``result``, ``error``, ``events``; each event has
``seq``, ``kind``, ``name``, ``status``. Everything else here may grow, never shrink.
Times are ISO 8601 strings in UTC, durations milliseconds.

:func:`effect_view` is one tool call of the effect log (``tether effects --json``, one line
of ``tether effects export``): every field of :class:`~tether.EffectRecord`, enums as their
string values, times (also the ``at`` of each history event and of the resolution) as ISO
8601, plus ``in_doubt`` and ``duration_ms``. A tool event of ``tether show --json`` carries
the part of it that :data:`EVENT_EFFECT_KEYS` names, as ``effect``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from .._records import ApiToken, AttentionItem, EffectRecord, JournalEntry, Overview, Run

__all__ = [
    "EVENT_EFFECT_KEYS",
    "attention_view",
    "duration_ms",
    "effect_view",
    "entry_view",
    "iso_time",
    "overview_view",
    "run_detail",
    "run_summary",
    "token_view",
]

# What a tool event of ``tether show --json`` says about its effect.
EVENT_EFFECT_KEYS = (
    "kind",
    "state",
    "idempotency_key",
    "attempt",
    "decision",
    "resolution",
    "history",
    "tainted",
    "blast_radius",
    "deadline",
    "on_timeout",
)


def iso_time(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


def duration_ms(entry: JournalEntry | EffectRecord) -> float | None:
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
        "tags": list(run.tags),
        "forked_from": run.forked_from,
        "fork_seq": run.fork_seq,
        "fork_replaced": run.fork_replaced,
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


def _with_iso_at(event: dict[str, Any] | None) -> dict[str, Any] | None:
    """A history event or resolution with its ``at`` (epoch seconds) as ISO 8601."""
    if event is None:
        return None
    at = event.get("at")
    if isinstance(at, int | float) and not isinstance(at, bool):
        return event | {"at": iso_time(float(at))}
    return dict(event)


def effect_view(effect: EffectRecord) -> dict[str, Any]:
    """One tool call of the effect log (``tether effects --json``, ``export``)."""
    return {
        "run_id": effect.run_id,
        "seq": effect.seq,
        "tool": effect.tool,
        "kind": effect.kind.value,
        "state": effect.state.value,
        "in_doubt": effect.in_doubt,
        "idempotency_key": effect.idempotency_key,
        "args": effect.args,
        "result": effect.result,
        "error": effect.error,
        "blast_radius": effect.blast_radius,
        "approval": effect.approval.value,
        "decision": effect.decision.value,
        "tainted": effect.tainted,
        "attempt": effect.attempt,
        "resolution": _with_iso_at(effect.resolution),
        "history": [_with_iso_at(event) for event in effect.history],
        "created_at": iso_time(effect.created_at),
        "started_at": iso_time(effect.started_at),
        "finished_at": iso_time(effect.finished_at),
        "duration_ms": duration_ms(effect),
        "attempts": effect.attempts,
        "deadline": iso_time(effect.deadline),
        "on_timeout": effect.on_timeout,
    }


def run_detail(
    run: Run, entries: list[JournalEntry], effects: list[EffectRecord] | None = None
) -> dict[str, Any]:
    """One run with its arguments and its journal (``tether show --json``); each tool
    event with its ``effect`` (``None`` if the effect log has no record of it)."""
    by_seq = {effect.seq: effect for effect in effects or ()}
    detail = run_summary(run)
    detail["args"] = run.args
    events = []
    for entry in entries:
        event = entry_view(entry)
        if entry.kind == "tool":
            effect = by_seq.get(entry.seq)
            view = None if effect is None else effect_view(effect)
            event["effect"] = None if view is None else {k: view[k] for k in EVENT_EFFECT_KEYS}
        events.append(event)
    detail["events"] = events
    return detail


def attention_view(item: AttentionItem) -> dict[str, Any]:
    """One thing that needs a person, on the roll-up."""
    return {
        "kind": item.kind,
        "rank": item.rank,
        "run_id": item.run_id,
        "workflow": item.workflow,
        "title": item.title,
        "since": iso_time(item.since),
        "seq": item.seq,
        "tool": item.tool,
        "deadline": iso_time(item.deadline),
        "action": item.action,
    }


def overview_view(overview: Overview) -> dict[str, Any]:
    """The roll-up (``tether overview --json``, ``GET /api/v1/overview``)."""
    return {
        "at": iso_time(overview.at),
        "counts": dict(overview.counts),
        "attention": [attention_view(item) for item in overview.attention],
        "workers": [
            {
                "worker_id": w.worker_id,
                "host": w.host,
                "pid": w.pid,
                "started_at": iso_time(w.started_at),
                "heartbeat_at": iso_time(w.heartbeat_at),
                "runs": [run_summary(run) for run in w.runs],
            }
            for w in overview.workers
        ],
    }


def token_view(token: ApiToken) -> dict[str, Any]:
    """A control-plane token, without its secret (which is never stored)."""
    return {
        "token_id": token.token_id,
        "name": token.name,
        "role": token.role.value,
        "active": token.active,
        "created_at": iso_time(token.created_at),
        "created_by": token.created_by,
        "last_used_at": iso_time(token.last_used_at),
        "revoked_at": iso_time(token.revoked_at),
    }
