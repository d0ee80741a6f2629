"""The worker: claims runnable runs, holds their leases, and hands them back on shutdown.

One worker runs inside every open App (``async with app``) and in ``tether worker``. It
claims at once on start, so runs interrupted by a crash resume without a polling delay; a
lease held by a dead process on this host (same host and boot id, pid gone) is taken over
at once, and any other expired lease as soon as it expires.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
import uuid
from typing import TYPE_CHECKING

from .._errors import StorageError, UnknownWorkflowError
from .._records import RunStatus
from ..storage import Fence, Store, WorkerInfo
from ..storage import _procs as procs
from ._context import Context
from ._executor import Outcome, execute_run

if TYPE_CHECKING:
    from ._app import App

__all__ = ["Worker"]

log = logging.getLogger("tether.worker")

CLAIM_BATCH = 50


class Worker:
    def __init__(
        self,
        app: App,
        store: Store,
        *,
        lease_seconds: float,
        max_concurrency: int,
        poll_interval: float,
        shutdown_grace: float,
    ) -> None:
        self.app = app
        self.store = store
        self.lease_seconds = lease_seconds
        self.max_concurrency = max_concurrency
        self.poll_interval = poll_interval
        self.shutdown_grace = shutdown_grace
        pid = os.getpid()
        self.info = WorkerInfo(
            worker_id=uuid.uuid4().hex,
            host=procs.host(),
            boot_id=procs.boot_id(),
            pid=pid,
            pid_start=procs.pid_start(pid),
        )
        self.active: dict[str, asyncio.Task[str]] = {}
        self.contexts: dict[str, Context] = {}
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._last_expiry = 0.0
        self._last_unknown_check = 0.0
        self._warned: set[str] = set()
        # When the claim loop next looks on its own (epoch seconds); infinite while it is
        # looking, so that nothing announced meanwhile is missed.
        self._deadline = math.inf
        # What next_wake_at last said, and when (monotonic): see _next_wake.
        self._due: float | None = None
        self._due_read = -math.inf
        self.claimed = 0

    @property
    def worker_id(self) -> str:
        return self.info.worker_id

    async def start(self) -> None:
        await self.store.register_worker(self.info)
        await self._expire_dead()
        await self._claim()  # at once: interrupted runs resume without waiting for a poll
        self._tasks = [
            asyncio.create_task(self._loop(), name="tether-claim"),
            asyncio.create_task(self._heartbeat(), name="tether-heartbeat"),
        ]

    def wake(self) -> None:
        self._wakeup.set()

    def on_event(self, kind: str, value: str) -> None:
        """What another process announced (see ``Store.subscribe``)."""
        if kind == "run":
            if value in self.app.workflows:
                self.wake()
        elif kind == "timer":
            wake_at, _, workflow = value.partition(":")
            try:
                due = float(wake_at)
            except ValueError:
                return
            if workflow in self.app.workflows:
                if self._due is None or due < self._due:
                    self._due = due
                if due < self._deadline:
                    self.wake()  # sooner than the loop meant to look: look again
        elif kind == "signal":
            self.poke(value)
        elif kind == "cancel":
            self.cancel_local(value)
        elif kind == "connected":
            self._due_read = -math.inf  # timers announced meanwhile may have been missed
            self.wake()  # announcements may have been missed while disconnected

    def poke(self, run_id: str) -> None:
        """A signal arrived for a run: if it executes here, let it look at once."""
        ctx = self.contexts.get(run_id)
        if ctx is not None:
            ctx.refresh_soon()

    def cancel_local(self, run_id: str) -> None:
        """The run was cancelled or its lease lost: stop executing it here."""
        ctx = self.contexts.get(run_id)
        if ctx is not None:
            ctx.closed = True
            ctx.taken = True
        task = self.active.get(run_id)
        if task is not None:
            task.cancel()

    async def _expire_dead(self) -> None:
        self._last_expiry = time.monotonic()
        try:
            expired = await self.store.expire_dead_local_workers(self.info)
        except StorageError as exc:
            log.warning("cannot check for dead workers: %s", exc)
            return
        if expired:
            log.info("took over %d run(s) from dead local worker(s)", expired)

    async def _claim(self) -> bool:
        """Claim what there is room for; return whether the batch was full (one that was
        not took every run there was to take)."""
        room = self.max_concurrency - len(self.active)
        if room <= 0 or self._stopping:
            return False
        if time.monotonic() - self._last_expiry > 1.0:
            await self._expire_dead()
        # Only workflows this App has: during a rolling deploy, a run of a workflow that
        # only the new version knows waits for a new worker instead of failing here.
        # Where one notification wakes every worker (PostgreSQL), claim at most CLAIM_BATCH
        # at a time: the loop comes straight back for more, and the other workers get
        # their share meanwhile. Elsewhere, take all there is room for (bigger batches).
        limit = min(room, CLAIM_BATCH) if self.store.notifies else room
        fences = await self.store.claim_runs(
            self.worker_id, limit, self.lease_seconds, frozenset(self.app.workflows)
        )
        for fence in fences:
            self.claimed += 1
            task = asyncio.create_task(self._execute(fence), name=f"tether-run-{fence.run_id}")
            stale = self.active.get(fence.run_id)
            if stale is not None:
                # Our own lease expired while this process stalled and we re-claimed the
                # run: the old execution's writes would be rejected anyway; stop it.
                self.cancel_local(fence.run_id)
            self.active[fence.run_id] = task
        return len(fences) >= limit

    async def _execute(self, fence: Fence) -> str:
        outcome = Outcome.ABANDONED
        try:
            outcome = await execute_run(
                self.app, self.store, fence, self.contexts, lambda: self._stopping
            )
            return outcome
        except asyncio.CancelledError:
            return Outcome.ABANDONED
        except Exception as exc:
            # A bug in Tether, not in the workflow: stop the run for a person rather than
            # leave it leased and stuck.
            log.exception("run %s: engine error", fence.run_id)
            try:
                await self.store.finish_run(
                    fence,
                    RunStatus.NEEDS_ATTENTION,
                    error_json=json.dumps(
                        {"type": "EngineError", "message": f"{type(exc).__name__}: {exc}"}
                    ),
                )
            except StorageError:
                pass
            return Outcome.ABANDONED
        finally:
            if self.active.get(fence.run_id) is asyncio.current_task():
                del self.active[fence.run_id]
            if outcome == Outcome.RELEASE:
                try:
                    await self.store.release_runs(self.worker_id, [fence.run_id])
                except StorageError as exc:
                    log.warning("run %s: could not hand back (%s)", fence.run_id, exc)
            self.app._notify(fence.run_id)
            # Claim again if a slot was wanted, or a parent of this run may have been woken
            # (PostgreSQL announces that to every worker; SQLite cannot).
            if len(self.active) + 1 >= self.max_concurrency or not self.store.notifies:
                self._wakeup.set()

    async def _loop(self) -> None:
        backoff = 0.0
        while not self._stopping:
            self._deadline = math.inf
            try:
                full = await self._claim()
                backoff = 0.0
                if self._stopping:
                    break
                if full and len(self.active) < self.max_concurrency:
                    continue  # a whole batch: there may be more
                timeout = self.poll_interval
                if len(self.active) < self.max_concurrency:
                    # (At capacity a due timer cannot be claimed anyway: wait for a slot.)
                    next_wake = await self._next_wake()
                    if next_wake is not None:
                        timeout = max(0.0, min(timeout, next_wake - time.time() + 0.001))
                await self._warn_unknown_workflows()
            except StorageError as exc:
                backoff = min(2.0, max(0.1, backoff * 2))
                log.warning("claiming failed (%s); retrying in %.1f s", exc, backoff)
                timeout = backoff
            self._deadline = time.time() + timeout
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
            # cancellation that arrives as the event is set, and the loop would go on.
            try:
                async with asyncio.timeout(timeout):
                    await self._wakeup.wait()
            except TimeoutError:
                pass
            self._wakeup.clear()

    async def _next_wake(self) -> float | None:
        """When a timer or a lease next falls due. Where the store announces every timer
        set (PostgreSQL), the last read stays good until what it found falls due, or for
        a poll interval (half a lease, if shorter): timers set since arrive through
        on_event, which folds them in, and a lease taken since is found by the read after
        (the loop looks again when the read is that old). So a claim costs no read of
        its own."""
        fresh = min(self.poll_interval, self.lease_seconds / 2)
        age = time.monotonic() - self._due_read
        if not (
            self.store.notifies and age < fresh and (self._due is None or self._due > time.time())
        ):
            self._due_read = time.monotonic()
            self._due = None  # timers announced during the read are folded in meanwhile
            due = await self.store.next_wake_at(frozenset(self.app.workflows))
            if due is not None and (self._due is None or due < self._due):
                self._due = due
            age = 0.0
        # Look again when the read is due a refresh: a lease taken since (by any worker
        # with a lease at least as long) cannot expire before then.
        refresh = time.time() + max(0.0, fresh - age)
        return refresh if self._due is None else min(self._due, refresh)

    async def _warn_unknown_workflows(self) -> None:
        now = time.monotonic()
        if now - self._last_unknown_check < 10.0:
            return
        self._last_unknown_check = now
        names = await self.store.pending_workflows()
        for name in sorted(names - set(self.app.workflows) - self._warned):
            self._warned.add(name)
            log.warning(
                "%s",
                UnknownWorkflowError(
                    f"runs of workflow {name!r} are pending, but this worker does not register "
                    "it; they wait for a worker that does (register it with @app.workflow in "
                    "the module the worker imports)",
                    workflow=name,
                ),
            )

    async def _heartbeat(self) -> None:
        interval = self.lease_seconds / 3
        # Runs until stop() cancels it, after the grace period: leases held by steps that
        # are finishing must not expire under them.
        while True:
            await asyncio.sleep(interval)
            before = set(self.contexts)
            try:
                held = await self.store.heartbeat(
                    self.worker_id, sorted(before), self.lease_seconds
                )
            except StorageError as exc:
                log.warning("heartbeat failed: %s", exc)
                continue
            for run_id in before & set(self.contexts):
                # Only runs we held before the heartbeat and are still executing: a run
                # claimed or finished meanwhile is not a lost lease.
                if run_id not in held:
                    log.warning("run %s: lease lost or run cancelled; stopping it", run_id)
                    self.cancel_local(run_id)

    async def stop(self) -> None:
        """Stop claiming; let steps in flight finish and commit (up to the grace period);
        stop every run at its next durable call; hand the runs back for another worker."""
        self._stopping = True
        self._wakeup.set()
        claim_loop, heartbeat = self._tasks or (None, None)
        if claim_loop is not None:
            # Not cancelled: a claim being committed right now must be seen through, or
            # its runs would stay leased by a worker that is gone.
            try:
                await claim_loop
            except asyncio.CancelledError:
                if not claim_loop.cancelled():  # we are being cancelled ourselves
                    raise
            except Exception:
                log.exception("claim loop failed")
        for ctx in self.contexts.values():
            ctx.draining = True
        if self.active:
            _, pending = await asyncio.wait(list(self.active.values()), timeout=self.shutdown_grace)
            leftover = [t.get_name().removeprefix("tether-run-") for t in pending]
            for run_id in leftover:
                self.cancel_local(run_id)
            if pending:
                await asyncio.wait(pending)
            try:
                await self.store.release_runs(self.worker_id, leftover)
            except StorageError as exc:
                log.warning("could not hand back runs at shutdown: %s", exc)
        # The heartbeat ran through the grace period, so no lease expired under a step
        # that was finishing.
        if heartbeat is not None:
            heartbeat.cancel()
            try:
                await heartbeat
            except (asyncio.CancelledError, Exception):
                pass
        try:
            await self.store.unregister_worker(self.worker_id)
        except StorageError as exc:
            log.warning("could not unregister worker: %s", exc)
