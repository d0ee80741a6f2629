"""``Agent``: the model/tool loop inside a workflow, every model call a journal entry.

Each model call is recorded once (kind ``model``, named after the model) with its request,
response, token usage, cost estimate and latency, and replayed from the journal after a
crash: the model is never asked again for an answer the run already has. The conversation
is stored content-addressed (see ``_conversation``): an entry costs what its turn added.
Each tool call the model chooses goes through the effect log (the tool's own durable
call); arguments that do not validate go back to the model as a tool error, never as an
exception in the workflow. A provider that is unavailable (rate limited, overloaded, a
5xx) is asked again by the runtime, with backoff, never sooner than its Retry-After. A
``Budget`` stops the run for a person when it is reached (``tether budget`` resumes it).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import pydantic

from .._errors import BudgetExceededError, TetherError, ToolFailedError
from .._serde import dumps
from ..engine import Context, Tool
from ..engine._context import BUDGET_SIGNAL, current_context
from ..engine._registry import StepDef
from ..engine._retry import backoff_delay
from ..storage._rows import blob_hash
from ._conversation import Conversation, tools_blob
from ._messages import Message, ModelRequest, ModelResponse, ToolCall, ToolSpec, Usage
from ._model import Model, ModelUnavailableError

__all__ = ["Agent", "AgentResult", "Budget", "MaxTurnsError"]

log = logging.getLogger("tether.agent")

T = TypeVar("T")


class MaxTurnsError(TetherError):
    """The agent used all its turns without a final answer."""

    code = "max_turns"


@dataclass(frozen=True, slots=True)
class Budget:
    """Limits on what one ``agent.run`` may spend: total tokens (input + output) and the
    estimated cost in US dollars (from the model's price). Checked before every model
    call; reaching one stops the run as ``needs_attention`` with what was spent."""

    tokens: int | None = None
    cost_usd: float | None = None

    def __post_init__(self) -> None:
        if self.tokens is not None and (
            isinstance(self.tokens, bool) or not isinstance(self.tokens, int) or self.tokens < 1
        ):
            raise TetherError(f"Budget tokens must be a whole number >= 1, not {self.tokens!r}")
        if self.cost_usd is not None and (
            isinstance(self.cost_usd, bool)
            or not isinstance(self.cost_usd, int | float)
            or not self.cost_usd > 0
            or math.isinf(self.cost_usd)
        ):
            raise TetherError(f"Budget cost_usd must be a number > 0, not {self.cost_usd!r}")

    def reached(self, usage: Usage, cost: float) -> str | None:
        """Which limit the spending has reached, if any."""
        if self.tokens is not None and usage.total_tokens >= self.tokens:
            return f"{usage.total_tokens} of {self.tokens} tokens"
        if self.cost_usd is not None and cost >= self.cost_usd:
            return f"${cost:.4f} of ${self.cost_usd:.4f}"
        return None

    def as_dict(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "cost_usd": self.cost_usd}


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
    ``output_retries`` times. ``budget`` limits tokens and cost. ``model_retries``: how
    many times an unavailable provider is asked again (backoff from ``model_backoff``
    seconds, doubling up to ``model_backoff_max``, never sooner than its Retry-After);
    ``model_timeout``: seconds one request may take (a timeout counts as unavailable).
    ``settings`` go to the model with every request (temperature, max_tokens, ...)."""

    def __init__(
        self,
        model: Model,
        tools: Sequence[Tool[Any, Any]] = (),
        instructions: str = "",
        *,
        max_turns: int = 10,
        budget: Budget | None = None,
        output_type: type[T] | None = None,
        output_retries: int = 2,
        model_retries: int = 4,
        model_backoff: float = 1.0,
        model_backoff_max: float = 60.0,
        model_timeout: float | None = None,
        settings: dict[str, Any] | None = None,
    ) -> None:
        if max_turns < 1 or output_retries < 0 or model_retries < 0:
            raise TetherError("max_turns must be >= 1; output_retries, model_retries >= 0")
        if (
            model_backoff < 0
            or model_backoff_max < 0
            or (model_timeout is not None and model_timeout <= 0)
        ):
            raise TetherError("model_backoff must be >= 0 and model_timeout > 0")
        if budget is not None and not isinstance(budget, Budget):
            raise TetherError(f"budget must be a tether.Budget, not {type(budget).__name__}")
        names = [tool.name for tool in tools]
        if len(set(names)) != len(names):
            raise TetherError(f"tool names must be distinct, got {names}")
        self.model = model
        self.tools = {tool.name: tool for tool in tools}
        self.instructions = instructions
        self.max_turns = max_turns
        self.budget = budget
        self.output_type = output_type
        self.output_retries = output_retries
        self.model_retries = model_retries
        self.model_backoff = model_backoff
        self.model_backoff_max = model_backoff_max
        self.model_timeout = model_timeout
        self.settings = dict(settings or {})
        self._specs = tuple(ToolSpec(**tool.spec) for tool in tools)
        self._tools_blob = tools_blob(self._specs)
        self._adapter = pydantic.TypeAdapter(output_type) if output_type is not None else None

    def __repr__(self) -> str:
        return f"<Agent {self.model.name!r} tools={sorted(self.tools)}>"

    async def run(self, ctx: Context, prompt: str) -> AgentResult[T]:
        if current_context("Agent.run") is not ctx:
            raise TetherError("Agent.run takes the Context of the workflow it runs in")
        conversation = Conversation(self._tools_blob)
        if self.instructions:
            conversation.add(Message.system(self.instructions))
        conversation.add(Message.user(prompt))
        usage = Usage()
        cost = 0.0
        budget = self.budget
        retries_left = self.output_retries
        for turn in range(1, self.max_turns + 1):
            while budget is not None and (reached := budget.reached(usage, cost)):
                budget = await self._over_budget(ctx, budget, reached, usage, cost, turn - 1)
            response, cost_usd = await self._ask(ctx, conversation)
            usage = usage + response.usage
            cost += cost_usd
            calls = response.message.tool_calls
            if calls:
                results = await asyncio.gather(*[self._use(call) for call in calls])
                for message in results:
                    conversation.add(message)
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
                conversation.add(
                    Message.user(f"Your answer is not valid: {exc}. Answer again, as JSON.")
                )
                continue
            return AgentResult(output, tuple(conversation.messages), usage, cost, turn)
        raise MaxTurnsError(
            f"the agent used its {self.max_turns} turns without a final answer; raise "
            "max_turns or look at its conversation",
            turns=self.max_turns,
        )

    async def _ask(self, ctx: Context, conversation: Conversation) -> tuple[ModelResponse, float]:
        """One model call, recorded (content-addressed) or replayed."""
        request = ModelRequest(
            messages=tuple(conversation.messages), tools=self._specs, settings=self.settings
        )
        record, blobs = conversation.record(self.settings)

        async def call_model(record: dict[str, Any]) -> dict[str, Any]:
            return await self._request(request)

        step = StepDef(self.model.name, call_model, True, 0, 0.0, 0.0, None, None)
        pending = ctx._call_step(step, (record,), {}, kind="model", blobs=blobs)
        conversation.sent(ctx.seq)
        output: dict[str, Any] = await pending
        message = Message.model_validate(output["message"])
        conversation.answer(message, output["message_hash"])
        response = ModelResponse(
            message=message,
            usage=Usage.model_validate(output["usage"]),
            model=output["model"],
            stop_reason=output["stop_reason"],
        )
        return response, float(output["cost_usd"])

    async def _request(self, request: ModelRequest) -> dict[str, Any]:
        """Ask the model (retrying while it is unavailable); what the entry records."""
        attempt = 1
        while True:
            started = time.perf_counter()
            try:
                if self.model_timeout is None:
                    response = await self.model.request(request)
                else:
                    try:
                        async with asyncio.timeout(self.model_timeout):
                            response = await self.model.request(request)
                    except TimeoutError:
                        raise ModelUnavailableError(
                            f"{self.model.name} did not answer within {self.model_timeout} s"
                        ) from None
            except ModelUnavailableError as exc:
                if attempt > self.model_retries:
                    raise
                delay = backoff_delay(attempt, self.model_backoff, self.model_backoff_max)
                delay = max(delay, exc.retry_after or 0.0)
                log.info(
                    "%s: attempt %d: %s; asking again in %.3f s",
                    self.model.name,
                    attempt,
                    exc,
                    delay,
                )
                attempt += 1
                await asyncio.sleep(delay)
                continue
            latency_ms = (time.perf_counter() - started) * 1000.0
            message_json = response.message.model_dump_json()
            return {
                "message": response.message.model_dump(mode="json"),
                "message_hash": blob_hash(message_json),
                "usage": response.usage.model_dump(mode="json"),
                "model": response.model or self.model.name,
                "stop_reason": response.stop_reason,
                "cost_usd": self.model.cost_usd(response.usage),
                "latency_ms": round(latency_ms, 3),
                "tries": attempt,
            }

    async def _over_budget(
        self,
        ctx: Context,
        budget: Budget,
        reached: str,
        usage: Usage,
        cost: float,
        turns: int,
    ) -> Budget:
        """Stop the run for a person, or (once they raised it) go on with the new budget."""
        spent = {
            "tokens": usage.total_tokens,
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cost_usd": round(cost, 6),
            "turns": turns,
        }

        def stop() -> BudgetExceededError:
            return BudgetExceededError(
                f"run {ctx.run_id!r}: the agent reached its budget ({reached}) after {turns} "
                f"model calls, having spent {usage.total_tokens} tokens and ${cost:.4f}. "
                f"Raise it to resume where it stopped: 'tether budget {ctx.run_id} --tokens N' "
                "(or --cost-usd X)",
                spent=spent,
                budget=budget.as_dict(),
                model=self.model.name,
            )

        raised = await ctx._hold("budget", self.model.name, BUDGET_SIGNAL, stop)
        limits = raised if isinstance(raised, dict) else {}
        return Budget(tokens=limits.get("tokens"), cost_usd=limits.get("cost_usd"))

    def _use(self, call: ToolCall) -> Any:
        """Start one tool call the model chose (its seq is taken now, in call order) and
        return an awaitable of the tool message that reports it."""
        tool = self.tools.get(call.name)
        if tool is None:
            known = ", ".join(sorted(self.tools)) or "none"
            text = f"unknown tool {call.name!r}; tools: {known}"
            return _done(Message.tool(call.id, text, is_error=True))
        if set(call.arguments) == {"_raw"}:  # an adapter could not parse them as JSON
            text = f"the arguments for {call.name} are not a JSON object: {call.arguments['_raw']}"
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
