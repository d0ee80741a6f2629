"""``FakeAnthropic``: the Messages endpoint, ``POST /v1/messages``.

Bodies are shaped as Anthropic's (``msg_`` ids, ``type: message``, ``content`` blocks of
``text`` and ``tool_use``, ``stop_reason``, ``usage``), errors as
``{"type": "error", "error": {"type", "message"}}``.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

from ._http import FakeServer, Reply

__all__ = ["FakeAnthropic"]

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


class FakeAnthropic(FakeServer):
    """``base_url`` is what an Anthropic client is given (the root)."""

    path = "/v1/messages"

    def __init__(self) -> None:
        super().__init__()
        self._ids = itertools.count(1)

    @property
    def base_url(self) -> str:
        return self.url

    def message(
        self,
        text: str | None = None,
        *uses: tuple[str, str, dict[str, Any]],
        stop_reason: str | None = None,
        usage: tuple[int, int] = (20, 7),
        cache: tuple[int, int] = (0, 0),
        model: str = "claude-test-1",
    ) -> Reply:
        """A 200 answer: a ``text`` block and/or ``tool_use`` blocks as (id, name, input).
        ``cache``: tokens written to and read from the prompt cache."""
        n = next(self._ids)
        content: list[dict[str, Any]] = []
        if text is not None:
            content.append({"type": "text", "text": text})
        content.extend(
            {"type": "tool_use", "id": use_id, "name": name, "input": input}
            for use_id, name, input in uses
        )
        body = {
            "id": f"msg_fake{n:06d}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": stop_reason or ("tool_use" if uses else "end_turn"),
            "stop_sequence": None,
            "usage": {
                "input_tokens": usage[0],
                "output_tokens": usage[1],
                "cache_creation_input_tokens": cache[0],
                "cache_read_input_tokens": cache[1],
            },
        }
        return Reply(200, body, {"request-id": f"req_fake{n}"})

    def error(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> Reply:
        kind = _ERROR_TYPES.get(status, "api_error")
        body = {"type": "error", "error": {"type": kind, "message": message}}
        return Reply(status, body, dict(headers or {}))
