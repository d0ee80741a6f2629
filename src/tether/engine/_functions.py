"""What the decorators return: callables that are durable inside a workflow."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, ParamSpec, TypeVar

import pydantic

from .._records import Effect
from ._context import current_context
from ._registry import StepDef, WorkflowDef
from ._tools import ToolDef, tool_model

__all__ = ["Step", "Tool", "Workflow"]

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
        ctx = current_context("step", self.name)
        result: Awaitable[R] = ctx._call_step(self.definition, args, kwargs)
        return result

    def __repr__(self) -> str:
        return f"<Step {self.name!r}>"


class Tool(Generic[P, R]):
    """A tool: a durable call that declares its effect on the outside world. Inside a
    workflow, ``await tool(...)`` records the intent, makes the call, records the
    completion (DESIGN section 4); outside one, calling it is an error (``.fn`` is the
    plain function). ``.json_schema()`` and ``.spec`` describe it to a model."""

    def __init__(self, definition: ToolDef) -> None:
        self.definition = definition
        self.fn: Callable[..., Any] = definition.body.fn
        self.name = definition.name
        self.effect: Effect = definition.effect
        self._model: type[pydantic.BaseModel] | None = None
        functools.update_wrapper(self, definition.body.fn)

    # Typed loosely: the function's own signature includes ``idempotency_key``, which the
    # caller must not pass (Tether does), and no ParamSpec can drop a keyword parameter.
    def __call__(self, *args: Any, **kwargs: Any) -> Awaitable[R]:
        ctx = current_context("tool", self.name)
        result: Awaitable[R] = ctx._call_tool(self.definition, args, kwargs)
        return result

    def __repr__(self) -> str:
        return f"<Tool {self.name!r} ({self.effect.value})>"

    @property
    def model(self) -> type[pydantic.BaseModel]:
        """A pydantic model of the parameters (without ``idempotency_key``)."""
        if self._model is None:
            self._model = tool_model(self.definition)
        return self._model

    def json_schema(self) -> dict[str, Any]:
        """The JSON schema of the parameters, from the type hints."""
        return self.model.model_json_schema()

    @property
    def spec(self) -> dict[str, Any]:
        """Name, description (the docstring) and parameters, as model APIs take them."""
        return {
            "name": self.name,
            "description": self.definition.description,
            "parameters": self.json_schema(),
        }

    def validate(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """Validate arguments (for example a model's) against the type hints; raises
        ``pydantic.ValidationError`` naming each bad field."""
        model = self.model.model_validate(arguments)
        return {name: getattr(model, name) for name in model.model_fields_set}


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
