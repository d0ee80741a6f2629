"""Agent layer: model calls as journal entries, the tool loop, budgets, model adapters.

This is the start of it: the provider-neutral message types every adapter speaks, the
``Model`` protocol, and ``ScriptedModel`` (deterministic, no network, no keys).
"""

from __future__ import annotations

from ._agent import Agent, AgentResult, MaxTurnsError
from ._messages import Message, ModelRequest, ModelResponse, ToolCall, ToolSpec, Usage
from ._model import (
    Model,
    ModelAuthError,
    ModelError,
    ModelRequestError,
    ModelUnavailableError,
)
from ._scripted import ScriptedModel, ScriptExhaustedError

__all__ = [
    "Agent",
    "AgentResult",
    "MaxTurnsError",
    "Message",
    "Model",
    "ModelAuthError",
    "ModelError",
    "ModelRequestError",
    "ModelUnavailableError",
    "ModelRequest",
    "ModelResponse",
    "ScriptExhaustedError",
    "ScriptedModel",
    "ToolCall",
    "ToolSpec",
    "Usage",
]
