from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tether import App, Context, NotInWorkflowError, RegistrationError


@pytest.fixture
def app(db_url: str) -> App:
    return App(db_url)


def test_sync_workflow_is_rejected(app: App) -> None:
    def flow(ctx: Context) -> int:
        return 1

    with pytest.raises(RegistrationError, match="async def"):
        app.workflow(flow)  # type: ignore[arg-type]


def test_workflow_without_parameters_is_rejected(app: App) -> None:
    async def flow() -> int:
        return 1

    with pytest.raises(RegistrationError, match="no Context parameter") as info:
        app.workflow(flow)
    assert info.value.code == "registration"
    assert info.value.workflow == "flow"  # type: ignore[attr-defined]


def test_workflow_with_keyword_only_first_parameter_is_rejected(app: App) -> None:
    async def flow(*, ctx: Context) -> int:
        return 1

    with pytest.raises(RegistrationError, match="no Context parameter"):
        app.workflow(flow)


def test_workflow_whose_first_parameter_is_not_the_context_is_rejected(app: App) -> None:
    async def flow(n: int, ctx: Context) -> int:
        return n

    with pytest.raises(RegistrationError, match="annotate it 'Context'"):
        app.workflow(flow)


def test_unannotated_context_is_accepted(app: App) -> None:
    async def flow(ctx, n: int) -> int:  # type: ignore[no-untyped-def]
        return n

    wf = app.workflow(flow)
    assert wf.name == "flow"
    assert "flow" in app.workflows


def test_duplicate_workflow_name_is_rejected_but_reregistering_is_fine(app: App) -> None:
    async def flow(ctx: Context) -> int:
        return 1

    app.workflow(flow)
    app.workflow(flow)  # the same function again: harmless (module re-import)

    async def other(ctx: Context) -> int:
        return 2

    with pytest.raises(RegistrationError, match="already registered"):
        app.workflow(name="flow")(other)
    assert app.workflow(name="other_name")(other).name == "other_name"


def test_generator_steps_are_rejected(app: App) -> None:
    def gen() -> Iterator[int]:
        yield 1

    with pytest.raises(RegistrationError, match="not yield"):
        app.step(gen)


@pytest.mark.parametrize(
    "options",
    [{"retries": -1}, {"backoff": -0.1}, {"backoff_max": -1.0}, {"timeout": 0}],
)
def test_bad_step_options_are_rejected(app: App, options: dict[str, Any]) -> None:
    def f() -> int:
        return 1

    with pytest.raises(RegistrationError):
        app.step(**options)(f)


def test_step_outside_a_workflow_raises_not_in_workflow(app: App) -> None:
    @app.step
    def add(x: int, y: int) -> int:
        return x + y

    with pytest.raises(NotInWorkflowError, match="outside a workflow"):
        add(1, 2)
    assert add.fn(1, 2) == 3  # the plain function stays callable


async def test_async_step_outside_a_workflow_raises_not_in_workflow(app: App) -> None:
    @app.step
    async def add(x: int, y: int) -> int:
        return x + y

    with pytest.raises(NotInWorkflowError):
        await add(1, 2)
    assert await add.fn(1, 2) == 3
