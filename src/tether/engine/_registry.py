"""Workflow and step definitions: what the decorators record about a function."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._errors import RegistrationError

__all__ = ["StepDef", "WorkflowDef", "param_types", "return_type"]


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception:  # unresolvable forward references: fall back to untyped JSON
        return {}


def return_type(fn: Callable[..., Any]) -> Any:
    return _hints(fn).get("return")


def param_types(fn: Callable[..., Any], skip: int = 0) -> list[tuple[str, Any, Any]]:
    """(name, annotation, kind) of each parameter after the first ``skip``."""
    hints = _hints(fn)
    params = list(inspect.signature(fn).parameters.values())[skip:]
    return [(p.name, hints.get(p.name), p.kind) for p in params]


@dataclass(frozen=True, slots=True)
class StepDef:
    name: str
    fn: Callable[..., Any]
    is_async: bool
    retries: int
    backoff: float
    backoff_max: float
    timeout: float | None
    return_type: Any


@dataclass(frozen=True, slots=True)
class WorkflowDef:
    name: str
    fn: Callable[..., Any]
    signature: inspect.Signature
    return_type: Any
    params: list[tuple[str, Any, Any]]


def make_workflow(fn: Callable[..., Any], name: str | None) -> WorkflowDef:
    qualified = name or fn.__name__
    if not inspect.iscoroutinefunction(fn):
        raise RegistrationError(
            f"workflow {qualified!r} must be an 'async def' function whose first parameter "
            "is the Context",
            workflow=qualified,
        )
    signature = inspect.signature(fn)
    params = list(signature.parameters.values())
    first = params[0] if params else None
    if first is None or first.kind not in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    ):
        raise RegistrationError(
            f"workflow {qualified!r} has no Context parameter; declare it first: "
            f"async def {fn.__name__}(ctx: Context, ...)",
            workflow=qualified,
        )
    annotation = _hints(fn).get(first.name)
    if annotation is not None and getattr(annotation, "__name__", "") != "Context":
        raise RegistrationError(
            f"workflow {qualified!r}: first parameter {first.name!r} is annotated "
            f"{annotation!r}; it receives the Context (annotate it 'Context')",
            workflow=qualified,
        )
    return WorkflowDef(qualified, fn, signature, return_type(fn), param_types(fn, skip=1))


def make_step(
    fn: Callable[..., Any],
    name: str | None,
    *,
    retries: int,
    backoff: float,
    backoff_max: float,
    timeout: float | None,
) -> StepDef:
    qualified = name or fn.__name__
    if inspect.isasyncgenfunction(fn) or inspect.isgeneratorfunction(fn):
        raise RegistrationError(f"step {qualified!r} must return a value, not yield")
    if retries < 0 or backoff < 0 or backoff_max < 0 or (timeout is not None and timeout <= 0):
        raise RegistrationError(
            f"step {qualified!r}: retries and backoff must be >= 0 and timeout > 0"
        )
    return StepDef(
        qualified,
        fn,
        inspect.iscoroutinefunction(fn),
        retries,
        backoff,
        backoff_max,
        timeout,
        return_type(fn),
    )
