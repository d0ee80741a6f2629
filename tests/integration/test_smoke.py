from __future__ import annotations

import asyncio

from tether import App, Context, RunStatus


async def test_steps_sleep_and_signal_end_to_end(db_url: str) -> None:
    app = App(db_url)
    calls: list[int] = []

    @app.step
    async def add(x: int, y: int) -> int:
        calls.append(x)
        return x + y

    @app.workflow
    async def flow(ctx: Context, n: int) -> int:
        total = 0
        for i in range(n):
            total = await add(total, i)
        await ctx.sleep(0.05)
        bonus = await ctx.wait_signal("bonus")
        return int(total + bonus)

    async with app:
        handle = await app.start(flow, 4, run_id="r1")
        for _ in range(200):
            if (await app.get_run("r1")).status is RunStatus.WAITING and len(calls) == 4:
                break
            await asyncio.sleep(0.01)
        await app.signal("r1", "bonus", 10)
        assert await handle.result(timeout=10) == 16
        run = await app.get_run("r1")
        assert run.status is RunStatus.SUCCEEDED
        assert run.result == 16
    assert len(calls) == 4
