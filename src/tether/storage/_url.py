"""Pick a backend from a database URL."""

from __future__ import annotations

from .._errors import ConfigurationError
from ._store import Store

__all__ = ["open_store"]


def open_store(url: str) -> Store:
    """Return an unopened store for ``url`` (``sqlite:///path.db``)."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "sqlite":
        from ._sqlite import SQLiteStore

        return SQLiteStore(url)
    if scheme in ("postgres", "postgresql"):
        raise ConfigurationError(
            f"{url!r}: the PostgreSQL backend is not available in this version; "
            "use sqlite:///path.db"
        )
    raise ConfigurationError(
        f"unsupported database URL {url!r}; use sqlite:///path.db (relative) or "
        "sqlite:////abs/path.db"
    )
