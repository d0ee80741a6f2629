"""Guard layer: what may happen. The policy file (the agency dial) so far."""

from __future__ import annotations

from ..engine._policy import set_policy_loader
from ._policy import Explanation, PolicyError, PolicyFile, Rule, load, parse

__all__ = ["Explanation", "PolicyError", "PolicyFile", "Rule", "load", "parse"]

set_policy_loader(load)
