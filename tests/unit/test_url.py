from __future__ import annotations

import pytest

from tether import App, ConfigurationError
from tether.storage import SQLiteStore, open_store
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
        ("postgresql://localhost/db", "PostgreSQL"),
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
    [{"lease_seconds": 0}, {"max_concurrency": 0}, {"poll_interval": -1.0}],
)
def test_app_rejects_bad_options(options: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        App("sqlite:///x.db", **options)  # type: ignore[arg-type]
