"""What a fork may put in place of a recorded model answer (``app.fork(..., replace=)``).

A replacement is the answer's text, an assistant message (``{"role": "assistant",
"content": ..., "tool_calls": [...]}``), or a whole model entry output with such a
``message``. It is stored as a model entry output whose ``message_hash`` is that of the new
message (the next request of the fork refers to it by hash), with no usage or cost (no
model was asked) and ``replaced: true``.
"""

from __future__ import annotations

from typing import Any

import pydantic

from .._records import JournalEntry
from ..engine._fork import ForkError, register_output_check
from ..storage._rows import blob_hash
from ._messages import Message, Usage

__all__ = ["replace_model_answer"]


def replace_model_answer(entry: JournalEntry, value: Any) -> dict[str, Any]:
    where = f"the model call {entry.name!r} at seq {entry.seq}"
    raw: Any = value
    if isinstance(value, dict) and "message" in value:
        raw = value["message"]
    if isinstance(raw, str):
        raw = {"role": "assistant", "content": raw}
    try:
        message = Message.model_validate(raw)
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'message'}: {error['msg']}"
            for error in exc.errors()
        )
        raise ForkError(
            f"the replacement for {where} is not a model answer ({problems}); give the "
            'answer\'s text, or {"role": "assistant", "content": ..., "tool_calls": [...]}',
            problem="replacement",
        ) from None
    if message.role != "assistant":
        raise ForkError(
            f"the replacement for {where} is a {message.role} message; a model answers with "
            "an assistant message",
            problem="replacement",
        )
    if not message.content and not message.tool_calls:
        raise ForkError(
            f"the replacement for {where} says nothing and calls no tool", problem="replacement"
        )
    recorded = entry.output if isinstance(entry.output, dict) else {}
    return {
        "message": message.model_dump(mode="json"),
        "message_hash": blob_hash(message.model_dump_json()),
        "usage": Usage().model_dump(mode="json"),
        "model": recorded.get("model", entry.name),
        "stop_reason": "tool_calls" if message.tool_calls else "end_turn",
        "cost_usd": 0.0,
        "latency_ms": 0.0,
        "tries": 0,
        "replaced": True,
    }


register_output_check("model", replace_model_answer)
