"""What only the PostgreSQL store has: server-side locking, notifications, connection loss."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from conftest import SERVER_URL, with_database
from tether import DatabaseNotFoundError, LeaseLostError, RunStatus, StorageError
from tether.storage import NewEntry, NewRun
from tether.storage._migrations import load_migrations
from tether.storage._pgwait import _Watch
from tether.storage._postgres import _CLAIM, PostgresStore
from tether.storage._rows import blob_hash, lineage_query

pytestmark = pytest.mark.postgres

WORKFLOWS = frozenset({"flow"})
ARGS = json.dumps({"args": [], "kwargs": {}})


@pytest.fixture
async def store(postgres_url: str) -> AsyncIterator[PostgresStore]:
    s = PostgresStore(postgres_url)
    await s.open()
    yield s
    await s.close()


def step_entry(seq: int, output: object) -> NewEntry:
    now = time.time()
    return NewEntry(seq, "step", "add", "completed", "{}", json.dumps(output), None, now, now)


async def test_a_claim_in_flight_fences_out_a_write_racing_it(
    store: PostgresStore, postgres_url: str
) -> None:
    """The fence check takes a share lock: a write that races a takeover waits for it to
    commit, then sees the new fence and writes nothing (a plain EXISTS would read the old
    row version and let the stale write through)."""
    await store.create_run(NewRun("r1", "flow", ARGS))
    [mine] = await store.claim_runs("w1", 10, 30.0, WORKFLOWS)
    async with await psycopg.AsyncConnection.connect(postgres_url) as other:
        # Another worker's takeover, not yet committed.
        await other.execute(
            "UPDATE runs SET lease_owner = 'w2', fence = fence + 1 WHERE run_id = 'r1'"
        )
        write = asyncio.create_task(store.append_entry(mine, step_entry(1, "stale")))
        await asyncio.sleep(0.3)
        assert not write.done(), "the stale write did not wait for the takeover's lock"
        await other.commit()
        with pytest.raises(LeaseLostError):
            await write
    assert await store.list_entries("r1") == []


async def test_a_claim_skips_a_run_whose_owner_is_writing(
    store: PostgresStore, postgres_url: str
) -> None:
    await store.create_run(NewRun("r1", "flow", ARGS))
    [mine] = await store.claim_runs("w1", 10, 0.01, WORKFLOWS)
    await asyncio.sleep(0.05)  # the lease has expired, but the owner is mid-write
    async with await psycopg.AsyncConnection.connect(postgres_url) as owner:
        await owner.execute("SELECT 1 FROM runs WHERE run_id = 'r1' FOR SHARE")
        assert await store.claim_runs("w2", 10, 30.0, WORKFLOWS) == []  # no wait, no claim
        await owner.rollback()
    [taken] = await store.claim_runs("w2", 10, 30.0, WORKFLOWS)
    assert taken.fence == mine.fence + 1


async def test_notifications_announce_what_other_processes_did(
    store: PostgresStore, postgres_url: str
) -> None:
    seen: list[tuple[str, str]] = []
    got = asyncio.Event()

    def handler(kind: str, value: str) -> None:
        seen.append((kind, value))
        got.set()

    listener = PostgresStore(postgres_url)
    await listener.open()
    try:
        listener.subscribe(handler)

        async def expect(kind: str, value: str) -> None:
            deadline = time.monotonic() + 5
            while (kind, value) not in seen:
                got.clear()
                assert time.monotonic() < deadline, f"no {kind}:{value} in {seen}"
                await asyncio.wait_for(got.wait(), 5)

        await expect("connected", "")
        await store.create_run(NewRun("r1", "flow", ARGS))
        await expect("run", "flow")
        [fence] = await store.claim_runs("w1", 10, 30.0, WORKFLOWS)
        await store.send_signal("r1", "go", "1")
        await expect("signal", "r1")
        await store.suspend_run(
            fence, wake_at=12345.5, signal_names=frozenset({"other"}), child_ids=frozenset()
        )
        await expect("timer", "12345.5:flow")
        seen.clear()
        await store.send_signal("r1", "other", "2")  # waiting on it: woken
        await expect("run", "flow")
        [fence] = await store.claim_runs("w1", 10, 30.0, WORKFLOWS)
        await store.finish_run(fence, RunStatus.SUCCEEDED, result_json="1")
        await expect("done", "r1")
        await store.create_run(NewRun("r2", "flow", ARGS))
        await store.cancel_run("r2", "no")
        await expect("cancel", "r2")
    finally:
        await listener.close()


async def test_a_write_into_a_closed_connection_fails_cleanly_and_the_next_succeeds(
    store: PostgresStore, postgres_url: str
) -> None:
    """The server ends every connection (as on a restart): the write in flight fails with
    StorageError, and the pool reconnects for the next one."""
    await store.create_run(NewRun("r1", "flow", ARGS))
    dbname = postgres_url.rsplit("/", 1)[1]
    async with await psycopg.AsyncConnection.connect(SERVER_URL, autocommit=True) as admin:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (dbname,),
        )
    for _ in range(100):  # the pool replaces what it finds broken
        try:
            await store.create_run(NewRun("r2", "flow", ARGS))
            break
        except StorageError as exc:
            assert "failed" in str(exc)
            await asyncio.sleep(0.1)
    assert await store.get_run("r2") is not None


async def test_two_stores_create_and_migrate_one_new_database_at_once() -> None:
    name = f"tether_t{os.getpid()}_fresh"
    url = with_database(SERVER_URL, name)
    a, b = PostgresStore(url), PostgresStore(url)
    try:
        await asyncio.gather(a.open(), b.open())
        rows = await a._read("SELECT version, name FROM schema_migrations ORDER BY version")
        assert rows == [(m.version, m.name) for m in load_migrations("postgres")]
        await a.create_run(NewRun("r1", "flow", ARGS))
        assert await b.get_run("r1") is not None
    finally:
        await a.close()
        await b.close()
        async with await psycopg.AsyncConnection.connect(SERVER_URL, autocommit=True) as admin:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


async def test_open_without_create_on_a_database_without_tether(postgres_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        await conn.execute("DROP TABLE schema_migrations")
    store = PostgresStore(postgres_url)
    with pytest.raises(DatabaseNotFoundError, match="holds no Tether schema"):
        await store.open(create=False)


async def test_an_unreachable_server_is_a_clear_error() -> None:
    store = PostgresStore("postgresql://u:hunter2@127.0.0.1:1/nope?connect_timeout=2")
    with pytest.raises(StorageError, match="cannot connect to postgresql://u:\\*\\*\\*@") as info:
        await store.open()
    assert "hunter2" not in str(info.value)


async def test_next_wake_at_moves_lease_expiry_onto_this_processs_clock(
    store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Leases run on the server's clock; a worker whose clock is 2 s ahead must still be
    told to wait the whole time left (it used to be told "now", and spun on claims)."""
    import types

    import tether.storage._postgres as module

    skewed = types.SimpleNamespace(time=lambda: time.time() + 2.0)
    monkeypatch.setattr(module, "time", skewed)
    await store.create_run(NewRun("r1", "flow", ARGS))
    await store.claim_runs("w1", 10, 3.0, WORKFLOWS)
    due = await store.next_wake_at(WORKFLOWS)
    assert due is not None
    left = due - skewed.time()
    assert 2.5 < left <= 3.0, left


async def test_a_child_ending_while_its_parent_parks_never_loses_the_wake_up(
    store: PostgresStore, postgres_url: str
) -> None:
    """finish_run(child) and suspend_run(parent) from two processes at the same moment:
    whichever commits first, the parent ends up runnable (never waiting with no wake-up)."""
    other = PostgresStore(postgres_url)
    await other.open()
    try:
        stuck = []
        for i in range(60):
            parent, child = f"p{i}", f"c{i}"
            await store.create_run(NewRun(parent, "flow", ARGS))
            [pf] = await store.claim_runs("w1", 1, 30.0, WORKFLOWS)
            await store.append_entry(
                pf,
                NewEntry(1, "child", "flow", "waiting", json.dumps({"run_id": child})),
                start_child=NewRun(child, "flow", ARGS, parent, 1),
            )
            [cf] = await other.claim_runs("w2", 1, 30.0, WORKFLOWS)
            assert cf.run_id == child
            await asyncio.gather(
                other.finish_run(cf, RunStatus.SUCCEEDED, result_json="1"),
                store.suspend_run(
                    pf, wake_at=None, signal_names=frozenset(), child_ids=frozenset({child})
                ),
            )
            run = await store.get_run(parent)
            assert run is not None
            if run.status is RunStatus.WAITING and run.wake_at is None:
                stuck.append(parent)
            else:
                assert [f.run_id for f in await store.claim_runs("w1", 1, 30.0, WORKFLOWS)] == [
                    parent
                ]
        assert stuck == []
    finally:
        await other.close()


async def test_two_signals_at_once_to_a_waiting_run_both_arrive(
    store: PostgresStore, postgres_url: str
) -> None:
    other = PostgresStore(postgres_url)
    await other.open()
    try:
        for i in range(15):
            run_id = f"r{i}"
            await store.create_run(NewRun(run_id, "flow", ARGS))
            fences = await store.claim_runs("w1", 10, 30.0, WORKFLOWS)
            fence = next(f for f in fences if f.run_id == run_id)
            await store.suspend_run(
                fence, wake_at=None, signal_names=frozenset({"go"}), child_ids=frozenset()
            )
            await asyncio.gather(
                store.send_signal(run_id, "go", "1"), other.send_signal(run_id, "go", "2")
            )
            assert sorted(s.value for s in await store.list_signals(run_id)) == [1, 2]
            run = await store.get_run(run_id)
            assert run is not None and run.wake_at is not None
    finally:
        await other.close()


async def test_a_write_the_server_rejects_does_not_fail_its_batch_neighbours(
    store: PostgresStore,
) -> None:
    async def bad(conn: object) -> None:
        await conn.execute("INSERT INTO no_such_table VALUES (1)")  # type: ignore[attr-defined]

    results = await asyncio.gather(
        store.create_run(NewRun("a", "flow", ARGS)),
        store._write(bad),
        store.create_run(NewRun("b", "flow", ARGS)),
        return_exceptions=True,
    )
    assert isinstance(results[1], StorageError)
    assert not isinstance(results[0], BaseException)
    assert not isinstance(results[2], BaseException)
    assert await store.get_run("a") is not None
    assert await store.get_run("b") is not None


async def test_two_tasks_opening_one_store_share_one_pool(postgres_url: str) -> None:
    store = PostgresStore(postgres_url)
    await asyncio.gather(store.open(), store.open())
    try:
        assert await store.get_run("nope") is None
    finally:
        await store.close()
    dbname = postgres_url.rsplit("/", 1)[1]
    async with await psycopg.AsyncConnection.connect(SERVER_URL, autocommit=True) as admin:
        for _ in range(50):  # closed connections leave pg_stat_activity a moment later
            cur = await admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (dbname,)
            )
            row = await cur.fetchone()
            if row is not None and row[0] == 0:
                break
            await asyncio.sleep(0.05)
        assert row is not None and row[0] == 0, "a connection outlived close()"


async def test_open_without_create_on_a_missing_database() -> None:
    store = PostgresStore(with_database(SERVER_URL, f"tether_t{os.getpid()}_missing"))
    with pytest.raises(DatabaseNotFoundError, match="no database at"):
        await store.open(create=False)


async def test_a_flush_applies_writes_in_the_order_they_were_queued(
    store: PostgresStore,
) -> None:
    """Plain journal writes are sent together, but never ahead of a cancel or a finish
    queued before them: a step's result that arrives after the cancel is discarded."""
    for i in range(4):
        await store.create_run(NewRun(f"r{i}", "flow", ARGS))
    fences = sorted(await store.claim_runs("w1", 10, 30.0, WORKFLOWS), key=lambda f: f.run_id)

    async def slow(conn: object) -> None:
        await conn.execute("SELECT pg_sleep(0.2)")  # type: ignore[attr-defined]

    cases = [
        (fences[0], lambda: store.cancel_run("r0", "stop"), fences[2]),
        (fences[1], lambda: store.finish_run(fences[1], RunStatus.SUCCEEDED), fences[3]),
    ]
    for victim, end, bystander in cases:
        in_flight = store._write(slow, single=True)  # the next writes share one flush
        await asyncio.sleep(0.05)
        ended = asyncio.ensure_future(end())
        await asyncio.sleep(0)
        late = asyncio.ensure_future(store.append_entry(victim, step_entry(1, "late")))
        other = asyncio.ensure_future(store.append_entry(bystander, step_entry(1, "ok")))
        await in_flight
        results = await asyncio.gather(ended, late, other, return_exceptions=True)
        assert isinstance(results[1], LeaseLostError), results
        assert results[2] is None, results
        assert await store.list_entries(victim.run_id) == []
        assert [e.output for e in await store.list_entries(bystander.run_id)] == ["ok"]


async def test_result_looks_again_when_the_notification_channel_connects(
    postgres_url: str,
) -> None:
    """An end announced before LISTEN was active (or while it reconnected) is missed;
    the channel's (re)connection makes every waiting result() read the run again instead
    of sleeping a whole poll interval."""
    from tether import App, Context

    app = App(postgres_url, poll_interval=30)

    @app.workflow
    async def flow(ctx: Context) -> int:
        return 1

    await app.open(worker=False)
    try:
        handle = await app.start(flow, run_id="r1")
        waiting = asyncio.ensure_future(handle.result(timeout=20))
        await asyncio.sleep(0.2)
        async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as c:
            # The run ends without a notification (as if sent before LISTEN was active).
            await c.execute("UPDATE runs SET status = 'succeeded', result = '7'")
        await asyncio.sleep(0.1)
        assert not waiting.done()
        app._on_store_event("connected", "")
        assert await asyncio.wait_for(waiting, 2) == 7
    finally:
        await app.close()


async def test_the_stores_connections_compile_nothing_and_wait_on_locks_a_bounded_time(
    store: PostgresStore,
) -> None:
    async with store.pool.connection() as conn:
        cur = await conn.execute("SELECT current_setting('jit'), current_setting('lock_timeout')")
        assert await cur.fetchone() == ("off", "5s")


async def test_a_forks_journal_read_never_scans_the_journal_when_few_runs_fill_it(
    store: PostgresStore, postgres_url: str
) -> None:
    """With a few long runs, the statistics say any run owns a large share of the journal,
    and a plain join of the fork's ancestor chain with it plans a scan of the whole table;
    the lineage read looks up each ancestor's rows by primary key instead."""
    now = time.time()
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        for run_id, forked_from, fork_seq in (
            ("long-1", None, None),
            ("long-2", None, None),
            ("small", None, None),
            ("fork", "small", 6),
        ):
            await conn.execute(
                "INSERT INTO runs (run_id, workflow, status, args, created_at, updated_at, "
                "forked_from, fork_seq) VALUES (%s, 'flow', 'succeeded', '{}', %s, %s, %s, %s)",
                (run_id, now, now, forked_from, fork_seq),
            )
        for run_id, n in (("long-1", 40_000), ("long-2", 40_000), ("small", 10)):
            await conn.execute(
                "INSERT INTO journal (run_id, seq, kind, name, status, input, output) "
                "SELECT %s, s, 'step', 'tick', 'completed', '[]', s::text "
                "FROM generate_series(1, %s) AS s",
                (run_id, n),
            )
        await conn.execute("ANALYZE journal")
        await conn.execute("ANALYZE runs")
        plan = "\n".join(
            row[0]
            for row in await (
                await conn.execute(
                    ("EXPLAIN " + lineage_query("%s", "j.run_id, j.seq, j.output")).encode(),
                    ("fork", "fork"),
                )
            ).fetchall()
        )
    assert "Seq Scan on journal" not in plan, plan
    state = await store.load_state("fork")  # and the read is right: seqs 1..5 of "small"
    assert [(e.seq, e.output) for e in state.entries.values()] == [(s, s) for s in range(1, 6)]


async def test_a_claim_reads_each_state_in_index_order_not_a_bitmap_of_dead_entries(
    store: PostgresStore, postgres_url: str
) -> None:
    """Runs that left 'pending' leave dead entries in runs_pending until vacuum. A bitmap
    scan reads them all again on every claim (10,000 runs parked on a signal made every
    claim read 10,000 entries); an ordered index scan with a limit stops after the live
    ones and marks the dead ones it passes."""
    now = time.time()
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO runs (run_id, workflow, status, args, created_at, updated_at) "
            "SELECT 'r' || s, 'flow', 'pending', '{}', %s + s, %s FROM generate_series(1, 3000) s",
            (now, now),
        )
        await conn.execute("ANALYZE runs")
        await conn.execute("UPDATE runs SET status = 'waiting' WHERE run_id <> 'r3000'")
        cur = await conn.execute(
            ("EXPLAIN " + _CLAIM).encode(),
            (["flow"], 50, now, ["flow"], 50, ["flow"], 50, 50, "w", 15.0, now),
        )
        plan = "\n".join(row[0] for row in await cur.fetchall())
    assert "Bitmap" not in plan, plan
    claimed = await store.claim_runs("w1", 50, 15.0, WORKFLOWS)
    assert [fence.run_id for fence in claimed] == ["r3000"]  # the one still pending


async def test_writes_go_through_one_held_connection(store: PostgresStore) -> None:
    """Write after write, the flusher keeps its connection: no checkout from the pool per
    write (each costs a lock, a status check and a return)."""
    pool = store.pool
    getconn = pool.getconn
    checkouts = 0

    async def counted(timeout: float | None = None) -> psycopg.AsyncConnection[tuple[Any, ...]]:
        nonlocal checkouts
        checkouts += 1
        return await getconn(timeout)

    pool.getconn = counted  # type: ignore[method-assign]
    await store.create_run(NewRun("r1", "flow", ARGS))
    [fence] = await store.claim_runs("w1", 10, 30.0, WORKFLOWS)
    before = checkouts  # the first write took the connection
    for seq in range(1, 21):
        await store.append_entry(fence, step_entry(seq, seq))
    assert checkouts == before, f"{checkouts - before} checkouts for 20 writes"
    assert [e.seq for e in await store.list_entries("r1")] == list(range(1, 21))


def _loop_turns() -> tuple[list[int], Any]:
    """Count the event loop's turns: each asks the selector for I/O once."""
    selector = asyncio.get_running_loop()._selector  # type: ignore[attr-defined]
    select = selector.select
    turns = [0]

    def spied(timeout: float | None = None) -> Any:
        turns[0] += 1
        return select(timeout)

    selector.select = spied
    return turns, lambda: setattr(selector, "select", select)


async def test_a_lone_write_costs_two_turns_of_the_loop(store: PostgresStore) -> None:
    """A write with nothing else to join it goes from its caller (no flusher task and no
    trip back from one), on a socket that stays registered with the loop, read as its
    reply arrives: one turn to wait for the reply, one to resume the caller. Through a
    flusher task, and with psycopg's own wait, it took five."""
    await store.create_run(NewRun("r1", "flow", ARGS))
    [fence] = await store.claim_runs("w1", 10, 30.0, WORKFLOWS)
    await store.append_entry(fence, step_entry(1, 1))  # the writer takes its connection
    flushers_before = {t for t in asyncio.all_tasks() if t.get_name() == "tether-flush"}
    turns, restore = _loop_turns()
    try:
        for seq in range(2, 52):
            await store.append_entry(fence, step_entry(seq, seq))
    finally:
        restore()
    assert turns[0] <= 2.5 * 50, f"{turns[0]} turns of the loop for 50 writes"
    assert {t for t in asyncio.all_tasks() if t.get_name() == "tether-flush"} <= flushers_before
    assert [e.seq for e in await store.list_entries("r1")] == list(range(1, 52))


async def test_concurrent_writes_still_share_a_commit(store: PostgresStore) -> None:
    """Writes made in the same turn of the loop wait for one flush together (the caller
    writes alone only when nothing else could join it)."""
    for i in range(20):
        await store.create_run(NewRun(f"r{i}", "flow", ARGS))
    fences = await store.claim_runs("w1", 50, 30.0, WORKFLOWS)
    commits = store.commits
    await asyncio.gather(*(store.append_entry(f, step_entry(1, f.run_id)) for f in fences))
    assert store.commits - commits <= 3, f"{store.commits - commits} commits for 20 writes"
    for f in fences:
        assert [e.output for e in await store.list_entries(f.run_id)] == [f.run_id]


async def _slow_insert(store: PostgresStore, run_id: str, seconds: float) -> asyncio.Task[Any]:
    """A one-statement write that takes ``seconds`` on the server, made by its caller."""

    async def slow(conn: Any) -> None:
        await conn.execute(
            "INSERT INTO run_tags (tag, run_id) SELECT 'slow', %s FROM pg_sleep(%s)",
            (run_id, seconds),
        )

    task = asyncio.create_task(store._write(slow, single=True))  # type: ignore[arg-type]
    await asyncio.sleep(0.2)  # sent, and now waiting on the server
    assert not task.done()
    return task


async def test_a_write_whose_caller_is_cancelled_is_seen_through(store: PostgresStore) -> None:
    """Cancelled while its statement runs on the server, the write waits for the reply
    (it may have committed; now it is known), then raises the cancellation. The
    connection is left clean for the next write."""
    await store.create_run(NewRun("r1", "flow", ARGS))
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: reported.append(context))
    task = await _slow_insert(store, "r1", 1.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await store._read("SELECT tag FROM run_tags WHERE run_id = 'r1'") == [("slow",)]
    del task
    gc.collect()  # a failed future nobody looked at would be reported as it goes
    loop.set_exception_handler(None)
    assert reported == []
    [fence] = await store.claim_runs("w1", 10, 30.0, WORKFLOWS)
    await store.append_entry(fence, step_entry(1, "next"))
    assert [e.output for e in await store.list_entries("r1")] == ["next"]


async def test_a_second_cancel_abandons_the_statement(store: PostgresStore) -> None:
    """Cancelled twice, the write stops waiting for a server that is slow to answer; its
    connection goes back to the pool (which closes it, mid-statement) and the store
    writes on through another."""
    await store.create_run(NewRun("r1", "flow", ARGS))
    task = await _slow_insert(store, "r1", 30.0)
    task.cancel()
    await asyncio.sleep(0.1)
    assert not task.done()  # the first cancellation waits for the statement
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)  # not the 30 s the statement would take
    assert store._held is None
    [fence] = await store.claim_runs("w1", 10, 30.0, WORKFLOWS)
    await store.append_entry(fence, step_entry(1, "next"))
    assert [e.output for e in await store.list_entries("r1")] == ["next"]


async def test_a_cancel_that_lands_as_the_reply_is_read_still_ends_the_write(
    store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop's callback reads the reply, and the caller is cancelled in that same turn
    (a timeout, a lease lost): the reply is already in libpq's buffer and the socket is dry.
    The write must end (seen through, then cancelled), not wait for data that will never
    come, and the store must go on writing."""
    await store.create_run(NewRun("r1", "flow", ARGS))
    [fence] = await store.claim_runs("w1", 10, 30.0, WORKFLOWS)
    await store.append_entry(fence, step_entry(1, 1))
    victim: list[asyncio.Task[Any]] = []
    read = _Watch._on_readable

    def read_then_cancel(self: _Watch) -> None:
        read(self)
        while victim:
            victim.pop().cancel()

    monkeypatch.setattr(_Watch, "_on_readable", read_then_cancel)
    assert store._held is not None and store._held._watch is not None
    store._held._watch.stop()  # registered again, with the callback above, at the next wait
    task = asyncio.create_task(store.append_entry(fence, step_entry(2, 2)))
    victim.append(task)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    assert task.cancelled()
    monkeypatch.undo()
    await store.append_entry(fence, step_entry(3, 3))
    assert [e.seq for e in await store.list_entries("r1")] == [1, 2, 3]


async def test_a_write_that_fails_after_its_caller_was_cancelled_raises_the_cancel(
    store: PostgresStore,
) -> None:
    """Seen through after a cancellation, the statement fails: the caller still gets its
    cancellation (an error must not swallow it, or a cancelled task would carry on)."""

    async def failing(conn: Any) -> None:
        await conn.execute("SELECT 1 / (count(*) - count(*)) FROM pg_sleep(%s)", (1.0,))

    task = asyncio.create_task(store._write(failing, single=True))  # type: ignore[arg-type]
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    assert task.cancelled()
    await store.create_run(NewRun("r1", "flow", ARGS))  # the store writes on
    assert await store.get_run("r1") is not None


async def test_a_held_connection_the_server_closes_does_not_spin_the_loop(
    store: PostgresStore, postgres_url: str
) -> None:
    """The server ends the writer's connection between writes: its socket turns readable
    with nobody waiting. The watch stops (no busy loop on a readable socket nobody reads),
    and the next write goes through a new connection."""
    await store.create_run(NewRun("r1", "flow", ARGS))
    [fence] = await store.claim_runs("w1", 10, 30.0, WORKFLOWS)
    await store.append_entry(fence, step_entry(1, 1))
    held = store._held
    assert held is not None and held.watched
    async with await psycopg.AsyncConnection.connect(SERVER_URL, autocommit=True) as admin:
        await admin.execute("SELECT pg_terminate_backend(%s)", (held.info.backend_pid,))
    turns, restore = _loop_turns()
    try:
        await asyncio.sleep(0.5)
    finally:
        restore()
    assert turns[0] < 100, f"{turns[0]} turns of the loop in 0.5 s with nothing to do"
    for seq in range(2, 100):  # the write on the dead connection fails; then a new one
        try:
            await store.append_entry(fence, step_entry(seq, seq))
            break
        except StorageError:
            await asyncio.sleep(0.05)
    assert store._held is not held
    assert len(await store.list_entries("r1")) == 2


async def test_writes_larger_than_the_socket_buffer_go_through_the_held_connection(
    store: PostgresStore,
) -> None:
    """A write of megabytes (a model call's messages as blobs, sent by executemany in
    pipeline mode) waits to write as well as to read on the held connection's socket, and
    its replies may be read on arrival while it still sends: it must complete."""
    await store.create_run(NewRun("r1", "flow", ARGS))
    [fence] = await store.claim_runs("w1", 10, 30.0, WORKFLOWS)
    await store.append_entry(fence, step_entry(1, 1))
    for seq in range(2, 5):
        texts = [os.urandom(100_000).hex() + str(i) for i in range(10)]  # 2 MB
        now = time.time()
        entry = NewEntry(
            seq, "model", "m", "completed", "{}", json.dumps(seq), None, now, now,
            blobs=tuple((blob_hash(text), text) for text in texts),
        )  # fmt: skip
        child = NewRun(f"c{seq}", "flow", ARGS)  # with a child: the general write path
        await asyncio.wait_for(store.append_entry(fence, entry, start_child=child), 30)
        found = await store.get_blobs([blob_hash(text) for text in texts])
        assert sorted(found.values()) == sorted(texts)
    assert [e.seq for e in await store.list_entries("r1")] == [1, 2, 3, 4]


async def test_a_pool_of_one_connection_still_reads_between_writes(postgres_url: str) -> None:
    """With a single connection for everything, the writer gives it back after each
    flush: reads never wait on a connection the writer keeps."""
    s = PostgresStore(f"{postgres_url}?pool_size=1&pool_timeout=3")
    await s.open()
    try:
        await s.create_run(NewRun("r1", "flow", ARGS))
        [fence] = await s.claim_runs("w1", 10, 30.0, WORKFLOWS)
        for seq in range(1, 6):
            await s.append_entry(fence, step_entry(seq, seq))
            assert len(await s.list_entries("r1")) == seq
        assert (await s.get_run("r1")) is not None
    finally:
        await s.close()
