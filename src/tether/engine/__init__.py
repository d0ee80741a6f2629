"""Engine layer: App, Context, replay, workers."""

from __future__ import annotations

from ._app import App, RunHandle
from ._context import Context
from ._functions import Step, Workflow

__all__ = ["App", "Context", "RunHandle", "Step", "Workflow"]
