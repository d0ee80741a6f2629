"""Agent layer: model calls as journal entries, the tool loop, budgets, model adapters.

This is the start of it: the provider-neutral message types every adapter speaks, the
``Model`` protocol, and ``ScriptedModel`` (deterministic, no network, no keys).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from . import _fork  # noqa: F401  (registers the check of a replaced model answer)
from ._agent import Agent, AgentResult, Budget, MaxTurnsError
from ._conversation import load_request
from ._messages import Message, ModelRequest, ModelResponse, ToolCall, ToolSpec, Usage
from ._model import (
    Model,
    ModelAuthError,
    ModelError,
    ModelRequestError,
    ModelUnavailableError,
)
from ._pricing import Price
from ._scripted import ScriptedModel, ScriptExhaustedError

if TYPE_CHECKING:
    from ._anthropic import AnthropicModel as AnthropicModel
    from ._openai import OpenAIModel as OpenAIModel

__all__ = [
    "Agent",
    "AgentResult",
    "Budget",
    "MaxTurnsError",
    "Message",
    "Model",
    "ModelAuthError",
    "ModelError",
    "ModelRequest",
    "ModelRequestError",
    "ModelResponse",
    "ModelUnavailableError",
    "Price",
    "ScriptExhaustedError",
    "ScriptedModel",
    "ToolCall",
    "ToolSpec",
    "Usage",
    "load_request",
]

# The SDK adapters are imported when first asked for, so that ``import tether.agent`` works
# without the optional SDKs; they are left out of ``__all__`` for the same reason.
_ADAPTERS = {
    "OpenAIModel": ("._openai", "openai"),
    "AnthropicModel": ("._anthropic", "anthropic"),
}

if not TYPE_CHECKING:  # mypy sees the imports above, and no catch-all attribute

    def __getattr__(name: str) -> Any:
        if name not in _ADAPTERS:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        module, extra = _ADAPTERS[name]
        try:
            value = getattr(import_module(module, __name__), name)
        except ModuleNotFoundError as exc:
            if exc.name != extra:
                raise
            raise ImportError(
                f"{name} needs the {extra!r} package: pip install 'tether[{extra}]'",
                name=extra,
            ) from exc
        globals()[name] = value
        return value
