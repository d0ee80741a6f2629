"""Forks (DESIGN section 7): a new run made from another at a journal position.

The fork's journal is its origin's entries below ``at_seq``, read by reference (the store
follows ``forked_from`` up the chain; no row is copied), then its own. Replay hands the
shared prefix back as recorded, so nothing in it runs again: its model answers, tool
results and effects are the origin's. From ``at_seq`` on the fork executes afresh: its
calls are new, with new idempotency keys (they hash the run id), and the policy decides
them anew (an approval given in the origin approves nothing in the fork).

``replace`` substitutes the output of the entry at ``at_seq`` (say, a different model
answer): the fork's own entry at ``at_seq`` records it, and execution continues after it.
A replacement is checked before anything is stored: against the step's or tool's return
type when this App has it registered, by a kind's own check (the agent layer registers
one for model answers), else against the shape of the recorded output.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._errors import ForkError, RunIdConflictError, SerializationError
from .._records import EntryStatus, JournalEntry, Run
from .._serde import dumps, validate
from ..storage import NewEntry, NewRun

if TYPE_CHECKING:
    from ._app import App

__all__ = ["ForkError", "OutputCheck", "fork", "register_output_check"]

# Given the recorded entry and the replacement (decoded JSON), return the output to store
# (possibly completed, such as a model answer given as text), or raise ForkError.
OutputCheck = Callable[[JournalEntry, Any], Any]
_checks: dict[str, OutputCheck] = {}

_SEALED = (EntryStatus.COMPLETED, EntryStatus.FAILED)
# Kinds whose output says when a wait ends, not what a call returned: nothing to replace.
_NOT_REPLACEABLE = {"sleep": "a sleep has no output to replace"}


def register_output_check(kind: str, check: OutputCheck) -> None:
    """How a replacement for an entry of ``kind`` is checked (and completed)."""
    _checks[kind] = check


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _check_replacement(app: App, entry: JournalEntry, value: Any) -> Any:
    where = f"the {entry.kind} {entry.name!r} at seq {entry.seq}"
    if entry.kind in _NOT_REPLACEABLE:
        raise ForkError(
            f"cannot replace {where}: {_NOT_REPLACEABLE[entry.kind]}", problem="replacement"
        )
    check = _checks.get(entry.kind)
    if check is not None:
        return check(entry, value)
    declared: Any = None
    if entry.kind == "step" and entry.name in app._steps:
        declared = app._steps[entry.name].definition.return_type
    elif entry.kind == "tool" and entry.name in app._tools:
        declared = app._tools[entry.name].definition.body.return_type
    if declared is not None:
        try:
            validate(value, declared)
        except SerializationError as exc:
            why = " ".join(str(exc).split("\n    For further information")[0].split())
            raise ForkError(
                f"the replacement for {where} does not fit its return type: {why}",
                problem="replacement",
            ) from None
        return value
    if entry.status is EntryStatus.COMPLETED:  # no type known here: keep the recorded shape
        recorded, given = _json_type(entry.output), _json_type(value)
        if entry.output is not None and recorded != given:
            raise ForkError(
                f"the replacement for {where} is a JSON {given}, but it returned a JSON "
                f"{recorded} ({json.dumps(entry.output, default=str)[:120]}); give one of "
                "the same shape",
                problem="replacement",
            )
        if isinstance(entry.output, dict) and isinstance(value, dict):
            missing = sorted(set(entry.output) - set(value))
            if missing:
                raise ForkError(
                    f"the replacement for {where} lacks the keys {missing} that its recorded "
                    "output has; give an object with the same keys",
                    problem="replacement",
                )
    return value


def _check_position(
    origin: Run,
    at_seq: int,
    last: int,
    unfinished: JournalEntry | None,
    target: JournalEntry | None,
    replacing: bool,
) -> None:
    if isinstance(at_seq, bool) or not isinstance(at_seq, int) or at_seq < 1:
        raise ForkError(f"at_seq must be a whole number >= 1, not {at_seq!r}")
    if replacing and target is None:
        raise ForkError(
            f"run {origin.run_id!r} has no entry at seq {at_seq} to replace (its journal "
            f"has seqs 1 to {last}); see 'tether show {origin.run_id}'"
        )
    if at_seq > last + 1:
        raise ForkError(
            f"run {origin.run_id!r} has {last} journal entries: fork at a seq from 1 to "
            f"{last + 1} (the next call it would make)"
        )
    if unfinished is not None:
        raise ForkError(
            f"run {origin.run_id!r}: the {unfinished.kind} {unfinished.name!r} at seq "
            f"{unfinished.seq} is {unfinished.status.value}, not finished; a fork shares only "
            f"finished entries: fork at seq {unfinished.seq} or before, or once it has finished"
        )
    if replacing and target is not None and target.status not in _SEALED:
        raise ForkError(
            f"run {origin.run_id!r}: the entry at seq {at_seq} is "
            f"{target.status.value}; only a finished entry's output can be replaced"
        )


async def fork(
    app: App,
    origin_id: str,
    at_seq: int,
    *,
    replace: Any = None,
    replacing: bool,
    run_id: str | None,
) -> Run:
    origin = await app.get_run(origin_id)
    store = app._store
    if isinstance(at_seq, bool) or not isinstance(at_seq, int) or at_seq < 1:
        raise ForkError(f"at_seq must be a whole number >= 1, not {at_seq!r}")
    # A few index lookups, not the journal: a fork costs the same at any length.
    last, unfinished, target = await store.fork_point(origin_id, at_seq)
    _check_position(origin, at_seq, last, unfinished, target, replacing)
    replaced: NewEntry | None = None
    if replacing and target is not None:
        output = _check_replacement(app, target, replace)
        now = time.time()
        replaced = NewEntry(
            seq=at_seq,
            kind=target.kind,
            name=target.name,
            status=EntryStatus.COMPLETED.value,
            input_json=None if target.input is None else json.dumps(target.input),
            output_json=dumps(output, what=f"the replacement for seq {at_seq}"),
            started_at=now,
            finished_at=now,
            delivery=target.delivery,
            after_delivery=target.after_delivery,
            after_seq=target.after_seq,
        )
    new_id = run_id if run_id is not None else f"{origin_id}-fork-{os.urandom(3).hex()}"
    new = NewRun(
        new_id,
        origin.workflow,
        json.dumps(origin.args),
        tags=origin.tags,
        forked_from=origin_id,
        fork_seq=at_seq,
        fork_replaced=replaced is not None,
    )
    run, created = await store.create_fork(new, replaced)
    if not created and (run.forked_from != origin_id or run.fork_seq != at_seq):
        raise RunIdConflictError(
            f"run_id {new_id!r} is taken by another run; choose another run_id, or leave it "
            "out for a new one",
            run_id=new_id,
        )
    return run
