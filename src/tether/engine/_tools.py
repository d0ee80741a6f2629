"""Tool definitions: what ``@app.tool`` records about a function, how a call's arguments
are bound, recorded (secrets as keyed hashes) and described as JSON schema."""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pydantic

from .._errors import RegistrationError
from .._records import Decision, Effect
from .._serde import dumps
from ._registry import StepDef, make_step, param_types
from ._secrets import SecretHasher

__all__ = [
    "KEY_PARAM",
    "Done",
    "NotDone",
    "PreparedCall",
    "ToolDef",
    "idempotency_key",
    "make_tool",
    "prepare_call",
    "tool_model",
]

KEY_PARAM = "idempotency_key"


@dataclass(frozen=True, slots=True)
class Done:
    """A reconcile hook's answer: the call did happen, and ``result`` is what it returned."""

    result: Any = None


@dataclass(frozen=True, slots=True)
class NotDone:
    """A reconcile hook's answer: the call certainly did not happen; make it now."""


@dataclass(frozen=True, slots=True)
class ToolDef:
    name: str
    body: StepDef  # the function, its retries, backoff and timeout
    effect: Effect
    approval: Decision
    blast_radius: str | None
    reconcile: Callable[..., Any] | None
    secret_params: frozenset[str]
    untrusted_output: bool
    call_signature: inspect.Signature  # without idempotency_key
    wants_key: bool
    reconcile_wants_key: bool
    description: str
    # Parameter names when every one may be passed by position and none has a default:
    # positional calls then bind without inspect (the common case, kept cheap).
    simple: tuple[str, ...] | None = None
    # An approval's deadline in seconds (None: none) and what then happens.
    approval_timeout: float | None = None
    on_timeout: str = "reject"


@dataclass(frozen=True, slots=True)
class PreparedCall:
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    record: dict[str, Any]  # parameter name -> value, secrets replaced by their hashes
    input_json: str
    secrets: tuple[str, ...]  # secret values as text, longest first (see _context._scrub)


def idempotency_key(run_id: str, seq: int) -> str:
    """Stable for (run_id, seq): the same on every retry and every replay, new in a fork
    (whose run_id differs)."""
    return hashlib.sha256(f"tether:{run_id}:{seq}".encode()).hexdigest()[:32]


def _accepts_key(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    param = params.get(KEY_PARAM)
    return param is not None and param.kind in (
        inspect.Parameter.KEYWORD_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    )


def make_tool(
    fn: Callable[..., Any],
    name: str | None,
    *,
    effect: Effect | str,
    approval: Decision | str,
    blast_radius: str | None,
    reconcile: Callable[..., Any] | None,
    secret_params: tuple[str, ...] | list[str] | frozenset[str],
    untrusted_output: bool,
    retries: int,
    backoff: float,
    backoff_max: float,
    timeout: float | None,
    approval_timeout: float | None = None,
    on_timeout: str = "reject",
) -> ToolDef:
    qualified: str = name or getattr(fn, "__name__", None) or repr(fn)
    try:
        kind = Effect(effect)
    except ValueError:
        raise RegistrationError(
            f"tool {qualified!r}: effect must be Effect.READ, Effect.IDEMPOTENT or "
            f"Effect.IRREVERSIBLE, not {effect!r}"
        ) from None
    try:
        level = Decision(approval)
    except ValueError:
        known = ", ".join(d.value for d in Decision)
        raise RegistrationError(
            f"tool {qualified!r}: approval must be one of {known}, not {approval!r}"
        ) from None
    if approval_timeout is not None and (
        isinstance(approval_timeout, bool)
        or not isinstance(approval_timeout, int | float)
        or not 0 < approval_timeout < float("inf")
    ):
        raise RegistrationError(
            f"tool {qualified!r}: approval_timeout must be seconds > 0, not {approval_timeout!r}"
        )
    if on_timeout not in ("reject", "approve"):
        raise RegistrationError(
            f"tool {qualified!r}: on_timeout must be 'reject' or 'approve', not {on_timeout!r}"
        )
    body = make_step(
        fn, qualified, retries=retries, backoff=backoff, backoff_max=backoff_max, timeout=timeout
    )
    signature = inspect.signature(fn)
    for param in signature.parameters.values():
        if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            raise RegistrationError(
                f"tool {qualified!r}: *{param.name} parameters cannot be described to an "
                "agent or recorded by name; declare each parameter"
            )
    wants_key = KEY_PARAM in signature.parameters
    last = list(signature.parameters)[-1] if signature.parameters else None
    keyword_only = wants_key and signature.parameters[KEY_PARAM].kind is (
        inspect.Parameter.KEYWORD_ONLY
    )
    if wants_key and not (_accepts_key(fn) and (keyword_only or last == KEY_PARAM)):
        raise RegistrationError(
            f"tool {qualified!r}: declare {KEY_PARAM} as a keyword parameter "
            f"(def {fn.__name__}(..., *, {KEY_PARAM}: str)) so Tether can pass it"
        )
    params = [p for p in signature.parameters.values() if p.name != KEY_PARAM]
    secrets = frozenset(secret_params)
    unknown = sorted(secrets - {p.name for p in params})
    if isinstance(secret_params, str) or unknown:
        raise RegistrationError(
            f"tool {qualified!r}: secret_params names no parameter "
            f"{unknown or secret_params!r}; list parameter names, e.g. secret_params=('token',)"
        )
    if reconcile is not None:
        if not callable(reconcile):
            raise RegistrationError(f"tool {qualified!r}: reconcile must be a function")
        if kind is not Effect.IRREVERSIBLE:
            raise RegistrationError(
                f"tool {qualified!r}: reconcile is for irreversible tools; a {kind.value} "
                "call simply runs again after a crash"
            )
    if blast_radius is not None and (not isinstance(blast_radius, str) or not blast_radius):
        raise RegistrationError(f"tool {qualified!r}: blast_radius must be a non-empty str")
    simple: tuple[str, ...] | None = tuple(p.name for p in params)
    if any(p.kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params) or any(
        p.default is not inspect.Parameter.empty for p in params
    ):
        simple = None
    return ToolDef(
        name=qualified,
        body=body,
        effect=kind,
        approval=level,
        blast_radius=blast_radius,
        reconcile=reconcile,
        secret_params=secrets,
        untrusted_output=bool(untrusted_output),
        call_signature=signature.replace(parameters=params),
        wants_key=wants_key,
        reconcile_wants_key=reconcile is not None and _accepts_key(reconcile),
        description=inspect.cleandoc(fn.__doc__ or ""),
        simple=simple,
        approval_timeout=None if approval_timeout is None else float(approval_timeout),
        on_timeout=on_timeout,
    )


def prepare_call(
    tool: ToolDef, args: tuple[Any, ...], kwargs: dict[str, Any], hasher: SecretHasher
) -> PreparedCall:
    """Bind a call's arguments; raises TypeError (naming the tool) when they do not fit."""
    if KEY_PARAM in kwargs and tool.wants_key:
        raise TypeError(
            f"tool {tool.name!r}: do not pass {KEY_PARAM}; Tether passes one that is stable "
            "for this call across retries and crashes"
        )
    if tool.simple is not None and not kwargs and len(args) == len(tool.simple):
        arguments = dict(zip(tool.simple, args, strict=True))
    else:
        try:
            bound = tool.call_signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"tool {tool.name!r}: {exc}") from None
        args, kwargs, arguments = bound.args, bound.kwargs, bound.arguments
    if not tool.secret_params:
        input_json = dumps(arguments, what=f"arguments of tool {tool.name!r}")
        return PreparedCall(args, kwargs, arguments, input_json, ())
    record: dict[str, Any] = {}
    secrets: set[str] = set()
    for name, value in arguments.items():
        if name in tool.secret_params:
            record[name] = hasher.hash(value)
            _secret_texts(value, secrets)
        else:
            record[name] = value
    input_json = dumps(record, what=f"arguments of tool {tool.name!r}")
    ordered = tuple(sorted(secrets, key=len, reverse=True))  # a longer one may contain another
    return PreparedCall(args, dict(kwargs), record, input_json, ordered)


def _secret_texts(value: Any, found: set[str]) -> None:
    """The texts a secret argument may show up as in a result or a message: the value
    itself (as text, for a number), or each of its leaves for a container."""
    if isinstance(value, dict):
        for item in value.values():
            _secret_texts(item, found)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            _secret_texts(item, found)
    elif isinstance(value, str | int | float) and not isinstance(value, bool):
        text = str(value)
        if text:
            found.add(text)


def tool_model(tool: ToolDef) -> type[pydantic.BaseModel]:
    """A pydantic model of the tool's parameters (its JSON schema, argument validation)."""
    fields: dict[str, Any] = {}
    params = {p.name: p for p in tool.call_signature.parameters.values()}
    for name, annotation, _ in param_types(tool.body.fn):
        if name not in params:
            continue
        default = params[name].default
        fields[name] = (
            Any if annotation is None else annotation,
            ... if default is inspect.Parameter.empty else default,
        )
    return pydantic.create_model(tool.name, **fields)
