"""The Pydantic AI integration on both backends: each model request of a pydantic_ai.Agent
one journal entry (kind model) replayed without asking the model again, each tool call a
Tether tool call in the effect log, made once; bad arguments back to the model."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pydantic
import pytest
from pydantic_ai import (
    Agent,
    ApprovalRequired,
    DeferredToolRequests,
    DeferredToolResults,
    ModelRetry,
    RunContext,
)
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    RetryPromptPart,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models import Model, ModelRequestParameters
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.test import TestModel

from tether import (
    App,
    Context,
    Effect,
    NotInWorkflowError,
    RunNeedsAttentionError,
    RunStatus,
    StepFailedError,
    ToolFailedError,
)
from tether.engine._tools import idempotency_key as expected_key
from tether.integrations.pydantic_ai import (
    StreamingNotSupportedError,
    TetherAgent,
    _DurableModel,
    idempotency_key,
    load_request,
)

POLL = 0.05
ROOT = Path(__file__).resolve().parents[2]


async def wait_status(app: App, run_id: str, status: RunStatus, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while (await app.get_run(run_id)).status is not status:
        assert time.monotonic() < deadline, f"run {run_id} never became {status.value}"
        await asyncio.sleep(0.01)


class Refund(pydantic.BaseModel):
    order: str
    cents: int


class Counter:
    """How many times each thing really ran, in this process."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.keys: dict[str, list[str]] = {}

    def hit(self, name: str, key: str | None = None) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1
        if key is not None:
            self.keys.setdefault(name, []).append(key)

    def __getitem__(self, name: str) -> int:
        return self.counts.get(name, 0)


def responses(messages: list[ModelMessage]) -> int:
    return sum(isinstance(m, ModelResponse) for m in messages)


def last_parts(messages: list[ModelMessage]) -> list[Any]:
    last = messages[-1]
    assert isinstance(last, ModelRequest)
    return list(last.parts)


def build(db_url: str, respond: Any, **options: Any) -> tuple[App, Counter]:
    """An App with one workflow that runs a pydantic_ai.Agent through TetherAgent. The
    agent has a READ tool of its own (``lookup``), an IRREVERSIBLE one of its own
    (``notify``, effect by default) and a Tether tool (``refund``). ``respond``: a
    FunctionModel's function (its calls are counted), or a model."""
    app = App(db_url, poll_interval=POLL)
    seen = Counter()
    model = respond if isinstance(respond, Model) else FunctionModel(counting(respond, seen))
    agent: Agent[None, Any] = Agent(model, name="support", **options)

    @agent.tool_plain
    def lookup(customer: str) -> dict[str, Any]:
        """Find a customer's last order."""
        seen.hit("lookup", idempotency_key())  # a sync tool: it runs on a thread
        return {"customer": customer, "order": "o-7", "cents": 1250}

    @agent.tool
    async def notify(ctx: RunContext[None], to: str, text: str) -> str:
        """Send a message (it cannot be unsent)."""
        seen.hit("notify", idempotency_key())
        return f"sent to {to}"

    @app.tool(effect=Effect.IRREVERSIBLE)
    async def refund(order: str, cents: int, *, idempotency_key: str) -> str:
        """Refund an order."""
        seen.hit("refund", idempotency_key)
        return f"refunded {cents} on {order}"

    durable = TetherAgent(agent, tools=[refund], effects={"lookup": Effect.READ})

    @app.workflow
    async def support(ctx: Context, prompt: str) -> dict[str, Any]:
        seen.hit("workflow")  # once per execution: the first one, then each replay
        result = await durable.run(ctx, prompt)
        await ctx.sleep(0.1)  # parks the run: what follows is a replay of the agent
        output = result.output
        if isinstance(output, pydantic.BaseModel):
            output = output.model_dump()
        return {"output": output, "messages": len(result.all_messages())}

    return app, seen


def counting(respond: Any, seen: Counter) -> Any:
    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        seen.hit("model")
        answer: ModelResponse = respond(messages, info)
        return answer

    return model


async def run(app: App, prompt: str = "refund ada", run_id: str = "r1") -> dict[str, Any]:
    async with app:
        handle = await app.start("support", prompt, run_id=run_id)
        result: dict[str, Any] = await handle.result(timeout=30)
    return result


def is_retry(part: Any) -> bool:
    """Pydantic AI's retry prompt: a RetryPromptPart, or (2.x) a tool return marked retried."""
    return isinstance(part, RetryPromptPart) or getattr(part, "outcome", None) == "retried"


def lookup_then_answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    if responses(messages) == 0:
        return ModelResponse(parts=[ToolCallPart("lookup", {"customer": "ada"}, "c1")])
    [returned] = last_parts(messages)
    assert isinstance(returned, ToolReturnPart)
    return ModelResponse(parts=[TextPart(f"ada's last order is {returned.content['order']}")])


async def test_each_model_request_and_tool_call_is_a_journal_entry(db_url: str) -> None:
    app, _ = build(db_url, lookup_then_answer)
    async with app:
        handle = await app.start("support", "what did ada order?", run_id="r1")
        result = await handle.result(timeout=30)
        journal = await app.get_journal("r1")
        requests = {e.seq: await load_request(app, "r1", e.seq) for e in journal[:3:2]}
    assert result == {"output": "ada's last order is o-7", "messages": 4}
    assert [(e.kind, e.name, e.status.value) for e in journal] == [
        ("model", "function:model:", "completed"),
        ("tool", "lookup", "completed"),
        ("model", "function:model:", "completed"),
        ("sleep", "sleep", "completed"),
    ]
    first, tool, second = journal[:3]
    # The request is the recorded input, the response the recorded output.
    request = requests[first.seq]
    assert request["messages"][0]["parts"][0]["content"] == "what did ada order?"
    assert "timestamp" not in request["messages"][0]["parts"][0]  # differs on every execution
    tools = {t["name"] for t in request["model_request_parameters"]["function_tools"]}
    assert tools == {"lookup", "notify", "refund"}
    assert first.output["parts"][0]["part_kind"] == "tool-call"
    assert first.output["parts"][0]["tool_name"] == "lookup"
    assert tool.input == {"customer": "ada"}
    assert tool.output == {"customer": "ada", "order": "o-7", "cents": 1250}
    request = requests[second.seq]
    assert [m["kind"] for m in request["messages"]] == ["request", "response", "request"]
    # Stored once: the second entry names only what its turn added, after the first.
    [record] = second.input["args"]
    assert record["after"] == first.seq and len(record["messages"]) == 2
    assert second.output["parts"][0]["content"] == "ada's last order is o-7"


async def test_a_replay_asks_the_model_nothing_and_runs_no_tool_again(db_url: str) -> None:
    app, seen = build(db_url, lookup_then_answer)
    async with app:
        result = await (await app.start("support", "what did ada order?", run_id="r1")).result(
            timeout=30
        )
        journal = await app.get_journal("r1")
    assert result["output"] == "ada's last order is o-7"
    assert seen["workflow"] == 2  # executed, parked on the sleep, replayed to the end
    assert seen["model"] == sum(e.kind == "model" for e in journal) == 2
    assert seen["lookup"] == sum(e.kind == "tool" for e in journal) == 1


async def test_an_irreversible_call_is_in_the_effect_log_with_its_key_and_made_once(
    db_url: str,
) -> None:
    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if responses(messages) == 0:  # two calls in one turn: they run side by side
            return ModelResponse(
                parts=[
                    ToolCallPart("refund", {"order": "o-7", "cents": 1250}, "c1"),
                    ToolCallPart("notify", {"to": "ada", "text": "refunded"}, "c2"),
                ]
            )
        returned = sorted(str(p.content) for p in last_parts(messages))
        return ModelResponse(parts=[TextPart(" and ".join(returned))])

    app, seen = build(db_url, respond)
    async with app:
        result = await (await app.start("support", "refund ada", run_id="r1")).result(timeout=30)
        effects = await app.list_effects("r1")
        journal = await app.get_journal("r1")
    assert result["output"] == "refunded 1250 on o-7 and sent to ada"
    assert seen["workflow"] == 2 and seen["model"] == 2
    assert seen["refund"] == 1 and seen["notify"] == 1  # not again on the replay
    by_tool = {effect.tool: effect for effect in effects}
    assert set(by_tool) == {"refund", "notify"}
    for name, effect in by_tool.items():
        assert effect.kind is Effect.IRREVERSIBLE  # notify: the default effect
        assert effect.state.value == "completed"
        assert effect.idempotency_key == expected_key("r1", effect.seq)
        assert seen.keys[name] == [effect.idempotency_key]  # the body got the recorded key
    assert by_tool["refund"].args == {"order": "o-7", "cents": 1250}
    assert by_tool["notify"].args == {"to": "ada", "text": "refunded"}
    assert [e.kind for e in journal] == ["model", "tool", "tool", "model", "sleep"]


async def test_a_test_model_run_calls_every_tool_once(db_url: str) -> None:
    model = TestModel()
    app, seen = build(db_url, model)
    async with app:
        result = await (await app.start("support", "go", run_id="r1")).result(timeout=30)
        journal = await app.get_journal("r1")
        effects = await app.list_effects("r1")
    assert seen["workflow"] == 2
    assert seen["lookup"] == seen["notify"] == seen["refund"] == 1
    assert sorted(e.tool for e in effects) == ["lookup", "notify", "refund"]
    for effect in effects:  # each body got its call's key, a sync one on its thread too
        assert seen.keys[effect.tool] == [effect.idempotency_key]
    assert [e.kind for e in journal] == ["model", "tool", "tool", "tool", "model", "sleep"]
    assert {e.name for e in journal if e.kind == "model"} == {"test"}
    assert "refunded" in result["output"] and "sent to" in result["output"]


async def test_structured_output_comes_back_typed(db_url: str) -> None:
    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if responses(messages) == 0:
            return ModelResponse(parts=[ToolCallPart("lookup", {"customer": "ada"}, "c1")])
        [output_tool] = info.output_tools
        args = {"order": "o-7", "cents": 1250}
        return ModelResponse(parts=[ToolCallPart(output_tool.name, args, "c2")])

    app, seen = build(db_url, respond, output_type=Refund)
    result = await run(app)
    assert result["output"] == {"order": "o-7", "cents": 1250}
    assert seen["workflow"] == 2 and seen["model"] == 2 and seen["lookup"] == 1


async def test_bad_tool_arguments_go_back_to_the_model(db_url: str) -> None:
    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        turn = responses(messages)
        if turn == 0:  # cents is no number: the call never reaches the tool
            return ModelResponse(parts=[ToolCallPart("refund", {"order": "o-7", "cents": "lots"})])
        if turn == 1:
            [retry] = last_parts(messages)
            assert is_retry(retry) and retry.tool_name == "refund", retry
            return ModelResponse(parts=[ToolCallPart("refund", {"order": "o-7", "cents": 1250})])
        return ModelResponse(parts=[TextPart("refunded after a retry")])

    app, seen = build(db_url, respond)
    async with app:
        result = await (await app.start("support", "refund ada", run_id="r1")).result(timeout=30)
        journal = await app.get_journal("r1")
        effects = await app.list_effects("r1")
        second = await load_request(app, "r1", journal[1].seq)
    assert result["output"] == "refunded after a retry"
    assert seen["refund"] == 1
    assert [e.kind for e in journal] == ["model", "model", "tool", "model", "sleep"]
    assert [e.args for e in effects] == [{"order": "o-7", "cents": 1250}]
    retry = second["messages"][-1]["parts"][0]
    assert retry["part_kind"] == "retry-prompt" or retry.get("outcome") == "retried"
    assert "int_parsing" in str(retry["content"]) and "cents" in str(retry["content"])


async def test_a_tool_that_asks_for_a_retry_is_recorded_and_replayed(db_url: str) -> None:
    app = App(db_url, poll_interval=POLL)
    seen = Counter()

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        seen.hit("model")
        turn = responses(messages)
        if turn < 2:
            return ModelResponse(parts=[ToolCallPart("charge", {"cents": 100 * (turn + 1)})])
        return ModelResponse(parts=[TextPart("done")])

    agent: Agent[None, str] = Agent(FunctionModel(respond))

    @agent.tool_plain
    def charge(cents: int) -> str:
        seen.hit("charge")
        if cents < 200:
            raise ModelRetry("at least 200 cents")
        return f"charged {cents}"

    durable = TetherAgent(agent, effects={"charge": Effect.IDEMPOTENT})

    @app.workflow
    async def support(ctx: Context, prompt: str) -> str:
        result = await durable.run(ctx, prompt)
        await ctx.sleep(0.1)
        return result.output

    async with app:
        assert await (await app.start(support, "go", run_id="r1")).result(timeout=30) == "done"
        journal = await app.get_journal("r1")
    tools = [e for e in journal if e.kind == "tool"]
    assert [e.output for e in tools] == [
        {"outcome": "retry", "message": "at least 200 cents"},
        "charged 200",
    ]
    assert seen["charge"] == 2 and seen["model"] == 3  # nothing again on the replay


async def test_a_value_that_looks_like_a_signal_stays_a_value(db_url: str) -> None:
    app = App(db_url, poll_interval=POLL)
    seen = Counter()
    odd = {"outcome": "retry", "message": "not a retry: the tool's own data"}

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        seen.hit("model")
        if responses(messages) == 0:
            return ModelResponse(parts=[ToolCallPart("status", {})])
        [returned] = last_parts(messages)
        assert isinstance(returned, ToolReturnPart) and not is_retry(returned), returned
        assert returned.content == odd
        return ModelResponse(parts=[TextPart("ok")])

    agent: Agent[None, str] = Agent(FunctionModel(respond))

    @agent.tool_plain
    def status() -> dict[str, str]:
        seen.hit("status")
        return dict(odd)

    durable = TetherAgent(agent, effects={"status": Effect.READ})

    @app.workflow
    async def check(ctx: Context) -> str:
        result = await durable.run(ctx, "status?")
        await ctx.sleep(0.1)
        return result.output

    async with app:
        assert await (await app.start(check, run_id="r1")).result(timeout=30) == "ok"
        journal = await app.get_journal("r1")
    assert journal[1].output == {"outcome": "return", "value": odd}
    assert seen["model"] == 2 and seen["status"] == 1


async def test_a_tether_tool_that_asks_for_a_retry_sends_the_model_a_retry_prompt(
    db_url: str,
) -> None:
    app = App(db_url, poll_interval=POLL)
    seen = Counter()

    @app.tool(effect=Effect.READ)
    async def search(query: str) -> list[str]:
        """Search the catalogue."""
        seen.hit("search")
        if len(query) < 3:
            raise ModelRetry("the query needs at least 3 characters")
        return [f"{query}-1", f"{query}-2"]

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        seen.hit("model")
        turn = responses(messages)
        if turn == 0:
            return ModelResponse(parts=[ToolCallPart("search", {"query": "ab"})])
        [returned] = last_parts(messages)
        if turn == 1:
            assert is_retry(returned) and "3 characters" in str(returned.content), returned
            return ModelResponse(parts=[ToolCallPart("search", {"query": "abc"})])
        return ModelResponse(parts=[TextPart(", ".join(returned.content))])

    durable = TetherAgent(Agent(FunctionModel(respond)), tools=[search])

    @app.workflow
    async def find(ctx: Context) -> str:
        result = await durable.run(ctx, "find ab")
        await ctx.sleep(0.1)
        return result.output

    async with app:
        assert await (await app.start(find, run_id="r1")).result(timeout=30) == "abc-1, abc-2"
        effects = await app.list_effects("r1")
    assert [e.state.value for e in effects] == ["failed", "completed"]
    assert seen["model"] == 3 and seen["search"] == 2


async def test_model_settings_are_recorded_without_header_values(db_url: str) -> None:
    app = App(db_url, poll_interval=POLL)
    settings = {"temperature": 0.2, "extra_headers": {"Authorization": "Bearer sk-SECRET"}}
    durable = TetherAgent(Agent(TestModel(custom_output_text="hi")))

    @app.workflow
    async def greet(ctx: Context) -> str:
        result = await durable.run(ctx, "hello", model_settings=settings)
        return result.output

    async with app:
        assert await (await app.start(greet, run_id="r1")).result(timeout=30) == "hi"
        [entry] = await app.get_journal("r1")
    recorded = entry.input["args"][0]["model_settings"]
    assert recorded["temperature"] == 0.2
    assert recorded["extra_headers"] == {"Authorization": "[redacted]"}
    assert "sk-SECRET" not in json.dumps(entry.input)


async def test_a_pydantic_ai_approval_is_recorded_and_the_approved_call_made_once(
    db_url: str,
) -> None:
    app = App(db_url, poll_interval=POLL)
    seen = Counter()

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        seen.hit("model")
        if responses(messages) == 0:
            return ModelResponse(parts=[ToolCallPart("delete", {"path": "/tmp/x"}, "c1")])
        [returned] = last_parts(messages)
        return ModelResponse(parts=[TextPart(str(returned.content))])

    agent: Agent[None, Any] = Agent(FunctionModel(respond), output_type=[str, DeferredToolRequests])

    @agent.tool
    def delete(ctx: RunContext[None], path: str) -> str:
        if not ctx.tool_call_approved:  # Pydantic AI's human-in-the-loop: ask first
            raise ApprovalRequired()
        seen.hit("delete", idempotency_key())
        return f"deleted {path}"

    durable = TetherAgent(agent)

    @app.workflow
    async def clean(ctx: Context) -> str:
        first = await durable.run(ctx, "delete /tmp/x")
        assert isinstance(first.output, DeferredToolRequests), first.output
        [call] = first.output.approvals
        approved = DeferredToolResults(approvals={call.tool_call_id: True})
        second = await durable.run(
            ctx, message_history=first.all_messages(), deferred_tool_results=approved
        )
        await ctx.sleep(0.1)
        return str(second.output)

    async with app:
        assert await (await app.start(clean, run_id="r1")).result(timeout=30) == "deleted /tmp/x"
        journal = await app.get_journal("r1")
        effects = await app.list_effects("r1")
    tools = [e for e in journal if e.kind == "tool"]
    # The call that asked for approval, recorded as such; then the approved call.
    assert [e.output for e in tools] == [
        {"outcome": "approval_required", "metadata": None},
        "deleted /tmp/x",
    ]
    assert seen["delete"] == 1 and seen.keys["delete"] == [effects[-1].idempotency_key]
    assert seen["model"] == sum(e.kind == "model" for e in journal) == 2


async def test_a_tool_that_raises_fails_the_run_the_same_on_replay(db_url: str) -> None:
    app = App(db_url, poll_interval=POLL)
    seen = Counter()

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        seen.hit("model")
        return ModelResponse(parts=[ToolCallPart("explode", {})])

    agent: Agent[None, str] = Agent(FunctionModel(respond))

    @agent.tool_plain
    def explode() -> str:
        seen.hit("explode")
        raise RuntimeError("boom")

    durable = TetherAgent(agent, effects={"explode": Effect.READ})

    @app.workflow
    async def risky(ctx: Context) -> str:
        try:
            await durable.run(ctx, "go")
        except ToolFailedError as exc:
            await ctx.sleep(0.1)  # replayed: the recorded failure is raised again
            return f"{exc.step}: {exc.error_type}: {exc.error_message}"
        return "no error"

    async with app:
        output = await (await app.start(risky, run_id="r1")).result(timeout=30)
        [effect] = await app.list_effects("r1")
    assert output == "explode: RuntimeError: boom"
    assert effect.state.value == "failed" and seen["explode"] == 1 and seen["model"] == 1


async def test_a_denied_tether_tool_tells_the_model_which_adapts(db_url: str) -> None:
    app = App(db_url, poll_interval=POLL)
    seen = Counter()

    @app.tool(effect=Effect.IRREVERSIBLE, approval="deny")
    async def wire(cents: int, *, idempotency_key: str) -> str:
        """Wire money."""
        seen.hit("wire")
        return "wired"

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        seen.hit("model")
        if responses(messages) == 0:
            return ModelResponse(parts=[ToolCallPart("wire", {"cents": 500})])
        [refused] = last_parts(messages)
        assert refused.tool_name == "wire", refused
        return ModelResponse(parts=[TextPart(f"could not: {refused.content}")])

    durable = TetherAgent(Agent(FunctionModel(respond)), tools=[wire])

    @app.workflow
    async def pay(ctx: Context) -> str:
        result = await durable.run(ctx, "wire 5")
        await ctx.sleep(0.1)
        return result.output

    async with app:
        output = await (await app.start(pay, run_id="r1")).result(timeout=30)
        [effect] = await app.list_effects("r1")
    assert output.startswith("could not:") and "denies calling tool 'wire'" in output
    assert seen["wire"] == 0 and seen["model"] == 2
    assert effect.tool == "wire" and effect.state.value == "failed"
    assert effect.error is not None and effect.error["type"] == "ToolDeniedError"


async def test_an_approval_parks_the_agent_and_the_approved_call_is_made_once(
    db_url: str,
) -> None:
    app = App(db_url, poll_interval=POLL)
    seen = Counter()

    @app.tool(effect=Effect.IRREVERSIBLE, approval="approve")
    async def wire(cents: int, *, idempotency_key: str) -> str:
        """Wire money."""
        seen.hit("wire", idempotency_key)
        return f"wired {cents}"

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        seen.hit("model")
        if responses(messages) == 0:
            return ModelResponse(parts=[ToolCallPart("wire", {"cents": 500})])
        [returned] = last_parts(messages)
        return ModelResponse(parts=[TextPart(str(returned.content))])

    durable = TetherAgent(Agent(FunctionModel(respond)), tools=[wire])

    @app.workflow
    async def pay(ctx: Context) -> str:
        seen.hit("workflow")
        result = await durable.run(ctx, "wire 5")
        return result.output

    async with app:
        handle = await app.start(pay, run_id="r1")
        await wait_status(app, "r1", RunStatus.WAITING)  # parked: no task, no thread held
        assert seen["wire"] == 0
        await app.approve("r1", by="ada")
        assert await handle.result(timeout=30) == "wired 500"
        [effect] = await app.list_effects("r1")
    assert seen["workflow"] == 2  # the wait dropped the execution; the approval replayed it
    assert seen["model"] == 2 and seen["wire"] == 1
    assert seen.keys["wire"] == [effect.idempotency_key]


async def test_a_replay_that_asks_the_model_something_else_stops_for_a_person(
    db_url: str,
) -> None:
    app = App(db_url, poll_interval=POLL)
    seen = Counter()

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        seen.hit("model")
        return ModelResponse(parts=[TextPart("hello")])

    durable = TetherAgent(Agent(FunctionModel(respond)))

    @app.workflow
    async def greet(ctx: Context) -> str:
        seen.hit("workflow")
        # Not deterministic: the replay's prompt differs from the recorded one.
        result = await durable.run(ctx, f"hi, execution {seen['workflow']}")
        await ctx.sleep(0.1)
        return result.output

    async with app:
        handle = await app.start(greet, run_id="r1")
        with pytest.raises(RunNeedsAttentionError):
            await handle.result(timeout=30)
        run = await app.get_run("r1")
        recorded = await load_request(app, "r1", 1)
    assert run.error is not None and run.error["type"] == "NondeterminismError"
    assert "at seq 1" in run.error["message"] and "function:respond:" in run.error["message"]
    # The message names the messages by hash; the recorded request says what they were.
    assert recorded["messages"][0]["parts"][0]["content"] == "hi, execution 1"
    assert seen["model"] == 1  # the diverging request was never sent


async def test_an_override_of_the_model_around_the_app_is_the_model_made_durable(
    db_url: str,
) -> None:
    app = App(db_url, poll_interval=POLL)

    def never(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        raise AssertionError("the overridden model was asked")

    agent: Agent[None, str] = Agent(FunctionModel(never))
    durable = TetherAgent(agent)

    @app.workflow
    async def greet(ctx: Context) -> str:
        result = await durable.run(ctx, "hi")
        return result.output

    with agent.override(model=TestModel(custom_output_text="from the test model")):
        async with app:
            output = await (await app.start(greet, run_id="r1")).result(timeout=30)
            journal = await app.get_journal("r1")
    assert output == "from the test model"
    assert [(e.kind, e.name) for e in journal] == [("model", "test")]


async def test_a_failed_model_request_is_retried_by_the_runtime(db_url: str) -> None:
    app = App(db_url, poll_interval=POLL)
    seen = Counter()

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        seen.hit("model")
        if seen["model"] == 1:
            raise ConnectionError("the provider hung up")
        return ModelResponse(parts=[TextPart("hello")])

    durable = TetherAgent(Agent(FunctionModel(respond)), model_retries=1)

    @app.workflow
    async def greet(ctx: Context) -> str:
        result = await durable.run(ctx, "hi")
        return result.output

    async with app:
        assert await (await app.start(greet, run_id="r1")).result(timeout=30) == "hello"
        [entry] = await app.get_journal("r1")
    assert entry.kind == "model" and entry.attempts == 2 and seen["model"] == 2


async def test_a_model_request_that_fails_fails_the_run_the_same_on_replay(db_url: str) -> None:
    app = App(db_url, poll_interval=POLL)
    seen = Counter()

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        seen.hit("model")
        raise ConnectionError("the provider hung up")

    durable = TetherAgent(Agent(FunctionModel(respond)))

    @app.workflow
    async def greet(ctx: Context) -> str:
        try:
            result = await durable.run(ctx, "hi")
        except StepFailedError as exc:
            await ctx.sleep(0.1)  # replayed: the recorded failure is raised again
            return f"{exc.error_type}: {exc.error_message}"
        return result.output

    async with app:
        output = await (await app.start(greet, run_id="r1")).result(timeout=30)
        [entry, _] = await app.get_journal("r1")
    assert output == "ConnectionError: the provider hung up"
    assert entry.kind == "model" and entry.status.value == "failed"
    assert seen["model"] == 1


async def test_outside_a_workflow_it_says_so() -> None:
    durable = TetherAgent(Agent(TestModel()))
    with pytest.raises(NotInWorkflowError, match=r"TetherAgent\.run was called outside a workflow"):
        await durable.run(None, "hi")  # type: ignore[arg-type]


async def test_streaming_is_refused_with_what_to_use_instead(db_url: str) -> None:
    durable = TetherAgent(Agent(TestModel()))
    with pytest.raises(StreamingNotSupportedError, match=r"durable\.run\(ctx, prompt\)"):
        durable.run_stream("hi")

    app = App(db_url, poll_interval=POLL)

    async def handler(ctx: Any, events: Any) -> None:
        async for _ in events:
            pass

    @app.workflow
    async def chat(ctx: Context) -> str:
        result = await durable.run(ctx, "hi", event_stream_handler=handler)
        return str(result.output)

    async with app:
        handle = await app.start(chat, run_id="r1")
        with pytest.raises(Exception, match="StreamingNotSupportedError"):
            await handle.result(timeout=30)
        run = await app.get_run("r1")
    assert run.status is RunStatus.FAILED
    assert run.error is not None and "event_stream_handler" in run.error["message"]

    # Whatever asks the model for a stream (a capability, iter with node streaming) hears
    # the same, before anything is sent.
    model = _DurableModel(TestModel(), retries=0)
    with pytest.raises(StreamingNotSupportedError, match=r"TetherAgent\.run"):
        async with model.request_stream([], None, ModelRequestParameters()):
            pass


def test_effects_must_be_effect_kinds_and_not_name_tether_tools(tmp_path: Path) -> None:
    app = App(f"sqlite:///{tmp_path / 'x.db'}")

    @app.tool(effect=Effect.READ)
    async def look(q: str) -> str:
        return q

    agent: Agent[None, str] = Agent(TestModel())
    with pytest.raises(Exception, match="effect kind must be"):
        TetherAgent(agent, effects={"search": "maybe"})
    with pytest.raises(Exception, match="declares its own effect"):
        TetherAgent(agent, tools=[look], effects={"look": Effect.READ})


def test_import_tether_does_not_import_pydantic_ai_and_a_missing_one_says_what_to_install() -> None:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "src")}
    check = "import sys, tether, tether.integrations; assert 'pydantic_ai' not in sys.modules"
    subprocess.run([sys.executable, "-c", check], check=True, env=env, timeout=60)
    missing = (
        "import sys; sys.modules['pydantic_ai'] = None\n"
        "try:\n"
        "    import tether.integrations.pydantic_ai\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", missing],
        check=True,
        env=env,
        timeout=60,
        capture_output=True,
        text=True,
    ).stdout
    assert "pip install 'tether[pydantic-ai]'" in out
