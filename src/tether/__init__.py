"""Tether: a durable execution runtime for AI agents."""

from __future__ import annotations

from ._errors import (
    ChildRunFailedError,
    ConfigurationError,
    DatabaseNotFoundError,
    LeaseLostError,
    NondeterminismError,
    NotInWorkflowError,
    RegistrationError,
    RunCancelledError,
    RunFailedError,
    RunIdConflictError,
    RunNeedsAttentionError,
    RunNotFoundError,
    SerializationError,
    SignalTimeoutError,
    StepFailedError,
    StorageError,
    TetherError,
    UnknownWorkflowError,
)
from ._records import Effect, EntryStatus, JournalEntry, Run, RunStatus
from .engine import App, Context, RunHandle, Step, Workflow

__version__ = "0.1.0"

__all__ = [
    "App",
    "ChildRunFailedError",
    "ConfigurationError",
    "Context",
    "DatabaseNotFoundError",
    "Effect",
    "EntryStatus",
    "JournalEntry",
    "LeaseLostError",
    "NondeterminismError",
    "NotInWorkflowError",
    "RegistrationError",
    "Run",
    "RunCancelledError",
    "RunFailedError",
    "RunHandle",
    "RunIdConflictError",
    "RunNeedsAttentionError",
    "RunNotFoundError",
    "RunStatus",
    "SerializationError",
    "SignalTimeoutError",
    "Step",
    "StepFailedError",
    "StorageError",
    "TetherError",
    "UnknownWorkflowError",
    "Workflow",
]
