"""Concurrent branches that each make several durable calls replay exactly.

The order in which gather's branches make their later calls depends on which of their
earlier calls finished first. Replay must hand recorded results back in that same order, or
branches take each other's seqs: a NondeterminismError at best, swapped results at worst.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from tether import App, Context, EntryStatus, RunStatus


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


def _nested_app(
    url: str, executed: list[str], gates: dict[str, asyncio.Event], delays: dict[str, float]
) -> App:
    app = App(url, poll_interval=0.02, shutdown_grace=0.1, lease_seconds=2)

    @app.step
    async def hop(tag: str, value: str) -> str:
        executed.append(tag)
        await asyncio.sleep(delays.get(tag, 0.0))
        if tag in gates:
            await gates[tag].wait()  # still blocked when the App closes: cut off mid-step
        return f"{value}>{tag}"

    async def chain(ctx: Context, b: int) -> str:
        value = f"b{b}"
        for i in range(3):
            if i == 1 and b % 2 == 0:  # a gather nested inside a gather branch

                async def sub(j: int, v: str = value, i: int = i) -> str:
                    return await hop(f"{b}.{i}.{j}", v)

                value = "+".join(await asyncio.gather(sub(0), sub(1)))
            else:
                value = await hop(f"{b}.{i}", value)
            if i == 0 and b == 1:
                await ctx.now()
        return value

    @app.workflow
    async def nested(ctx: Context) -> list[str]:
        results = await asyncio.gather(*(chain(ctx, b) for b in range(3)))
        await ctx.sleep(0.02)
        return list(results)

    return app


def _nested_expected() -> list[str]:
    out = []
    for b in range(3):
        value = f"b{b}"
        for i in range(3):
            if i == 1 and b % 2 == 0:
                value = "+".join(f"{value}>{b}.{i}.{j}" for j in range(2))
            else:
                value = f"{value}>{b}.{i}"
        out.append(value)
    return out


@pytest.mark.parametrize("seed", range(20))
async def test_nested_gathers_cut_off_mid_run_resume_exactly(tmp_path: Path, seed: int) -> None:
    """Stop the worker at a random moment with some steps still running, resume in a new
    App: the run ends with the uninterrupted result and no committed step runs again."""
    rng = random.Random(seed)
    tags = [f"{b}.{i}" for b in range(3) for i in range(3)]
    tags += [f"{b}.1.{j}" for b in (0, 2) for j in range(2)]
    delays = {t: rng.choice([0, 0, 0.005, 0.01, 0.02]) for t in tags}
    url = f"sqlite:///{tmp_path}/nested.db"
    gates = {t: asyncio.Event() for t in rng.sample(tags, 3)}
    async with _nested_app(url, [], gates, delays) as app:
        await app.start("nested", run_id="r")
        await asyncio.sleep(rng.uniform(0.0, 0.05))
    executed: list[str] = []
    async with _nested_app(url, executed, {}, delays) as app2:
        committed = {
            e.input["args"][0]
            for e in await app2.get_journal("r")
            if e.kind == "step" and e.status is not EntryStatus.WAITING
        }
        result = await app2.handle("r").result(timeout=20)
    assert result == _nested_expected()
    assert not set(executed) & committed, "a committed step ran again"
