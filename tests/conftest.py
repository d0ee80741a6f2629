"""Shared fixtures: every test gets its own real SQLite file."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "tether.db"


@pytest.fixture
def db_url(db_path: Path) -> str:
    return f"sqlite:///{db_path}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server for tests marked ``postgres``. Skipped when none answers, unless
    ``TETHER_REQUIRE_POSTGRES=1`` (CI), where a missing server fails the test."""
    url = os.environ.get(
        "TETHER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    try:
        import psycopg

        with psycopg.connect(url, connect_timeout=3):
            pass
    except Exception as exc:
        if os.environ.get("TETHER_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL is required (TETHER_REQUIRE_POSTGRES=1) but {url}: {exc}")
        pytest.skip(f"no PostgreSQL at {url}: {exc}")
    yield url
