"""``Agent``: the model/tool loop inside a workflow, every model call a journal entry.

Each model call is recorded once (kind ``model``, named after the model) with its request
and response, and replayed from the journal after a crash: the model is never asked again
for an answer the run already has. Each tool call the model chooses goes through the effect
log (the tool's own durable call); arguments that do not validate go back to the model as a
tool error, never as an exception in the workflow.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import pydantic

from .._errors import TetherError, ToolFailedError
from .._serde import dumps
from ..engine import Context, Tool
from ..engine._context import current_context
from ..engine._registry import make_step
from ._messages import Message, ModelRequest, ModelResponse, ToolCall, ToolSpec, Usage
from ._model import Model

__all__ = ["Agent", "AgentResult", "MaxTurnsError"]

T = TypeVar("T")


class MaxTurnsError(TetherError):
    """The agent used all its turns without a final answer."""

    code = "max_turns"


@dataclass(frozen=True, slots=True)
class AgentResult(Generic[T]):
    """What ``agent.run`` returns: the output, the whole conversation, and what it cost."""

    output: T
    messages: tuple[Message, ...]
    usage: Usage
    cost_usd: float
    turns: int


class Agent(Generic[T]):
    """A model with tools and instructions. ``await agent.run(ctx, prompt)`` inside a
    workflow runs turns until the model answers without calling a tool (at most
    ``max_turns`` model calls). With ``output_type``, the final answer must be JSON that
    validates as that type; a failed validation goes back to the model, up to
    ``output_retries`` times."""

    def __init__(
        self,
        model: Model,
        tools: Sequence[Tool[Any, Any]] = (),
        instructions: str = "",
        *,
        max_turns: int = 10,
        output_type: type[T] | None = None,
        output_retries: int = 2,
        model_retries: int = 0,
    ) -> None:
        if max_turns < 1 or output_retries < 0:
            raise TetherError("max_turns must be >= 1 and output_retries >= 0")
        names = [tool.name for tool in tools]
        if len(set(names)) != len(names):
            raise TetherError(f"tool names must be distinct, got {names}")
        self.model = model
        self.tools = {tool.name: tool for tool in tools}
        self.instructions = instructions
        self.max_turns = max_turns
        self.output_type = output_type
        self.output_retries = output_retries
        self._specs = tuple(ToolSpec(**tool.spec) for tool in tools)
        self._adapter = pydantic.TypeAdapter(output_type) if output_type is not None else None

        async def call_model(request: dict[str, Any]) -> ModelResponse:
            return await model.request(ModelRequest.model_validate(request))

        call_model.__name__ = model.name
        self._call = make_step(
            call_model,
            model.name,
            retries=model_retries,
            backoff=1.0,
            backoff_max=60.0,
            timeout=None,
        )

    def __repr__(self) -> str:
        return f"<Agent {self.model.name!r} tools={sorted(self.tools)}>"

    async def run(self, ctx: Context, prompt: str) -> AgentResult[T]:
        if current_context("Agent.run") is not ctx:
            raise TetherError("Agent.run takes the Context of the workflow it runs in")
        messages: list[Message] = []
        if self.instructions:
            messages.append(Message.system(self.instructions))
        messages.append(Message.user(prompt))
        usage = Usage()
        cost = 0.0
        retries_left = self.output_retries
        for turn in range(1, self.max_turns + 1):
            request = ModelRequest(messages=tuple(messages), tools=self._specs)
            response: ModelResponse = await ctx._call_step(
                self._call, (request.model_dump(mode="json"),), {}, kind="model"
            )
            usage = usage + response.usage
            cost += self.model.cost_usd(response.usage)
            messages.append(response.message)
            calls = response.message.tool_calls
            if calls:
                results = await asyncio.gather(*[self._use(call) for call in calls])
                messages.extend(results)
                continue
            try:
                output = self._output(response.message.content)
            except (pydantic.ValidationError, ValueError) as exc:
                if retries_left == 0:
                    raise TetherError(
                        f"the model's final answer does not validate as "
                        f"{getattr(self.output_type, '__name__', self.output_type)}: {exc}"
                    ) from None
                retries_left -= 1
                messages.append(
                    Message.user(f"Your answer is not valid: {exc}. Answer again, as JSON.")
                )
                continue
            return AgentResult(output, tuple(messages), usage, cost, turn)
        raise MaxTurnsError(
            f"the agent used its {self.max_turns} turns without a final answer; raise "
            "max_turns or look at its conversation",
            turns=self.max_turns,
        )

    def _use(self, call: ToolCall) -> Any:
        """Start one tool call the model chose (its seq is taken now, in call order) and
        return an awaitable of the tool message that reports it."""
        tool = self.tools.get(call.name)
        if tool is None:
            known = ", ".join(sorted(self.tools)) or "none"
            text = f"unknown tool {call.name!r}; tools: {known}"
            return _done(Message.tool(call.id, text, is_error=True))
        try:
            arguments = tool.validate(call.arguments)
        except pydantic.ValidationError as exc:
            text = f"invalid arguments for {call.name}: {exc}"
            return _done(Message.tool(call.id, text, is_error=True))
        pending = tool(**arguments)

        async def report() -> Message:
            try:
                result = await pending
            except ToolFailedError as exc:
                return Message.tool(call.id, str(exc), is_error=True)
            return Message.tool(call.id, dumps(result, what=f"result of tool {call.name!r}"))

        return report()

    def _output(self, content: str | None) -> Any:
        if self._adapter is None or self.output_type is str:
            return content or ""
        return self._adapter.validate_json(content or "")


async def _done(message: Message) -> Message:
    return message
