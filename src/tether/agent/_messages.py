"""Provider-neutral messages: what a model is asked and what it answers.

Every adapter translates these to and from its provider's wire format, so that the journal
records one shape whatever the provider, and a replay or a fork can hand a recorded answer
back to any model. They are pydantic models: they validate on the way in and serialize to
plain JSON (never pickle) on the way to storage.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Message", "ModelRequest", "ModelResponse", "ToolCall", "ToolSpec", "Usage"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ToolCall(_Frozen):
    """A call the model asks for: which tool, with which arguments (already parsed)."""

    id: str
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class Message(_Frozen):
    """One message of a conversation.

    ``system`` and ``user`` carry ``content``; ``assistant`` carries ``content`` and/or
    ``tool_calls``; ``tool`` carries the result (or error) of the call ``tool_call_id``.
    """

    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    is_error: bool = False  # a tool message reporting a failed or refused call

    @classmethod
    def system(cls, text: str) -> Message:
        return cls(role="system", content=text)

    @classmethod
    def user(cls, text: str) -> Message:
        return cls(role="user", content=text)

    @classmethod
    def assistant(cls, text: str | None = None, *calls: ToolCall) -> Message:
        return cls(role="assistant", content=text, tool_calls=calls)

    @classmethod
    def tool(cls, call_id: str, content: str, *, is_error: bool = False) -> Message:
        return cls(role="tool", content=content, tool_call_id=call_id, is_error=is_error)


class ToolSpec(_Frozen):
    """A tool as a model sees it: name, description, JSON schema of its parameters."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})


class Usage(_Frozen):
    """Tokens a model call consumed."""

    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
        )


class ModelRequest(_Frozen):
    """What is sent to a model: the conversation so far and the tools it may call."""

    messages: tuple[Message, ...]
    tools: tuple[ToolSpec, ...] = ()
    settings: dict[str, Any] = Field(default_factory=dict)


class ModelResponse(_Frozen):
    """What a model answered: one assistant message, its usage, which model, and why it
    stopped (``end_turn``, ``tool_calls``, ``max_tokens``, ...)."""

    message: Message
    usage: Usage = Usage()
    model: str = ""
    stop_reason: str = "end_turn"
