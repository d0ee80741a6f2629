"""Engine layer: App, Context, replay, workers."""

from __future__ import annotations

from ._app import App, RunHandle
from ._context import Context
from ._functions import Step, Tool, Workflow
from ._tools import Done, NotDone

__all__ = [
    "App",
    "Context",
    "Done",
    "NotDone",
    "RunHandle",
    "Step",
    "Tool",
    "Workflow",
]
