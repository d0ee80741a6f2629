"""``AnthropicModel``: Anthropic's Messages API.

Needs the ``anthropic`` SDK (``pip install 'tether[anthropic]'``); ``tether.agent`` imports
this module only when ``AnthropicModel`` is asked for.

Translation to the wire: system messages are joined into the ``system`` parameter; an
assistant's text and tool calls become ``text`` and ``tool_use`` blocks; tool messages
become ``tool_result`` blocks (``is_error`` kept) of a user message, the results of one
turn (and any user text that follows them) merged into one user message, as the API
requires; each ``ToolSpec`` becomes a tool with an ``input_schema``. ``max_tokens``, which
the API requires, is the model's ``max_tokens`` unless the settings give one; other
settings (``temperature``, ``top_p``, ``stop_sequences``...) go into the body as they are.

And back: ``text`` blocks are joined into the message's content, ``tool_use`` blocks become
tool calls (other blocks, such as thinking, are left out). Input tokens count those read
from and written to the prompt cache too. ``stop_reason``: ``tool_use`` -> ``tool_calls``,
anything else (``end_turn``, ``max_tokens``, ``stop_sequence``...) unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import anthropic

from ._messages import Message, ModelRequest, ModelResponse, ToolCall, ToolSpec, Usage
from ._model import ModelRequestError
from ._pricing import Price
from ._provider import SDKModel

__all__ = ["AnthropicModel"]


class AnthropicModel(SDKModel[anthropic.AsyncAnthropic]):
    """A model behind Anthropic's Messages API: ``AnthropicModel("claude-sonnet-4-5")``.

    ``api_key`` defaults to ``ANTHROPIC_API_KEY`` (looked up at the first request).
    ``max_tokens``: the most tokens an answer may have (the API requires a limit).
    ``price``, ``timeout``, ``settings``, ``client`` and ``name`` as for ``OpenAIModel``;
    to authenticate otherwise than with a key, hand in a ``client``."""

    provider = "Anthropic"
    key_env = "ANTHROPIC_API_KEY"
    base_url_env = "ANTHROPIC_BASE_URL"
    default_base_url = "https://api.anthropic.com"
    reserved = frozenset({"model", "messages", "system", "tools", "stream", "extra_body"})

    def __init__(
        self,
        model: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        max_tokens: int = 4096,
        price: Price | None = None,
        timeout: float = 60.0,
        settings: Mapping[str, Any] | None = None,
        client: anthropic.AsyncAnthropic | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(
            model,
            name=name or f"anthropic:{model}",
            api_key=api_key,
            base_url=base_url,
            price=price,
            timeout=timeout,
            settings=settings,
            client=client,
        )
        self.max_tokens = max_tokens

    async def request(self, request: ModelRequest) -> ModelResponse:
        settings = self._settings(request)
        params: dict[str, Any] = {
            "model": self.model,
            "max_tokens": settings.pop("max_tokens", self.max_tokens),
            "messages": _wire_messages(request.messages),
            "timeout": self.timeout,
        }
        system = "\n\n".join(
            m.content for m in request.messages if m.role == "system" and m.content
        )
        if system:
            params["system"] = system
        if request.tools:
            params["tools"] = [_wire_tool(tool) for tool in request.tools]
        if settings:
            params["extra_body"] = settings
        client = self._connect()
        try:
            answer = await client.messages.create(**params)
        except anthropic.APIStatusError as exc:
            raise self._status_error(
                exc.status_code, exc.body, exc.message, exc.response.headers
            ) from exc
        except anthropic.APIConnectionError as exc:  # APITimeoutError included
            timed_out = isinstance(exc, anthropic.APITimeoutError)
            raise self._connection_error(exc, timed_out=timed_out) from exc
        return self._response(answer.model_dump())

    def _response(self, data: dict[str, Any]) -> ModelResponse:
        blocks = data.get("content")
        if not isinstance(blocks, list):
            raise ModelRequestError(
                f"{self.provider} at {self.base_url} answered without content: "
                f"{json.dumps(data)[:500]}"
            )
        texts = [b["text"] for b in blocks if b.get("type") == "text" and b.get("text")]
        calls = tuple(
            ToolCall(id=b["id"], name=b["name"], arguments=b.get("input") or {})
            for b in blocks
            if b.get("type") == "tool_use"
        )
        stop = data.get("stop_reason") or "end_turn"
        usage = data.get("usage") or {}
        return ModelResponse(
            message=Message.assistant("".join(texts) if texts else None, *calls),
            usage=Usage(
                input_tokens=sum(
                    usage.get(field) or 0
                    for field in (
                        "input_tokens",
                        "cache_creation_input_tokens",
                        "cache_read_input_tokens",
                    )
                ),
                output_tokens=usage.get("output_tokens") or 0,
            ),
            model=data.get("model") or self.model,
            stop_reason="tool_calls" if stop == "tool_use" else stop,
        )

    def _new_client(self, api_key: str) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(
            api_key=api_key, base_url=self._base_url, timeout=self.timeout, max_retries=0
        )

    def _without_retries(self, client: anthropic.AsyncAnthropic) -> anthropic.AsyncAnthropic:
        return client.with_options(max_retries=0)


def _wire_messages(messages: tuple[Message, ...]) -> list[dict[str, Any]]:
    wire: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "system":
            continue  # the system parameter
        if message.role == "assistant":
            blocks: list[dict[str, Any]] = []
            if message.content:
                blocks.append({"type": "text", "text": message.content})
            blocks.extend(
                {"type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments}
                for call in message.tool_calls
            )
            if blocks:  # the API refuses an empty assistant turn; an empty answer says nothing
                wire.append({"role": "assistant", "content": blocks})
            continue
        if message.role == "tool":
            block: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": message.tool_call_id,
                "content": message.content or "",
            }
            if message.is_error:
                block["is_error"] = True
        elif message.content:
            block = {"type": "text", "text": message.content}
        else:
            continue  # the API refuses empty text blocks
        # The results of one turn's calls must all be in the one user message that follows.
        if wire and wire[-1]["role"] == "user":
            wire[-1]["content"].append(block)
        else:
            wire.append({"role": "user", "content": [block]})
    return wire


def _wire_tool(tool: ToolSpec) -> dict[str, Any]:
    wire: dict[str, Any] = {"name": tool.name, "input_schema": tool.parameters}
    if tool.description:
        wire["description"] = tool.description
    return wire
