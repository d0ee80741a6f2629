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
import json
import logging
import random as _random
import time
import uuid as _uuid
import weakref
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .._errors import (
    ChildRunFailedError,
    LeaseLostError,
    NondeterminismError,
    NotInWorkflowError,
    SerializationError,
    SignalTimeoutError,
    StepFailedError,
    StorageError,
)
from .._records import EntryStatus, JournalEntry, RunState, RunStatus, Signal
from .._serde import decode, dumps
from ..storage import Fence, NewEntry, NewRun, Store
from ._control import Abandon, Checkpoint, Suspended
from ._order import DeliveryOrder
from ._registry import StepDef, WorkflowDef
from ._retry import call_step

if TYPE_CHECKING:
    from ._app import App

__all__ = ["Context", "current_context"]

log = logging.getLogger("tether.engine")

_current: contextvars.ContextVar[Context | None] = contextvars.ContextVar(
    "tether_context", default=None
)


def current_context(what: str) -> Context:
    ctx = _current.get()
    if ctx is None:
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
        self._app = app
        self._fence = fence
        self._store = store
        self._entries = state.entries
        self._mailbox = list(state.signals)
        self._taken: set[int] = set()
        self._children = dict(state.children)
        self._seq = 0
        # Delivery order (see _order.py); `_after[seq]`: (deliveries handed back, the seq
        # counter when the last of them resumed the run) when the call at seq was made.
        self._order = DeliveryOrder(state.entries.values(), lambda: self._seq)
        self._after: dict[int, tuple[int, int]] = {}
        self._tasks: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()
        self._last_task: asyncio.Task[Any] | None = None
        # Quiescence: the run parks once every branch is blocked on a wait (or on a turn)
        # and nothing executes. `_progress` moves on every durable call or completion.
        self._inflight = 0
        self._progress = 0
        self._blocked: dict[int, _Wait] = {}
        self._quiescent: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._checking = False
        self._refreshing = False
        self.fatal: NondeterminismError | None = None
        # Set when the engine stopped the run from inside (lease lost, storage failed,
        # shutdown): the workflow's own outcome is then moot, even if it swallowed the
        # exception (``gather(..., return_exceptions=True)``).
        self.engine_exit: BaseException | None = None
        self.closed = False
        self.draining = False

    def __repr__(self) -> str:
        return f"<Context run_id={self.run_id!r} seq={self._seq}>"

    # -- sequencing and replay ----------------------------------------------------------
    def _next(self, kind: str, name: str) -> tuple[int, JournalEntry | None]:
        if self.closed:
            raise Suspended()
        self._seq += 1
        self._progress += 1
        seq = self._seq
        released = self._order.released
        self._after[seq] = (released, self._order.resumed_at(released))
        self._order.after_call()
        task = asyncio.current_task()
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

    def _end(self) -> None:
        self._inflight -= 1
        self._progress += 1
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
    ) -> NewEntry:
        """A journal write for the call at ``seq``, with its place in the delivery order."""
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
    def _call_step(self, step: StepDef, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        seq, entry = self._next("step", step.name)
        return self._step(seq, entry, step, args, kwargs)

    async def _step(
        self,
        seq: int,
        entry: JournalEntry | None,
        step: StepDef,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
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
                    expected={"kind": "step", "name": step.name, "input": called_with},
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
            if self.closed:
                raise Suspended()
            if failure is None:
                status, output, error_json = "completed", output_json, None
            else:
                status, output, error_json = "failed", None, json.dumps(_error_dict(failure))
            delivery = self._order.next_live()
            try:
                await self._write(
                    self._entry(
                        seq, "step", step.name, status, input_json, output,
                        error_json, started, time.time(), attempts, delivery=delivery,
                    )
                )  # fmt: skip
            except BaseException:
                self._order.give_up(delivery)
                raise
        finally:
            self._end()
        await self._turn(delivery, recorded=False)
        if failure is not None:
            raise _step_error(step.name, seq, _error_dict(failure)) from failure
        if type(value) in _JSON_SCALARS:  # its JSON round trip is the identity
            return decode(value, step.return_type)
        return decode(json.loads(output_json), step.return_type)

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
    ) -> None:
        """Write an entry; a sealed one (completed/failed) is a delivery and resumes the
        caller in delivery order."""
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
                    now, now if sealed else None, 1, delivery=delivery,
                ),
                start_child=start_child,
                consume_signal=consume_signal,
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
            new = NewRun(child_id, wf.name, args_json, self.run_id, seq)
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
_JSON_SCALARS = frozenset({str, int, float, bool, type(None)})


def _poke(wait: _Wait) -> None:
    if wait.future is not None and not wait.future.done():
        wait.future.set_result(None)


def _to_datetime(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


def _error_dict(exc: BaseException) -> dict[str, Any]:
    error: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
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
