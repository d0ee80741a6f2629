"""Edge cases found in review: each once lost work, doubled it, or left a run stuck."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from tether import App, Context, RunStatus, TetherError
from tether.storage import _procs


async def _wait_for(app: App, run_id: str, *statuses: RunStatus, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (await app.get_run(run_id)).status in statuses:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{run_id} never reached {statuses}")


async def test_a_bad_run_id_is_refused_and_spoils_no_other_write(db_url: str) -> None:
    app = App(db_url)

    @app.step
    async def one() -> int:
        return 1

    @app.workflow
    async def flow(ctx: Context) -> int:
        return await one()

    async with app:
        good = [await app.start(flow, run_id=f"good-{i}") for i in range(5)]
        with pytest.raises(TetherError, match="UTF-8"):
            await app.start(flow, run_id=os.fsdecode(b"import-\xff.csv"))
        with pytest.raises(TetherError, match="UTF-8"):
            await app.signal("good-0", os.fsdecode(b"\xfe"), 1)
        assert [await h.result(timeout=10) for h in good] == [1] * 5


async def test_shutdown_cannot_be_swallowed_by_return_exceptions(db_url: str) -> None:
    app = App(db_url, shutdown_grace=5)
    started = asyncio.Event()
    release = asyncio.Event()

    @app.step
    async def work(i: int) -> int:
        if i == 1:
            started.set()
            await release.wait()
        return i

    @app.workflow
    async def flow(ctx: Context) -> list[object]:
        await work(1)
        return list(await asyncio.gather(work(2), work(3), return_exceptions=True))

    await app.open()
    await app.start(flow, run_id="r1")
    await started.wait()
    closing = asyncio.create_task(app.close())
    await asyncio.sleep(0.05)
    release.set()
    await closing
    run = await App(db_url).get_run("r1")
    assert run.status is RunStatus.PENDING, "a checkpoint must hand the run back, not finish it"
    assert run.result is None


async def test_runs_started_just_before_exit_are_handed_back_not_stranded(db_url: str) -> None:
    def build() -> App:
        app = App(db_url, lease_seconds=30)

        @app.step
        async def one() -> int:
            return 1

        @app.workflow
        async def flow(ctx: Context) -> int:
            return await one()

        return app

    app = build()
    async with app:
        await app.start("flow", run_id="r1")
    run = await App(db_url).get_run("r1")
    assert run.lease_owner is None, "no lease may outlive its worker"
    app2 = build()
    started = time.monotonic()
    async with app2:
        assert await app2.handle("r1").result(timeout=10) == 1
    assert time.monotonic() - started < 10  # not after the 30 s lease


async def test_a_timer_fires_while_another_branch_runs_a_step(db_url: str) -> None:
    app = App(db_url)

    @app.step
    async def slow() -> str:
        await asyncio.sleep(20)  # cancelled by the workflow once the other branch wins
        return "step"

    @app.workflow
    async def race(ctx: Context) -> str:
        async def timer() -> str:
            await ctx.sleep(0.2)
            return "timer"

        done, pending = await asyncio.wait(
            [asyncio.ensure_future(timer()), asyncio.ensure_future(slow())],
            return_when=asyncio.FIRST_COMPLETED,
        )
        for task in pending:
            task.cancel()
        return str(next(iter(done)).result())

    async with app:
        began = time.monotonic()
        assert await (await app.start(race)).result(timeout=10) == "timer"
        assert time.monotonic() - began < 10  # not after the 20 s step


async def test_a_signal_reaches_a_branch_while_another_runs_a_step(db_url: str) -> None:
    app = App(db_url)

    @app.step
    async def slow() -> str:
        await asyncio.sleep(20)  # cancelled by the workflow once the other branch wins
        return "step"

    @app.workflow
    async def race(ctx: Context) -> str:
        async def stop() -> str:
            return str(await ctx.wait_signal("stop"))

        done, pending = await asyncio.wait(
            [asyncio.ensure_future(stop()), asyncio.ensure_future(slow())],
            return_when=asyncio.FIRST_COMPLETED,
        )
        for task in pending:
            task.cancel()
        return str(next(iter(done)).result())

    async with app:
        handle = await app.start(race, run_id="r1")
        await asyncio.sleep(0.2)
        began = time.monotonic()
        await app.signal("r1", "stop", "halt")
        assert await handle.result(timeout=10) == "halt"
        assert time.monotonic() - began < 10  # not after the 20 s step


async def test_nondeterminism_caught_by_the_workflow_still_stops_the_run(db_url: str) -> None:
    app1 = App(db_url)

    @app1.step
    async def lookup(x: int) -> int:
        return x

    @app1.workflow
    async def flow(ctx: Context) -> int:
        await lookup(1)
        await ctx.wait_signal("go")
        return 0

    async with app1:
        await app1.start(flow, run_id="r1")
        await _wait_for(app1, "r1", RunStatus.WAITING)

    app2 = App(db_url)

    @app2.step(name="lookup_v2")
    async def lookup2(x: int) -> int:
        return x

    @app2.workflow(name="flow")
    async def flow2(ctx: Context) -> int:
        try:
            await lookup2(1)
        except Exception:  # a broad except must not hide the divergence
            pass
        await ctx.sleep(0.1)
        return 1

    async with app2:
        await app2.signal("r1", "go")
        await _wait_for(app2, "r1", RunStatus.NEEDS_ATTENTION)
        run = await app2.get_run("r1")
        assert run.error is not None and run.error["type"] == "NondeterminismError"
        assert [e.kind for e in await app2.get_journal("r1")] == ["step", "signal"]


async def test_a_workflow_that_cancels_itself_fails_instead_of_looping(db_url: str) -> None:
    app = App(db_url, poll_interval=0.02)
    executions = 0

    @app.workflow
    async def flow(ctx: Context) -> int:
        nonlocal executions
        executions += 1
        raise asyncio.CancelledError()

    async with app:
        await app.start(flow, run_id="r1")
        await _wait_for(app, "r1", RunStatus.FAILED)
        await asyncio.sleep(0.2)
    assert executions == 1


def test_liveness_of_processes() -> None:
    me = os.getpid()
    assert _procs.alive(me, _procs.pid_start(me))
    assert not _procs.alive(me, "not-my-start-time")  # the pid was reused
    assert not _procs.alive(2**22 + 12345, "")  # no such process


async def test_a_worker_that_reclaims_its_own_expired_run_does_not_hand_it_back_in_a_loop(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The heartbeat stalls once past the lease: the worker's own claim loop takes the run
    again and stops the old execution. That execution must not hand back the new claim
    (same worker, status running), or the run is claimed, handed back and restarted
    forever."""
    from tether.engine import _worker

    original = _worker.Worker._heartbeat

    async def stalled_once(self: _worker.Worker) -> None:
        await asyncio.sleep(1.6)
        await original(self)

    monkeypatch.setattr(_worker.Worker, "_heartbeat", stalled_once)
    app = App(db_url, lease_seconds=1.0, poll_interval=0.05)
    calls: list[float] = []

    @app.step
    async def work(i: int) -> int:
        calls.append(time.time())
        await asyncio.sleep(2.5)
        return i

    @app.workflow
    async def flow(ctx: Context) -> int:
        return await work(1)

    async with app:
        handle = await app.start(flow, run_id="r1")
        assert await handle.result(timeout=20) == 1
    assert 1 <= len(calls) <= 2, f"the step started {len(calls)} times"
