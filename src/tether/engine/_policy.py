"""What the engine asks before a tool call: the agency dial (DESIGN section 6).

The engine knows the facts of a call and nothing of policy files: it asks a ``Policy``
(implemented by the guard layer, ``tether.guard``) for a ``Decision``. The decision is
taken once, when the call's intent is first recorded, and stored with it: a replay or a
recovery uses the recorded one, so a policy changed under a running run changes only the
calls it has not made yet.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from .._records import Decision, Effect

__all__ = ["CallFacts", "Policy", "declared", "load_policy", "set_policy_loader"]


@dataclass(frozen=True, slots=True)
class CallFacts:
    """What a policy may look at: the tool, its declaration, and the run's taint."""

    tool: str
    kind: Effect
    blast_radius: str | None
    declared: Decision  # the tool's own ``approval=``
    tainted: bool


@runtime_checkable
class Policy(Protocol):
    def decide(self, facts: CallFacts) -> Decision: ...


class _Declared:
    """No policy: each tool's declaration decides."""

    def decide(self, facts: CallFacts) -> Decision:
        return facts.declared

    def __repr__(self) -> str:
        return "<declared policy>"


declared: Policy = _Declared()

# The guard layer registers how a policy file is read (``tether.guard`` does, on import).
_loader: Callable[[Path | None], Policy] | None = None


def set_policy_loader(loader: Callable[[Path | None], Policy]) -> None:
    global _loader
    _loader = loader


def load_policy(path: Path | None) -> Policy:
    """The policy in ``path`` (a TOML file), or the default policy with ``None``."""
    if _loader is None:
        return declared
    return _loader(path)
