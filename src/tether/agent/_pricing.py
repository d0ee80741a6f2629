"""``Price``: what a model charges, so that the runtime can count what a run cost.

Prices change and differ by provider, region and contract, so Tether ships no table of
them: whoever builds a model adapter says what it costs (``OpenAIModel(..., price=...)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .._errors import ConfigurationError
from ._messages import Usage

__all__ = ["Price"]


@dataclass(frozen=True, slots=True)
class Price:
    """US dollars per million input tokens and per million output tokens."""

    input_per_mtok: float
    output_per_mtok: float

    def __post_init__(self) -> None:
        for value in (self.input_per_mtok, self.output_per_mtok):
            if not math.isfinite(value) or value < 0:
                raise ConfigurationError(
                    f"a Price is in dollars per million tokens, >= 0: got {self!r}"
                )

    def cost_usd(self, usage: Usage) -> float:
        return (
            usage.input_tokens * self.input_per_mtok + usage.output_tokens * self.output_per_mtok
        ) / 1_000_000
