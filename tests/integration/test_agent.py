"""The agent loop on both backends: model calls recorded once and replayed, tool calls
through the effect log, tool errors back to the model, structured output."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest

from tether import App, Context, Effect, RunFailedError
from tether.agent import Agent, Message, ModelRequest, ScriptedModel, ToolCall

POLL = 0.05


class Refund(pydantic.BaseModel):
    order: str
    cents: int


def build(db_url: str, model: ScriptedModel, **options: Any) -> tuple[App, list[str]]:
    app = App(db_url, poll_interval=POLL)
    refunds: list[str] = []

    @app.tool(effect=Effect.READ)
    async def lookup(customer: str) -> dict[str, Any]:
        """Look up a customer's last order."""
        return {"customer": customer, "order": "o-7", "cents": 1250}

    @app.tool(effect=Effect.IRREVERSIBLE)
    async def refund(order: str, cents: int, *, idempotency_key: str) -> str:
        """Refund an order."""
        refunds.append(idempotency_key)
        return f"refunded {cents} on {order}"

    agent: Agent[Any] = Agent(model, [lookup, refund], "You handle refunds.", **options)

    @app.workflow
    async def support(ctx: Context, prompt: str) -> dict[str, Any]:
        result = await agent.run(ctx, prompt)
        await ctx.sleep(0.1)  # parks the run: what follows is a replay of the agent
        output = result.output
        if isinstance(output, pydantic.BaseModel):
            output = output.model_dump()
        return {
            "output": output,
            "turns": result.turns,
            "tokens": result.usage.total_tokens,
            "roles": [m.role for m in result.messages],
        }

    return app, refunds


def script() -> list[Any]:
    return [
        ToolCall(id="c1", name="lookup", arguments={"customer": "ada"}),
        ToolCall(id="c2", name="refund", arguments={"order": "o-7", "cents": 1250}),
        "Refunded 12.50 on o-7.",
    ]


async def test_a_run_records_each_model_call_once_and_replays_it(db_url: str) -> None:
    model = ScriptedModel(script())
    app, refunds = build(db_url, model)
    async with app:
        result = await (await app.start("support", "refund ada", run_id="r1")).result(timeout=30)
        journal = await app.get_journal("r1")
        effects = await app.list_effects("r1")
    assert result["output"] == "Refunded 12.50 on o-7."
    assert result["turns"] == 3 and result["tokens"] > 0
    assert result["roles"] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
        "tool",
        "assistant",
    ]
    assert model.calls == 3  # the replay after the sleep asked the model nothing
    assert len(refunds) == 1
    kinds = [(e.kind, e.name) for e in journal]
    assert kinds == [
        ("model", "scripted"),
        ("tool", "lookup"),
        ("model", "scripted"),
        ("tool", "refund"),
        ("model", "scripted"),
        ("sleep", "sleep"),
    ]
    assert [e.tool for e in effects] == ["lookup", "refund"]
    model_entry = journal[2]
    assert model_entry.output["message"]["tool_calls"][0]["name"] == "refund"
    assert model_entry.output["usage"]["input_tokens"] > 0


async def test_bad_arguments_and_unknown_tools_go_back_to_the_model(db_url: str) -> None:
    def check(request: ModelRequest) -> str:
        last = request.messages[-2:]
        assert all(m.role == "tool" and m.is_error for m in last), last
        return "sorry: " + " | ".join(m.content or "" for m in last)

    model = ScriptedModel(
        [
            [
                ToolCall(id="a", name="refund", arguments={"order": "o-7", "cents": "lots"}),
                ToolCall(id="b", name="wire_money", arguments={}),
            ],
            check,
        ]
    )
    app, refunds = build(db_url, model)
    async with app:
        result = await (await app.start("support", "refund", run_id="r1")).result(timeout=30)
    assert refunds == []
    assert "invalid arguments for refund" in result["output"]
    assert "unknown tool 'wire_money'" in result["output"]


async def test_arguments_that_are_not_json_go_back_to_the_model(db_url: str) -> None:
    # An adapter keeps arguments it cannot parse as {"_raw": text}; the tool is not called,
    # even when every parameter of it has a default.
    def check(request: ModelRequest) -> str:
        last = request.messages[-1]
        assert last.role == "tool" and last.is_error
        return last.content or ""

    model = ScriptedModel(
        [ToolCall(id="a", name="lookup", arguments={"_raw": '{"customer": "ada"'}), check]
    )
    app, _ = build(db_url, model)
    async with app:
        result = await (await app.start("support", "who", run_id="r1")).result(timeout=30)
        effects = await app.list_effects("r1")
    assert result["output"] == 'the arguments for lookup are not a JSON object: {"customer": "ada"'
    assert effects == []


async def test_parallel_tool_calls_in_one_turn(db_url: str) -> None:
    model = ScriptedModel(
        [
            [
                ToolCall(id="a", name="lookup", arguments={"customer": "ada"}),
                ToolCall(id="b", name="lookup", arguments={"customer": "bob"}),
            ],
            lambda request: f"{len([m for m in request.messages if m.role == 'tool'])} found",
        ]
    )
    app, _ = build(db_url, model)
    async with app:
        result = await (await app.start("support", "who", run_id="r1")).result(timeout=30)
        effects = await app.list_effects("r1")
    assert result["output"] == "2 found"
    assert [(e.seq, e.args["customer"]) for e in effects] == [(2, "ada"), (3, "bob")]


async def test_structured_output_is_validated_and_retried(db_url: str) -> None:
    def retry(request: ModelRequest) -> str:
        assert request.messages[-1].role == "user"
        assert "not valid" in (request.messages[-1].content or "")
        return '{"order": "o-7", "cents": 1250}'

    model = ScriptedModel(["about 12 euros", retry])
    app, _ = build(db_url, model, output_type=Refund)
    async with app:
        result = await (await app.start("support", "how much", run_id="r1")).result(timeout=30)
    assert result["output"] == {"order": "o-7", "cents": 1250}
    assert result["turns"] == 2


async def test_running_out_of_turns_fails_the_run_clearly(db_url: str) -> None:
    loop = ToolCall(id="x", name="lookup", arguments={"customer": "ada"})
    model = ScriptedModel([loop, loop, loop])
    app, _ = build(db_url, model, max_turns=2)
    async with app:
        handle = await app.start("support", "loop", run_id="r1")
        with pytest.raises(RunFailedError) as failed:
            await handle.result(timeout=30)
    assert failed.value.error is not None
    assert failed.value.error["type"] == "MaxTurnsError"
    assert "used its 2 turns" in failed.value.error["message"]
    assert model.calls == 2


def test_messages_helpers() -> None:
    assert Message.tool("c", "boom", is_error=True).is_error
