"""Forks: a new run from another at a journal position, sharing the prefix by reference,
never firing an effect of it again, and deciding its own calls afresh."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from test_effects import wait_effect, wait_status

from tether import (
    Agent,
    App,
    Context,
    Decision,
    Effect,
    EffectState,
    ForkError,
    RunIdConflictError,
    RunNotFoundError,
    RunStatus,
)
from tether.agent import Message, ModelRequest, ScriptedModel, ToolCall, load_request

POLL = 0.05


def build(db_url: str, fired: list[tuple[int, str]]) -> App:
    app = App(db_url, poll_interval=POLL)

    @app.step
    async def plan(n: int) -> int:
        return n * 10

    @app.tool(effect=Effect.IRREVERSIBLE)
    async def pay(amount: int, *, idempotency_key: str) -> str:
        fired.append((amount, idempotency_key))
        return f"paid {amount}"

    @app.tool(effect=Effect.IRREVERSIBLE, approval=Decision.APPROVE)
    async def wire(amount: int) -> str:
        fired.append((amount, "wire"))
        return f"wired {amount}"

    @app.step
    async def summary(text: str) -> dict[str, str]:
        return {"summary": text}

    @app.workflow
    async def order(ctx: Context, n: int) -> dict[str, str]:
        amount = await plan(n)
        receipt = await pay(amount)
        return await summary(receipt)

    @app.workflow
    async def supplier(ctx: Context, n: int) -> str:
        return await wire(await plan(n))

    @app.workflow
    async def waits(ctx: Context, n: int) -> str:
        first = await plan(n)
        go = await ctx.wait_signal("go")
        return f"{first} {go}"

    @app.workflow
    async def fan_out(ctx: Context, n: int) -> list[int]:
        return list(await asyncio.gather(*(plan(n + i) for i in range(5))))

    return app


async def test_a_fork_after_an_effect_never_fires_it_again(db_url: str) -> None:
    fired: list[tuple[int, str]] = []
    app = build(db_url, fired)
    async with app:
        done = await app.start("order", 3, run_id="p")
        assert await done.result(timeout=30) == {"summary": "paid 30"}
        fork = await app.fork("p", 3, run_id="f")  # after the payment, before the summary
        assert await fork.result(timeout=30) == {"summary": "paid 30"}
        assert fired == [(30, fired[0][1])]  # one payment across parent and fork
        effects = await app.list_effects("p") + await app.list_effects("f")
        assert [(e.run_id, e.tool) for e in effects] == [("p", "pay")]
        run = await app.get_run("f")
        assert (run.forked_from, run.fork_seq, run.workflow) == ("p", 3, "order")
        assert [r.run_id for r in await app.list_runs(forked_from="p")] == ["f"]
        assert await app.list_runs(forked_from="f") == []
        journal = await app.get_journal("f")
        # Shared by reference: the prefix rows are the parent's own, none was copied.
        assert [(e.seq, e.run_id) for e in journal] == [(1, "p"), (2, "p"), (3, "f")]


async def test_calls_after_the_fork_point_are_new_calls_with_new_keys(db_url: str) -> None:
    fired: list[tuple[int, str]] = []
    app = build(db_url, fired)
    async with app:
        await (await app.start("order", 3, run_id="p")).result(timeout=30)
        fork = await app.fork("p", 2, run_id="f")  # at the payment: it is made again
        assert await fork.result(timeout=30) == {"summary": "paid 30"}
        assert [amount for amount, _ in fired] == [30, 30]
        assert fired[0][1] != fired[1][1]  # a new idempotency key
        assert [e.run_id for e in await app.list_effects("f")] == ["f"]


async def test_the_policy_decides_a_forks_calls_anew(db_url: str) -> None:
    fired: list[tuple[int, str]] = []
    app = build(db_url, fired)
    async with app:
        await app.start("supplier", 2, run_id="p")
        await wait_effect(app, "p", 2, EffectState.AWAITING_APPROVAL)
        await app.approve("p", 2, by="alice")
        await wait_status(app, "p", RunStatus.SUCCEEDED)
        await app.fork("p", 2, run_id="f")
        held = await wait_effect(app, "f", 2, EffectState.AWAITING_APPROVAL)
        assert held.idempotency_key != (await app.get_effect("p", 2)).idempotency_key
        assert fired == [(20, "wire")]  # the parent's approval approves nothing in the fork
        await app.approve("f", 2, approved=False, by="bob")
        assert (await wait_status(app, "f", RunStatus.FAILED)).error is not None
        assert fired == [(20, "wire")]


async def test_replace_substitutes_an_output_and_continues_after_it(db_url: str) -> None:
    fired: list[tuple[int, str]] = []
    app = build(db_url, fired)
    async with app:
        await (await app.start("order", 3, run_id="p")).result(timeout=30)
        fork = await app.fork("p", 1, 7, run_id="f")  # plan said 30; now it says 7
        assert await fork.result(timeout=30) == {"summary": "paid 7"}
        assert [amount for amount, _ in fired] == [30, 7]
        again = await app.fork("f", 2, replace="paid nothing", run_id="ff")  # a fork of a fork
        assert await again.result(timeout=30) == {"summary": "paid nothing"}
        journal = await app.get_journal("ff")
        assert [(e.seq, e.run_id, e.output) for e in journal] == [
            (1, "f", 7),
            (2, "ff", "paid nothing"),
            (3, "ff", {"summary": "paid nothing"}),
        ]
        assert len(fired) == 2  # the fork of a fork paid nothing
        assert (await app.get_journal("p"))[0].output == 30  # the origin is untouched


@pytest.mark.parametrize(
    ("at_seq", "replace", "problem"),
    [
        (1, "seven", "does not fit its return type"),
        (3, {"summary": 5}, "does not fit its return type"),
        (9, None, "fork at a seq from 1 to 4"),
        (5, "x", "has no entry at seq 5 to replace"),
        (0, None, "at_seq must be a whole number >= 1"),
    ],
)
async def test_a_bad_fork_is_refused_and_stores_nothing(
    db_url: str, at_seq: int, replace: Any, problem: str
) -> None:
    app = build(db_url, [])
    async with app:
        await (await app.start("order", 3, run_id="p")).result(timeout=30)
        with pytest.raises(ForkError, match=problem):
            await app.fork("p", at_seq, replace, run_id="f")
        assert [r.run_id for r in await app.list_runs()] == ["p"]
        with pytest.raises(RunNotFoundError):
            await app.fork("nope", 1)


async def test_without_the_code_a_replacement_must_keep_the_recorded_shape(
    db_url: str,
) -> None:
    app = build(db_url, [])
    async with app:
        await (await app.start("order", 3, run_id="p")).result(timeout=30)
    desk = App(db_url)  # a process that has none of the workflow's code (a CLI, a server)
    await desk.open(worker=False)
    try:
        with pytest.raises(ForkError, match="is a JSON string, but it returned a JSON number"):
            await desk.fork("p", 1, "seven")
        with pytest.raises(ForkError, match=r"lacks the keys \['summary'\]"):
            await desk.fork("p", 3, {"note": "x"})
        run = (await desk.fork("p", 3, {"summary": "edited"}, run_id="f")).run_id
        assert (await desk.get_run(run)).status is RunStatus.PENDING
    finally:
        await desk.close()


async def test_a_run_in_progress_forks_only_below_its_unfinished_entries(db_url: str) -> None:
    app = build(db_url, [])
    async with app:
        await app.start("waits", 4, run_id="p")
        await wait_status(app, "p", RunStatus.WAITING)
        with pytest.raises(ForkError, match="the signal 'go' at seq 2 is waiting, not finished"):
            await app.fork("p", 3)
        fork = await app.fork("p", 2, run_id="f")  # shares plan(4), then waits on its own
        await wait_status(app, "f", RunStatus.WAITING)
        await app.signal("f", "go", "fork")
        assert await fork.result(timeout=30) == "40 fork"
        await app.signal("p", "go", "parent")
        assert await app.handle("p").result(timeout=30) == "40 parent"


async def test_concurrent_forks_of_one_run_are_independent(db_url: str) -> None:
    fired: list[tuple[int, str]] = []
    app = build(db_url, fired)
    async with app:
        await (await app.start("order", 1, run_id="p")).result(timeout=30)
        handles = await asyncio.gather(*(app.fork("p", 1, i, run_id=f"f{i}") for i in range(8)))
        results = await asyncio.gather(*(h.result(timeout=30) for h in handles))
        assert results == [{"summary": f"paid {i}"} for i in range(8)]
        assert sorted(amount for amount, _ in fired) == [0, 1, 2, 3, 4, 5, 6, 7, 10]
        assert len({key for _, key in fired}) == 9


async def test_a_fork_is_idempotent_on_its_run_id(db_url: str) -> None:
    app = build(db_url, [])
    async with app:
        await (await app.start("order", 1, run_id="p")).result(timeout=30)
        await (await app.start("order", 2, run_id="other")).result(timeout=30)
        first = await app.fork("p", 2, run_id="f")
        again = await app.fork("p", 2, run_id="f")
        assert first.run_id == again.run_id == "f"
        assert len(await app.list_runs()) == 3
        with pytest.raises(RunIdConflictError, match="'f' is taken by another run"):
            await app.fork("p", 3, run_id="f")
        with pytest.raises(RunIdConflictError):
            await app.fork("p", 2, run_id="other")


async def test_a_fork_of_concurrent_branches_replays_them_in_order(db_url: str) -> None:
    app = build(db_url, [])
    async with app:
        assert await (await app.start("fan_out", 1, run_id="p")).result(timeout=30) == [
            10, 20, 30, 40, 50,
        ]  # fmt: skip
        for at in (1, 3, 6):
            fork = await app.fork("p", at, run_id=f"f{at}")
            assert await fork.result(timeout=30) == [10, 20, 30, 40, 50]


async def test_a_fork_can_edit_a_model_answer_and_the_agent_goes_on_from_it(
    db_url: str,
) -> None:
    refunds: list[str] = []
    app = App(db_url, poll_interval=POLL)

    @app.tool(effect=Effect.IRREVERSIBLE)
    async def refund(order: str, *, idempotency_key: str) -> str:
        """Refund an order."""
        refunds.append(order)
        return f"refunded {order}"

    def echo(request: ModelRequest) -> str:
        return f"done after: {request.messages[-1].content}"

    model = ScriptedModel(
        [ToolCall(id="r1", name="refund", arguments={"order": "o-1"}), echo, echo, echo]
    )
    agent: Agent[str] = Agent(model, [refund], "You handle refunds.")

    @app.workflow
    async def support(ctx: Context, ticket: str) -> str:
        return (await agent.run(ctx, ticket)).output

    async with app:
        original = await (await app.start(support, "refund o-1", run_id="p")).result(timeout=30)
        assert original == 'done after: "refunded o-1"' and refunds == ["o-1"]
        first_turn = (await app.get_journal("p"))[0]
        assert first_turn.kind == "model"
        with pytest.raises(ForkError, match="is a user message"):
            await app.fork("p", 1, {"role": "user", "content": "hi"})
        fork = await app.fork("p", 1, "No refund: the order already shipped.", run_id="f")
        assert await fork.result(timeout=30) == "No refund: the order already shipped."
        assert refunds == ["o-1"]  # the fork's model answer calls no tool
        assert (await app.get_run("f")).fork_replaced
        assert not (await app.get_run("p")).fork_replaced
        edited = (await app.get_journal("f"))[0]
        assert edited.output["replaced"] is True and edited.output["usage"]["input_tokens"] == 0
        # A fork that edits the answer into another tool call makes that call, once.
        tool_call = {"role": "assistant", "tool_calls": [
            {"id": "r2", "name": "refund", "arguments": {"order": "o-2"}}]}  # fmt: skip
        other = await app.fork("p", 1, tool_call, run_id="g")
        assert await other.result(timeout=30) == 'done after: "refunded o-2"'
        assert refunds == ["o-1", "o-2"]
        request = await load_request(app, "g", 3)  # the next turn saw the edited answer
        assert request.messages[-2] == Message.model_validate(tool_call)
