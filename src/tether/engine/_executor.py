"""Executing one claimed run: replay from the journal, then finish, suspend or hand back."""

from __future__ import annotations

import asyncio
import json
import logging
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._errors import NondeterminismError, SerializationError, StorageError, TetherError
from .._records import RunStatus
from .._serde import dumps
from ..storage import Fence, InDoubt, Store
from ._context import Context
from ._control import Abandon, Checkpoint, Suspended

if TYPE_CHECKING:
    from ._app import App

__all__ = ["Outcome", "execute_run"]

log = logging.getLogger("tether.engine")


class Outcome:
    FINISHED = "finished"  # succeeded, failed or needs_attention: written
    SUSPENDED = "suspended"  # waiting: written
    RELEASE = "release"  # hand the run back (shutdown): the worker writes it
    ABANDONED = "abandoned"  # lease lost or storage failed: nothing more to write


async def execute_run(
    app: App,
    store: Store,
    fence: Fence,
    contexts: dict[str, Context],
    draining: Callable[[], bool] = lambda: False,
) -> str:
    try:
        state = await store.load_state(fence.run_id)
    except StorageError:
        log.exception("run %s: cannot load its journal", fence.run_id)
        return Outcome.ABANDONED
    try:
        definition = app._definition(state.run.workflow)
        args, kwargs = app._decode_args(definition, state.run.args)
    except TetherError as exc:
        await _finish(store, fence, RunStatus.NEEDS_ATTENTION, error=exc.to_dict())
        return Outcome.FINISHED

    ctx = Context(app, fence, state, store)
    ctx.draining = draining()  # a run claimed just as the worker began to stop
    contexts[fence.run_id] = ctx
    try:
        try:
            coro = definition.fn(ctx, *args, **kwargs)
        except TypeError as exc:  # stored arguments no longer fit the signature
            error = {"type": "TypeError", "message": f"workflow {definition.name!r}: {exc}"}
            return await _finish(store, fence, RunStatus.FAILED, error=error)
        task = ctx._run_coroutine(coro)
        try:
            await asyncio.wait({task, ctx._quiescent}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            await _stop(ctx, task)
            raise
        if task.done() or ctx.engine_exit is not None or ctx.fatal is not None:
            if ctx.keeps_results:
                # The run ends or stops here, but calls of other branches may be in flight:
                # no new call starts, and what those do is recorded before the run is
                # finished or handed back (a known result is never left for a person).
                ctx.ending = True
                try:
                    await ctx.settle(app.shutdown_grace)
                except asyncio.CancelledError:  # the worker gave up waiting (shutdown)
                    await _stop(ctx, task)  # the workflow's branches end before the run does
                    raise
            if not task.done():
                await _stop(ctx, task)
            return await _conclude(app, store, fence, ctx, task)
        # Every branch is blocked on a durable wait: park the run.
        return await _suspend(store, fence, ctx, task)
    finally:
        # Branches the workflow spawned and left behind must not outlive the run: they
        # are cancelled and waited for (a branch in an irreversible call waits for its
        # thread), so the run is never handed on while one of its calls may still act.
        ctx.closed = True
        orphans = [t for t in ctx._tasks if not t.done()]
        for orphan in orphans:
            orphan.cancel()
        if orphans:
            await _reap(orphans)
        if contexts.get(fence.run_id) is ctx:
            del contexts[fence.run_id]
        parent = contexts.get(state.run.parent_run_id or "")
        if parent is not None:  # the parent runs here: let it see this child's end now
            parent.refresh_soon()


async def _reap(tasks: list[asyncio.Task[Any]]) -> None:
    """Wait for cancelled tasks to end, even if this task is cancelled meanwhile (and then
    re-raise that cancellation)."""
    cancelled = False
    pending = set(tasks)
    while pending:
        try:
            _, pending = await asyncio.wait(pending)
        except asyncio.CancelledError:
            cancelled = True
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved: the run is over, so nobody else will
    if cancelled:
        raise asyncio.CancelledError()


async def _stop(ctx: Context, task: asyncio.Task[Any]) -> None:
    ctx.closed = True
    task.cancel()
    try:
        await task
    except BaseException:  # the workflow's own cleanup may raise anything: it is moot now
        pass


async def _suspend(store: Store, fence: Fence, ctx: Context, task: asyncio.Task[Any]) -> str:
    waits = ctx.waits()  # before stopping: a stopped branch forgets its wait
    await _stop(ctx, task)
    timers = [w.wake_at for w in waits if w.wake_at is not None]
    try:
        await store.suspend_run(
            fence,
            wake_at=min(timers) if timers else None,
            signal_names=frozenset(w.signal for w in waits if w.signal),
            child_ids=frozenset(w.child for w in waits if w.child),
        )
    except StorageError as exc:
        log.warning("run %s: could not suspend (%s)", fence.run_id, exc)
        return Outcome.ABANDONED
    return Outcome.SUSPENDED


async def _conclude(
    app: App, store: Store, fence: Fence, ctx: Context, task: asyncio.Task[Any]
) -> str:
    if not task.cancelled():
        task.exception()  # retrieved here, whatever follows, so asyncio does not log it
    # The engine's own reasons come first: a workflow may have swallowed them (for
    # example with gather(..., return_exceptions=True)) and "finished" regardless.
    if isinstance(ctx.engine_exit, Checkpoint):
        return Outcome.RELEASE
    if ctx.engine_exit is not None:
        return Outcome.ABANDONED
    exc: BaseException | None
    if task.cancelled():
        if ctx.fatal is None and ctx.closed:
            return Outcome.ABANDONED
        if ctx.fatal is None:
            # The workflow cancelled itself (an asyncio mistake, not ours): fail it
            # rather than leave it to be claimed again and again.
            error = {"type": "CancelledError", "message": "the workflow task was cancelled"}
            return await _finish(store, fence, RunStatus.FAILED, error=error)
        exc = None
    else:
        exc = task.exception()
    if isinstance(exc, Abandon | Suspended) and ctx.fatal is None:
        return Outcome.ABANDONED
    if isinstance(exc, Checkpoint):
        return Outcome.RELEASE
    if ctx.fatal is None and exc is None:
        beyond = sorted(seq for seq in ctx._entries if seq > ctx.seq)
        if beyond:
            entry = ctx._entries[beyond[0]]
            ctx.fatal = NondeterminismError(
                f"run {ctx.run_id!r}: the workflow returned after seq {ctx.seq}, but the "
                f"journal records {entry.kind} {entry.name!r} at seq {entry.seq}; the "
                "workflow code changed under a running run",
                run_id=ctx.run_id,
                seq=entry.seq,
                recorded={"kind": entry.kind, "name": entry.name},
                expected=None,
            )
    if ctx.fatal is not None:
        fields = {k: v for k, v in ctx.fatal.fields.items() if k != "run_id"}
        error = ctx.fatal.to_dict() | fields
        # A changed workflow is a bug; a call in doubt or a budget reached is a person's turn.
        bug = isinstance(ctx.fatal, NondeterminismError)
        log.log(logging.ERROR if bug else logging.WARNING, "%s", ctx.fatal)
        return await _finish(
            store, fence, RunStatus.NEEDS_ATTENTION, error=error, in_doubt=ctx.in_doubt
        )
    if exc is not None:
        error = {
            "type": type(exc).__name__,
            "message": str(exc),
            "traceback": "".join(traceback.format_exception(exc)),
        }
        if isinstance(exc, TetherError):
            error["code"] = exc.code
        return await _finish(store, fence, RunStatus.FAILED, error=error)
    try:
        result_json = dumps(task.result(), what=f"return value of workflow {ctx.workflow!r}")
    except SerializationError as err:
        return await _finish(store, fence, RunStatus.FAILED, error=err.to_dict())
    return await _finish(store, fence, RunStatus.SUCCEEDED, result_json=result_json)


async def _finish(
    store: Store,
    fence: Fence,
    status: RunStatus,
    *,
    result_json: str | None = None,
    error: dict[str, Any] | None = None,
    in_doubt: InDoubt | None = None,
) -> str:
    try:
        await store.finish_run(
            fence,
            status,
            result_json=result_json,
            error_json=None if error is None else json.dumps(error),
            in_doubt=in_doubt,
        )
    except StorageError as exc:
        log.warning("run %s: could not record its end (%s)", fence.run_id, exc)
        return Outcome.ABANDONED
    return Outcome.FINISHED
