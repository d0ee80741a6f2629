"""What a fork stores: no journal row of its origin is copied, at any length or depth, and
the effects table gets nothing for the shared prefix. Rows are counted in the database
itself (sqlite3 on the file, psycopg on the PostgreSQL URL), not through the App."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any
from urllib.parse import urlsplit

import pytest

from tether import App, Context, Effect
from tether.storage._rows import lineage_query


def sql(db_url: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of ``query`` (written with ``?`` placeholders), read straight from the
    database the App uses."""
    if db_url.startswith("sqlite:"):
        conn = sqlite3.connect(urlsplit(db_url).path[1:])
        try:
            return conn.execute(query, params).fetchall()
        finally:
            conn.close()
    import psycopg

    with psycopg.connect(db_url) as pg:
        return pg.execute(query.replace("?", "%s").encode(), params).fetchall()


def journal_rows(db_url: str) -> dict[str, int]:
    """Journal rows per run_id."""
    return dict(sql(db_url, "SELECT run_id, count(*) FROM journal GROUP BY run_id"))


def owners(db_url: str, run_id: str) -> list[tuple[int, str]]:
    """(seq, owner) of a run's journal by the store's own lineage query, run directly."""
    rows = sql(db_url, lineage_query("?", "j.run_id, j.seq"), (run_id, run_id))
    return [(seq, owner) for owner, seq in rows]


def build(db_url: str, paid: list[int] | None = None) -> App:
    app = App(db_url, poll_interval=0.05)

    @app.step
    async def tick(i: int) -> int:
        return i + 1

    @app.tool(effect=Effect.IRREVERSIBLE)
    async def pay(i: int, *, idempotency_key: str) -> int:
        assert paid is not None
        paid.append(i)
        return i

    @app.workflow
    async def loop(ctx: Context, n: int) -> int:
        """``n`` entries: the first ``n - 2`` gathered 500 at a time (their commits are
        shared, so 10,000 entries take a fraction of a second), the last two in turn."""
        total = 0
        for start in range(0, n - 2, 500):
            batch = range(start, min(n - 2, start + 500))
            total += sum(await asyncio.gather(*(tick(i) for i in batch)))
        for i in range(n - 2, n):
            total += await tick(i)
        return total

    @app.workflow
    async def payments(ctx: Context, n: int) -> int:
        return sum([await pay(i) for i in range(n)])

    return app


async def no_worker(db_url: str, paid: list[int] | None = None) -> App:
    """An App whose forks stay pending: nothing here runs them."""
    app = build(db_url, paid)
    await app.open(worker=False)
    return app


@pytest.mark.parametrize("n", [10, 10_000])
async def test_a_fork_copies_no_journal_row_of_its_origin(db_url: str, n: int) -> None:
    async with build(db_url) as app:
        total: int = await (await app.start("loop", n, run_id="o")).result(timeout=90)
    assert total == n * (n + 1) // 2
    assert journal_rows(db_url) == {"o": n}

    desk = await no_worker(db_url)
    try:
        await desk.fork("o", n - 1, run_id="f")  # shares seqs 1 .. n-2
        await desk.fork("o", n - 1, 0, run_id="r")  # and records its own seq n-1
        # Before they run: the plain fork owns nothing, the edited one its one entry.
        assert journal_rows(db_url) == {"o": n, "r": 1}
        assert sql(db_url, "SELECT seq, output FROM journal WHERE run_id = 'r'") == [(n - 1, "0")]
        journal = await desk.get_journal("f")
        assert [e.seq for e in journal] == list(range(1, n - 1))
        assert {e.run_id for e in journal} == {"o"}
        assert owners(db_url, "r")[-2:] == [(n - 2, "o"), (n - 1, "r")]
    finally:
        await desk.close()

    async with build(db_url) as app:
        assert await app.handle("f").result(timeout=90) == total
        assert await app.handle("r").result(timeout=90) == total - (n - 1)
    # Each fork wrote only what it executed after the fork point; the origin is untouched.
    assert journal_rows(db_url) == {"o": n, "f": 2, "r": 2}
    rows = sql(db_url, "SELECT run_id, seq FROM journal WHERE run_id <> 'o' ORDER BY 1, 2")
    assert rows == [("f", n - 1), ("f", n), ("r", n - 1), ("r", n)]
    assert sql(db_url, "SELECT count(*) FROM runs") == [(3,)]


async def test_a_fork_of_a_fork_of_a_fork_reads_each_entry_from_its_owner(db_url: str) -> None:
    async with build(db_url) as app:
        await (await app.start("loop", 10, run_id="o")).result(timeout=30)
        await (await app.fork("o", 8, run_id="f1")).result(timeout=30)  # owns 8..10
        await (await app.fork("f1", 9, run_id="f2")).result(timeout=30)  # owns 9..10
    assert journal_rows(db_url) == {"o": 10, "f1": 3, "f2": 2}

    desk = await no_worker(db_url)
    try:
        await desk.fork("f2", 10, 1000, run_id="f3")  # its seq 10 says 1000
        await desk.fork("f2", 5, run_id="low")  # below every fork point: all the origin's
        assert journal_rows(db_url) == {"o": 10, "f1": 3, "f2": 2, "f3": 1}
        expected = [(s, "o") for s in range(1, 8)] + [(8, "f1"), (9, "f2"), (10, "f3")]
        assert owners(db_url, "f3") == expected
        journal = await desk.get_journal("f3")
        assert [(e.seq, e.run_id) for e in journal] == expected
        assert [e.output for e in journal] == [*range(1, 10), 1000]
        # Each shared entry is its owner's row itself, as the owner reads it.
        mine = {name: {e.seq: e for e in await desk.get_journal(name)} for name in ("o", "f1")}
        for entry in journal[:8]:
            assert entry == mine[entry.run_id][entry.seq]
        assert owners(db_url, "low") == [(s, "o") for s in range(1, 5)]
        assert [(e.seq, e.run_id) for e in await desk.get_journal("low")] == [
            (s, "o") for s in range(1, 5)
        ]
    finally:
        await desk.close()

    async with build(db_url) as app:
        assert await app.handle("f3").result(timeout=30) == sum(range(1, 10)) + 1000
        assert await app.handle("low").result(timeout=30) == 55
    assert journal_rows(db_url) == {"o": 10, "f1": 3, "f2": 2, "f3": 1, "low": 6}
    assert owners(db_url, "low") == [(s, "o") for s in range(1, 5)] + [
        (s, "low") for s in range(5, 11)
    ]


async def test_the_effects_table_gets_nothing_for_the_shared_prefix(db_url: str) -> None:
    paid: list[int] = []
    async with build(db_url, paid) as app:
        assert await (await app.start("payments", 10, run_id="o")).result(timeout=30) == 45
    assert paid == list(range(10))
    origin = sql(db_url, "SELECT seq, idempotency_key FROM effects WHERE run_id = 'o'")
    assert len(origin) == 10

    desk = await no_worker(db_url, paid)
    try:
        await desk.fork("o", 9, run_id="f")
        await desk.fork("o", 10, 99, run_id="r")
        assert dict(sql(db_url, "SELECT run_id, count(*) FROM effects GROUP BY run_id")) == {
            "o": 10
        }
    finally:
        await desk.close()

    async with build(db_url, paid) as app:
        assert await app.handle("f").result(timeout=30) == 45
        assert await app.handle("r").result(timeout=30) == 36 + 99
        assert [(e.run_id, e.seq) for e in await app.list_effects("f")] == [("f", 9), ("f", 10)]
    # Only the calls after the fork point were made again, under new keys; the origin's
    # effect rows are as they were.
    assert paid == [*range(10), 8, 9]
    rows = sql(db_url, "SELECT run_id, seq FROM effects WHERE run_id <> 'o' ORDER BY 1, 2")
    assert rows == [("f", 9), ("f", 10)]
    assert sql(db_url, "SELECT seq, idempotency_key FROM effects WHERE run_id = 'o'") == origin
    fork_keys = sql(db_url, "SELECT idempotency_key FROM effects WHERE run_id = 'f'")
    assert not {key for _, key in origin} & {key for (key,) in fork_keys}
