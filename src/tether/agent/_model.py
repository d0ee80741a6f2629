"""The ``Model`` protocol every adapter implements, and the errors adapters raise.

An adapter translates its provider's failures into three errors so that the runtime, not
the prompt, decides what to do with them: ``ModelUnavailableError`` (rate limited,
overloaded, a 5xx, a connection or timeout failure) is retried by the agent with backoff,
waiting at least the provider's ``Retry-After``; ``ModelAuthError`` (bad or missing
credentials, no permission) and ``ModelRequestError`` (the provider refused the request as
malformed) are never retried: the run fails with the provider's own message.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from .._errors import TetherError
from ._messages import ModelRequest, ModelResponse, Usage

__all__ = ["Model", "ModelAuthError", "ModelError", "ModelRequestError", "ModelUnavailableError"]


@runtime_checkable
class Model(Protocol):
    """A language model behind one provider. ``request`` makes one call; it is what the
    runtime records (once) and replays. ``cost_usd`` estimates what a call's usage cost."""

    name: str

    async def request(self, request: ModelRequest) -> ModelResponse: ...

    def cost_usd(self, usage: Usage) -> float: ...


class ModelError(TetherError):
    """A model provider did not answer a request."""

    code = "model_error"


class ModelUnavailableError(ModelError):
    """Worth asking again later: rate limited (429), overloaded, a server error (5xx), a
    connection failure or a timeout. ``retry_after``: the provider's ``Retry-After``, in
    seconds, when it gave one; the runtime never asks again sooner."""

    code = "model_unavailable"

    def __init__(self, message: str, *, retry_after: float | None = None, **fields: object):
        super().__init__(message, retry_after=retry_after, **fields)
        self.retry_after = retry_after


class ModelAuthError(ModelError):
    """The provider refused the credentials (401) or the permission (403). Not retried:
    fix the API key (or its permissions) and start the run again."""

    code = "model_auth"


class ModelRequestError(ModelError):
    """The provider refused the request itself (400, 404, 422: a bad model name, a
    malformed tool schema, a context too long). Not retried."""

    code = "model_request"
