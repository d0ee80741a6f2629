"""What every backend shares: the columns of a run and of a journal entry, decoding rows
to records, and the errors a write raises."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .._errors import EffectStateError, LeaseLostError, RunIdConflictError, RunStateError
from .._records import (
    ApiToken,
    Decision,
    Effect,
    EffectRecord,
    EffectState,
    EntryStatus,
    JournalEntry,
    Role,
    Run,
    RunStatus,
    Signal,
)
from ._store import Fence, NewEffect, NewEntry, NewRun

__all__ = [
    "BLOB_THRESHOLD",
    "DISCARD_COLUMNS",
    "EFFECT_COLUMNS",
    "JOURNAL_COLUMNS",
    "RUN_COLUMNS",
    "STOPPED",
    "TOKEN_COLUMNS",
    "blob_hash",
    "child_run_id_taken",
    "effect_from_row",
    "effect_params",
    "effect_query",
    "effect_state_error",
    "entry_from_row",
    "fork_point_queries",
    "has_blob",
    "journal_params",
    "json_or_none",
    "lease_lost",
    "lineage_query",
    "restart_error",
    "restart_records",
    "run_from_row",
    "run_id_conflict",
    "signal_from_row",
    "stopped_for",
    "tags_json",
    "token_from_row",
]

TOKEN_COLUMNS = "token_id, name, role, created_at, created_by, last_used_at, revoked_at"

# Values whose JSON is longer than this go to the content-addressed blob table.
BLOB_THRESHOLD = 4096
RUN_COLUMNS = (
    "run_id, workflow, status, args, result, error, parent_run_id, parent_seq, created_at, "
    "updated_at, wake_at, lease_owner, lease_expires_at, fence, attempts, tags, forked_from, "
    "fork_seq, fork_replaced"
)
JOURNAL_COLUMNS = (
    "run_id, seq, kind, name, status, input, input_ref, output, output_ref, error, "
    "started_at, finished_at, attempts, delivery, after_delivery, after_seq"
)


# The effects table's columns, in effect_params order.
EFFECT_COLUMNS = (
    "run_id, seq, kind, idempotency_key, blast_radius, approval, decision, tainted, attempt, "
    "in_doubt, resolution, history, created_at, deadline, on_timeout"
)
# An effect as the engine and people see it: its intent joined with its journal entry.
_EFFECT_SELECT = """
SELECT e.run_id, e.seq, j.name, e.kind, j.status, e.in_doubt, e.resolution,
       e.idempotency_key, COALESCE(j.input, bi.data), COALESCE(j.output, bo.data), j.error,
       e.blast_radius, e.approval, e.decision, e.tainted, e.attempt, e.history,
       e.created_at, j.started_at, j.finished_at, j.attempts, r.status, e.deadline,
       e.on_timeout
FROM effects e
JOIN journal j ON j.run_id = e.run_id AND j.seq = e.seq
JOIN runs r ON r.run_id = e.run_id
LEFT JOIN blobs bi ON bi.hash = j.input_ref
LEFT JOIN blobs bo ON bo.hash = j.output_ref
"""


def effect_query(
    mark: str,
    *,
    run_id: bool = False,
    seq: bool = False,
    in_doubt: bool = False,
    awaiting_approval: bool = False,
    page: bool,
) -> str:
    """The effects SELECT with the dialect's placeholder ``mark``: filters on run_id (and
    seq), on being in doubt, on awaiting approval; in-doubt effects first (awaiting
    approval: soonest deadline first, then oldest); LIMIT/OFFSET when ``page``."""
    where = []
    if run_id:
        where.append(f"e.run_id = {mark}")
    if seq:
        where.append(f"e.seq = {mark}")
    if in_doubt:  # what a person can still act on: not of a run that has ended
        # Written as the partial index effects_in_doubt is declared (SQLite: = 1), so that
        # both backends use it instead of walking every effect.
        truth = "1" if mark == "?" else "TRUE"
        where.append(
            f"e.in_doubt = {truth} AND r.status NOT IN ('succeeded', 'failed', 'cancelled')"
        )
    if awaiting_approval:
        where.append(
            "j.status = 'waiting' AND j.kind = 'tool' AND e.attempt = 0 "
            "AND e.resolution IS NULL "
            "AND r.status NOT IN ('succeeded', 'failed', 'cancelled')"
        )
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    order = "e.seq" if run_id else "e.created_at DESC, e.run_id, e.seq"
    if awaiting_approval:
        order = "e.deadline IS NULL, e.deadline, e.created_at, e.run_id, e.seq"
    limit = f" LIMIT {mark} OFFSET {mark}" if page else ""
    return f"{_EFFECT_SELECT} {clause} ORDER BY e.in_doubt DESC, {order}{limit}"


def effect_params(fence: Fence, effect: NewEffect, now: float) -> tuple[Any, ...]:
    """A new effect's values in EFFECT_COLUMNS order (history: its first event)."""
    return (
        fence.run_id,
        int(effect.seq),
        effect.kind,
        effect.idempotency_key,
        effect.blast_radius,
        effect.approval,
        effect.decision,
        bool(effect.tainted),
        int(effect.attempt),
        False,
        None,
        f"[{effect.event_json}]",
        now,
        None if effect.deadline is None else float(effect.deadline),
        effect.on_timeout,
    )


def _effect_state(
    status: str, in_doubt: Any, resolution: str | None, run_status: str
) -> EffectState:
    if status == "completed":
        return EffectState.COMPLETED
    if status == "failed":
        return EffectState.FAILED
    if RunStatus(run_status).is_terminal:
        return EffectState.ABANDONED
    if resolution is not None:
        return EffectState.RESOLVED
    if status == "waiting":
        return EffectState.AWAITING_APPROVAL
    return EffectState.IN_DOUBT if in_doubt else EffectState.INTENT


def effect_from_row(row: tuple[Any, ...]) -> EffectRecord:
    return EffectRecord(
        run_id=row[0],
        seq=row[1],
        tool=row[2],
        kind=Effect(row[3]),
        state=_effect_state(row[4], row[5], row[6], row[21]),
        resolution=json_or_none(row[6]),
        idempotency_key=row[7],
        args=json_or_none(row[8]),
        result=json_or_none(row[9]),
        error=json_or_none(row[10]),
        blast_radius=row[11],
        approval=Decision(row[12]),
        decision=Decision(row[13]),
        tainted=bool(row[14]),
        attempt=row[15],
        history=json.loads(row[16]),
        created_at=row[17],
        started_at=row[18],
        finished_at=row[19],
        attempts=row[20],
        deadline=row[22],
        on_timeout=row[23],
    )


def effect_state_error(run_id: str, seq: int, found: EffectRecord | None, want: str) -> Exception:
    """Why a person's decision does not apply to the effect at (run_id, seq)."""
    if found is None:
        return EffectStateError(
            f"run {run_id!r} has no tool call at seq {seq}; list its effects with "
            f"'tether effects {run_id}'",
            run_id=run_id,
            seq=seq,
        )
    if found.state is EffectState.ABANDONED:
        return EffectStateError(
            f"run {run_id!r} ended before its {found.tool!r} call at seq {seq} completed; "
            "nothing can act on that call any more",
            run_id=run_id,
            seq=seq,
            state=found.state.value,
        )
    return EffectStateError(
        f"the {found.tool!r} call at seq {seq} of run {run_id!r} is {found.state.value}, "
        f"not {want}; nothing to do",
        run_id=run_id,
        seq=seq,
        state=found.state.value,
    )


def stopped_for(run_id: str, status: str, error_json: str | None, code: str) -> None:
    """Raise RunStateError unless the run is stopped for a person with error ``code``."""
    error = json_or_none(error_json) if status == "needs_attention" else None
    found = error.get("code") if isinstance(error, dict) else None
    if found != code:
        why = f"it is {status}" + (f", stopped on {found}" if found else "")
        raise RunStateError(
            f"run {run_id!r} is not stopped on {code.replace('_', ' ')} ({why})",
            run_id=run_id,
            status=status,
        )


def blob_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def has_blob(entry: NewEntry) -> bool:
    """Whether writing the entry stores a blob (a write before the journal insert)."""
    if entry.blobs:
        return True
    given, returned = entry.input_json, entry.output_json
    return (given is not None and len(given) > BLOB_THRESHOLD) or (
        returned is not None and len(returned) > BLOB_THRESHOLD
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
        tags=tuple(json.loads(row[15])) if row[15] else (),
        forked_from=row[16],
        fork_seq=row[17],
        fork_replaced=bool(row[18]),
    )


def new_run_record(new: NewRun, now: float) -> Run:
    """The run ``new`` as stored by an insert at ``now``: what reading it back would give."""
    return Run(
        run_id=new.run_id,
        workflow=new.workflow,
        status=RunStatus.PENDING,
        args=json.loads(new.args_json),
        parent_run_id=new.parent_run_id,
        parent_seq=new.parent_seq,
        created_at=now,
        updated_at=now,
        tags=tuple(new.tags),
        forked_from=new.forked_from,
        fork_seq=new.fork_seq,
        fork_replaced=new.fork_replaced,
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


# Journal columns set aside by a restart (journal_discarded), in both tables' order.
DISCARD_COLUMNS = (
    "seq, kind, name, status, input, input_ref, output, output_ref, error, started_at, "
    "finished_at, attempts"
)


def restart_error(run_id: str, status: str, updated_at: float, expect: tuple[str, float]) -> None:
    """Raise RunStateError unless the run is as the caller saw it (status, updated_at)."""
    if (status, updated_at) != expect:
        raise RunStateError(
            f"run {run_id!r} changed while the retry was prepared (it is {status} now); "
            "look at it again with 'tether show' and retry then",
            run_id=run_id,
            status=status,
        )


def restart_records(
    restarts: list[tuple[Any, ...]], discarded: list[tuple[Any, ...]]
) -> list[dict[str, Any]]:
    """Rows of run_restarts and journal_discarded as the records list_restarts returns."""
    set_aside: dict[int, list[dict[str, Any]]] = {}
    for restart, seq, kind, name, status in discarded:
        set_aside.setdefault(restart, []).append(
            {"seq": seq, "kind": kind, "name": name, "status": status}
        )
    return [
        {
            "restart": restart,
            "from_seq": from_seq,
            "at": at,
            "by": by,
            "reason": reason,
            "status": status,
            "error": json_or_none(error),
            "discarded": set_aside.get(restart, []),
        }
        for restart, from_seq, at, by, reason, status, error in restarts
    ]


def lineage_query(mark: str, entry_columns: str) -> str:
    """The journal of a fork: each ancestor's entries below the position the chain forked
    at (the nearest fork point going up), then the run's own entries; one query, with the
    dialect's placeholder ``mark`` for the run_id (twice). ``entry_columns`` selects from
    ``j`` (journal), ``bi`` and ``bo`` (its blobs)."""
    # Each ancestor's rows are read by primary key. PostgreSQL would otherwise hash-join
    # the chain with a scan of the whole journal when a few long runs dominate the table
    # (its statistics then expect any run to own a large share): a LATERAL subquery kept
    # from being flattened (OFFSET 0) is a parameterized index scan per ancestor.
    ancestors = (
        "CROSS JOIN LATERAL (SELECT * FROM journal a WHERE a.run_id = c.run_id "
        "AND a.seq < c.upto OFFSET 0) j"
        if mark == "%s"
        else "JOIN journal j ON j.run_id = c.run_id AND j.seq < c.upto"
    )
    return f"""
WITH RECURSIVE chain(run_id, upto) AS (
    SELECT forked_from, fork_seq FROM runs WHERE run_id = {mark} AND forked_from IS NOT NULL
    UNION ALL
    SELECT r.forked_from, CASE WHEN r.fork_seq < c.upto THEN r.fork_seq ELSE c.upto END
    FROM runs r JOIN chain c ON r.run_id = c.run_id WHERE r.forked_from IS NOT NULL
)
SELECT {entry_columns} FROM chain c
{ancestors}
LEFT JOIN blobs bi ON bi.hash = j.input_ref
LEFT JOIN blobs bo ON bo.hash = j.output_ref
UNION ALL
SELECT {entry_columns} FROM journal j
LEFT JOIN blobs bi ON bi.hash = j.input_ref
LEFT JOIN blobs bo ON bo.hash = j.output_ref
WHERE j.run_id = {mark}
ORDER BY 2
"""


def fork_point_queries(mark: str) -> tuple[str, str, str]:
    """Where a fork of a run may be made, in a few index lookups whatever the length of
    its journal (lineage included): (1) its last seq [run_id]; (2) the first unfinished
    entry below a seq [at_seq, run_id] (partial indexes journal_waiting, journal_intent);
    (3) the entry at a seq [run_id, at_seq]."""

    def chain(start: str) -> str:
        return f"""
WITH RECURSIVE chain(run_id, upto) AS (
    SELECT run_id, CAST({start} AS BIGINT) FROM runs WHERE run_id = {mark}
    UNION ALL
    SELECT r.forked_from,
           CAST(CASE WHEN r.fork_seq < c.upto THEN r.fork_seq ELSE c.upto END AS BIGINT)
    FROM runs r JOIN chain c ON r.run_id = c.run_id WHERE r.forked_from IS NOT NULL
)"""

    everything = chain("9223372036854775807")
    last = f"""{everything}
SELECT max((SELECT max(j.seq) FROM journal j WHERE j.run_id = c.run_id AND j.seq < c.upto))
FROM chain c"""
    # SQLite, without statistics, prefers the primary key to these partial indexes of the
    # same columns, and then walks the run's whole journal: name them.
    waiting, intent = (
        ("INDEXED BY journal_waiting", "INDEXED BY journal_intent") if mark == "?" else ("", "")
    )
    unfinished = f"""{chain(mark)}
SELECT min(seq) FROM (
    SELECT (SELECT min(j.seq) FROM journal j {waiting}
            WHERE j.run_id = c.run_id AND j.status = 'waiting' AND j.seq < c.upto) AS seq
    FROM chain c
    UNION ALL
    SELECT (SELECT min(j.seq) FROM journal j {intent}
            WHERE j.run_id = c.run_id AND j.status = 'intent' AND j.seq < c.upto) AS seq
    FROM chain c
) AS found"""
    entry = f"""{everything}
SELECT j.run_id, j.seq, j.kind, j.name, j.status,
       COALESCE(j.input, bi.data), COALESCE(j.output, bo.data), j.error,
       j.started_at, j.finished_at, j.attempts, j.delivery, j.after_delivery, j.after_seq
FROM chain c
JOIN journal j ON j.run_id = c.run_id AND j.seq = {mark} AND j.seq < c.upto
LEFT JOIN blobs bi ON bi.hash = j.input_ref
LEFT JOIN blobs bo ON bo.hash = j.output_ref"""
    return last, unfinished, entry


STOPPED = "('succeeded', 'failed', 'cancelled', 'needs_attention')"


def tags_json(tags: tuple[str, ...]) -> str | None:
    return json.dumps(list(tags)) if tags else None


def token_from_row(row: tuple[Any, ...]) -> ApiToken:
    return ApiToken(
        token_id=row[0],
        name=row[1],
        role=Role(row[2]),
        created_at=row[3],
        created_by=row[4],
        last_used_at=row[5],
        revoked_at=row[6],
    )
