"""Engine control flow. These derive from BaseException so that a workflow's
``except Exception`` cannot swallow them (trio and Temporal do the same)."""

from __future__ import annotations

__all__ = ["Abandon", "Checkpoint", "Suspended"]


class Suspended(BaseException):
    """The run is parked (waiting) or closed; no durable call may proceed in this task."""


class Checkpoint(BaseException):
    """The worker is shutting down: stop at this call and hand the run back."""


class Abandon(BaseException):
    """The lease is gone (another worker, a cancel) or storage failed: drop the run here."""
