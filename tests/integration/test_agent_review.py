"""Review of the agent layer: concurrent conversations, replays that go on live, output
retries, budgets at their edges and raised from outside, and the stored requests put back
exactly on both backends."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import pytest

from tether import (
    App,
    Budget,
    BudgetExceededError,
    Context,
    Effect,
    RunNeedsAttentionError,
    RunStateError,
    RunStatus,
    TetherError,
)
from tether.agent import Agent, ModelRequest, ScriptedModel, ToolCall, load_request

POLL = 0.05


def calls(tag: str, turns: int) -> list[Any]:
    """``turns - 1`` tool calls, then a final answer naming ``tag``."""
    script: list[Any] = [
        ToolCall(id=f"{tag}{i}", name="look", arguments={"what": f"{tag}-{i}"})
        for i in range(1, turns)
    ]
    return [*script, f"done {tag}"]


def tagged(script_by_prompt: dict[str, list[Any]]) -> ScriptedModel:
    """A model that follows the script of the conversation's prompt (its first user
    message), so concurrent conversations each get their own script."""

    def turn(index: int) -> Any:
        def answer(request: ModelRequest) -> Any:
            prompt = next(m.content for m in request.messages if m.role == "user")
            return script_by_prompt[str(prompt)][index]

        return answer

    longest = max(len(s) for s in script_by_prompt.values())
    return ScriptedModel([turn(i) for i in range(longest)])


async def assert_requests_put_back(app: App, run_id: str, *models: ScriptedModel) -> None:
    """Every model entry's stored request equals one the model saw, one for one."""
    entries = [e for e in await app.get_journal(run_id) if e.kind == "model"]
    seen = sorted(r.model_dump_json() for m in models for r in m.requests)
    loaded = sorted([(await load_request(app, run_id, e.seq)).model_dump_json() for e in entries])
    assert len(entries) == len(seen)
    assert loaded == seen


def build_two_agents(db_url: str, model: ScriptedModel, later: ScriptedModel) -> App:
    app = App(db_url, poll_interval=POLL)

    @app.tool(effect=Effect.READ)
    async def look(what: str) -> str:
        """Look at something."""
        return f"saw {what}"

    shared: Agent[str] = Agent(model, [look], "You look at things.", max_turns=10)
    typed: Agent[int] = Agent(later, [look], "Answer with a number.", output_type=int)

    @app.workflow
    async def pair(ctx: Context) -> dict[str, Any]:
        a, b = await asyncio.gather(shared.run(ctx, "alpha"), shared.run(ctx, "beta"))
        await ctx.sleep(0.1)  # parks the run: what follows is a replay of both agents
        c = await typed.run(ctx, "count")
        await ctx.sleep(0.1)  # and again: the typed agent (with its retry) is replayed
        return {"a": a.output, "b": b.output, "c": c.output, "turns": [a.turns, b.turns]}

    return app


async def test_two_concurrent_conversations_each_chain_their_own_calls(db_url: str) -> None:
    model = tagged({"alpha": calls("a", 4), "beta": calls("b", 3)})
    later = ScriptedModel([ToolCall(id="t1", name="look", arguments={"what": "n"}), "many", "7"])
    app = build_two_agents(db_url, model, later)
    async with app:
        result = await (await app.start("pair", run_id="p")).result(timeout=60)
        journal = await app.get_journal("p")
        await assert_requests_put_back(app, "p", model, later)
        last = await load_request(app, "p", [e for e in journal if e.kind == "model"][-1].seq)
    assert result == {"a": "done a", "b": "done b", "c": 7, "turns": [4, 3]}
    assert model.calls == 7 and later.calls == 3  # the replays asked nothing again
    by_seq = {e.seq: e for e in journal}
    models = [e for e in journal if e.kind == "model"]
    for entry in models:
        after = entry.input["args"][0]["after"]
        if after is None:
            continue
        previous = by_seq[after]
        assert previous.kind == "model"
        # The previous call of the same conversation: the one whose answer this sends.
        first = entry.input["args"][0]["messages"][0]
        assert first == previous.output["message_hash"]
    # The typed agent's chain runs through its retry ("many" is not an int).
    assert any("not valid" in str(m.content) for m in last.messages if m.role == "user")


async def test_the_typed_agents_retry_is_stored_and_put_back(db_url: str) -> None:
    later = ScriptedModel(["many", "not a number either", "7"])
    model = tagged({"alpha": ["x"], "beta": ["y"]})
    app = build_two_agents(db_url, model, later)
    async with app:
        result = await (await app.start("pair", run_id="p")).result(timeout=60)
        entries = [e for e in await app.get_journal("p") if e.kind == "model"]
        last = await load_request(app, "p", entries[-1].seq)
        await assert_requests_put_back(app, "p", model, later)
    assert result["c"] == 7 and later.calls == 3
    retries = [m.content for m in last.messages if m.role == "user"][1:]
    assert len(retries) == 2 and all("not valid" in str(r) for r in retries)
    assert last == later.requests[-1]


def build_budget(db_url: str, model: ScriptedModel, **options: Any) -> tuple[App, list[str]]:
    app = App(db_url, poll_interval=POLL)
    looked: list[str] = []

    @app.tool(effect=Effect.IRREVERSIBLE)
    async def look(what: str, *, idempotency_key: str) -> str:
        """Look once."""
        looked.append(what)
        return f"saw {what}"

    agent: Agent[str] = Agent(model, [look], "You look.", **options)

    @app.workflow
    async def one(ctx: Context) -> dict[str, Any]:
        result = await agent.run(ctx, "alpha")
        return {"output": result.output, "turns": result.turns, "tokens": result.usage.total_tokens}

    @app.workflow
    async def both(ctx: Context) -> list[str]:
        a, b = await asyncio.gather(agent.run(ctx, "alpha"), agent.run(ctx, "beta"))
        await ctx.sleep(0.05)
        return [a.output, b.output]

    return app, looked


async def token_totals(db_url: str, turns: int) -> list[int]:
    """Tokens spent after each turn of ``calls("a", turns)`` (the model is deterministic)."""
    model = ScriptedModel(calls("a", turns))
    app, _ = build_budget(db_url, model, max_turns=turns)
    async with app:
        await (await app.start("one", run_id="dry")).result(timeout=30)
        entries = [e for e in await app.get_journal("dry") if e.kind == "model"]
    totals, total = [], 0
    for entry in entries:
        usage = entry.output["usage"]
        total += usage["input_tokens"] + usage["output_tokens"]
        totals.append(total)
    return totals


async def test_a_budget_reached_exactly_by_the_last_turn_does_not_stop_it(db_url: str) -> None:
    totals = await token_totals(db_url, 3)
    model = ScriptedModel(calls("a", 3))
    app, looked = build_budget(db_url, model, max_turns=3, budget=Budget(tokens=totals[-1]))
    async with app:
        result = await (await app.start("one", run_id="r")).result(timeout=30)
    assert result == {"output": "done a", "turns": 3, "tokens": totals[-1]}
    assert looked == ["a-1", "a-2"]


async def test_a_budget_reached_exactly_before_the_last_turn_stops_it(db_url: str) -> None:
    totals = await token_totals(db_url, 3)
    model = ScriptedModel(calls("a", 3))
    app, looked = build_budget(db_url, model, max_turns=3, budget=Budget(tokens=totals[1]))
    async with app:
        with pytest.raises(RunNeedsAttentionError):
            await (await app.start("one", run_id="r")).result(timeout=30)
        error = (await app.get_run("r")).error
        assert error is not None and error["code"] == BudgetExceededError.code
        assert error["spent"]["turns"] == 2 and error["spent"]["tokens"] == totals[1]
        await app.raise_budget("r", tokens=totals[1] + 1)
        result = await app.handle("r").result(timeout=30)
        await assert_requests_put_back(app, "r", model)
    assert result["turns"] == 3 and model.calls == 3 and looked == ["a-1", "a-2"]


async def test_a_budget_stop_in_a_gather_of_two_agents_resumes_both(db_url: str) -> None:
    model = tagged({"alpha": calls("a", 4), "beta": calls("b", 4)})
    app, looked = build_budget(db_url, model, max_turns=10, budget=Budget(tokens=1))
    async with app:
        raised = 0
        handle = await app.start("both", run_id="g")
        while True:
            try:
                output = await handle.result(timeout=30)
                break
            except RunNeedsAttentionError:
                run = await app.get_run("g")
                assert run.error is not None and run.error["code"] == "budget_exceeded"
                raised += 1
                assert raised <= 4
                await app.raise_budget("g", tokens=1_000_000)
                handle = app.handle("g")
        journal = await app.get_journal("g")
        await assert_requests_put_back(app, "g", model)
    assert output == ["done a", "done b"]
    assert model.calls == 8  # no turn asked twice across the stops and replays
    assert sorted(looked) == ["a-1", "a-2", "a-3", "b-1", "b-2", "b-3"]
    assert [e.kind for e in journal].count("budget") == raised


async def test_racing_raises_deliver_one_budget(db_url: str) -> None:
    model = ScriptedModel(calls("a", 4))
    app, _ = build_budget(db_url, model, max_turns=10, budget=Budget(tokens=1))
    async with app:
        with pytest.raises(RunNeedsAttentionError):
            await (await app.start("one", run_id="r")).result(timeout=30)
        outcomes = await asyncio.gather(
            *[app.raise_budget("r", tokens=1_000 + i) for i in range(4)],
            return_exceptions=True,
        )
        done = [o for o in outcomes if not isinstance(o, BaseException)]
        refused = [o for o in outcomes if isinstance(o, BaseException)]
        assert len(done) == 1 and all(isinstance(o, RunStateError) for o in refused)
        result = await app.handle("r").result(timeout=30)
        budget = [e for e in await app.get_journal("r") if e.kind == "budget"]
    assert result["turns"] == 4
    assert len(budget) == 1


async def test_a_cancelled_run_stopped_on_budget_is_not_raised(db_url: str) -> None:
    model = ScriptedModel(calls("a", 4))
    app, _ = build_budget(db_url, model, max_turns=10, budget=Budget(tokens=1))
    async with app:
        with pytest.raises(RunNeedsAttentionError):
            await (await app.start("one", run_id="r")).result(timeout=30)
        await app.cancel("r")
        with pytest.raises(RunStateError, match="not stopped on a budget"):
            await app.raise_budget("r", tokens=1_000_000)
        await asyncio.sleep(0.3)
        run = await app.get_run("r")
        journal = await app.get_journal("r")
    assert run.status is RunStatus.CANCELLED
    assert model.calls == 1 and not [e for e in journal if e.kind == "budget"]


@pytest.mark.parametrize("bad", [math.nan, math.inf])
async def test_raising_a_budget_refuses_a_cost_that_is_not_a_number(
    db_url: str, bad: float
) -> None:
    model = ScriptedModel(calls("a", 3), price_per_token=0.0001)
    app, _ = build_budget(db_url, model, max_turns=10, budget=Budget(cost_usd=0.0001))
    async with app:
        with pytest.raises(RunNeedsAttentionError):
            await (await app.start("one", run_id="r")).result(timeout=30)
        with pytest.raises(TetherError, match="cost_usd"):
            await app.raise_budget("r", cost_usd=bad)
        run = await app.get_run("r")
    assert run.status is RunStatus.NEEDS_ATTENTION  # still waiting for a real budget


async def test_a_large_answer_and_large_settings_are_stored_and_put_back(db_url: str) -> None:
    big = "y" * 10_000
    model = ScriptedModel([ToolCall(id="c1", name="look", arguments={"what": big}), big])
    app = App(db_url, poll_interval=POLL)

    @app.tool(effect=Effect.READ)
    async def look(what: str) -> str:
        """Look."""
        return what

    agent: Agent[str] = Agent(model, [look], "z" * 5_000, settings={"stop": ["w" * 6_000]})

    @app.workflow
    async def large(ctx: Context) -> int:
        result = await agent.run(ctx, "go")
        await ctx.sleep(0.05)
        return len(result.output)

    async with app:
        assert await (await app.start("large", run_id="l")).result(timeout=30) == 10_000
        entries = [e for e in await app.get_journal("l") if e.kind == "model"]
        assert len(json.dumps(entries[0].input)) > 4096
        assert len(json.dumps(entries[1].output)) > 4096
        await assert_requests_put_back(app, "l", model)
    assert model.calls == 2


async def test_one_agent_serves_many_concurrent_runs(db_url: str) -> None:
    prompts = [f"p{i}" for i in range(6)]
    model = tagged({p: calls(p, 2 + i % 3) for i, p in enumerate(prompts)})
    app = App(db_url, poll_interval=POLL)

    @app.tool(effect=Effect.READ)
    async def look(what: str) -> str:
        """Look."""
        return f"saw {what}"

    agent: Agent[str] = Agent(model, [look], "Shared instructions.")

    @app.workflow
    async def solo(ctx: Context, prompt: str) -> str:
        result = await agent.run(ctx, prompt)
        await ctx.sleep(0.05)
        return str(result.output)

    async with app:
        handles = [await app.start("solo", p, run_id=p) for p in prompts]
        outputs = await asyncio.gather(*[h.result(timeout=60) for h in handles])
        seen = [r.model_dump_json() for r in model.requests]
        loaded = []
        for p in prompts:
            for entry in await app.get_journal(p):
                if entry.kind == "model":
                    loaded.append((await load_request(app, p, entry.seq)).model_dump_json())
    assert outputs == [f"done {p}" for p in prompts]
    assert sorted(loaded) == sorted(seen) and len(seen) == sum(2 + i % 3 for i in range(6))


class Down:
    """A model that is never available, and keeps what it was asked."""

    name = "down"

    def __init__(self) -> None:
        self.requests: list[ModelRequest] = []

    async def request(self, request: ModelRequest) -> Any:
        from tether.agent import ModelUnavailableError

        self.requests.append(request)
        raise ModelUnavailableError("overloaded", retry_after=0.0)

    def cost_usd(self, usage: Any) -> float:
        return 0.0


async def test_a_failed_model_call_still_stores_its_request(db_url: str) -> None:
    up = ScriptedModel([ToolCall(id="c1", name="look", arguments={"what": "x"}), "fine"])
    down = Down()
    app = App(db_url, poll_interval=POLL)

    @app.tool(effect=Effect.READ)
    async def look(what: str) -> str:
        """Look."""
        return f"saw {what}"

    first: Agent[str] = Agent(up, [look], "Up.")
    second: Agent[str] = Agent(down, [look], "Down.", model_retries=1, model_backoff=0.0)  # type: ignore[arg-type]

    @app.workflow
    async def fallback(ctx: Context) -> str:
        answer = (await first.run(ctx, "go")).output
        try:
            await second.run(ctx, f"again: {answer}")
        except TetherError:
            await ctx.sleep(0.05)
            return "fell back"
        return "no"

    async with app:
        assert await (await app.start("fallback", run_id="f")).result(timeout=30) == "fell back"
        entries = [e for e in await app.get_journal("f") if e.kind == "model"]
        assert [e.status.value for e in entries] == ["completed", "completed", "failed"]
        failed = await load_request(app, "f", entries[-1].seq)
    assert len(down.requests) == 2  # asked once more, and not again by the replay
    assert failed == down.requests[0] == down.requests[1]


async def test_a_conversation_cut_by_a_shutdown_goes_on_in_a_new_process(db_url: str) -> None:
    """The first process stops while turn 3 is asked; the next one replays turns 1-2 and
    asks turn 3 itself, storing what the cut entry never wrote."""
    stuck = asyncio.Event()

    async def hang(request: ModelRequest) -> str:
        stuck.set()
        await asyncio.sleep(3600)
        return "never"

    def app_with(model: ScriptedModel) -> App:
        app = App(db_url, poll_interval=POLL, shutdown_grace=0.2, lease_seconds=0.5)

        @app.tool(effect=Effect.READ)
        async def look(what: str) -> str:
            """Look."""
            return f"saw {what} " + "n" * 50

        agent: Agent[str] = Agent(model, [look], "You look.")

        @app.workflow
        async def cut(ctx: Context) -> str:
            result = await agent.run(ctx, "go")
            await ctx.sleep(0.05)
            return str(result.output)

        return app

    steps = [ToolCall(id=f"c{i}", name="look", arguments={"what": str(i)}) for i in (1, 2)]
    first = ScriptedModel([*steps, hang])
    app = app_with(first)
    async with app:
        await app.start("cut", run_id="c")
        await asyncio.wait_for(stuck.wait(), 30)
    second = ScriptedModel([*steps, "done"])
    app = app_with(second)
    async with app:
        assert await app.handle("c").result(timeout=30) == "done"
        entries = [e for e in await app.get_journal("c") if e.kind == "model"]
        requests = [await load_request(app, "c", e.seq) for e in entries]
    assert first.calls == 3 and second.calls == 1
    assert requests[:2] == first.requests[:2]
    assert requests[2] == second.requests[0] == first.requests[2]


async def test_a_workflow_that_catches_errors_still_stops_on_its_budget(db_url: str) -> None:
    model = ScriptedModel(calls("a", 3))
    app = App(db_url, poll_interval=POLL)

    @app.tool(effect=Effect.READ)
    async def look(what: str) -> str:
        """Look."""
        return what

    agent: Agent[str] = Agent(model, [look], "You look.", budget=Budget(tokens=1))

    @app.workflow
    async def careful(ctx: Context) -> str:
        try:
            return str((await agent.run(ctx, "go")).output)
        except TetherError:
            return "gave up"

    async with app:
        with pytest.raises(RunNeedsAttentionError):
            await (await app.start("careful", run_id="c")).result(timeout=30)
        await app.raise_budget("c", tokens=1_000_000)
        assert await app.handle("c").result(timeout=30) == "done a"
    assert model.calls == 3


async def test_retry_after_beyond_the_backoff_cap_is_still_honoured() -> None:
    from tether.agent import Message, ModelResponse, ModelUnavailableError, Usage

    class Busy:
        name = "busy"

        def __init__(self) -> None:
            self.times: list[float] = []

        async def request(self, request: ModelRequest) -> ModelResponse:
            self.times.append(asyncio.get_running_loop().time())
            if len(self.times) == 1:
                raise ModelUnavailableError("slow down", retry_after=0.3)
            if len(self.times) == 2:
                await asyncio.sleep(10)  # past model_timeout: unavailable too
            return ModelResponse(message=Message.assistant("ok"), usage=Usage(), model="busy")

        def cost_usd(self, usage: Usage) -> float:
            return 0.0

    model = Busy()
    agent: Agent[str] = Agent(
        model,  # type: ignore[arg-type]
        model_retries=2,
        model_backoff=0.0,
        model_backoff_max=0.01,
        model_timeout=0.1,
    )
    recorded = await agent._request(ModelRequest(messages=(Message.user("hi"),)))
    assert recorded["tries"] == 3 and len(model.times) == 3
    assert model.times[1] - model.times[0] >= 0.29
    assert model.times[2] - model.times[1] < 5
