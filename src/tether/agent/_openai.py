"""``OpenAIModel``: the OpenAI Chat Completions API, or any server that speaks it.

Needs the ``openai`` SDK (``pip install 'tether[openai]'``); ``tether.agent`` imports this
module only when ``OpenAIModel`` is asked for. Any OpenAI-compatible server works through
``base_url`` (vLLM, Ollama, LM Studio, llama.cpp, LiteLLM, OpenRouter, Groq, ...).

Translation to the wire: messages keep their roles; an assistant's tool calls become
``tool_calls`` with JSON-encoded ``arguments``; a tool message becomes a ``tool`` message
with its ``tool_call_id`` (the wire has no error flag, so a failed call's text starts with
``Error:``); each ``ToolSpec`` becomes a ``function`` tool; settings (``temperature``,
``max_tokens``, ``seed``, a server's own options...) go into the body as they are.

And back: arguments arrive as a JSON string and are parsed. Text that is not a JSON object
(a model can emit broken JSON) is kept, not dropped, as ``{"_raw": text}``: the agent
validates it like any arguments, so a tool with required parameters reports the call to
the model as invalid and the model can try again; and the next request sends the text back
exactly as the model wrote it. ``finish_reason`` becomes the provider-neutral
``stop_reason``: ``stop`` -> ``end_turn``, ``tool_calls`` -> ``tool_calls``, ``length`` ->
``max_tokens``, anything else unchanged.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

import openai

from ._messages import Message, ModelRequest, ModelResponse, ToolCall, ToolSpec, Usage
from ._model import ModelRequestError
from ._pricing import Price
from ._provider import SDKModel

__all__ = ["RAW_ARGUMENTS", "OpenAIModel"]

RAW_ARGUMENTS = "_raw"  # key of tool-call arguments that were not a JSON object

_STOP_REASONS = {
    "stop": "end_turn",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "length": "max_tokens",
}


class OpenAIModel(SDKModel[openai.AsyncOpenAI]):
    """A model behind the Chat Completions API: ``OpenAIModel("gpt-4o-mini")``, or
    ``OpenAIModel("qwen3:8b", base_url="http://localhost:11434/v1", api_key="none")``.

    ``api_key`` defaults to ``OPENAI_API_KEY`` (looked up at the first request; a server
    that needs no key accepts any). ``price`` prices usage (``cost_usd`` is 0.0 without
    it). ``timeout``: seconds one call may take. ``settings``: defaults for every request
    (a request's own settings win). ``client``: an ``openai.AsyncOpenAI`` to use instead of
    building one (its retries are turned off: the runtime retries). ``name``: the name of
    the model's journal entries, ``openai:<model>`` by default."""

    provider = "OpenAI"
    key_env = "OPENAI_API_KEY"
    base_url_env = "OPENAI_BASE_URL"
    default_base_url = "https://api.openai.com/v1"
    reserved = frozenset({"model", "messages", "tools", "stream", "extra_body"})

    def __init__(
        self,
        model: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        price: Price | None = None,
        timeout: float = 60.0,
        settings: Mapping[str, Any] | None = None,
        client: openai.AsyncOpenAI | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(
            model,
            name=name or f"openai:{model}",
            api_key=api_key,
            base_url=base_url,
            price=price,
            timeout=timeout,
            settings=settings,
            client=client,
        )

    async def request(self, request: ModelRequest) -> ModelResponse:
        params: dict[str, Any] = {
            "model": self.model,
            "messages": [_wire_message(message) for message in request.messages],
            "timeout": self.timeout,
        }
        if request.tools:
            params["tools"] = [_wire_tool(tool) for tool in request.tools]
        settings = self._settings(request)
        if settings:
            params["extra_body"] = settings
        client = self._connect()
        try:
            completion = await client.chat.completions.create(**params)
        except openai.APIStatusError as exc:
            raise self._status_error(
                exc.status_code, exc.body, exc.message, exc.response.headers
            ) from exc
        except openai.APIConnectionError as exc:  # APITimeoutError included
            timed_out = isinstance(exc, openai.APITimeoutError)
            raise self._connection_error(exc, timed_out=timed_out) from exc
        return self._response(completion.model_dump())

    def _response(self, data: dict[str, Any]) -> ModelResponse:
        choices = data.get("choices") or []
        if not choices or not isinstance(choices[0].get("message"), dict):
            raise ModelRequestError(
                f"{self.provider} at {self.base_url} answered without a message: "
                f"{json.dumps(data)[:500]}"
            )
        choice, wire = choices[0], choices[0]["message"]
        calls = tuple(
            _tool_call(call)
            for call in wire.get("tool_calls") or ()
            if isinstance(call, dict) and isinstance(call.get("function"), dict)
        )
        finish = choice.get("finish_reason")
        stop = _STOP_REASONS.get(finish, finish) if isinstance(finish, str) else "end_turn"
        if calls and stop == "end_turn":  # some compatible servers say "stop" regardless
            stop = "tool_calls"
        usage = data.get("usage") or {}
        return ModelResponse(
            message=Message.assistant(wire.get("content"), *calls),
            usage=Usage(
                input_tokens=usage.get("prompt_tokens") or 0,
                output_tokens=usage.get("completion_tokens") or 0,
            ),
            model=data.get("model") or self.model,
            stop_reason=stop,
        )

    def _new_client(self, api_key: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            api_key=api_key, base_url=self._base_url, timeout=self.timeout, max_retries=0
        )

    def _without_retries(self, client: openai.AsyncOpenAI) -> openai.AsyncOpenAI:
        return client.with_options(max_retries=0)


def _wire_message(message: Message) -> dict[str, Any]:
    if message.role == "assistant":
        wire: dict[str, Any] = {"role": "assistant", "content": message.content}
        if message.tool_calls:
            wire["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": _arguments_text(call)},
                }
                for call in message.tool_calls
            ]
        elif message.content is None:
            wire["content"] = ""
        return wire
    if message.role == "tool":
        content = message.content or ""
        return {
            "role": "tool",
            "tool_call_id": message.tool_call_id,
            "content": f"Error: {content}" if message.is_error else content,
        }
    return {"role": message.role, "content": message.content or ""}


def _wire_tool(tool: ToolSpec) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name, "parameters": tool.parameters}
    if tool.description:
        function["description"] = tool.description
    return {"type": "function", "function": function}


def _arguments_text(call: ToolCall) -> str:
    raw = call.arguments.get(RAW_ARGUMENTS)
    if isinstance(raw, str) and len(call.arguments) == 1:
        return raw  # what the model wrote, sent back as it was
    return json.dumps(call.arguments, ensure_ascii=False)


def _tool_call(call: dict[str, Any]) -> ToolCall:
    function = call["function"]
    return ToolCall(
        # A few compatible servers leave out the id; the tool message needs one.
        id=call.get("id") or f"call_{uuid.uuid4().hex[:24]}",
        name=str(function.get("name") or ""),
        arguments=_parse_arguments(function.get("arguments")),
    )


def _parse_arguments(text: Any) -> dict[str, Any]:
    if isinstance(text, dict):  # a compatible server that sends an object, not its JSON
        return text
    if text is None or (isinstance(text, str) and not text.strip()):
        return {}  # a call without arguments
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return {RAW_ARGUMENTS: str(text)}
    return value if isinstance(value, dict) else {RAW_ARGUMENTS: str(text)}
