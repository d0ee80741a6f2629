"""Pick a backend from a database URL."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

from .._errors import ConfigurationError
from ._store import Store

__all__ = ["open_store", "redact_url"]


def redact_url(url: str) -> str:
    """The URL without its password (in the user part or the query), for messages."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # not a URL we can take apart: show nothing of it that may be secret
        return url.split("@")[-1]
    netloc = parts.netloc
    if password is not None:
        netloc = netloc.replace(f":{password}@", ":***@", 1)
    query = re.sub(r"(?i)(^|&)(password=)[^&]*", r"\1\2***", parts.query)
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    return urlunsplit(parts._replace(netloc=netloc, query=query))


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
