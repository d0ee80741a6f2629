"""Pydantic AI agents inside Tether workflows: every model request a journal entry, every
tool call through the effect log.

``TetherAgent`` wraps a ``pydantic_ai.Agent`` the way Pydantic AI's own durable wrappers
(DBOS, Temporal, Prefect) do: for the length of one run it swaps the agent's model for one
whose ``request`` is a durable call (kind ``model``, named after the model), and each of
the agent's toolsets for one whose ``call_tool`` is a Tether tool call with a declared
effect kind (intent, call, completion; an idempotency key; recovery by kind after a crash).
Tether tools (``@app.tool``) can be handed to the agent as they are.

What the model and the tools return is recorded as JSON with Pydantic AI's own type
adapters, and the agent always continues from the recorded value, live and on replay, so
a replayed run sees exactly what the first execution saw. The request recorded with each
model call leaves out what differs on every execution (timestamps, Pydantic AI's run and
conversation ids), so that replay can check that the agent asks what it asked before.
"""

from __future__ import annotations

import contextvars
import inspect
import json
import keyword
import typing
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import pydantic
import pydantic_core

try:
    from pydantic_ai import exceptions as _pai_errors
    from pydantic_ai import messages as _pai_messages
    from pydantic_ai.agent import Agent, AgentRunResult
    from pydantic_ai.exceptions import ApprovalRequired, CallDeferred, ModelRetry
    from pydantic_ai.messages import (
        ModelMessage,
        ModelMessagesTypeAdapter,
        ModelResponse,
        ToolReturn,
        UserContent,
    )
    from pydantic_ai.models import Model, ModelRequestParameters, StreamedResponse, infer_model
    from pydantic_ai.models.wrapper import WrapperModel
    from pydantic_ai.settings import ModelSettings
    from pydantic_ai.tools import RunContext, Tool
    from pydantic_ai.toolsets import AbstractToolset, FunctionToolset, ToolsetTool, WrapperToolset
    from pydantic_ai.usage import RequestUsage
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError(
        "tether.integrations.pydantic_ai needs Pydantic AI (pydantic-ai-slim 1.0 or newer): "
        "pip install 'tether[pydantic-ai]'"
    ) from exc

from .._errors import ApprovalRejectedError, TetherError, ToolDeniedError, ToolFailedError
from .._records import Decision, Effect
from ..engine import App, Context
from ..engine import Tool as TetherTool
from ..engine._context import current_context
from ..engine._registry import make_step
from ..engine._tools import KEY_PARAM, ToolDef, make_tool
from ..storage._rows import blob_hash

__all__ = ["StreamingNotSupportedError", "TetherAgent", "idempotency_key", "load_request"]

AgentDepsT = TypeVar("AgentDepsT")
OutputDataT = TypeVar("OutputDataT")

# A tool call that tells the model it failed without asking it to retry; Pydantic AI
# before 2.x has no such exception, and a retry prompt is the closest it has.
_TOOL_FAILED: type[Exception] = getattr(_pai_errors, "ToolFailed", ModelRetry)
# What a tool may return, with Pydantic AI's rehydration of files and images, where the
# installed version has it.
_CONTENT: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(
    getattr(_pai_messages, "ToolReturnContent", Any),
    config=pydantic.ConfigDict(ser_json_bytes="base64", val_json_bytes="base64"),
)
_TOOL_RETURN: pydantic.TypeAdapter[ToolReturn] = pydantic.TypeAdapter(ToolReturn)
_USAGE: pydantic.TypeAdapter[RequestUsage] = pydantic.TypeAdapter(RequestUsage)
# Differ on every execution of the same request: left out of what a model call records.
_VOLATILE = frozenset({"timestamp", "run_id", "conversation_id"})
# How a recorded tool call ended (see _capture).
_OUTCOMES = frozenset(
    {"return", "tool_return", "retry", "failed", "approval_required", "deferred", "invalid"}
)
_KEY: contextvars.ContextVar[str | None] = contextvars.ContextVar("tether_pai_key", default=None)


class StreamingNotSupportedError(TetherError):
    """A streamed model request inside a Tether workflow: a stream cannot be recorded and
    replayed as one journal entry. Use ``TetherAgent.run`` without an
    ``event_stream_handler``."""

    code = "streaming_not_supported"


def idempotency_key() -> str:
    """The idempotency key of the tool call in progress: call it from the body of a
    Pydantic AI tool that ``TetherAgent`` runs. Stable for that call across retries and
    crashes, like the key a Tether tool receives as its ``idempotency_key`` parameter."""
    key = _KEY.get()
    if key is None:
        raise TetherError(
            "idempotency_key() was called outside a tool call made through TetherAgent.run"
        )
    return key


class TetherAgent(Generic[AgentDepsT, OutputDataT]):
    """A ``pydantic_ai.Agent`` that runs durably inside a Tether workflow.

    ``await durable.run(ctx, prompt, **options)`` runs the agent (``options`` are those of
    ``Agent.run``) and returns its ``AgentRunResult``. Each model request is one journal
    entry of kind ``model``; each call of one of the agent's own tools is a Tether tool
    call whose effect kind is ``effects[tool_name]``, else ``default_effect``
    (IRREVERSIBLE unless said otherwise: a tool nobody classified is never repeated after
    a crash without someone deciding). ``tools`` adds Tether tools (``@app.tool``), which
    keep everything they declare: effect, approval, reconcile hook, secrets, retries.
    ``model_retries``: how many times a failed model request is tried again (with
    backoff) before the failure is recorded.
    """

    def __init__(
        self,
        agent: Agent[AgentDepsT, OutputDataT],
        *,
        tools: Sequence[TetherTool[Any, Any]] = (),
        effects: Mapping[str, Effect | str] | None = None,
        default_effect: Effect | str = Effect.IRREVERSIBLE,
        model_retries: int = 0,
    ) -> None:
        if not isinstance(agent, Agent):
            raise TypeError(f"TetherAgent wraps a pydantic_ai.Agent, not {agent!r}")
        if model_retries < 0:
            raise TetherError("model_retries must be >= 0")
        self.wrapped = agent
        self.model_retries = model_retries
        self.default_effect = _effect(default_effect, "default_effect")
        self.effects = {name: _effect(kind, name) for name, kind in (effects or {}).items()}
        clash = sorted(set(self.effects) & {tool.name for tool in tools})
        if clash:
            raise TetherError(
                f"effects names Tether tools {clash}: a Tether tool declares its own effect "
                "in @app.tool(effect=...)"
            )
        self.tools = tuple(tools)
        self._tether_toolset: FunctionToolset[Any] | None = (
            FunctionToolset([_pydantic_tool(tool) for tool in tools]) if tools else None
        )

    def __repr__(self) -> str:
        return f"<TetherAgent {self.wrapped.name or self.wrapped!r}>"

    async def run(
        self,
        ctx: Context,
        user_prompt: str | Sequence[UserContent] | None = None,
        **options: Any,
    ) -> AgentRunResult[Any]:
        """Run the agent in the workflow whose Context is ``ctx``; ``options`` are the
        keyword arguments of ``pydantic_ai.Agent.run`` (``output_type``, ``deps``,
        ``message_history``, ``model``, ``toolsets``, ``usage_limits``...)."""
        if current_context("TetherAgent.run") is not ctx:
            raise TetherError("TetherAgent.run takes the Context of the workflow it runs in")
        if options.get("event_stream_handler") is not None:
            raise StreamingNotSupportedError(
                "TetherAgent.run does not take an event_stream_handler: a streamed model "
                "request cannot be recorded and replayed as one journal entry"
            )
        if options.get("capabilities"):
            raise TetherError(
                "TetherAgent.run does not take capabilities: toolsets they bring would bypass "
                "the journal; give them to the Agent when you create it"
            )
        model = _DurableModel(self._model(options.pop("model", None)), self.model_retries)
        toolsets: list[AbstractToolset[Any]] = [
            _DurableToolset(toolset, self.effects, self.default_effect)
            for toolset in [*self.wrapped.toolsets, *(options.pop("toolsets", None) or ())]
        ]
        if self._tether_toolset is not None:
            toolsets.append(self._tether_toolset)
        # The agent's own function tools are in `toolsets` (wrapped): `tools=[]` keeps them
        # from being offered a second time, unwrapped.
        with self.wrapped.override(model=model, toolsets=toolsets, tools=[]):
            result: AgentRunResult[Any] = await self.wrapped.run(user_prompt, **options)
        return result

    def run_stream(self, *args: Any, **kwargs: Any) -> Any:
        """Not supported: a stream cannot be recorded as one journal entry. Use ``run``."""
        raise StreamingNotSupportedError(
            "TetherAgent does not stream: a streamed model request cannot be recorded and "
            "replayed as one journal entry. Use 'await durable.run(ctx, prompt)'"
        )

    def _model(self, model: Model | str | None) -> Model:
        # Pydantic AI's own order: an override around the run, the run's, the agent's.
        chosen = _overridden_model(self.wrapped)
        if chosen is None:
            chosen = model if model is not None else self.wrapped.model
        if chosen is None:
            raise TetherError(
                "the agent has no model: give one to the Agent, or pass model= to run"
            )
        return chosen if isinstance(chosen, Model) else infer_model(chosen)


def _overridden_model(agent: Agent[Any, Any]) -> Model | str | None:
    """The model of an ``agent.override(model=...)`` around the run (tests use it to put
    in a TestModel): it is the one the run would use, so the one to make durable. Read
    from Pydantic AI's private context variable, where the installed version has it."""
    override = getattr(agent, "_override_model", None)
    if not isinstance(override, contextvars.ContextVar):
        return None
    some = override.get()
    value = getattr(some, "value", None)
    return value if isinstance(value, Model | str) else None


def _effect(kind: Effect | str, what: str) -> Effect:
    try:
        return Effect(kind)
    except ValueError:
        raise TetherError(
            f"{what}: the effect kind must be Effect.READ, Effect.IDEMPOTENT or "
            f"Effect.IRREVERSIBLE, not {kind!r}"
        ) from None


# -- model requests -------------------------------------------------------------------
class _DurableModel(WrapperModel):
    """A model whose requests are durable calls: recorded once, replayed after a crash."""

    def __init__(self, wrapped: Model, retries: int) -> None:
        super().__init__(wrapped)
        self._retries = retries
        # One instance per TetherAgent.run: the conversation is stored content-addressed,
        # each request naming the previous one (by seq) and the hashes of what it added.
        self._sent: list[str] = []  # hashes of the previous request's messages
        self._after: int | None = None  # seq of the previous request
        self._stored: set[str] = set()  # hashes already written as blobs by this run

    async def request(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
    ) -> ModelResponse:
        ctx = current_context("model", self.model_name)
        model = self

        async def call_model(request: dict[str, Any]) -> dict[str, Any]:
            # The live request, not its record: the record leaves out timestamps and ids.
            response = await super(_DurableModel, model).request(
                messages, model_settings, model_request_parameters
            )
            return _dump_message(response)

        step = self._step(call_model, self.model_name)
        record, blobs = self._addressed(
            _request_record(messages, model_settings, model_request_parameters)
        )
        pending = ctx._call_step(step, (record,), {}, kind="model", blobs=blobs)
        self._after = ctx.seq
        data = await pending
        # The recorded response, live as on replay: both executions go on from the same value.
        response = ModelMessagesTypeAdapter.validate_python([data])[0]
        if not isinstance(response, ModelResponse):  # pragma: no cover - a corrupt journal
            raise TetherError(f"the journal holds no model response for {self.model_name!r}")
        return response

    async def count_tokens(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
    ) -> RequestUsage:
        ctx = current_context("model", self.model_name)
        model = self

        async def count(request: dict[str, Any]) -> dict[str, Any]:
            usage = await super(_DurableModel, model).count_tokens(
                messages, model_settings, model_request_parameters
            )
            data: dict[str, Any] = _USAGE.dump_python(usage, mode="json")
            return data

        step = self._step(count, f"{self.model_name}:count_tokens")
        record = _request_record(messages, model_settings, model_request_parameters)
        return _USAGE.validate_python(await ctx._call_step(step, (record,), {}))

    @asynccontextmanager
    async def request_stream(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
        run_context: RunContext[Any] | None = None,
    ) -> AsyncIterator[StreamedResponse]:
        raise StreamingNotSupportedError(
            f"model {self.model_name!r} was asked for a stream inside a Tether workflow; a "
            "stream cannot be recorded and replayed as one journal entry. Use "
            "TetherAgent.run, without an event_stream_handler (neither on the run nor on "
            "the Agent), not run_stream or iter with node streaming"
        )
        yield  # pragma: no cover - makes this an async generator

    def _addressed(
        self, record: dict[str, Any]
    ) -> tuple[dict[str, Any], tuple[tuple[str, str], ...]]:
        """The record with its messages and tool definitions replaced by content hashes
        (only the messages added since this run's previous request), and the blobs to
        store with it: an entry costs what its turn added, not the whole conversation."""
        texts = [_canonical(message) for message in record["messages"]]
        parameters = _canonical(record["model_request_parameters"])
        hashes = [blob_hash(text) for text in texts]
        blobs: list[tuple[str, str]] = []
        for digest, text in zip(
            [*hashes, blob_hash(parameters)], [*texts, parameters], strict=True
        ):
            if digest not in self._stored:
                self._stored.add(digest)
                blobs.append((digest, text))
        extends = self._after is not None and hashes[: len(self._sent)] == self._sent
        addressed = dict(record)
        addressed["after"] = self._after if extends else None
        addressed["messages"] = hashes[len(self._sent) :] if extends else hashes
        addressed["model_request_parameters"] = blob_hash(parameters)
        self._sent = hashes
        return addressed, tuple(blobs)

    def _step(self, fn: Callable[..., Awaitable[Any]], name: str) -> Any:
        return make_step(
            fn, name, retries=self._retries, backoff=1.0, backoff_max=60.0, timeout=None
        )


async def load_request(app: App, run_id: str, seq: int) -> dict[str, Any]:
    """The request the model call at ``seq`` of ``run_id`` sent, put back together from
    the journal and the blob store: ``messages`` (Pydantic AI's JSON form, timestamps and
    ids left out), ``model_settings`` and ``model_request_parameters``."""
    entries = {entry.seq: entry for entry in await app.get_journal(run_id)}

    def record_at(at: int) -> dict[str, Any]:
        entry = entries.get(at)
        args = entry.input.get("args") if entry is not None and entry.kind == "model" else None
        if not isinstance(args, list) or not args or not isinstance(args[0], dict):
            raise TetherError(f"run {run_id!r} has no model call at seq {at}", seq=at)
        record: dict[str, Any] = args[0]
        return record

    record = record_at(seq)
    chain, current = [], record
    while True:
        chain.append(current["messages"])
        if current.get("after") is None:
            break
        current = record_at(current["after"])
    hashes = [digest for part in reversed(chain) for digest in part]
    texts = await app.blobs([*hashes, record["model_request_parameters"]])
    missing = [digest for digest in hashes if digest not in texts]
    if missing or record["model_request_parameters"] not in texts:
        raise TetherError(f"run {run_id!r} seq {seq}: part of its request is not stored")
    full = {k: v for k, v in record.items() if k != "after"}
    full["messages"] = [json.loads(texts[digest]) for digest in hashes]
    full["model_request_parameters"] = json.loads(texts[record["model_request_parameters"]])
    return full


def _canonical(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _dump_message(message: ModelMessage) -> dict[str, Any]:
    data: dict[str, Any] = ModelMessagesTypeAdapter.dump_python([message], mode="json")[0]
    return data


def _request_record(
    messages: Sequence[ModelMessage],
    settings: ModelSettings | None,
    parameters: ModelRequestParameters,
) -> dict[str, Any]:
    """What a model call records as its input, the same on every execution of the run."""
    dumped = ModelMessagesTypeAdapter.dump_python(list(messages), mode="json")
    for message in dumped:
        for part in message.get("parts", ()):
            if isinstance(part, dict):
                _drop_volatile(part)
        _drop_volatile(message)
    record: dict[str, Any] = {"messages": dumped}
    if settings:
        jsonable = _jsonable(dict(settings))
        headers = jsonable.get("extra_headers")
        if isinstance(headers, dict):  # credentials ride here: never into the journal
            jsonable["extra_headers"] = dict.fromkeys(headers, "[redacted]")
        record["model_settings"] = jsonable
    record["model_request_parameters"] = _jsonable(parameters)
    return record


def _drop_volatile(data: dict[str, Any]) -> None:
    for key in _VOLATILE & data.keys():
        del data[key]


def _jsonable(value: Any) -> Any:
    # An object with no JSON form is recorded by its type: never a repr with an address,
    # which would differ on replay.
    return pydantic_core.to_jsonable_python(
        value, fallback=lambda v: f"<{type(v).__qualname__}>", bytes_mode="base64"
    )


# -- the agent's own tools ------------------------------------------------------------
@dataclass
class _DurableToolset(WrapperToolset[Any]):
    """A toolset whose every call is a Tether tool call: the call and what came of it
    (a value, or Pydantic AI's retry, failure and deferral signals) are recorded."""

    effects: Mapping[str, Effect] = field(default_factory=dict)
    default_effect: Effect = Effect.IRREVERSIBLE

    async def call_tool(
        self, name: str, tool_args: dict[str, Any], ctx: RunContext[Any], tool: ToolsetTool[Any]
    ) -> Any:
        tctx = current_context("tool", name)
        wrapped = self.wrapped

        async def body(**recorded: Any) -> Any:
            # Called with the recorded arguments; the tool gets the live (validated) ones.
            token = _KEY.set(recorded[KEY_PARAM])
            try:
                return await _capture(wrapped.call_tool(name, tool_args, ctx, tool))
            finally:
                _KEY.reset(token)

        definition, arguments = _tool_def(
            name, self.effects.get(name, self.default_effect), body, tool_args
        )
        outcome = await tctx._call_tool(definition, (), arguments)
        return _replay(outcome)


def _tool_def(
    name: str, effect: Effect, body: Callable[..., Any], arguments: dict[str, Any]
) -> tuple[ToolDef, dict[str, Any]]:
    """A Tether tool for one call; the call's arguments are recorded by name when they are
    names a Python function could take, else as one ``arguments`` object."""
    flat = all(
        isinstance(k, str) and k.isidentifier() and not keyword.iskeyword(k) and k != KEY_PARAM
        for k in arguments
    )
    names = list(arguments) if flat else ["arguments"]
    params = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY) for n in [*names, KEY_PARAM]]
    body.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    definition = make_tool(
        body,
        name,
        effect=effect,
        approval=Decision.AUTO,
        blast_radius=None,
        reconcile=None,
        secret_params=(),
        untrusted_output=False,
        retries=0,
        backoff=1.0,
        backoff_max=60.0,
        timeout=None,
    )
    return definition, dict(arguments) if flat else {"arguments": dict(arguments)}


async def _capture(call: Awaitable[Any]) -> Any:
    """What came of a tool call, as JSON: its value, or the signal it raised for the agent
    (``{"outcome": ...}``). A value that looks like such a signal is wrapped, so that it
    cannot be taken for one."""
    try:
        value = await call
    except ModelRetry as exc:
        return {"outcome": "retry", "message": exc.message}
    except ApprovalRequired as exc:
        return {"outcome": "approval_required", "metadata": getattr(exc, "metadata", None)}
    except CallDeferred as exc:
        deferred = {"outcome": "deferred", "metadata": getattr(exc, "metadata", None)}
        kind = getattr(exc, "kind", "external")  # 2.x: "question" asks a person
        return deferred | ({"kind": kind} if kind != "external" else {})
    except pydantic.ValidationError as exc:
        errors = [
            {
                "type": e["type"],
                "loc": list(e["loc"]),
                "msg": e["msg"],
                "input": _jsonable(e.get("input")),
            }
            for e in exc.errors(include_url=False, include_context=False)
        ]
        return {"outcome": "invalid", "title": exc.title, "errors": errors}
    except _TOOL_FAILED as exc:
        return {"outcome": "failed", "message": str(exc)}
    if isinstance(value, ToolReturn):
        return {"outcome": "tool_return", "value": _TOOL_RETURN.dump_python(value, mode="json")}
    data = _CONTENT.dump_python(value, mode="json")
    return {"outcome": "return", "value": data} if _is_outcome(data) else data


def _is_outcome(data: Any) -> bool:
    return isinstance(data, dict) and data.get("outcome") in _OUTCOMES


def _replay(outcome: Any) -> Any:
    """Give the agent what the recorded call came to: its value (recorded by the call, or
    given by a person with ``tether resolve --done``), or the signal it raised."""
    if not _is_outcome(outcome):
        return _CONTENT.validate_python(outcome)
    kind = outcome["outcome"]
    if kind == "return":
        return _CONTENT.validate_python(outcome["value"])
    if kind == "tool_return":
        return _TOOL_RETURN.validate_python(outcome["value"])
    if kind == "retry":
        raise ModelRetry(outcome["message"])
    if kind == "failed":
        raise _TOOL_FAILED(outcome["message"])
    if kind in ("approval_required", "deferred"):
        signal = ApprovalRequired if kind == "approval_required" else CallDeferred
        # Only what was there: Pydantic AI 1.x takes neither metadata nor kind.
        given = {k: outcome[k] for k in ("metadata", "kind") if outcome.get(k) is not None}
        raise signal(**given)
    if kind == "invalid":
        raise pydantic.ValidationError.from_exception_data(
            outcome["title"],
            [
                {
                    "type": pydantic_core.PydanticCustomError(
                        e["type"], "{message}", {"message": e["msg"]}
                    ),
                    "loc": tuple(e["loc"]),
                    "input": e["input"],
                }
                for e in outcome["errors"]
            ],
        )
    raise AssertionError(f"unhandled tool outcome {kind!r}")  # pragma: no cover


# -- Tether tools offered to the agent -------------------------------------------------
def _pydantic_tool(tool: TetherTool[Any, Any]) -> Tool[Any]:
    """A Pydantic AI tool that makes a Tether tool's durable call: Pydantic AI describes
    and validates the parameters (from the type hints, without ``idempotency_key``), and
    Tether records intent and completion and passes the key."""
    definition = tool.definition
    try:
        hints = typing.get_type_hints(definition.body.fn, include_extras=True)
    except Exception:  # unresolvable forward references: the parameters are untyped JSON
        hints = {}
    hints.pop(KEY_PARAM, None)
    params = [
        p.replace(annotation=hints.get(p.name, Any))
        for p in definition.call_signature.parameters.values()
    ]

    async def call(**arguments: Any) -> Any:
        try:
            return await tool(**arguments)
        except ToolFailedError as exc:
            if exc.fields.get("error_type") == "ModelRetry":  # the tool asked the model to retry
                raise ModelRetry(str(exc.fields.get("error_message") or "")) from None
            if isinstance(exc, ToolDeniedError | ApprovalRejectedError):
                raise _TOOL_FAILED(str(exc)) from None  # the model hears no, and adapts
            raise

    call.__name__ = call.__qualname__ = definition.name
    call.__module__ = getattr(definition.body.fn, "__module__", __name__)
    call.__doc__ = definition.body.fn.__doc__
    call.__annotations__ = {p.name: p.annotation for p in params} | {
        "return": hints.get("return", Any)
    }
    call.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    return Tool(call, name=definition.name, takes_ctx=False)
