"""What the decorators return: callables that are durable inside a workflow."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, ParamSpec, TypeVar

from ._context import current_context
from ._registry import StepDef, WorkflowDef

__all__ = ["Step", "Workflow"]

P = ParamSpec("P")
R = TypeVar("R")


class Step(Generic[P, R]):
    """A durable step. Inside a workflow, ``await step(...)`` records its result in the
    journal and replays it from there; outside one, calling it is an error (``.fn`` is the
    plain function)."""

    def __init__(self, definition: StepDef) -> None:
        self.definition = definition
        self.fn: Callable[..., Any] = definition.fn
        self.name = definition.name
        functools.update_wrapper(self, definition.fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Awaitable[R]:
        ctx = current_context(f"step {self.name!r}")
        result: Awaitable[R] = ctx._call_step(self.definition, args, kwargs)
        return result

    def __repr__(self) -> str:
        return f"<Step {self.name!r}>"


class Workflow(Generic[P, R]):
    """A registered workflow. Start it with ``app.start(workflow, *args)``, or as a child
    run from another workflow with ``ctx.child(workflow, *args)``."""

    def __init__(self, definition: WorkflowDef) -> None:
        self.definition = definition
        self.fn: Callable[..., Coroutine[Any, Any, R]] = definition.fn
        self.name = definition.name
        functools.update_wrapper(self, definition.fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, R]:
        # Calling a workflow function directly runs it inline (same context, same journal).
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Workflow {self.name!r}>"
