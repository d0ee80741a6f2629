from __future__ import annotations

import pytest

from tether import App, ConfigurationError
from tether.storage import SQLiteStore, open_store
from tether.storage._postgres import PostgresStore, parse_postgres_url
from tether.storage._sqlite import parse_sqlite_url


def test_relative_and_absolute_paths() -> None:
    assert parse_sqlite_url("sqlite:///tether.db") == ("tether.db", "FULL")
    assert parse_sqlite_url("sqlite:////tmp/x/tether.db") == ("/tmp/x/tether.db", "FULL")


def test_synchronous_option() -> None:
    assert parse_sqlite_url("sqlite:///t.db?synchronous=normal") == ("t.db", "NORMAL")
    assert parse_sqlite_url("sqlite:///t.db?synchronous=EXTRA")[1] == "EXTRA"


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("sqlite://host/t.db", "sqlite:///relative"),
        ("sqlite:///", "names no file"),
        ("sqlite://", "names no file"),
        ("sqlite:///t.db?synchronous=OFF", "synchronous"),
        ("mysql://localhost/db", "unsupported database URL"),
        ("tether.db", "unsupported database URL"),
        ("postgresql://localhost", "names no database"),
        ("postgresql://localhost/", "names no database"),
        ("postgresql://localhost/db?pool_size=many", "pool_size must be a number"),
        ("postgresql://localhost/db?pool_size=0", "pool_size must be > 0"),
        ("postgresql://u:hunter2@localhost/?x=1", "u:\\*\\*\\*@localhost"),
    ],
)
def test_bad_urls_raise_configuration_error(url: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        open_store(url)


def test_open_store_picks_sqlite() -> None:
    store = open_store("sqlite:///some.db")
    assert isinstance(store, SQLiteStore)
    assert store.path == "some.db"


def test_app_rejects_a_bad_url_at_construction() -> None:
    with pytest.raises(ConfigurationError):
        App("nosuch://x")


@pytest.mark.parametrize(
    "options",
    [{"lease_seconds": 0}, {"max_concurrency": 0}, {"poll_interval": -1.0}, {"poll_interval": 0}],
)
def test_app_rejects_bad_options(options: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        App("sqlite:///x.db", **options)  # type: ignore[arg-type]


def test_open_store_picks_postgres_for_both_schemes() -> None:
    for scheme in ("postgresql", "postgres"):
        store = open_store(f"{scheme}://me:secret@db.example:5432/tether?pool_size=4")
        assert isinstance(store, PostgresStore)
        assert store.pool_size == 4
        assert "secret" not in store.display_url


def test_postgres_url_passes_libpq_options_through() -> None:
    conninfo, options = parse_postgres_url(
        "postgres://u@h/db?sslmode=require&pool_timeout=2.5&connect_timeout=9"
    )
    assert conninfo == "postgresql://u@h/db?sslmode=require&connect_timeout=9"
    assert options == {"pool_size": 10, "pool_timeout": 2.5}
    # A default connect timeout, so an unreachable server fails in seconds, not minutes.
    assert parse_postgres_url("postgresql://u@h/db")[0].endswith("connect_timeout=5")


def test_postgres_error_messages_never_show_the_password() -> None:
    with pytest.raises(ConfigurationError) as info:
        open_store("postgresql://u:hunter2@localhost/db?pool_size=x")
    assert "hunter2" not in str(info.value)


def test_libpq_options_with_spaces_survive() -> None:
    conninfo, _ = parse_postgres_url("postgresql://u@h/db?options=-c%20statement_timeout%3D5000")
    assert "options=-c%20statement_timeout%3D5000" in conninfo


def test_a_password_in_the_query_is_redacted_too() -> None:
    from tether.storage import redact_url

    assert redact_url("postgresql://u@h/db?sslmode=require&password=hunter2") == (
        "postgresql://u@h/db?sslmode=require&password=***"
    )
    assert redact_url("postgresql://u:pw@h/db") == "postgresql://u:***@h/db"
    assert redact_url("sqlite:///x.db") == "sqlite:///x.db"
