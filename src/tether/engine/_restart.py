"""Retry in place (``tether retry RUN_ID --from SEQ``): a failed or stopped run starts
again from a chosen seq, after a code fix, keeping everything before it.

Entries from ``from_seq`` on are set aside (kept for the audit, never replayed), signals
they consumed go back to the mailbox, and the restart is recorded with who and why. The
run then replays its prefix and executes afresh from ``from_seq``. A retry never makes an
irreversible call twice: it is refused when an irreversible call at or after ``from_seq``
was ever authorized (made, in doubt, resolved), when a child run was started there, or
when a fork shares entries it would set aside. Fork the run instead to branch from there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._errors import RunStateError
from .._records import Effect, Run, RunStatus
from ._fork import ForkError

if TYPE_CHECKING:
    from ._app import App

__all__ = ["restart"]

_RESTARTABLE = (RunStatus.FAILED, RunStatus.NEEDS_ATTENTION)


async def restart(app: App, run_id: str, from_seq: int, *, by: str, reason: str | None) -> Run:
    run = await app.get_run(run_id)
    if run.status not in _RESTARTABLE:
        raise RunStateError(
            f"run {run_id!r} is {run.status.value}; only a failed or needs_attention run "
            "can be retried in place (fork it to branch from a seq instead)",
            run_id=run_id,
            status=run.status.value,
        )
    if isinstance(from_seq, bool) or not isinstance(from_seq, int) or from_seq < 1:
        raise ForkError(f"from_seq must be a whole number >= 1, not {from_seq!r}")
    store = app._store
    entries = await store.list_entries(run_id)
    last = max((e.seq for e in entries), default=0)
    if from_seq > last + 1:
        raise ForkError(
            f"run {run_id!r} has {last} journal entries: retry from a seq from 1 to {last + 1}"
        )
    if run.fork_seq is not None and from_seq < run.fork_seq:
        raise ForkError(
            f"run {run_id!r} shares its entries below seq {run.fork_seq} with "
            f"{run.forked_from!r}, which it was forked from; retry from seq {run.fork_seq} "
            "or later, or fork the origin"
        )
    made = [
        e
        for e in await store.list_effects(run_id=run_id, limit=1_000_000)
        if e.seq >= from_seq and e.kind is Effect.IRREVERSIBLE and e.attempt >= 1
    ]
    if made:
        calls = ", ".join(f"seq {e.seq} ({e.tool}, {e.state.value})" for e in made)
        after = max(e.seq for e in made) + 1
        raise ForkError(
            f"run {run_id!r}: retrying from seq {from_seq} would make irreversible calls "
            f"again that were already made or may have been: {calls}; retry from seq "
            f"{after} or later, or fork the run"
        )
    children = [e for e in entries if e.kind == "child" and e.seq >= from_seq]
    if children:
        child = children[-1]
        raise ForkError(
            f"run {run_id!r} started a child run at seq {child.seq}; retry from seq "
            f"{child.seq + 1} or later"
        )
    forks = [
        f
        for f in await store.list_runs(forked_from=run_id, limit=1_000_000)
        if f.fork_seq is not None and f.fork_seq > from_seq
    ]
    if forks:
        found = ", ".join(f"{f.run_id} (at seq {f.fork_seq})" for f in forks[:5])
        raise ForkError(
            f"run {run_id!r} has forks that share entries a retry from seq {from_seq} would "
            f"set aside: {found}; retry from seq {max(f.fork_seq or 0 for f in forks)} or later"
        )
    return await store.restart_run(
        run_id, from_seq, expect=(run.status.value, run.updated_at), by=by, reason=reason
    )
