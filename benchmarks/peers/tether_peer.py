"""The peer workloads (see ``_harness.py``) on Tether: ``@app.step`` steps in an
``@app.workflow``, the worker in the same process as the caller."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h

from tether import App, Context, RunStatus


def url_of(args: h.Args) -> str:
    if args.backend == "sqlite":  # WAL is the store's only mode; FULL said explicitly
        return f"sqlite:///{Path(args.db).resolve()}?synchronous=FULL"
    return args.db


def build(args: h.Args, *, max_concurrency: int = 100) -> tuple[App, Any]:
    app = App(url_of(args), max_concurrency=max_concurrency)
    log = args.log

    @app.step
    async def work(i: int) -> int:
        if args.pace:
            await asyncio.sleep(args.pace)
        if log is not None:
            h.log_step(log, i)
        return i + 1

    @app.workflow
    async def steps(ctx: Context, n: int) -> int:
        total = 0
        for i in range(n):
            total += await work(i)
        return total

    @app.workflow
    async def waiter(ctx: Context) -> int:
        return int(await ctx.wait_signal("go"))

    return app, (steps, waiter)


def figures(app: App, **more: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"versions": h.versions("tether")}
    conn = getattr(app.store, "conn", None)
    if conn is not None:
        out["sqlite_pragmas"] = h.sqlite_pragmas(conn)
    out.update(more)
    return out


def expected(n: int) -> int:
    return n * (n + 1) // 2


async def _step(args: h.Args) -> dict[str, Any]:
    no_pace = dataclasses.replace(args, pace=0.0)
    app, (steps, _) = build(no_pace)
    times: list[float] = []
    async with app:
        for i in range(args.warmup + args.repeats):
            t0 = time.perf_counter()
            result = await (await app.start(steps, args.steps)).result(timeout=600)
            elapsed = time.perf_counter() - t0
            assert result == expected(args.steps), result
            if i >= args.warmup:
                times.append(elapsed * 1000)
        return figures(
            app,
            per_step_ms=h.median(times) / args.steps,
            runs_ms=times,
        )


async def _round(app: App, steps: Any, runs: int, n: int, limit: int) -> float:
    gate = asyncio.Semaphore(limit)

    async def one() -> None:
        async with gate:
            result = await (await app.start(steps, n)).result(timeout=600)
            assert result == expected(n), result

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(runs)))
    return time.perf_counter() - t0


async def _throughput(args: h.Args) -> dict[str, Any]:
    no_pace = dataclasses.replace(args, pace=0.0)
    app, (steps, _) = build(no_pace, max_concurrency=max(args.concurrency, 1))
    async with app:
        await _round(app, steps, min(args.runs, 50), args.steps, args.concurrency)
        seconds = await _round(app, steps, args.runs, args.steps, args.concurrency)
        return figures(
            app,
            steps_per_s=args.runs * args.steps / seconds,
            seconds=seconds,
            runs=args.runs,
            steps=args.steps,
            concurrency=args.concurrency,
        )


async def _victim(args: h.Args) -> None:
    app, (steps, _) = build(args)
    async with app:
        await (await app.start(steps, args.steps, run_id=args.run_id)).result(timeout=600)
    raise SystemExit("the victim should have been killed")


async def _recover(args: h.Args) -> dict[str, Any]:
    app, _ = build(args)
    launched = time.time()
    async with app:  # the worker takes the dead process's run over when its lease expires
        result = await app.handle(args.run_id).result(timeout=600)
        done = time.time()
        return figures(
            app, launched_s=launched, done_s=done, result_ok=result == expected(args.steps)
        )


async def _recorded(args: h.Args) -> dict[str, Any]:
    app = App(url_of(args))
    await app.open(worker=False)  # reads only: no worker to take the run over
    try:
        entries = await app.store.list_entries(args.run_id)
        done = sum(1 for e in entries if e.kind == "step" and e.status.value == "completed")
        return figures(app, recorded=done)
    finally:
        await app.close()


async def _waiting(args: h.Args) -> dict[str, Any]:
    app, (_, waiter) = build(args, max_concurrency=100)
    async with app:
        baseline = (h.rss_mb(), h.os_threads())
        gate = asyncio.Semaphore(h.WAIT_CALLERS)

        async def start(i: int) -> Any:
            async with gate:
                return await app.start(waiter, run_id=f"w{i}")

        async def send(i: int) -> None:
            async with gate:
                await app.signal(f"w{i}", "go", 1)

        t0 = time.perf_counter()
        handles = await asyncio.gather(*(start(i) for i in range(args.runs)))
        # The database says when every run waits: poll it.
        while (await app.store.count_runs()).get(RunStatus.WAITING.value, 0) < args.runs:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        started = time.perf_counter() - t0
        waiting = (h.rss_mb(), h.os_threads())
        t1 = time.perf_counter()
        await asyncio.gather(*(send(i) for i in range(args.runs)))
        results = await asyncio.gather(*(handle.result(timeout=600) for handle in handles))
        woke = time.perf_counter() - t1
        assert sum(results) == args.runs
        return figures(
            app,
            baseline_rss_mb=baseline[0],
            baseline_threads=baseline[1],
            waiting_rss_mb=waiting[0],
            waiting_threads=waiting[1],
            start_s=started,
            wake_s=woke,
        )


def sync(coro: Any) -> Any:
    return lambda args: asyncio.run(coro(args))


if __name__ == "__main__":
    sys.exit(
        h.main(
            {
                "step": sync(_step),
                "throughput": sync(_throughput),
                "victim": sync(_victim),
                "recover": sync(_recover),
                "recorded": sync(_recorded),
                "waiting": sync(_waiting),
            }
        )
    )
