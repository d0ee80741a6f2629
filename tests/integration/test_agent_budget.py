"""Budgets stop a run for a person with what was spent, and raising one resumes the run
where it stopped; an unavailable model is asked again by the runtime, an unauthorized
one is not."""

from __future__ import annotations

from typing import Any

import pytest

from tether import (
    App,
    Budget,
    BudgetExceededError,
    Context,
    Effect,
    RunFailedError,
    RunNeedsAttentionError,
    RunNotFoundError,
    RunStateError,
    RunStatus,
    TetherError,
)
from tether.agent import (
    Agent,
    Message,
    ModelAuthError,
    ModelRequest,
    ModelResponse,
    ModelUnavailableError,
    ScriptedModel,
    ToolCall,
    Usage,
)

POLL = 0.05


def script(turns: int) -> list[Any]:
    calls: list[Any] = [
        ToolCall(id=f"c{i}", name="ping", arguments={"i": i}) for i in range(1, turns)
    ]
    return [*calls, "finished"]


def build(db_url: str, model: Any, **options: Any) -> tuple[App, list[int]]:
    app = App(db_url, poll_interval=POLL)
    pings: list[int] = []

    @app.tool(effect=Effect.IRREVERSIBLE)
    async def ping(i: int, *, idempotency_key: str) -> str:
        """Ping once."""
        pings.append(i)
        return f"pong {i}"

    agent: Agent[str] = Agent(model, [ping], "You ping.", max_turns=20, **options)

    @app.workflow
    async def pinger(ctx: Context) -> dict[str, Any]:
        result = await agent.run(ctx, "ping away")
        return {"output": result.output, "turns": result.turns, "tokens": result.usage.total_tokens}

    return app, pings


async def stop_on_budget(app: App, run_id: str) -> dict[str, Any]:
    with pytest.raises(RunNeedsAttentionError):
        await (await app.start("pinger", run_id=run_id)).result(timeout=30)
    run = await app.get_run(run_id)
    assert run.status is RunStatus.NEEDS_ATTENTION
    assert isinstance(run.error, dict)
    return run.error


async def test_a_run_stops_on_its_token_budget_and_resumes_when_raised(db_url: str) -> None:
    model = ScriptedModel(script(4))
    app, pings = build(db_url, model, budget=Budget(tokens=1))
    async with app:
        error = await stop_on_budget(app, "r")
        assert error["code"] == BudgetExceededError.code
        assert error["spent"]["turns"] == 1 and error["spent"]["tokens"] > 1
        assert error["budget"] == {"tokens": 1, "cost_usd": None}
        assert "tether budget r --tokens N" in error["message"]
        assert model.calls == 1 and pings == [1]  # the first turn's call was made

        run = await app.raise_budget("r", tokens=1_000_000, by="ops")
        assert run.status in (RunStatus.PENDING, RunStatus.RUNNING)  # a worker may have it
        result = await (app.handle("r")).result(timeout=30)
        journal = await app.get_journal("r")
    assert result["output"] == "finished" and result["turns"] == 4
    assert model.calls == 4  # turn 1 was not asked again
    assert pings == [1, 2, 3]  # nor was its irreversible call made again
    budget = [e for e in journal if e.kind == "budget"]
    assert len(budget) == 1 and budget[0].output["tokens"] == 1_000_000
    assert budget[0].output["by"] == "ops"


async def test_a_cost_budget_can_stop_a_run_twice(db_url: str) -> None:
    model = ScriptedModel(script(6), price_per_token=0.0001)
    app, pings = build(db_url, model, budget=Budget(cost_usd=0.0001))
    async with app:
        first = await stop_on_budget(app, "r")
        spent = first["spent"]["cost_usd"]
        assert first["spent"]["turns"] == 1 and spent > 0.0001
        await app.raise_budget("r", cost_usd=spent + 0.00001)  # enough for one more turn
        with pytest.raises(RunNeedsAttentionError):
            await (app.handle("r")).result(timeout=30)
        second = (await app.get_run("r")).error
        assert second is not None and second["spent"]["turns"] == 2
        assert second["budget"]["cost_usd"] == pytest.approx(spent + 0.00001)
        await app.raise_budget("r", cost_usd=1.0)
        result = await (app.handle("r")).result(timeout=30)
        journal = await app.get_journal("r")
    assert result["turns"] == 6 and model.calls == 6 and pings == [1, 2, 3, 4, 5]
    assert [e.kind for e in journal].count("budget") == 2


async def test_a_raised_budget_resumes_in_another_process(db_url: str) -> None:
    app, _ = build(db_url, ScriptedModel(script(3)), budget=Budget(tokens=1))
    async with app:
        await stop_on_budget(app, "r")
    # A new App and a new model: nothing of the first execution is left in memory.
    model = ScriptedModel(script(3))
    app, pings = build(db_url, model, budget=Budget(tokens=1))
    async with app:
        await app.raise_budget("r", tokens=10_000)
        result = await (app.handle("r")).result(timeout=30)
    assert result["turns"] == 3
    assert model.calls == 2  # turns 2 and 3 only: turn 1 came from the journal
    assert pings == [2]


async def test_raising_a_budget_checks_what_it_is_given(db_url: str) -> None:
    app, _ = build(db_url, ScriptedModel(script(3)), budget=Budget(tokens=1))
    async with app:
        error = await stop_on_budget(app, "r")
        spent = error["spent"]["tokens"]
        with pytest.raises(TetherError, match="giving tokens, cost_usd or both"):
            await app.raise_budget("r")
        with pytest.raises(TetherError, match=f"has spent {spent} tokens"):
            await app.raise_budget("r", tokens=spent)
        with pytest.raises(TetherError, match="whole number"):
            await app.raise_budget("r", tokens="many")  # type: ignore[arg-type]
        with pytest.raises(TetherError, match="has spent"):
            await app.raise_budget("r", cost_usd=0.0)
        with pytest.raises(RunNotFoundError):
            await app.raise_budget("nope", tokens=100)
        run = await app.get_run("r")
        assert run.status is RunStatus.NEEDS_ATTENTION and run.error == error  # unchanged
        assert await app.get_journal("r") == await app.get_journal("r")
        assert not [e for e in await app.get_journal("r") if e.kind == "budget"]

        await app.raise_budget("r", tokens=10_000)
        await (app.handle("r")).result(timeout=30)
        with pytest.raises(RunStateError, match="not stopped on a budget"):
            await app.raise_budget("r", tokens=20_000)


async def test_a_budget_is_checked_when_made() -> None:
    for bad in ({"tokens": 0}, {"tokens": 1.5}, {"cost_usd": 0}, {"cost_usd": -1.0}):
        with pytest.raises(TetherError, match="Budget"):
            Budget(**bad)
    with pytest.raises(TetherError, match=r"tether\.Budget"):
        Agent(ScriptedModel([]), budget={"tokens": 5})  # type: ignore[arg-type]


class Flaky:
    """A model that is unavailable ``failures`` times, then answers; or always refuses."""

    name = "flaky"

    def __init__(self, failures: int, *, error: Exception | None = None) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    async def request(self, request: ModelRequest) -> ModelResponse:
        self.calls += 1
        if self.error is not None:
            raise self.error
        if self.calls <= self.failures:
            raise ModelUnavailableError("429 Too Many Requests", retry_after=0.05)
        return ModelResponse(message=Message.assistant("ok"), usage=Usage(input_tokens=3))

    def cost_usd(self, usage: Usage) -> float:
        return 0.0


async def test_an_unavailable_model_is_asked_again_after_its_retry_after(db_url: str) -> None:
    model = Flaky(2)
    app, _ = build(db_url, model, model_backoff=0.0)
    async with app:
        result = await (await app.start("pinger", run_id="r")).result(timeout=30)
        entry = next(e for e in await app.get_journal("r") if e.kind == "model")
    assert result["output"] == "ok" and model.calls == 3
    assert entry.output["tries"] == 3
    # Retry-After (0.05 s) was waited out twice, though the backoff asked for no wait.
    assert entry.finished_at - entry.started_at >= 0.1


async def test_a_model_unavailable_past_its_retries_fails_the_run(db_url: str) -> None:
    model = Flaky(100)
    app, _ = build(db_url, model, model_retries=2, model_backoff=0.0)
    async with app:
        with pytest.raises(RunFailedError, match="429 Too Many Requests"):
            await (await app.start("pinger", run_id="r")).result(timeout=30)
    assert model.calls == 3


async def test_an_authentication_error_is_not_retried(db_url: str) -> None:
    model = Flaky(0, error=ModelAuthError("the provider refused the API key; check it"))
    app, _ = build(db_url, model, model_backoff=0.0)
    async with app:
        with pytest.raises(RunFailedError, match="refused the API key"):
            await (await app.start("pinger", run_id="r")).result(timeout=30)
        entry = next(e for e in await app.get_journal("r") if e.kind == "model")
    assert model.calls == 1 and entry.status.value == "failed"


class Slow(Flaky):
    async def request(self, request: ModelRequest) -> ModelResponse:
        import asyncio

        if self.calls == 0:
            self.calls += 1
            await asyncio.sleep(5)
        return await super().request(request)


async def test_a_model_past_its_timeout_is_asked_again(db_url: str) -> None:
    model = Slow(0)
    app, _ = build(db_url, model, model_timeout=0.1, model_backoff=0.0)
    async with app:
        result = await (await app.start("pinger", run_id="r")).result(timeout=30)
    assert result["output"] == "ok" and model.calls == 2
