"""Pick a backend from a database URL."""

from __future__ import annotations

from .._errors import ConfigurationError
from ._store import Store

__all__ = ["open_store"]


def open_store(url: str) -> Store:
    """Return an unopened store for ``url`` (``sqlite:///path.db``, ``postgresql://...``)."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "sqlite":
        from ._sqlite import SQLiteStore

        return SQLiteStore(url)
    if scheme in ("postgres", "postgresql"):
        try:
            from ._postgres import PostgresStore
        except ImportError as exc:
            raise ConfigurationError(
                f"PostgreSQL needs psycopg 3 and psycopg-pool ({exc}); install them with "
                "pip install 'tether[postgres]'"
            ) from exc
        return PostgresStore(url)
    raise ConfigurationError(
        f"unsupported database URL {url!r}; use sqlite:///path.db (relative), "
        "sqlite:////abs/path.db, or postgresql://user@host:5432/dbname"
    )
