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

__all__ = [
    "CallFacts",
    "Policy",
    "Ruling",
    "declared",
    "load_policy",
    "set_policy_loader",
]

# What happens to a call awaiting approval when its deadline passes.
ON_TIMEOUT = ("reject", "approve")


@dataclass(frozen=True, slots=True)
class CallFacts:
    """What a policy may look at: the tool, its declaration, the run's taint and tags."""

    tool: str
    kind: Effect
    blast_radius: str | None
    declared: Decision  # the tool's own ``approval=``
    tainted: bool
    tags: frozenset[str] = frozenset()
    # The tool's own approval deadline (seconds) and what then happens.
    declared_timeout: float | None = None
    declared_on_timeout: str = "reject"


@dataclass(frozen=True, slots=True)
class Ruling:
    """What a policy decides for a call, and why. For ``approve``: how long a person has
    (``timeout`` seconds; None: no deadline) and what happens then (``on_timeout``:
    ``reject`` or ``approve``)."""

    decision: Decision
    source: str  # "rule at policy.toml:4", "the tool's declaration", "the taint rule"
    reason: str
    timeout: float | None = None
    on_timeout: str = "reject"

    def __str__(self) -> str:
        text = f"{self.decision.value}: {self.source}: {self.reason}"
        if self.decision is Decision.APPROVE and self.timeout is not None:
            text += f" (deadline {self.timeout:g} s, then {self.on_timeout})"
        return text


@runtime_checkable
class Policy(Protocol):
    def explain(self, facts: CallFacts) -> Ruling: ...


class _Declared:
    """No policy: each tool's declaration decides."""

    def explain(self, facts: CallFacts) -> Ruling:
        return Ruling(
            facts.declared,
            "the tool's declaration",
            f"{facts.tool!r} declares approval={facts.declared.value!r}",
            facts.declared_timeout,
            facts.declared_on_timeout,
        )

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
