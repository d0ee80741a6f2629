"""The ``Model`` protocol every adapter implements."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ._messages import ModelRequest, ModelResponse, Usage

__all__ = ["Model"]


@runtime_checkable
class Model(Protocol):
    """A language model behind one provider. ``request`` makes one call; it is what the
    runtime records (once) and replays. ``cost_usd`` estimates what a call's usage cost."""

    name: str

    async def request(self, request: ModelRequest) -> ModelResponse: ...

    def cost_usd(self, usage: Usage) -> float: ...
