"""The agent layer's message types and ScriptedModel (no network, no keys)."""

from __future__ import annotations

import json

import pydantic
import pytest

from tether.agent import (
    Message,
    Model,
    ModelRequest,
    ModelResponse,
    ScriptedModel,
    ScriptExhaustedError,
    ToolCall,
    ToolSpec,
    Usage,
)


def request(*messages: Message) -> ModelRequest:
    return ModelRequest(messages=messages or (Message.user("hi"),))


async def test_the_conversation_position_picks_the_turn_and_calls_are_counted() -> None:
    lookup = ToolCall(id="c1", name="lookup", arguments={"customer": "ada"})
    model = ScriptedModel(["first", lookup, [lookup, lookup], "done"], price_per_token=0.001)
    assert isinstance(model, Model)
    conversation: list[Message] = [Message.user("hi")]
    answers = []
    for _ in range(4):
        answer = await model.request(ModelRequest(messages=tuple(conversation)))
        answers.append(answer)
        conversation.append(answer.message)
    assert answers[0].message == Message.assistant("first")
    assert answers[0].stop_reason == "end_turn"
    assert answers[1].message.tool_calls == (lookup,) and answers[1].stop_reason == "tool_calls"
    assert answers[2].message.tool_calls == (lookup, lookup)
    assert answers[3].message.content == "done"
    assert model.calls == 4 and len(model.requests) == 4
    # Another conversation (another run, another process) starts from the first turn.
    assert (await model.request(request())).message.content == "first"
    with pytest.raises(ScriptExhaustedError, match="has 4 turns and was asked for turn 5"):
        await model.request(ModelRequest(messages=tuple(conversation)))


async def test_a_turn_can_depend_on_the_request() -> None:
    def echo_tool_result(req: ModelRequest) -> str:
        return f"the tool said {req.messages[-1].content}"

    async def later(req: ModelRequest) -> ToolCall:
        return ToolCall(id="c2", name="again")

    model = ScriptedModel([echo_tool_result, later])
    conversation = (Message.user("go"), Message.tool("c1", "42"))
    answer = await model.request(ModelRequest(messages=conversation))
    assert answer.message.content == "the tool said 42"
    second = ModelRequest(messages=(*conversation, answer.message))
    assert (await model.request(second)).message.tool_calls[0].name == "again"


async def test_usage_is_deterministic_and_priced() -> None:
    model = ScriptedModel(["a", "a"], price_per_token=0.5)
    first = await model.request(request())
    second = await model.request(request())
    assert first.usage == second.usage and first.usage.total_tokens > 0
    assert model.cost_usd(first.usage) == first.usage.total_tokens * 0.5
    assert (first.usage + second.usage).input_tokens == 2 * first.usage.input_tokens


async def test_a_bad_turn_is_a_clear_error() -> None:
    model = ScriptedModel([42])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="a turn is a str, a ToolCall"):
        await model.request(request())


def test_messages_round_trip_through_json() -> None:
    response = ModelResponse(
        message=Message.assistant("ok", ToolCall(id="c", name="t", arguments={"x": [1, 2]})),
        usage=Usage(input_tokens=3, output_tokens=4),
        model="m",
        stop_reason="tool_calls",
    )
    text = response.model_dump_json()
    assert ModelResponse.model_validate(json.loads(text)) == response
    spec = ToolSpec(name="t", parameters={"type": "object", "properties": {}})
    assert ModelRequest(messages=(Message.user("q"),), tools=(spec,)).tools[0].name == "t"
    with pytest.raises(pydantic.ValidationError):
        Message(role="robot", content="x")  # type: ignore[arg-type]
    with pytest.raises(pydantic.ValidationError):
        Message.model_validate({"role": "user", "content": "x", "surprise": 1})
