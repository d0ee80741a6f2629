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
import random as _random
import time
import uuid as _uuid
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
from .._records import EntryStatus, JournalEntry, RunState
from .._serde import decode, dumps
from ..storage import Fence, NewEntry, NewRun, Store
from ._control import Abandon, Checkpoint, Suspended
from ._registry import StepDef, WorkflowDef
from ._retry import call_step

if TYPE_CHECKING:
    from ._app import App

__all__ = ["Context", "current_context"]

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
    """A durable wait that is not resolved in this execution."""

    seq: int
    wake_at: float | None = None
    signal: str | None = None
    child: str | None = None


class Context:
    """Passed as the first argument of every workflow. Its methods are durable calls."""

    def __init__(self, app: App, fence: Fence, state: RunState, store: Store) -> None:
        self.run_id: str = state.run.run_id
        self.workflow: str = state.run.workflow
        self._app = app
        self._fence = fence
        self._store = store
        self._entries = state.entries
        self._mailbox = list(state.signals)
        self._taken: set[int] = set()
        self._children = state.children
        self._seq = 0
        # Quiescence: the run suspends once every live branch is blocked on a wait and
        # nothing is executing. `_progress` moves on every durable call or completion.
        self._inflight = 0
        self._progress = 0
        self._blocked: dict[int, _Wait] = {}
        self._quiescent: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._checking = False
        self.fatal: NondeterminismError | None = None
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
        entry = self._entries.get(seq)
        if entry is not None and (entry.kind != kind or entry.name != name):
            self.fatal = NondeterminismError(
                f"run {self.run_id!r} at seq {seq}: the journal recorded {entry.kind} "
                f"{entry.name!r} but the workflow now calls {kind} {name!r}; the workflow "
                "code changed under a running run. Restore the old code, or fork/retry the "
                "run from before this point",
                run_id=self.run_id,
                seq=seq,
                recorded={"kind": entry.kind, "name": entry.name},
                expected={"kind": kind, "name": name},
            )
            raise self.fatal
        return seq, entry

    @property
    def seq(self) -> int:
        """The seq of the last durable call made."""
        return self._seq

    async def _write(self, entry: NewEntry, **extra: Any) -> None:
        try:
            await self._store.append_entry(self._fence, entry, **extra)
        except LeaseLostError:
            self.closed = True
            raise Abandon() from None
        except StorageError:
            self.closed = True
            raise Abandon() from None

    def _begin(self) -> None:
        if self.closed:
            raise Suspended()
        if self.draining:
            raise Checkpoint()
        self._inflight += 1

    def _end(self) -> None:
        self._inflight -= 1
        self._progress += 1
        if self._blocked:
            self._schedule_check()

    # -- quiescence -------------------------------------------------------------------
    async def _block(self, wait: _Wait) -> Any:
        self._blocked[wait.seq] = wait
        self._progress += 1
        self._schedule_check()
        # Never resolved in this execution: the run is suspended and this task dropped.
        await asyncio.get_running_loop().create_future()

    def _schedule_check(self) -> None:
        if not self._checking:
            self._checking = True
            asyncio.get_running_loop().call_soon(self._check, self._progress, 0)

    def _check(self, progress: int, rounds: int) -> None:
        if self._quiescent.done():
            return
        if self._inflight or not self._blocked or progress != self._progress:
            if self._inflight or not self._blocked:
                self._checking = False
                return
            asyncio.get_running_loop().call_soon(self._check, self._progress, 0)
            return
        if rounds < 3:  # let callbacks already queued (a branch waking up) run first
            asyncio.get_running_loop().call_soon(self._check, progress, rounds + 1)
            return
        self._checking = False
        self._quiescent.set_result(None)

    def waits(self) -> list[_Wait]:
        return list(self._blocked.values())

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
        if entry is not None and entry.status is EntryStatus.COMPLETED:
            return decode(entry.output, step.return_type)
        if entry is not None and entry.status is EntryStatus.FAILED:
            raise _step_error(step.name, seq, entry.error or {})
        input_json = dumps(
            {"args": args, "kwargs": kwargs} if kwargs else {"args": args},
            what=f"arguments of step {step.name!r}",
        )
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
            if failure is None:
                record = NewEntry(
                    seq,
                    "step",
                    step.name,
                    "completed",
                    input_json,
                    output_json,
                    None,
                    started,
                    time.time(),
                    attempts,
                )
            else:
                error = _error_dict(failure)
                record = NewEntry(
                    seq,
                    "step",
                    step.name,
                    "failed",
                    input_json,
                    None,
                    json.dumps(error),
                    started,
                    time.time(),
                    attempts,
                )
            await self._write(record)
        finally:
            self._end()
        if failure is not None:
            raise _step_error(step.name, seq, _error_dict(failure)) from failure
        if type(value) in _JSON_SCALARS:  # its JSON round trip is the identity
            return decode(value, step.return_type)
        return decode(json.loads(output_json), step.return_type)

    # -- recorded non-determinism -------------------------------------------------------
    def now(self) -> Awaitable[datetime]:
        """The current time, recorded: replay returns the same instant."""
        seq, entry = self._next("now", "now")
        return self._recorded(seq, entry, "now", time.time, _to_datetime)

    def uuid(self) -> Awaitable[_uuid.UUID]:
        """A random UUID (version 4), recorded: replay returns the same one."""
        seq, entry = self._next("uuid", "uuid")
        return self._recorded(seq, entry, "uuid", lambda: str(_uuid.uuid4()), _uuid.UUID)

    def random(self) -> Awaitable[float]:
        """A random float in [0, 1), recorded: replay returns the same one."""
        seq, entry = self._next("random", "random")
        return self._recorded(seq, entry, "random", _random.random, float)

    async def _recorded(
        self, seq: int, entry: JournalEntry | None, kind: str, make: Any, convert: Any
    ) -> Any:
        if entry is not None:
            return convert(entry.output)
        self._begin()
        try:
            value = make()
            now = time.time()
            await self._write(
                NewEntry(seq, kind, kind, "completed", None, json.dumps(value), None, now, now)
            )
        finally:
            self._end()
        return convert(value)

    # -- durable waits ------------------------------------------------------------------
    def sleep(self, seconds: float) -> Awaitable[None]:
        """Sleep durably: the wake-up time is recorded, so a restart neither restarts nor
        shortens the wait. The run holds no thread or memory while it sleeps."""
        if not isinstance(seconds, int | float) or seconds != seconds:
            raise TypeError(f"ctx.sleep() takes seconds as a number, not {seconds!r}")
        seq, entry = self._next("sleep", "sleep")
        return self._sleep(seq, entry, float(seconds))

    async def _sleep(self, seq: int, entry: JournalEntry | None, seconds: float) -> None:
        if entry is not None and entry.status is EntryStatus.COMPLETED:
            return
        if entry is None:
            wake_at = time.time() + max(0.0, seconds)
            await self._record(seq, "sleep", "sleep", "waiting", {"seconds": seconds}, wake_at)
        else:
            wake_at = float(entry.output)
        if time.time() >= wake_at:
            await self._record(seq, "sleep", "sleep", "completed", None, wake_at)
            return
        await self._block(_Wait(seq, wake_at=wake_at))

    def wait_signal(self, name: str, timeout: float | None = None) -> Awaitable[Any]:
        """Wait for the next signal ``name`` sent to this run (``app.signal``). Signals sent
        before the wait are kept in the run's mailbox and consumed in order. Raises
        :class:`SignalTimeoutError` after ``timeout`` seconds, measured durably."""
        if not isinstance(name, str) or not name:
            raise TypeError("ctx.wait_signal() needs a signal name (a non-empty str)")
        seq, entry = self._next("signal", name)
        return self._wait_signal(seq, entry, name, timeout)

    async def _wait_signal(
        self, seq: int, entry: JournalEntry | None, name: str, timeout: float | None
    ) -> Any:
        if entry is not None and entry.status is EntryStatus.COMPLETED:
            return entry.output
        if entry is not None and entry.status is EntryStatus.FAILED:
            raise SignalTimeoutError(
                f"no signal {name!r} within the timeout", run_id=self.run_id, seq=seq
            )
        for signal in self._mailbox:
            if signal.name == name and signal.id not in self._taken:
                self._taken.add(signal.id)
                self._begin()
                try:
                    now = time.time()
                    await self._write(
                        NewEntry(
                            seq,
                            "signal",
                            name,
                            "completed",
                            None,
                            json.dumps(signal.value),
                            None,
                            now,
                            now,
                        ),
                        consume_signal=signal.id,
                    )
                finally:
                    self._end()
                return signal.value
        deadline: float | None = None
        if entry is None:
            deadline = None if timeout is None else time.time() + timeout
            await self._record(seq, "signal", name, "waiting", {"timeout": timeout}, deadline)
        elif entry.output is not None:
            deadline = float(entry.output)
        if deadline is not None and time.time() >= deadline:
            error = {"type": "SignalTimeoutError", "message": f"no signal {name!r}"}
            await self._record(seq, "signal", name, "failed", None, None, error)
            raise SignalTimeoutError(
                f"no signal {name!r} within the timeout", run_id=self.run_id, seq=seq
            )
        return await self._block(_Wait(seq, wake_at=deadline, signal=name))

    async def _record(
        self,
        seq: int,
        kind: str,
        name: str,
        status: str,
        input: Any,
        output: Any,
        error: dict[str, Any] | None = None,
        start_child: NewRun | None = None,
    ) -> None:
        self._begin()
        try:
            now = time.time()
            await self._write(
                NewEntry(
                    seq,
                    kind,
                    name,
                    status,
                    None if input is None else json.dumps(input),
                    None if output is None else json.dumps(output),
                    None if error is None else json.dumps(error),
                    now,
                    None if status == "waiting" else now,
                ),
                start_child=start_child,
            )
        finally:
            self._end()

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
        if entry is not None and entry.status is EntryStatus.COMPLETED:
            return decode(entry.output, wf.return_type)
        if entry is not None and entry.status is EntryStatus.FAILED:
            raise _child_error(wf.name, seq, entry.error or {})
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
        child = self._children.get(child_id)
        if child is not None and child.status.is_terminal:
            if child.status.value == "succeeded":
                result_json = json.dumps(child.result)
                self._begin()
                try:
                    now = time.time()
                    await self._write(
                        NewEntry(
                            seq, "child", wf.name, "completed", None, result_json, None, now, now
                        )
                    )
                finally:
                    self._end()
                return decode(child.result, wf.return_type)
            error = {
                "type": "ChildRunFailedError",
                "message": f"child run {child_id!r} {child.status.value}",
                "child_run_id": child_id,
                "child_status": child.status.value,
                "child_error": child.error,
            }
            await self._record(seq, "child", wf.name, "failed", None, None, error)
            raise _child_error(wf.name, seq, error)
        return await self._block(_Wait(seq, child=child_id))

    def _run_coroutine(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        context = contextvars.copy_context()
        context.run(_current.set, self)
        return asyncio.get_running_loop().create_task(coro, context=context)


_JSON_SCALARS = frozenset({str, int, float, bool, type(None)})


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
