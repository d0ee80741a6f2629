"""``ScriptedModel``: a deterministic model for tests and demos (no network, no keys).

A script is a list of turns: a string (a final text answer), a ``ToolCall`` or a list of
them (the model asks for those calls), a full ``ModelResponse``, or a function of the
request that returns any of these (to answer according to what the model was told, e.g. a
tool's result). Which turn answers a request is the number of assistant messages already in
its conversation: the first request of a conversation gets turn 1, whatever process asks
and however many other runs use the same model, as a real model would answer the same
conversation. The model counts the calls it answers, so a test can prove that a replay did
not call it again.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from .._errors import TetherError
from ._messages import Message, ModelRequest, ModelResponse, ToolCall, Usage

__all__ = ["ScriptExhaustedError", "ScriptedModel", "Turn"]

Answer = str | ToolCall | Sequence[ToolCall] | ModelResponse
Turn = Answer | Callable[[ModelRequest], Answer | Awaitable[Answer]]


class ScriptExhaustedError(TetherError):
    """A ScriptedModel was asked for more turns than its script has."""

    code = "script_exhausted"


class ScriptedModel:
    """Answers requests from a script, in order. ``price_per_token`` prices usage."""

    def __init__(
        self,
        script: Sequence[Turn],
        *,
        name: str = "scripted",
        price_per_token: float = 0.0,
    ) -> None:
        self.name = name
        self.script = list(script)
        self.price_per_token = price_per_token
        self.calls = 0  # requests answered so far (in this process)
        self.requests: list[ModelRequest] = []

    def __repr__(self) -> str:
        return f"<ScriptedModel {self.name!r}: {len(self.script)} turns, {self.calls} calls>"

    async def request(self, request: ModelRequest) -> ModelResponse:
        index = sum(1 for message in request.messages if message.role == "assistant")
        if index >= len(self.script):
            raise ScriptExhaustedError(
                f"ScriptedModel {self.name!r} has {len(self.script)} turns and was asked for "
                f"turn {index + 1}; add turns to its script"
            )
        turn = self.script[index]
        self.calls += 1
        self.requests.append(request)
        answer: Any = turn(request) if callable(turn) else turn
        if inspect.isawaitable(answer):
            answer = await answer
        return self._response(answer, request)

    def cost_usd(self, usage: Usage) -> float:
        return usage.total_tokens * self.price_per_token

    def _response(self, answer: Any, request: ModelRequest) -> ModelResponse:
        if isinstance(answer, ModelResponse):
            return answer
        if isinstance(answer, str):
            message = Message.assistant(answer)
            stop = "end_turn"
        elif isinstance(answer, ToolCall):
            message, stop = Message.assistant(None, answer), "tool_calls"
        elif isinstance(answer, Sequence) and all(isinstance(a, ToolCall) for a in answer):
            message, stop = Message.assistant(None, *answer), "tool_calls"
        else:
            raise TypeError(
                f"ScriptedModel {self.name!r}: a turn is a str, a ToolCall, "
                f"a list of ToolCalls or a ModelResponse, not {type(answer).__name__}"
            )
        return ModelResponse(
            message=message,
            usage=_usage(request, message),
            model=self.name,
            stop_reason=stop,
        )


def _usage(request: ModelRequest, message: Message) -> Usage:
    """A deterministic token count (about 4 characters a token), so budgets can be tested."""
    asked = sum(len(m.model_dump_json()) for m in request.messages)
    answered = len(message.model_dump_json())
    return Usage(input_tokens=max(1, asked // 4), output_tokens=max(1, answered // 4))
