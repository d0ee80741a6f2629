"""Retry in place: a failed or stopped run restarts from a chosen seq after a code fix,
keeping its prefix, recording the restart, and never making an irreversible call twice."""

from __future__ import annotations

from typing import Any

import pytest
from test_effects import wait_status

from tether import App, Context, Effect, ForkError, RunStateError, RunStatus

POLL = 0.05


class World:
    def __init__(self) -> None:
        self.broken = True
        self.calls: list[str] = []


def build(db_url: str, world: World) -> App:
    app = App(db_url, poll_interval=POLL)

    @app.tool(effect=Effect.READ)
    async def lookup(order: str) -> int:
        world.calls.append(f"lookup {order}")
        return 40

    @app.tool(effect=Effect.IDEMPOTENT)
    async def reserve(order: str, *, idempotency_key: str) -> str:
        world.calls.append(f"reserve {order} {idempotency_key[:6]}")
        return "reserved"

    @app.tool(effect=Effect.IRREVERSIBLE)
    async def charge(cents: int) -> str:
        world.calls.append(f"charge {cents}")
        return f"charged {cents}"

    @app.step
    async def price(cents: int) -> int:
        if world.broken:
            raise ValueError("the price table is missing")
        return cents + 2

    @app.workflow
    async def checkout(ctx: Context, order: str) -> str:
        cents = await lookup(order)
        await reserve(order)
        total = await price(cents)
        return await charge(total)

    @app.workflow
    async def charged_then_broken(ctx: Context, order: str) -> int:
        await charge(10)
        return await price(1)

    @app.workflow
    async def signalled(ctx: Context, order: str) -> str:
        go = await ctx.wait_signal("go")
        await price(1)
        return f"go {go}"

    return app


async def test_a_failed_run_retried_from_its_failing_step_finishes(db_url: str) -> None:
    world = World()
    app = build(db_url, world)
    async with app:
        handle = await app.start("checkout", "o-1", run_id="r")
        await wait_status(app, "r", RunStatus.FAILED)
        world.broken = False  # the code fix
        run = await app.retry("r", 3, by="ops", reason="price table restored")
        assert run.status in (RunStatus.PENDING, RunStatus.RUNNING) and run.error is None
        assert await handle.result(timeout=30) == "charged 42"
        # The prefix was kept: lookup and reserve were not made again.
        assert world.calls[:2] == ["lookup o-1", world.calls[1]]
        assert [c.split()[0] for c in world.calls] == ["lookup", "reserve", "charge"]
        (restart,) = await app.list_restarts("r")
        assert (restart["restart"], restart["from_seq"], restart["by"]) == (1, 3, "ops")
        assert restart["reason"] == "price table restored" and restart["status"] == "failed"
        assert "price table is missing" in restart["error"]["message"]
        assert restart["discarded"] == [
            {"seq": 3, "kind": "step", "name": "price", "status": "failed"}
        ]
        assert [e.seq for e in await app.get_journal("r")] == [1, 2, 3, 4]


async def test_retrying_earlier_reruns_safe_calls_with_their_keys(db_url: str) -> None:
    world = World()
    app = build(db_url, world)
    async with app:
        await app.start("checkout", "o-2", run_id="r")
        await wait_status(app, "r", RunStatus.FAILED)
        world.broken = False
        await app.retry("r", 1)
        assert await app.handle("r").result(timeout=30) == "charged 42"
        reserves = [c for c in world.calls if c.startswith("reserve")]
        assert len(reserves) == 2 and reserves[0] == reserves[1]  # the same idempotency key
        effect = await app.get_effect("r", 2)
        assert [e["event"] for e in effect.history] == ["intent", "intent"]


async def test_a_retry_that_would_charge_again_is_refused(db_url: str) -> None:
    world = World()
    app = build(db_url, world)
    async with app:
        await app.start("charged_then_broken", "o-3", run_id="r")
        before = await wait_status(app, "r", RunStatus.FAILED)
        with pytest.raises(ForkError, match=r"seq 1 \(charge, completed\); retry from seq 2"):
            await app.retry("r", 1)
        assert await app.get_run("r") == before  # refused: nothing changed
        assert await app.list_restarts("r") == []
        world.broken = False
        await app.retry("r", 2)
        assert await app.handle("r").result(timeout=30) == 3
        assert world.calls == ["charge 10"]


async def test_signals_consumed_after_the_restart_point_are_delivered_again(
    db_url: str,
) -> None:
    world = World()
    app = build(db_url, world)
    async with app:
        await app.start("signalled", "o-4", run_id="r")
        await wait_status(app, "r", RunStatus.WAITING)
        await app.signal("r", "go", "now")
        await wait_status(app, "r", RunStatus.FAILED)
        world.broken = False
        await app.retry("r", 1)
        assert await app.handle("r").result(timeout=30) == "go now"


@pytest.mark.parametrize(
    ("from_seq", "problem"), [(0, "from_seq must be a whole number"), (9, "from 1 to 4")]
)
async def test_bad_retries_say_what_to_do(db_url: str, from_seq: Any, problem: str) -> None:
    world = World()
    app = build(db_url, world)
    async with app:
        await app.start("checkout", "o-5", run_id="r")
        await wait_status(app, "r", RunStatus.FAILED)
        with pytest.raises(ForkError, match=problem):
            await app.retry("r", from_seq)
        world.broken = False
        await app.retry("r", 3)
        await app.handle("r").result(timeout=30)
        with pytest.raises(RunStateError, match="only a failed or needs_attention run"):
            await app.retry("r", 3)


async def test_a_retry_never_drops_entries_a_fork_shares(db_url: str) -> None:
    world = World()
    app = build(db_url, world)
    async with app:
        await app.start("checkout", "o-6", run_id="r")
        await wait_status(app, "r", RunStatus.FAILED)
        await app.fork("r", 3, run_id="f")  # shares lookup and reserve
        await wait_status(app, "f", RunStatus.FAILED)
        with pytest.raises(ForkError, match=r"has forks that share entries.*f \(at seq 3\)"):
            await app.retry("r", 1)
        with pytest.raises(ForkError, match="shares its entries below seq 3 with 'r'"):
            await app.retry("f", 2)
        world.broken = False
        await app.retry("f", 3)
        assert await app.handle("f").result(timeout=30) == "charged 42"
        assert [e.run_id for e in await app.get_journal("f")] == ["r", "r", "f", "f"]
