"""The workflow's view of the engine: durable calls recorded in the journal and replayed.

Each durable call takes the next ``seq`` *when it is called* (not when it is awaited), so
``asyncio.gather(a(1), b(2))`` numbers its calls in argument order on every replay. A call
whose entry is sealed in the journal returns the recorded output without executing. The
first call without one executes for real, and the workflow does not move past it until its
entry is committed.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import json
import logging
import random as _random
import time
import uuid as _uuid
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .._errors import (
    ApprovalRejectedError,
    ChildRunFailedError,
    EffectAbortedError,
    EffectInDoubtError,
    EffectStateError,
    LeaseLostError,
    NondeterminismError,
    NotAttempted,
    NotInWorkflowError,
    OutcomeUnknown,
    SerializationError,
    SignalTimeoutError,
    StepFailedError,
    StorageError,
    TetherError,
    ToolDeniedError,
    ToolFailedError,
)
from .._records import (
    Decision,
    Effect,
    EffectRecord,
    EntryStatus,
    JournalEntry,
    RunState,
    RunStatus,
    Signal,
)
from .._serde import decode, dumps, validate
from ..storage import Fence, InDoubt, NewEffect, NewEntry, NewRun, Store
from ._control import Abandon, Checkpoint, Suspended
from ._order import DeliveryOrder
from ._policy import CallFacts
from ._registry import StepDef, WorkflowDef
from ._retry import CallTimeout, backoff_delay, call_step
from ._secrets import SECRET_MARK
from ._tools import KEY_PARAM, Done, NotDone, PreparedCall, ToolDef, idempotency_key, prepare_call

if TYPE_CHECKING:
    from ._app import App

__all__ = ["Context", "approval_signal", "current_context"]

log = logging.getLogger("tether.engine")

_current: contextvars.ContextVar[Context | None] = contextvars.ContextVar(
    "tether_context", default=None
)


def current_context(what: str, name: str | None = None) -> Context:
    """The workflow's context; ``what`` (and ``name``) say what was called, for the error."""
    ctx = _current.get()
    if ctx is None:
        if name is not None:
            what = f"{what} {name!r}"
        raise NotInWorkflowError(
            f"{what} was called outside a workflow; durable calls only work inside an "
            "@app.workflow function (call .fn(...) to run the plain function instead)"
        )
    return ctx


@dataclass(slots=True)
class _Wait:
    """A durable wait that is not resolved yet in this execution."""

    seq: int
    wake_at: float | None = None
    signal: str | None = None
    child: str | None = None
    future: asyncio.Future[None] | None = None
    timer: asyncio.TimerHandle | None = None


class Context:
    """Passed as the first argument of every workflow. Its methods are durable calls.

    Ordering. ``seq`` is taken when a call is made. With concurrent branches
    (``asyncio.gather``), which branch makes its next call first depends on which of their
    calls completed first. So every completion also records its **delivery**: the order in
    which the run resumed from its completed calls. Replay hands recorded results back in
    that same order (a branch whose result is not next waits for its turn), and a call
    executed live during a replay is handed back only after every recorded one: branches
    make their calls in the same order and get the same seqs as the first time.
    """

    def __init__(self, app: App, fence: Fence, state: RunState, store: Store) -> None:
        self.run_id: str = state.run.run_id
        self.workflow: str = state.run.workflow
        self.tags: tuple[str, ...] = state.run.tags  # given at start; policy rules match them
        self._app = app
        self._fence = fence
        self._store = store
        self._entries = state.entries
        self._mailbox = list(state.signals)
        self._taken: set[int] = set()
        self._children = dict(state.children)
        self._effects = dict(state.effects)
        self._tainted = False  # untrusted content has flowed into this run (DESIGN 6)
        self._seq = 0
        # Delivery order (see _order.py); `_after[seq]`: (deliveries handed back, the seq
        # counter when the last of them resumed the run) when the call at seq was made.
        self._order = DeliveryOrder(state.entries.values(), lambda: self._seq)
        self._after: dict[int, tuple[int, int]] = {}
        self._loop = asyncio.get_running_loop()  # given to current_task: no lookup per call
        self._tasks: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()
        self._last_task: asyncio.Task[Any] | None = None
        # Quiescence: the run parks once every branch is blocked on a wait (or on a turn)
        # and nothing executes. `_progress` moves on every durable call or completion.
        self._inflight = 0
        self._progress = 0
        self._blocked: dict[int, _Wait] = {}
        self._quiescent: asyncio.Future[None] = self._loop.create_future()
        self._idle: asyncio.Future[None] | None = None  # see settle()
        self._checking = False
        self._refreshing = False
        # Why the run must stop for a person (nondeterminism, an effect in doubt).
        self.fatal: TetherError | None = None
        self.in_doubt: InDoubt | None = None
        # Set when the engine stopped the run from inside (lease lost, storage failed,
        # shutdown): the workflow's own outcome is then moot, even if it swallowed the
        # exception (``gather(..., return_exceptions=True)``).
        self.engine_exit: BaseException | None = None
        self.closed = False
        self.draining = False
        self.taken = False  # cancelled or lost from outside (Worker.cancel_local)
        self.ending = False  # the run ends or stops: calls in flight finish, none starts

    def __repr__(self) -> str:
        return f"<Context run_id={self.run_id!r} seq={self._seq}>"

    # -- sequencing and replay ----------------------------------------------------------
    def _next(self, kind: str, name: str) -> tuple[int, JournalEntry | None]:
        if self.closed or self.ending:
            raise Suspended()
        self._seq += 1
        self._progress += 1
        seq = self._seq
        released = self._order.released
        self._after[seq] = (released, self._order.resumed_at(released))
        self._order.after_call()
        task = asyncio.current_task(self._loop)
        if task is not self._last_task and task is not None:
            self._tasks.add(task)
            self._last_task = task
        entry = self._entries.get(seq)
        if entry is not None and (entry.kind != kind or entry.name != name):
            raise self._diverge(
                f"run {self.run_id!r} at seq {seq}: the journal recorded {entry.kind} "
                f"{entry.name!r} but the workflow now calls {kind} {name!r}; the workflow "
                "code changed under a running run. Restore the old code, or fork/retry the "
                "run from before this point",
                seq=seq,
                recorded={"kind": entry.kind, "name": entry.name},
                expected={"kind": kind, "name": name},
            )
        return seq, entry

    def _diverge(self, message: str, **fields: Any) -> NondeterminismError:
        """Record that replay left the journal; the caller raises what this returns."""
        self.fatal = NondeterminismError(message, run_id=self.run_id, **fields)
        self._stop_here()
        return self.fatal

    def _exit(self, control: BaseException) -> BaseException:
        """Record why the engine stops this execution; the caller raises what this returns."""
        if self.engine_exit is None:
            self.engine_exit = control
        self._stop_here()
        return control

    def _stop_here(self) -> None:
        self.closed = True  # nothing more may be written by this execution
        if not self._quiescent.done():
            self._quiescent.set_result(None)  # wake the executor

    @property
    def keeps_results(self) -> bool:
        """Whether a call that completes now is still recorded: yes unless the run was
        taken away (lease lost, cancelled, storage failed)."""
        return not isinstance(self.engine_exit, Abandon) and not self.taken

    async def settle(self, timeout: float) -> None:
        """Wait (at most ``timeout`` seconds) for the calls in flight to finish: when the
        run stops for a person, what its other branches' calls did is still recorded."""
        if not self._inflight:
            return
        self._idle = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._idle), timeout)
        except TimeoutError:
            log.warning("run %s: calls still in flight after %.0f s", self.run_id, timeout)

    @property
    def seq(self) -> int:
        """The seq of the last durable call made."""
        return self._seq

    async def _write(self, entry: NewEntry, **extra: Any) -> None:
        try:
            await self._store.append_entry(self._fence, entry, **extra)
        except LeaseLostError as exc:  # another worker owns the run now: stop here
            log.warning(
                "run %s: %s %r at seq %d not recorded: %s; another worker owns the run now",
                self.run_id, entry.kind, entry.name, entry.seq, exc,
            )  # fmt: skip
            raise self._exit(Abandon()) from None
        except StorageError as exc:
            log.warning("run %s: seq %d not recorded: %s", self.run_id, entry.seq, exc)
            raise self._exit(Abandon()) from None

    def _begin(self) -> None:
        if self.closed:
            raise Suspended()
        if self.draining:
            raise self._exit(Checkpoint())
        self._inflight += 1
        # The task that makes the call (an asyncio.gather child, say, which took its seq
        # in the workflow's own task): the executor waits for it before the run is over.
        task = asyncio.current_task(self._loop)
        if task is not self._last_task and task is not None:
            self._tasks.add(task)

    def _end(self) -> None:
        self._inflight -= 1
        self._progress += 1
        if not self._inflight and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)
        if self._blocked or self._order.waiting:
            self._schedule_check()
        if self._blocked and any(w.signal or w.child for w in self._blocked.values()):
            self.refresh_soon()

    def _entry(
        self,
        seq: int,
        kind: str,
        name: str,
        status: str,
        input_json: str | None,
        output_json: str | None,
        error_json: str | None,
        started_at: float | None,
        finished_at: float | None,
        attempts: int,
        *,
        delivery: int | None,
        replaces: bool = False,
    ) -> NewEntry:
        """A journal write for the call at ``seq``, with its place in the delivery order
        (``replaces``: over the call's intent, which is there)."""
        after, after_seq = self._after.get(seq, (0, 0))
        return NewEntry(
            seq,
            kind,
            name,
            status,
            input_json,
            output_json,
            error_json,
            started_at,
            finished_at,
            attempts,
            delivery=None if delivery is None else self._order.stored(delivery),
            after_delivery=self._order.stored(after),
            after_seq=after_seq,
            replaces=replaces,
        )

    async def _turn(self, delivery: int | None, *, recorded: bool) -> None:
        """Resume in delivery order (see _order.py). ``delivery`` is the stored number for
        a recorded result, the in-memory one for a live result."""
        if recorded:
            delivery = self._order.recorded_index(delivery)
        elif delivery is not None and self._order.live_next(delivery):
            self._progress += 1
            return
        if delivery is None:  # a journal written before deliveries were recorded
            return
        self._progress += 1
        if recorded or self._order.waiting or self._blocked:  # it may have to wait
            self._schedule_check()
        await self._order.turn(delivery, recorded=recorded)
        self._progress += 1

    # -- quiescence -------------------------------------------------------------------
    async def _block(self, wait: _Wait) -> None:
        """Wait until something may have resolved ``wait`` (its timer fired, the mailbox
        or a child changed); the caller then looks again. If instead every branch is idle,
        the run is parked and this task dropped."""
        loop = asyncio.get_running_loop()
        wait.future = loop.create_future()
        if wait.wake_at is not None:
            delay = max(0.0, wait.wake_at - time.time())
            wait.timer = loop.call_later(delay, _poke, wait)
        self._blocked[wait.seq] = wait
        self._progress += 1
        self._schedule_check()
        try:
            await wait.future
        finally:
            if wait.timer is not None:
                wait.timer.cancel()
            self._blocked.pop(wait.seq, None)
            self._progress += 1

    def _schedule_check(self) -> None:
        if not self._checking:
            self._checking = True
            asyncio.get_running_loop().call_soon(self._check, self._progress, 0)

    def _check(self, progress: int, rounds: int) -> None:
        loop = asyncio.get_running_loop()
        if self._quiescent.done() or self._inflight or not (self._blocked or self._order.waiting):
            self._checking = False
            return
        if progress != self._progress:
            loop.call_soon(self._check, self._progress, 0)
            return
        if rounds < 3:  # let callbacks already queued (a branch waking up) run first
            loop.call_soon(self._check, progress, rounds + 1)
            return
        if self._order.waiting:
            # Branches wait for a recorded result that nothing hands back. Give plain
            # asyncio work (queues, sleep(0) chains) real time before calling it divergence.
            loop.call_later(0.2, self._confirm_stuck, progress)
            return
        self._checking = False
        self._quiescent.set_result(None)

    def _confirm_stuck(self, progress: int) -> None:
        self._checking = False
        if self._quiescent.done() or self._inflight or progress != self._progress:
            if not self._quiescent.done():
                self._schedule_check()
            return
        if not self._order.waiting:
            self._schedule_check()
            return
        missing = self._order.stored(self._order.missing())
        entry = next((e for e in self._entries.values() if e.delivery == missing), None)
        where = f"seq {entry.seq} ({entry.kind} {entry.name!r})" if entry else "an earlier call"
        self._diverge(
            f"run {self.run_id!r}: the journal records a completed call at {where} "
            "that this execution never reached; the workflow code changed under a "
            "running run",
            seq=entry.seq if entry else None,
            recorded={"kind": entry.kind, "name": entry.name} if entry else None,
            expected=None,
        )

    def waits(self) -> list[_Wait]:
        return list(self._blocked.values())

    def refresh_soon(self) -> None:
        """Look again at the mailbox and children (a signal arrived, a child finished)."""
        if not self._refreshing and not self.closed:
            self._refreshing = True
            asyncio.get_running_loop().create_task(self._refresh())

    async def _refresh(self) -> None:
        try:
            waits = list(self._blocked.values())
            if any(w.signal for w in waits):
                self._mailbox = await self._store.list_signals(self.run_id)
            for wait in waits:
                if wait.child is not None:
                    child = await self._store.get_run(wait.child)
                    if child is not None:
                        self._children[wait.child] = child
            for wait in waits:
                if wait.signal is not None or wait.child is not None:
                    _poke(wait)
        except StorageError:
            pass  # the suspend transaction looks again anyway
        finally:
            self._refreshing = False

    # -- steps --------------------------------------------------------------------------
    def _call_step(
        self,
        step: StepDef,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        kind: str = "step",
        blobs: tuple[tuple[str, str], ...] = (),
    ) -> Any:
        """A step; or, with another ``kind``, any call recorded once and replayed like one
        (the agent layer records model calls as kind ``model``). ``blobs``: content
        addressed (hash, text) values the call's input refers to, stored with its entry."""
        seq, entry = self._next(kind, step.name)
        return self._step(seq, entry, step, args, kwargs, kind, blobs)

    async def _step(
        self,
        seq: int,
        entry: JournalEntry | None,
        step: StepDef,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        kind: str = "step",
        blobs: tuple[tuple[str, str], ...] = (),
    ) -> Any:
        input_json = dumps(
            {"args": args, "kwargs": kwargs} if kwargs else {"args": args},
            what=f"arguments of step {step.name!r}",
        )
        if entry is not None and entry.input is not None:
            called_with = json.loads(input_json)
            if called_with != entry.input:
                # Same step, other arguments: handing back the recorded result would give
                # this call another call's answer.
                raise self._diverge(
                    f"run {self.run_id!r} at seq {seq}: step {step.name!r} was recorded with "
                    f"arguments {entry.input} but is now called with {called_with}; the "
                    "workflow code changed under a running run",
                    seq=seq,
                    recorded={"kind": entry.kind, "name": entry.name, "input": entry.input},
                    expected={"kind": kind, "name": step.name, "input": called_with},
                )
        if entry is not None and entry.status is not _WAITING:
            await self._turn(entry.delivery, recorded=True)
            if entry.status is EntryStatus.FAILED:
                raise _step_error(step.name, seq, entry.error or {})
            return decode(entry.output, step.return_type)
        # A step body touches the world: start it only once replay has handed back every
        # recorded result, so a branch that the replayed workflow cancels never starts.
        if self._order.replaying:
            self._progress += 1
            self._schedule_check()
            await self._order.catch_up()
        self._begin()
        try:
            started = time.time()
            token = _current.set(None)  # a step body is not a workflow: no nested calls
            try:
                value, attempts = await call_step(step, args, kwargs)
                output_json = dumps(value, what=f"return value of step {step.name!r}")
                failure: BaseException | None = None
            except Exception as exc:
                failure = exc
                attempts = getattr(exc, "tether_attempts", 1)
            finally:
                _current.reset(token)
            if self.closed and not self.keeps_results:
                raise Suspended()
            if failure is None:
                status, output, error_json = "completed", output_json, None
            else:
                status, output, error_json = "failed", None, json.dumps(_error_dict(failure))
            delivery = self._order.next_live()
            try:
                new = self._entry(
                    seq, kind, step.name, status, input_json, output,
                    error_json, started, time.time(), attempts, delivery=delivery,
                )  # fmt: skip
                new.blobs = blobs
                await self._write(new)
            except BaseException:
                self._order.give_up(delivery)
                raise
        finally:
            self._end()
        if self._order.live_next(delivery):  # the common case, without a coroutine
            self._progress += 1
        else:
            await self._turn(delivery, recorded=False)
        if failure is not None:
            raise _step_error(step.name, seq, _error_dict(failure)) from failure
        if type(value) in _JSON_SCALARS:  # its JSON round trip is the identity
            return decode(value, step.return_type)
        return decode(json.loads(output_json), step.return_type)

    # -- tools ------------------------------------------------------------------------
    def _call_tool(self, tool: ToolDef, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        call = prepare_call(tool, args, kwargs, self._app._secrets)  # bad arguments: no seq
        seq, entry = self._next("tool", tool.name)
        return self._tool(seq, entry, tool, call)

    async def _tool(
        self, seq: int, entry: JournalEntry | None, tool: ToolDef, call: PreparedCall
    ) -> Any:
        """The effect-log protocol (DESIGN section 4): intent committed, call, completion
        committed; after a crash, recovery by the tool's effect kind."""
        if entry is not None and entry.input is not None:
            called_with = json.loads(call.input_json)
            if _unmasked(called_with) != _unmasked(entry.input):
                raise self._diverge(
                    f"run {self.run_id!r} at seq {seq}: tool {tool.name!r} was recorded with "
                    f"arguments {entry.input} but is now called with {called_with}; the "
                    "workflow code changed under a running run",
                    seq=seq,
                    recorded={"kind": entry.kind, "name": entry.name, "input": entry.input},
                    expected={"kind": "tool", "name": tool.name, "input": called_with},
                )
        if entry is not None and entry.status in _SEALED:
            await self._turn(entry.delivery, recorded=True)
            return self._tool_outcome(tool, seq, entry.status, entry.output, entry.error)
        if self._order.replaying:  # touch the world only once replay has caught up
            self._progress += 1
            self._schedule_check()
            await self._order.catch_up()
        key = idempotency_key(self.run_id, seq)
        record = self._effects.get(seq)
        if entry is None:
            ruling = self._app.policy.explain(
                CallFacts(
                    tool.name,
                    tool.effect,
                    tool.blast_radius,
                    tool.approval,
                    self._tainted,
                    frozenset(self.tags),
                    tool.approval_timeout,
                    tool.on_timeout,
                )
            )
            decision = ruling.decision
            if decision is Decision.DENY:
                error = {
                    "type": "ToolDeniedError",
                    "code": ToolDeniedError.code,
                    "message": f"the policy denies calling tool {tool.name!r}: {ruling.reason}",
                }
                effect = self._intent(
                    seq, tool, key, decision, 0, "denied", rule=ruling.source, reason=ruling.reason
                )
                return await self._seal_tool(seq, tool, call, None, error, effect=effect)
            if decision is not Decision.APPROVE:
                effect = self._intent(seq, tool, key, decision, 1, "intent")
                return await self._make_call(seq, tool, call, key, effect)
            deadline = None if ruling.timeout is None else time.time() + ruling.timeout
            effect = self._intent(
                seq,
                tool,
                key,
                decision,
                0,
                "approval_requested",
                rule=ruling.source,
                reason=ruling.reason,
            )
            effect.deadline = deadline
            effect.on_timeout = ruling.on_timeout if deadline is not None else None
            arguments = json.loads(call.input_json)
            await self._record(seq, "tool", tool.name, "waiting", arguments, None, effect=effect)
            return await self._await_approval(
                seq, tool, call, key, decision, deadline, effect.on_timeout
            )
        if entry.status is EntryStatus.WAITING:
            decision = record.decision if record is not None else Decision.APPROVE
            deadline = record.deadline if record is not None else None
            on_timeout = record.on_timeout if record is not None else None
            return await self._await_approval(seq, tool, call, key, decision, deadline, on_timeout)
        return await self._recover(seq, tool, call, key, record)

    def _intent(
        self,
        seq: int,
        tool: ToolDef,
        key: str,
        decision: Decision,
        attempt: int,
        event: str,
        **detail: Any,
    ) -> NewEffect:
        """The effect-log record written with the call's entry (history gets ``event``)."""
        # The common note is built as text: this runs on every tool call.
        note = (
            f'{{"event": "{event}", "attempt": {attempt}, "at": {time.time()!r}, '
            f'"worker": {json.dumps(self._fence.worker_id)}'
        )
        if detail:
            note += ", " + json.dumps(detail)[1:-1]
        return NewEffect(
            seq=seq,
            kind=tool.effect.value,
            idempotency_key=key,
            blast_radius=tool.blast_radius,
            approval=tool.approval.value,
            decision=decision.value,
            tainted=self._tainted,
            attempt=attempt,
            event_json=note + "}",
        )

    async def _await_approval(
        self,
        seq: int,
        tool: ToolDef,
        call: PreparedCall,
        key: str,
        decision: Decision,
        deadline: float | None,
        on_timeout: str | None,
    ) -> Any:
        """Wait durably (holding no thread) for a person's decision on this one call; at
        ``deadline`` (if any), take ``on_timeout`` (reject or approve) instead."""
        name = approval_signal(seq)
        attempt = 0
        while True:
            signal = self._find_signal(name)
            if signal is not None:
                break
            if deadline is not None and time.time() >= deadline:
                await self._decide_by_default(seq, name, on_timeout)
                continue
            await self._block(_Wait(seq, wake_at=deadline, signal=name))
        self._taken.add(signal.id)
        consumed = signal.id
        verdict = signal.value if isinstance(signal.value, dict) else {}
        who = {"by": verdict.get("by"), "note": verdict.get("note")}
        if verdict.get("timed_out"):
            who["timed_out"] = True
        if not verdict.get("approved"):
            error = {
                "type": "ApprovalRejectedError",
                "code": ApprovalRejectedError.code,
                "message": f"{who['by'] or 'a person'} rejected calling tool {tool.name!r}"
                + (f": {who['note']}" if who["note"] else ""),
                **who,
            }
            effect = self._intent(seq, tool, key, decision, attempt, "rejected", **who)
            return await self._seal_tool(
                seq, tool, call, None, error, effect=effect, consume_signal=consumed
            )
        effect = self._intent(seq, tool, key, decision, attempt + 1, "approved", **who)
        return await self._make_call(seq, tool, call, key, effect, consume_signal=consumed)

    async def _decide_by_default(self, seq: int, name: str, on_timeout: str | None) -> None:
        """The deadline passed: record the default as the decision, through the same
        store command a person's decision takes, so exactly one of them wins (a person's
        that came first makes this one fail). Then the mailbox holds the winner."""
        approved = on_timeout == "approve"
        verdict = {
            "approved": approved,
            "by": "tether (deadline)",
            "note": f"no decision by the deadline: {'approved' if approved else 'rejected'} "
            "by default",
            "timed_out": True,
            "at": time.time(),
        }
        event = {"event": "approval" if approved else "rejection"} | verdict
        try:
            await self._store.decide_approval(
                self.run_id,
                seq,
                dumps(verdict | {"action": "approve" if approved else "reject"}, what="approval"),
                dumps(event, what="approval"),
                name,
            )
        except EffectStateError:
            pass  # decided already (a person, or another worker at the same deadline)
        except StorageError:
            raise self._exit(Abandon()) from None
        try:
            self._mailbox = await self._store.list_signals(self.run_id)
        except StorageError:
            raise self._exit(Abandon()) from None
        if self._find_signal(name) is None:  # the run ended meanwhile (cancelled)
            raise self._exit(Abandon())

    async def _recover(
        self, seq: int, tool: ToolDef, call: PreparedCall, key: str, record: EffectRecord | None
    ) -> Any:
        """An intent without a completion: the call may or may not have happened."""
        attempt = record.attempt if record is not None else 1
        decision = record.decision if record is not None else tool.approval
        resolution = record.resolution if record is not None else None
        if resolution is not None:  # a person decided (tether resolve)
            action = resolution.get("action")
            who = {"by": resolution.get("by"), "reason": resolution.get("reason")}
            if action == "retry":
                effect = self._intent(seq, tool, key, decision, attempt + 1, "retry", **who)
                return await self._make_call(seq, tool, call, key, effect)
            effect = self._intent(seq, tool, key, decision, attempt, action or "resolved", **who)
            if action == "done":
                return await self._seal_done(seq, tool, call, resolution.get("result"), effect)
            error = {
                "type": "EffectAbortedError",
                "code": EffectAbortedError.code,
                "message": f"{who['by'] or 'a person'} aborted the in-doubt call of tool "
                f"{tool.name!r}" + (f": {who['reason']}" if who["reason"] else ""),
                **who,
            }
            return await self._seal_tool(seq, tool, call, None, error, effect=effect)
        if tool.effect is not Effect.IRREVERSIBLE:
            # Safe to repeat: a read runs again, an idempotent write with the same key.
            effect = self._intent(seq, tool, key, decision, attempt + 1, "rerun")
            return await self._make_call(seq, tool, call, key, effect)
        return await self._in_doubt(seq, tool, call, key, decision, attempt, "after a restart")

    async def _in_doubt(
        self,
        seq: int,
        tool: ToolDef,
        call: PreparedCall,
        key: str,
        decision: Decision,
        attempt: int,
        why: str,
        failure: dict[str, Any] | None = None,
    ) -> Any:
        """An irreversible call that may have happened: its reconcile hook decides, else a
        person does (the run stops as needs_attention). ``failure``: how the call just
        made ended (``OutcomeUnknown``, a timeout); if it was not made after all, it is
        retried like ``NotAttempted``, within the tool's retries."""
        if tool.reconcile is None:
            raise self._needs_person(seq, tool, key, f"{why}, and the tool has no reconcile hook")
        self._begin()
        try:
            kwargs = dict(call.kwargs)
            if tool.reconcile_wants_key:
                kwargs[KEY_PARAM] = key
            token = _current.set(None)
            try:
                answer = await _ask(tool, call.args, kwargs)
            except Exception as exc:
                reason = f"{why}; its reconcile hook raised {type(exc).__name__}: {exc}"
                raise self._needs_person(seq, tool, key, _scrub(reason, call.secrets)) from None
            finally:
                _current.reset(token)
        finally:
            self._end()
        if isinstance(answer, Done):
            effect = self._intent(seq, tool, key, decision, attempt, "reconciled", done=True)
            return await self._seal_done(seq, tool, call, answer.result, effect)
        if isinstance(answer, NotDone):
            if failure is not None and attempt > tool.body.retries:
                effect = self._intent(seq, tool, key, decision, attempt, "reconciled", done=False)
                return await self._seal_tool(seq, tool, call, None, failure, effect=effect)
            if failure is not None:
                self._begin()
                try:
                    body = tool.body
                    await asyncio.sleep(backoff_delay(attempt, body.backoff, body.backoff_max))
                finally:
                    self._end()
            effect = self._intent(seq, tool, key, decision, attempt + 1, "reconciled", done=False)
            return await self._make_call(seq, tool, call, key, effect)
        reason = f"{why}; its reconcile hook returned {answer!r}: return Done(result) or NotDone()"
        raise self._needs_person(seq, tool, key, _scrub(reason, call.secrets))

    def _needs_person(self, seq: int, tool: ToolDef, key: str, reason: str) -> BaseException:
        """Stop the run for a person, marking the effect in doubt; the caller raises it."""
        if self.closed:
            return Suspended()
        error = EffectInDoubtError(
            f"run {self.run_id!r}: the irreversible call of tool {tool.name!r} at seq {seq} "
            f"may or may not have happened ({reason}). Find out, then run 'tether resolve "
            f"{self.run_id} {seq} --done JSON --reason TEXT' (it happened, with its result), "
            "or with '--retry' (it did not) or '--abort' instead of '--done JSON'",
            seq=seq,
            tool=tool.name,
            idempotency_key=key,
            reason=reason,
        )
        note = {"event": "in_doubt", "reason": reason, "at": time.time()}
        self.in_doubt = InDoubt(seq, json.dumps(note | {"worker": self._fence.worker_id}))
        self.fatal = error
        self._stop_here()
        return error

    async def _make_call(
        self,
        seq: int,
        tool: ToolDef,
        call: PreparedCall,
        key: str,
        effect: NewEffect,
        *,
        consume_signal: int | None = None,
    ) -> Any:
        """Commit the intent, make the call, commit the completion: the workflow moves on
        only once both are durable. Shutdown cannot fall between intent and call."""
        kwargs = dict(call.kwargs)
        if tool.wants_key:
            kwargs[KEY_PARAM] = key
        irreversible = tool.effect is Effect.IRREVERSIBLE
        self._begin()
        delivery = None
        try:
            started = time.time()
            await self._write(
                self._entry(
                    seq, "tool", tool.name, "intent", call.input_json, None, None,
                    started, None, 1, delivery=None,
                ),
                effect=effect,
                consume_signal=consume_signal,
            )  # fmt: skip
            token = _current.set(None)  # a tool body is not a workflow: no nested calls
            try:
                value, attempts = await call_step(
                    tool.body,
                    call.args,
                    kwargs,
                    _retry_irreversible if irreversible else None,
                    finish_threads=irreversible,
                    scrub=functools.partial(_scrub, secrets=call.secrets),
                )
                output_json = _scrub_json(
                    dumps(value, what=f"return value of tool {tool.name!r}"), call.secrets
                )
                failure: BaseException | None = None
            except Exception as exc:
                failure = exc
                attempts = getattr(exc, "tether_attempts", 1)
            finally:
                _current.reset(token)
            if self.closed and not self.keeps_results:
                raise Suspended()  # the run is not ours any more: its next owner recovers
            # (Stopping with the run still ours, for a person or a shutdown: what the call
            # did is known, so it is recorded, not left for someone to find out.)
            unknown: dict[str, Any] | None = None
            if failure is not None and irreversible and isinstance(failure, _UNKNOWN):
                unknown = _scrub_error(failure, call.secrets)
                why = f"its call ended without an answer ({unknown['type']}: {unknown['message']})"
            else:
                why = ""
            if not why:
                error = None if failure is None else _scrub_error(failure, call.secrets)
                status = "completed" if failure is None else "failed"
                delivery = self._order.next_live()
                await self._write(
                    self._entry(
                        seq, "tool", tool.name, status, call.input_json,
                        output_json if failure is None else None,
                        None if error is None else json.dumps(error),
                        started, time.time(), attempts, delivery=delivery, replaces=True,
                    )
                )  # fmt: skip
        except BaseException:
            self._order.give_up(delivery)
            raise
        finally:
            self._end()
        if why:
            decision = Decision(effect.decision)
            return await self._in_doubt(
                seq, tool, call, key, decision, effect.attempt, why, failure=unknown
            )
        await self._turn(delivery, recorded=False)
        if error is None and not call.secrets and type(value) in _JSON_SCALARS:
            return self._tool_outcome(tool, seq, EntryStatus.COMPLETED, value, None)
        output = None if error is not None else json.loads(output_json)
        return self._tool_outcome(tool, seq, EntryStatus(status), output, error)

    async def _seal_done(
        self, seq: int, tool: ToolDef, call: PreparedCall, result: Any, effect: NewEffect
    ) -> Any:
        """Complete the call with a result that someone else established (the reconcile
        hook, a person): checked against the tool's return type first."""
        try:
            validate(result, tool.body.return_type)
            output_json = _scrub_json(
                dumps(result, what=f"result of tool {tool.name!r}"), call.secrets
            )
        except SerializationError as exc:
            reason = f"the result given for it does not fit the tool's return type: {exc}"
            reason = _scrub(reason, call.secrets)
            raise self._needs_person(seq, tool, effect.idempotency_key, reason) from None
        return await self._seal_tool(seq, tool, call, json.loads(output_json), None, effect=effect)

    async def _seal_tool(
        self,
        seq: int,
        tool: ToolDef,
        call: PreparedCall,
        output: Any,
        error: dict[str, Any] | None,
        *,
        effect: NewEffect,
        consume_signal: int | None = None,
    ) -> Any:
        """Complete the call without making it (denied, rejected, aborted, found done)."""
        status = "completed" if error is None else "failed"
        await self._record(
            seq, "tool", tool.name, status, json.loads(call.input_json), output, error,
            consume_signal=consume_signal, effect=effect, attempts=0,
        )  # fmt: skip
        return self._tool_outcome(tool, seq, EntryStatus(status), output, error)

    def _tool_outcome(
        self,
        tool: ToolDef,
        seq: int,
        status: EntryStatus,
        output: Any,
        error: dict[str, Any] | None,
    ) -> Any:
        """What the workflow gets back, the same live and on replay."""
        if tool.untrusted_output:
            self._tainted = True  # what follows may be steered by what the tool read
        if status is EntryStatus.FAILED:
            raise _tool_error(tool.name, seq, error or {})
        return decode(output, tool.body.return_type)

    # -- recorded non-determinism -------------------------------------------------------
    def now(self) -> Awaitable[datetime]:
        """The current time, recorded: replay returns the same instant."""
        seq, entry = self._next("now", "now")
        return self._recorded_value(seq, entry, "now", time.time, _to_datetime)

    def uuid(self) -> Awaitable[_uuid.UUID]:
        """A random UUID (version 4), recorded: replay returns the same one."""
        seq, entry = self._next("uuid", "uuid")
        return self._recorded_value(seq, entry, "uuid", lambda: str(_uuid.uuid4()), _uuid.UUID)

    def random(self) -> Awaitable[float]:
        """A random float in [0, 1), recorded: replay returns the same one."""
        seq, entry = self._next("random", "random")
        return self._recorded_value(seq, entry, "random", _random.random, float)

    async def _recorded_value(
        self, seq: int, entry: JournalEntry | None, kind: str, make: Any, convert: Any
    ) -> Any:
        if entry is not None:
            await self._turn(entry.delivery, recorded=True)
            return convert(entry.output)
        value = make()
        await self._record(seq, kind, kind, "completed", None, value)
        return convert(value)

    async def _hold(
        self, kind: str, name: str, signal: str, stop: Callable[[], TetherError]
    ) -> Any:
        """A stop for a person: unless the run's mailbox holds ``signal`` (the person's
        answer, delivered with ``Store.hand_back``), the run stops here as needs_attention
        with the error ``stop()`` makes. The answer is recorded as entry (``kind``,
        ``name``), consuming the signal, and returned; a replay returns it again."""
        seq, entry = self._next(kind, name)
        if entry is not None:
            await self._turn(entry.delivery, recorded=True)
            return entry.output
        found = self._find_signal(signal)
        if found is None:
            if self.closed:
                raise Suspended()
            self.fatal = stop()
            self._stop_here()
            raise self.fatal
        self._taken.add(found.id)
        await self._record(seq, kind, name, "completed", None, found.value, consume_signal=found.id)
        return found.value

    # -- durable waits ------------------------------------------------------------------
    def sleep(self, seconds: float) -> Awaitable[None]:
        """Sleep durably: the wake-up time is recorded, so a restart neither restarts nor
        shortens the wait. The run holds no thread or memory while it sleeps."""
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds != seconds:
            raise TypeError(f"ctx.sleep() takes seconds as a number, not {seconds!r}")
        seq, entry = self._next("sleep", "sleep")
        return self._sleep(seq, entry, float(seconds))

    async def _sleep(self, seq: int, entry: JournalEntry | None, seconds: float) -> None:
        if entry is not None and entry.status is not _WAITING:
            await self._turn(entry.delivery, recorded=True)
            return
        if entry is None:
            wake_at = time.time() + max(0.0, seconds)
            await self._record(seq, "sleep", "sleep", "waiting", {"seconds": seconds}, wake_at)
        else:
            wake_at = float(entry.output)
        while time.time() < wake_at:
            await self._block(_Wait(seq, wake_at=wake_at))
        await self._record(seq, "sleep", "sleep", "completed", None, wake_at)

    def wait_signal(self, name: str, timeout: float | None = None) -> Awaitable[Any]:
        """Wait for the next signal ``name`` sent to this run (``app.signal``). Signals sent
        before the wait are kept in the run's mailbox and consumed in order. Raises
        :class:`SignalTimeoutError` after ``timeout`` seconds, measured durably."""
        if not isinstance(name, str) or not name:
            raise TypeError("ctx.wait_signal() needs a signal name (a non-empty str)")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0
        ):
            raise TypeError(f"ctx.wait_signal() timeout must be seconds >= 0, not {timeout!r}")
        seq, entry = self._next("signal", name)
        return self._wait_signal(seq, entry, name, timeout)

    async def _wait_signal(
        self, seq: int, entry: JournalEntry | None, name: str, timeout: float | None
    ) -> Any:
        if entry is not None and entry.status is not _WAITING:
            await self._turn(entry.delivery, recorded=True)
            if entry.status is EntryStatus.FAILED:
                raise SignalTimeoutError(
                    f"no signal {name!r} within the timeout", run_id=self.run_id, seq=seq
                )
            return entry.output
        deadline: float | None = None
        if entry is None:
            deadline = None if timeout is None else time.time() + timeout
            if self._find_signal(name) is None:  # record the wait only if it will wait
                await self._record(seq, "signal", name, "waiting", {"timeout": timeout}, deadline)
        elif entry.output is not None:
            deadline = float(entry.output)
        while True:
            signal = self._find_signal(name)
            if signal is not None:
                self._taken.add(signal.id)
                await self._record(
                    seq, "signal", name, "completed", None, signal.value,
                    consume_signal=signal.id,
                )  # fmt: skip
                return signal.value
            if deadline is not None and time.time() >= deadline:
                # The mailbox may be stale (a signal sent from another process while a
                # step ran): look once more before declaring the timeout.
                try:
                    self._mailbox = await self._store.list_signals(self.run_id)
                except StorageError:
                    raise self._exit(Abandon()) from None
                if self._find_signal(name) is not None:
                    continue
                error = {"type": "SignalTimeoutError", "message": f"no signal {name!r}"}
                await self._record(seq, "signal", name, "failed", None, None, error)
                raise SignalTimeoutError(
                    f"no signal {name!r} within the timeout", run_id=self.run_id, seq=seq
                )
            await self._block(_Wait(seq, wake_at=deadline, signal=name))

    def _find_signal(self, name: str) -> Signal | None:
        for signal in self._mailbox:
            if signal.name == name and signal.id not in self._taken:
                return signal
        return None

    async def _record(
        self,
        seq: int,
        kind: str,
        name: str,
        status: str,
        input: Any,
        output: Any,
        error: dict[str, Any] | None = None,
        *,
        start_child: NewRun | None = None,
        consume_signal: int | None = None,
        effect: NewEffect | None = None,
        attempts: int = 1,
    ) -> None:
        """Write an entry (with its effect-log record, for a tool); a sealed one
        (completed/failed) is a delivery and resumes the caller in delivery order."""
        sealed = status != "waiting"
        self._begin()
        delivery = None
        try:
            now = time.time()
            delivery = self._order.next_live() if sealed else None
            await self._write(
                self._entry(
                    seq, kind, name, status,
                    None if input is None else json.dumps(input),
                    None if output is None else json.dumps(output),
                    None if error is None else json.dumps(error),
                    now, now if sealed else None, attempts, delivery=delivery,
                ),
                start_child=start_child,
                consume_signal=consume_signal,
                effect=effect,
            )  # fmt: skip
        except BaseException:
            self._order.give_up(delivery)
            raise
        finally:
            self._end()
        await self._turn(delivery, recorded=False)

    # -- child runs ---------------------------------------------------------------------
    def child(
        self, workflow: Any, /, *args: Any, run_id: str | None = None, **kwargs: Any
    ) -> Awaitable[Any]:
        """Start ``workflow`` as a child run and wait for its result. The child is a run of
        its own (any worker may execute it); its run_id defaults to ``<parent>:<seq>``."""
        definition = self._app._definition(workflow)
        seq, entry = self._next("child", definition.name)
        return self._child(seq, entry, definition, args, kwargs, run_id)

    async def _child(
        self,
        seq: int,
        entry: JournalEntry | None,
        wf: WorkflowDef,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        run_id: str | None,
    ) -> Any:
        if entry is not None and entry.status is not _WAITING:
            await self._turn(entry.delivery, recorded=True)
            if entry.status is EntryStatus.FAILED:
                raise _child_error(wf.name, seq, entry.error or {})
            return decode(entry.output, wf.return_type)
        if entry is None:
            child_id = run_id or f"{self.run_id}:{seq}"
            args_json = self._app._encode_args(wf, args, kwargs)
            new = NewRun(child_id, wf.name, args_json, self.run_id, seq, self.tags)
            await self._record(
                seq, "child", wf.name, "waiting", {"run_id": child_id}, None, start_child=new
            )
            self._app._wake_worker()
        else:
            child_id = entry.input["run_id"]
        while True:
            child = self._children.get(child_id)
            if child is not None and child.status is RunStatus.SUCCEEDED:
                await self._record(seq, "child", wf.name, "completed", None, child.result)
                return decode(child.result, wf.return_type)
            if child is not None and child.status.is_terminal:
                error = {
                    "type": "ChildRunFailedError",
                    "message": f"child run {child_id!r} {child.status.value}",
                    "child_run_id": child_id,
                    "child_status": child.status.value,
                    "child_error": child.error,
                }
                await self._record(seq, "child", wf.name, "failed", None, None, error)
                raise _child_error(wf.name, seq, error)
            await self._block(_Wait(seq, child=child_id))

    def _run_coroutine(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        context = contextvars.copy_context()
        context.run(_current.set, self)
        return asyncio.get_running_loop().create_task(coro, context=context)


_WAITING = EntryStatus.WAITING
_SEALED = (EntryStatus.COMPLETED, EntryStatus.FAILED)
_JSON_SCALARS = frozenset({str, int, float, bool, type(None)})
# An irreversible call that ends like this may have acted: it is in doubt, not failed.
_UNKNOWN = (OutcomeUnknown, CallTimeout)
_TOOL_ERRORS: dict[str, type[ToolFailedError]] = {
    ToolDeniedError.code: ToolDeniedError,
    ApprovalRejectedError.code: ApprovalRejectedError,
    EffectAbortedError.code: EffectAbortedError,
}


BUDGET_SIGNAL = "tether:budget"  # a raised budget, for a run stopped on one


def approval_signal(seq: int) -> str:
    """The mailbox name that delivers a person's decision on the tool call at ``seq``
    (reserved: ``app.signal`` refuses names starting with ``tether:``)."""
    return f"tether:approval:{seq}"


async def _ask(tool: ToolDef, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Call the reconcile hook: a sync one on the thread pool (it looks something up),
    within the tool's timeout."""
    hook = tool.reconcile
    assert hook is not None
    if inspect.iscoroutinefunction(hook):
        answer = hook(*args, **kwargs)
    else:
        loop = asyncio.get_running_loop()
        answer = loop.run_in_executor(None, functools.partial(hook, *args, **kwargs))
    if tool.body.timeout is not None:
        answer = asyncio.wait_for(answer, tool.body.timeout)
    result = await answer
    if inspect.isawaitable(result):  # a sync function that returned an awaitable
        result = await result
    return result


def _retry_irreversible(exc: Exception) -> bool:
    return isinstance(exc, NotAttempted)


def _unmasked(record: Any) -> Any:
    """Arguments with secret hashes blanked: replay compares what it can see."""
    if isinstance(record, dict):
        return {k: SECRET_MARK if _is_hash(v) else v for k, v in record.items()}
    return record


def _is_hash(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and SECRET_MARK in value


# Shorter secrets are replaced only where a whole value equals them: replacing two or
# three characters wherever they occur would garble everything else.
_SCRUB_MIN = 4


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    """Remove secret values from plain text bound for storage or logs (a message)."""
    for secret in secrets:
        if len(secret) >= _SCRUB_MIN:
            text = text.replace(secret, "[secret]")
    return text


def _scrub_value(value: Any, secrets: tuple[str, ...]) -> Any:
    """Remove secret values from decoded JSON (a tool that echoes its token): a leaf equal
    to a secret becomes "[secret]", and a secret inside a string is cut out of it."""
    if isinstance(value, dict):
        return {k: _scrub_value(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub_value(v, secrets) for v in value]
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        text = str(value)
        if text in secrets:
            return "[secret]"
        if isinstance(value, str):
            return _scrub(value, secrets)
    return value


def _scrub_json(text: str, secrets: tuple[str, ...]) -> str:
    if not secrets:
        return text
    return json.dumps(_scrub_value(json.loads(text), secrets), ensure_ascii=False)


def _scrub_error(exc: BaseException, secrets: tuple[str, ...]) -> dict[str, Any]:
    error = _error_dict(exc)
    error["message"] = _scrub(error["message"], secrets)
    return error


def _tool_error(name: str, seq: int, error: dict[str, Any]) -> ToolFailedError:
    cls = _TOOL_ERRORS.get(error.get("code") or "", ToolFailedError)
    message = error.get("message")
    if cls is ToolFailedError:
        message = f"tool {name!r} (seq {seq}) failed: {error.get('type')}: {message}"
    return cls(
        message,
        step=name,
        seq=seq,
        error_type=error.get("type"),
        error_message=error.get("message"),
    )


def _poke(wait: _Wait) -> None:
    if wait.future is not None and not wait.future.done():
        wait.future.set_result(None)


def _to_datetime(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


def _error_dict(exc: BaseException) -> dict[str, Any]:
    kind = "TimeoutError" if isinstance(exc, CallTimeout) else type(exc).__name__
    error: dict[str, Any] = {"type": kind, "message": str(exc)}
    if isinstance(exc, SerializationError):
        error["code"] = exc.code
    return error


def _step_error(name: str, seq: int, error: dict[str, Any]) -> StepFailedError:
    return StepFailedError(
        f"step {name!r} (seq {seq}) failed: {error.get('type')}: {error.get('message')}",
        step=name,
        seq=seq,
        error_type=error.get("type"),
        error_message=error.get("message"),
    )


def _child_error(name: str, seq: int, error: dict[str, Any]) -> ChildRunFailedError:
    return ChildRunFailedError(
        f"child workflow {name!r} (seq {seq}): {error.get('message')}",
        seq=seq,
        child_run_id=error.get("child_run_id"),
        child_status=error.get("child_status"),
        child_error=error.get("child_error"),
    )
