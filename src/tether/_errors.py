"""Errors raised by Tether.

Every error derives from one root and carries a stable ``code`` that the CLI and
(later) the HTTP API map from, plus structured fields such as ``run_id`` and ``seq``::

    TetherError
    ├── ConfigurationError            bad database URL, bad App options
    ├── StorageError                  the database failed or is unusable
    │   ├── DatabaseNotFoundError     read commands against a database that does not exist
    │   └── LeaseLostError            another worker owns the run now (fencing)
    ├── SerializationError            a value cannot be stored as JSON
    ├── RegistrationError             a workflow/step definition is malformed
    ├── UnknownWorkflowError          a run names a workflow this App does not have
    ├── RunNotFoundError              no run with that run_id
    ├── RunIdConflictError            run_id already used by another workflow
    ├── NotInWorkflowError            a durable call made outside a workflow
    ├── NondeterminismError           replay does not match the journal
    ├── StepFailedError               a step raised after its retries (replayed identically)
    │   └── ToolFailedError           a tool call did not produce a result
    │       ├── ToolDeniedError       the policy denies this call
    │       ├── ApprovalRejectedError a person rejected this call
    │       └── EffectAbortedError    a person aborted an in-doubt call
    ├── EffectInDoubtError            an irreversible call may or may not have happened
    ├── EffectStateError              resolve/approve asked of an effect not in that state
    ├── RunStateError                 a command asked of a run not in a state that allows it
    ├── BudgetExceededError           an agent reached its token or cost budget
    ├── ChildRunFailedError           a child run failed or was cancelled
    ├── SignalTimeoutError            ``ctx.wait_signal`` timed out (also a TimeoutError)
    └── RunFailedError                ``handle.result()`` of a run that did not succeed
        ├── RunCancelledError
        └── RunNeedsAttentionError

``NotAttempted`` and ``OutcomeUnknown`` are not errors of Tether's: a tool raises the first
to say that the outside world was certainly not touched (so that even an irreversible call
may be retried), the second to say it cannot tell (so that an irreversible call is treated
as in doubt, not as failed).

Engine control flow (suspending a run, losing a lease) does not use these: it derives from
``BaseException`` so that a workflow's ``except Exception`` cannot swallow it.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ApprovalRejectedError",
    "BudgetExceededError",
    "ChildRunFailedError",
    "ConfigurationError",
    "DatabaseNotFoundError",
    "EffectAbortedError",
    "EffectInDoubtError",
    "EffectStateError",
    "ForkError",
    "LeaseLostError",
    "NondeterminismError",
    "NotAttempted",
    "NotInWorkflowError",
    "OutcomeUnknown",
    "RegistrationError",
    "RunCancelledError",
    "RunFailedError",
    "RunIdConflictError",
    "RunNeedsAttentionError",
    "RunNotFoundError",
    "RunStateError",
    "SerializationError",
    "SignalTimeoutError",
    "StepFailedError",
    "StorageError",
    "TetherError",
    "ToolDeniedError",
    "ToolFailedError",
    "UnknownWorkflowError",
]


class TetherError(Exception):
    """A Tether error."""

    code = "tether_error"

    def __init__(self, message: str | None = None, **fields: Any) -> None:
        self.fields = fields
        for key, value in fields.items():
            setattr(self, key, value)
        super().__init__(message or (self.__doc__ or self.code).strip())

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "type": type(self).__name__, "message": self.message}


class ConfigurationError(TetherError):
    """The App or database URL is misconfigured."""

    code = "configuration"


class StorageError(TetherError):
    """The database failed or cannot be used."""

    code = "storage"


class DatabaseNotFoundError(StorageError):
    """No database exists at that location."""

    code = "database_not_found"


class LeaseLostError(StorageError):
    """This worker no longer holds the run's lease; its write was rejected."""

    code = "lease_lost"


class SerializationError(TetherError):
    """A value cannot be stored as JSON."""

    code = "serialization"


class RegistrationError(TetherError):
    """A workflow, step or tool definition is malformed."""

    code = "registration"


class UnknownWorkflowError(TetherError):
    """The run names a workflow that is not registered in this App."""

    code = "unknown_workflow"


class RunNotFoundError(TetherError):
    """No run has that run_id."""

    code = "run_not_found"


class RunIdConflictError(TetherError):
    """That run_id already belongs to a run of another workflow."""

    code = "run_id_conflict"


class NotInWorkflowError(TetherError):
    """A durable call was made outside a running workflow."""

    code = "not_in_workflow"


class NondeterminismError(TetherError):
    """Replaying the workflow produced a different call than the journal recorded."""

    code = "nondeterminism"


class StepFailedError(TetherError):
    """A step raised an exception after exhausting its retries.

    The original exception's type name and message are kept in ``error_type`` and
    ``error_message``; on replay the same error is raised from the journal, so a workflow
    that catches it behaves identically both times.
    """

    code = "step_failed"


class ToolFailedError(StepFailedError):
    """A tool call did not produce a result: it raised after its retries, or was denied,
    rejected or aborted. Replayed identically from the journal, like a step's error."""

    code = "tool_failed"


class ToolDeniedError(ToolFailedError):
    """The policy denies this tool call; it was recorded and never made."""

    code = "tool_denied"


class ApprovalRejectedError(ToolFailedError):
    """A person rejected this tool call; it was never made."""

    code = "approval_rejected"


class EffectAbortedError(ToolFailedError):
    """A person aborted an in-doubt tool call (``tether resolve --abort``)."""

    code = "effect_aborted"


class EffectInDoubtError(TetherError):
    """An irreversible tool call may or may not have happened (its intent is recorded, its
    completion is not) and nothing can tell which: a person must resolve it."""

    code = "effect_in_doubt"


class EffectStateError(TetherError):
    """The effect is not in a state that allows this (resolve, approve)."""

    code = "effect_state"


class RunStateError(TetherError):
    """The run is not in a state that allows this command (raise a budget of a run that
    is not stopped on one, say)."""

    code = "run_state"


class ForkError(TetherError):
    """A fork or a retry in place that cannot be made as asked: the position (a seq past
    the journal, below an unfinished entry, before an irreversible call already made) or
    the replacement (not of the recorded output's shape or type): ``problem`` is
    ``"replacement"`` for the latter."""

    code = "fork"


class BudgetExceededError(TetherError):
    """An agent reached its budget: the run stops for a person, with what was spent, until
    the budget is raised (``tether budget RUN_ID --tokens N``)."""

    code = "budget_exceeded"


class NotAttempted(Exception):
    """Raised by a tool to say the outside world was certainly not touched (the request was
    never sent, or was refused before it acted). Only then is an irreversible tool retried."""


class OutcomeUnknown(Exception):
    """Raised by a tool that cannot tell whether its call acted (a timeout after the request
    was sent). An irreversible call is then in doubt: its reconcile hook or a person
    decides. A read or idempotent call is simply retried."""


class ChildRunFailedError(TetherError):
    """A child run did not succeed."""

    code = "child_failed"


class SignalTimeoutError(TetherError, TimeoutError):
    """No signal arrived before the wait's timeout."""

    code = "signal_timeout"


class RunFailedError(TetherError):
    """The run did not succeed."""

    code = "run_failed"


class RunCancelledError(RunFailedError):
    """The run was cancelled."""

    code = "run_cancelled"


class RunNeedsAttentionError(RunFailedError):
    """The run stopped and needs a person (see ``run.error`` for why)."""

    code = "needs_attention"
