"""Fakes of the outside world for tests: no network beyond 127.0.0.1, no keys, no SDK mocks.

``FakeOpenAI`` and ``FakeAnthropic`` are local HTTP servers that speak the providers' wire
formats, so that the real SDKs (and the adapters on them) are exercised end to end.
"""

from __future__ import annotations

from ._http import FakeServer, Received, Reply
from .anthropic_server import FakeAnthropic
from .openai_server import FakeOpenAI

__all__ = ["FakeAnthropic", "FakeOpenAI", "FakeServer", "Received", "Reply"]
