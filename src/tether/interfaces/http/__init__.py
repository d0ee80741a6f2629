"""The control plane over HTTP: a JSON API, a web UI and ``tether serve``.

``create_app(app)`` is a FastAPI application (ASGI) serving a :class:`~tether.App`; run it
with ``tether serve`` or any ASGI server. See ``docs/http-api.md``.

FastAPI is imported on first use of ``create_app``, not with this package, so that the
``tether`` command (which registers ``serve`` from here) starts as fast without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from ._app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
