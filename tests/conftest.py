"""Shared fixtures: every test gets its own real database.

``db_url`` is parametrized over both backends: a fresh SQLite file, and a fresh PostgreSQL
database cloned from a migrated template (``CREATE DATABASE ... TEMPLATE``, about 0.1 s).
Tests that only make sense on SQLite ask for ``sqlite_url``; PostgreSQL-only tests ask for
``postgres_url``. Without a server the PostgreSQL cases are skipped, unless
``TETHER_REQUIRE_POSTGRES=1`` (CI), where a missing server fails them.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVER_URL = os.environ.get(
    "TETHER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
_PREFIX = f"tether_t{os.getpid()}"
# Tools with secret_params hash them with this key; no test writes ~/.config/tether.
os.environ.setdefault("TETHER_SECRET_KEY", "tether-test-suite-key")
_counter = itertools.count(1)


def with_database(url: str, dbname: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{dbname}"))


def _admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(SERVER_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.encode())


def _drop_leftovers() -> None:
    """Drop test databases of earlier sessions whose process is gone (a killed run)."""
    import psycopg

    with psycopg.connect(SERVER_URL, autocommit=True, connect_timeout=5) as conn:
        names = [
            row[0]
            for row in conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE 'tether_t%'"
            )
        ]
        for name in names:
            pid = name.removeprefix("tether_t").split("_")[0]
            if pid.isdigit() and int(pid) != os.getpid() and not Path(f"/proc/{pid}").exists():
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    """A migrated template database for this test session; its name."""
    try:
        import psycopg

        with psycopg.connect(SERVER_URL, connect_timeout=3):
            pass
    except Exception as exc:
        if os.environ.get("TETHER_REQUIRE_POSTGRES") == "1":
            pytest.fail(
                f"PostgreSQL is required (TETHER_REQUIRE_POSTGRES=1) but {SERVER_URL}: {exc}"
            )
        pytest.skip(f"no PostgreSQL at {SERVER_URL}: {exc}")
    from tether.storage._postgres import PostgresStore

    _drop_leftovers()
    name = f"{_PREFIX}_template"
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    _admin(f'CREATE DATABASE "{name}"')

    async def migrate() -> None:
        store = PostgresStore(with_database(SERVER_URL, name))
        await store.open()
        await store.close()

    asyncio.run(migrate())
    yield name
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url(postgres_template: str) -> Iterator[str]:
    """A fresh PostgreSQL database with Tether's schema, dropped after the test."""
    name = f"{_PREFIX}_{next(_counter)}"
    _admin(f'CREATE DATABASE "{name}" TEMPLATE "{postgres_template}" STRATEGY FILE_COPY')
    yield with_database(SERVER_URL, name)
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "tether.db"


@pytest.fixture
def sqlite_url(db_path: Path) -> str:
    return f"sqlite:///{db_path}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """The same test on each backend."""
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    url: str = request.getfixturevalue(fixture)
    return url
