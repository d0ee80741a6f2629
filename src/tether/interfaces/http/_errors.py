"""Errors of the HTTP interface and their one JSON shape::

    {"error": {"code": "run_not_found", "message": "no run 'r9'; ..."}}

``code`` is stable (a :class:`~tether.TetherError`'s ``code``, or one of this server's:
``unauthenticated``, ``invalid_token``, ``forbidden``, ``csrf``, ``invalid_request``,
``not_found``, ``effect_not_found``, ``token_not_found``, ``method_not_allowed``,
``too_large``, ``unavailable``); ``message`` says what was wrong and what to do.
"""

from __future__ import annotations

from typing import Any

from ..._errors import (
    EffectStateError,
    ForkError,
    RunIdConflictError,
    RunNotFoundError,
    RunStateError,
    StorageError,
    TetherError,
)

__all__ = ["ApiError", "error_body", "status_of"]


class ApiError(Exception):
    """An expected failure of a request, answered with ``status_code`` and the JSON
    error shape."""

    def __init__(self, status_code: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


def status_of(exc: TetherError) -> int:
    """The HTTP status of a Tether error: a missing run 404, a command the run or effect
    is not in a state for 409, a database outage 503, any other (bad input) 400.

    A :class:`~tether.ForkError` is 422 when the replacement output does not fit the
    recorded entry (the request is wrong whatever the run's state), else 409: the position
    does not fit the run's journal as it is now (past its end, below an unfinished entry,
    before an irreversible call already made)."""
    if isinstance(exc, RunNotFoundError):
        return 404
    if isinstance(exc, ForkError):
        return 422 if getattr(exc, "problem", None) == "replacement" else 409
    if isinstance(exc, RunStateError | EffectStateError | RunIdConflictError):
        return 409
    if isinstance(exc, StorageError):
        return 503
    return 400
