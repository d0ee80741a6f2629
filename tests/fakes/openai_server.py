"""``FakeOpenAI``: the Chat Completions endpoint, ``POST /v1/chat/completions``.

Bodies are shaped as OpenAI's (ids, ``object``, ``created``, ``choices`` with
``finish_reason``, ``tool_calls`` whose arguments are JSON text, ``usage``), errors as
``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from typing import Any

from ._http import FakeServer, Reply

__all__ = ["FakeOpenAI"]

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


class FakeOpenAI(FakeServer):
    """``base_url`` is what an OpenAI client is given (the root plus ``/v1``)."""

    path = "/v1/chat/completions"

    def __init__(self) -> None:
        super().__init__()
        self._ids = itertools.count(1)

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def completion(
        self,
        content: str | None = None,
        *calls: tuple[str, str, dict[str, Any] | str],
        finish_reason: str | None = None,
        usage: tuple[int, int] = (12, 5),
        model: str = "gpt-test-2024",
    ) -> Reply:
        """A 200 answer: ``content`` and/or tool ``calls`` as (id, name, arguments), the
        arguments a dict (sent as JSON text) or text sent as it is (broken JSON, say)."""
        n = next(self._ids)
        message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
        if calls:
            message["tool_calls"] = [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {
                        "name": name,
                        "arguments": args if isinstance(args, str) else json.dumps(args),
                    },
                }
                for call_id, name, args in calls
            ]
        body = {
            "id": f"chatcmpl-fake{n:06d}",
            "object": "chat.completion",
            "created": 1_700_000_000 + n,
            "model": model,
            "system_fingerprint": "fp_fake",
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": finish_reason or ("tool_calls" if calls else "stop"),
                }
            ],
            "usage": {
                "prompt_tokens": usage[0],
                "completion_tokens": usage[1],
                "total_tokens": usage[0] + usage[1],
            },
        }
        return Reply(200, body, {"x-request-id": f"req_fake{n}"})

    def error(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> Reply:
        kind = _ERROR_TYPES.get(status, "server_error")
        body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
        return Reply(status, body, dict(headers or {}))
