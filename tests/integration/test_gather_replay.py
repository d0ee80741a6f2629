"""Concurrent branches that each make several durable calls replay exactly.

The order in which gather's branches make their later calls depends on which of their
earlier calls finished first. Replay must hand recorded results back in that same order, or
branches take each other's seqs: a NondeterminismError at best, swapped results at worst.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from tether import App, Context, RunStatus


@pytest.mark.parametrize("seed", range(6))
async def test_multi_call_gather_branches_replay_to_the_same_result(db_url: str, seed: int) -> None:
    app = App(db_url, poll_interval=0.05)
    rng = random.Random(seed)
    delays = {(b, i): rng.uniform(0, 0.02) for b in range(4) for i in range(3)}
    executed: list[tuple[int, int]] = []

    @app.step
    async def hop(branch: int, i: int, value: str) -> str:
        executed.append((branch, i))
        await asyncio.sleep(delays.get((branch, i), 0))
        return f"{value}>{branch}.{i}"

    async def chain(ctx: Context, branch: int) -> str:
        value = f"b{branch}"
        for i in range(3):
            value = await hop(branch, i, value)
            if i == 1 and branch % 2:
                await ctx.now()  # a recorded call of another kind between steps
        return value

    @app.workflow
    async def fan(ctx: Context) -> list[str]:
        results = await asyncio.gather(*(chain(ctx, b) for b in range(4)))
        await ctx.sleep(0.01)  # parks the run: what follows is computed on replay
        tail = await hop(9, 9, "|".join(results))
        return [*results, tail]

    expected = [f"b{b}>{b}.0>{b}.1>{b}.2" for b in range(4)]
    async with app:
        handle = await app.start(fan, run_id=f"fan-{seed}")
        result = await handle.result(timeout=30)
        run = await app.get_run(f"fan-{seed}")
    assert run.status is RunStatus.SUCCEEDED, run.error
    assert result[:4] == expected
    assert result[4] == "|".join(expected) + ">9.9"
    assert sorted(executed) == sorted({*delays, (9, 9)}), "a recorded step ran again"
