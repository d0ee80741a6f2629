"""The Store protocol, exercised directly (no engine, no worker) against every backend.

Tests taking ``db_url`` run on SQLite and PostgreSQL alike; the ones at the end that take
``sqlite_url`` or ``postgres_url`` check what only one backend has (pragmas, the server's
locking and notifications).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tether import (
    EntryStatus,
    LeaseLostError,
    RunIdConflictError,
    RunNotFoundError,
    RunStateError,
    RunStatus,
)
from tether.storage import Fence, NewEntry, NewRun, SQLiteStore, WorkerInfo, open_store
from tether.storage._migrations import load_migrations
from tether.storage._rows import blob_hash

WORKFLOWS = frozenset({"flow", "other", "wf"})

ARGS = json.dumps({"args": [], "kwargs": {}})


# Either backend; both keep a ``commits`` counter and a ``_read`` for these checks.
AnyStore = Any


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[AnyStore]:
    s = open_store(db_url)
    await s.open()
    yield s
    await s.close()


def step_entry(seq: int, output: Any = None, name: str = "add") -> NewEntry:
    now = time.time()
    return NewEntry(
        seq, "step", name, "completed", json.dumps({"args": []}), json.dumps(output), None, now, now
    )


async def rows(store: AnyStore, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run a query written with ``?`` placeholders on either backend."""
    if isinstance(store, SQLiteStore):
        return store._read(sql, params)
    return list(await store._read(sql.replace("?", "%s"), params))


def dialect(url: str) -> str:
    return "sqlite" if url.startswith("sqlite") else "postgres"


async def claimed(store: AnyStore, run_id: str, worker: str = "w1") -> Fence:
    await store.create_run(NewRun(run_id, "flow", ARGS))
    fences = await store.claim_runs(worker, 100, 30.0, WORKFLOWS)
    fence = next(f for f in fences if f.run_id == run_id)
    return fence


# -- runs -----------------------------------------------------------------------------
async def test_create_run_is_idempotent(store: AnyStore) -> None:
    run, created = await store.create_run(NewRun("r1", "flow", ARGS))
    assert created
    assert run.status is RunStatus.PENDING
    assert run.args == {"args": [], "kwargs": {}}
    assert run.fence == 0
    again, created_again = await store.create_run(
        NewRun("r1", "flow", json.dumps({"args": [1], "kwargs": {}}))
    )
    assert not created_again
    assert again.args == {"args": [], "kwargs": {}}  # the first start wins
    assert again.created_at == run.created_at
    assert len(await store.list_runs()) == 1


@pytest.mark.parametrize(
    "new",
    [
        NewRun("plain", "flow", ARGS),
        NewRun(
            "full",
            "flow",
            json.dumps({"args": [1, "x"], "kwargs": {"k": [None, 2.5]}}),
            parent_run_id="p",
            parent_seq=7,
            tags=("b", "a"),
            forked_from="origin",
            fork_seq=3,
            fork_replaced=True,
        ),
    ],
)
async def test_a_created_run_is_returned_as_it_was_stored(store: AnyStore, new: NewRun) -> None:
    """create_run builds the run it returns instead of reading it back: it must be what a
    read gives, field for field."""
    run, created = await store.create_run(new)
    assert created
    assert run == await store.get_run(new.run_id)


async def test_create_run_with_another_workflow_conflicts(store: AnyStore) -> None:
    await store.create_run(NewRun("r1", "flow", ARGS))
    with pytest.raises(RunIdConflictError, match="'flow'") as info:
        await store.create_run(NewRun("r1", "other", ARGS))
    assert info.value.run_id == "r1"  # type: ignore[attr-defined]
    assert await rows(store, "SELECT workflow FROM runs") == [("flow",)]


async def test_get_and_list_runs(store: AnyStore) -> None:
    assert await store.get_run("nope") is None
    for i in range(3):
        await store.create_run(NewRun(f"r{i}", "flow" if i < 2 else "other", ARGS))
    assert {r.run_id for r in await store.list_runs(workflow="flow")} == {"r0", "r1"}
    assert len(await store.list_runs(status=RunStatus.PENDING)) == 3
    assert await store.list_runs(status=RunStatus.RUNNING) == []
    assert len(await store.list_runs(limit=2)) == 2
    with pytest.raises(RunNotFoundError):
        await store.load_state("nope")


# -- leases -----------------------------------------------------------------------------
async def test_claim_heartbeat_release(store: AnyStore) -> None:
    await store.create_run(NewRun("r1", "flow", ARGS))
    await store.create_run(NewRun("r2", "flow", ARGS))
    fences = await store.claim_runs("w1", 1, 30.0, WORKFLOWS)
    assert [f.run_id for f in fences] == ["r1"]  # oldest first, at most `limit`
    assert fences[0] == Fence("r1", "w1", 1)
    run = await store.get_run("r1")
    assert run is not None
    assert run.status is RunStatus.RUNNING
    assert run.lease_owner == "w1"
    assert run.attempts == 1
    assert run.lease_expires_at is not None
    first_expiry = run.lease_expires_at

    # A second worker gets only what is left; a held lease is not claimable.
    assert [f.run_id for f in await store.claim_runs("w2", 10, 30.0, WORKFLOWS)] == ["r2"]
    assert await store.claim_runs("w3", 10, 30.0, WORKFLOWS) == []

    await asyncio.sleep(0.01)
    assert await store.heartbeat("w1", ["r1"], 60.0) == {"r1"}
    run = await store.get_run("r1")
    assert run is not None and run.lease_expires_at is not None
    assert run.lease_expires_at > first_expiry
    assert await store.heartbeat("nobody", ["r1"], 60.0) == set()

    await store.release_runs("w2", ["r1"])  # not w2's: ignored
    assert (await store.get_run("r1")).status is RunStatus.RUNNING  # type: ignore[union-attr]
    await store.release_runs("w1", ["r1"])
    run = await store.get_run("r1")
    assert run is not None
    assert run.status is RunStatus.PENDING
    assert run.lease_owner is None
    # Handed back: claimable at once, with a new fence.
    again = await store.claim_runs("w3", 10, 30.0, WORKFLOWS)
    assert again == [Fence("r1", "w3", 2)]


async def test_heartbeat_renews_only_the_runs_named(store: AnyStore) -> None:
    await store.create_run(NewRun("r1", "flow", ARGS))
    await store.create_run(NewRun("r2", "flow", ARGS))
    await store.claim_runs("w1", 10, 30.0, WORKFLOWS)
    before = {r.run_id: r.lease_expires_at for r in await store.list_runs()}
    await asyncio.sleep(0.01)
    assert await store.heartbeat("w1", ["r2"], 60.0) == {"r2"}
    after = {r.run_id: r.lease_expires_at for r in await store.list_runs()}
    assert after["r1"] == before["r1"]
    assert after["r2"] is not None and before["r2"] is not None
    assert after["r2"] > before["r2"]


async def test_expired_lease_is_claimed_by_another_worker(store: AnyStore) -> None:
    await store.create_run(NewRun("r1", "flow", ARGS))
    [old] = await store.claim_runs("w1", 10, 0.02, WORKFLOWS)
    assert await store.claim_runs("w2", 10, 30.0, WORKFLOWS) == []
    await asyncio.sleep(0.05)
    [new] = await store.claim_runs("w2", 10, 30.0, WORKFLOWS)
    assert new.fence == old.fence + 1
    assert await store.heartbeat("w1", ["r1"], 30.0) == set()  # w1 learns it lost the run
    assert await store.heartbeat("w2", ["r1"], 30.0) == {"r1"}


async def test_dead_local_worker_leases_are_expired_at_once(store: AnyStore) -> None:
    me = WorkerInfo("me", "host-a", "boot-1", 1, "")
    # A worker on this host whose process is gone (pid far beyond pid_max).
    dead = WorkerInfo("dead", "host-a", "boot-1", 2**30, "")
    elsewhere = WorkerInfo("far", "host-b", "boot-9", 2**30, "")
    for info in (me, dead, elsewhere):
        await store.register_worker(info)
    await store.create_run(NewRun("r1", "flow", ARGS))
    await store.create_run(NewRun("r2", "flow", ARGS))
    await store.claim_runs("dead", 1, 3600.0, WORKFLOWS)
    await store.claim_runs("far", 1, 3600.0, WORKFLOWS)
    assert await store.expire_dead_local_workers(me) == 1
    assert [f.run_id for f in await store.claim_runs("me", 10, 30.0, WORKFLOWS)] == ["r1"]
    workers = {r[0] for r in await rows(store, "SELECT worker_id FROM workers")}
    assert workers == {"me", "far"}
    await store.unregister_worker("me")
    assert {r[0] for r in await rows(store, "SELECT worker_id FROM workers")} == {"far"}


# -- fencing ----------------------------------------------------------------------------
async def test_stale_fence_writes_nothing(store: AnyStore) -> None:
    await store.create_run(NewRun("r1", "flow", ARGS))
    [stale] = await store.claim_runs("w1", 10, 0.01, WORKFLOWS)
    await asyncio.sleep(0.03)
    [current] = await store.claim_runs("w2", 10, 30.0, WORKFLOWS)
    assert current.fence == stale.fence + 1

    with pytest.raises(LeaseLostError) as info:
        await store.append_entry(stale, step_entry(1, 42))
    assert info.value.run_id == "r1"  # type: ignore[attr-defined]
    with pytest.raises(LeaseLostError):
        await store.append_entry(stale, step_entry(1, "x" * 10_000))
    with pytest.raises(LeaseLostError):
        await store.finish_run(stale, RunStatus.SUCCEEDED, result_json="1")
    with pytest.raises(LeaseLostError):
        await store.suspend_run(
            stale, wake_at=None, signal_names=frozenset(), child_ids=frozenset()
        )
    with pytest.raises(LeaseLostError):
        await store.append_entry(
            stale,
            NewEntry(2, "child", "flow", "waiting", '{"run_id": "c"}'),
            start_child=NewRun("c", "flow", ARGS, "r1", 2),
        )
    assert await rows(store, "SELECT count(*) FROM journal") == [(0,)]
    assert await rows(store, "SELECT count(*) FROM blobs") == [(0,)]
    assert await store.get_run("c") is None
    run = await store.get_run("r1")
    assert run is not None
    assert run.status is RunStatus.RUNNING
    assert run.lease_owner == "w2"
    assert run.result is None

    # The current holder's writes go through.
    await store.append_entry(current, step_entry(1, 42))
    await store.finish_run(current, RunStatus.SUCCEEDED, result_json="42")
    assert [e.output for e in await store.list_entries("r1")] == [42]
    assert (await store.get_run("r1")).result == 42  # type: ignore[union-attr]


async def test_stale_writer_does_not_spoil_a_batch(store: AnyStore) -> None:
    await store.create_run(NewRun("r1", "flow", ARGS))
    [stale] = await store.claim_runs("w1", 10, 0.01, WORKFLOWS)
    await asyncio.sleep(0.03)
    await store.claim_runs("w2", 10, 30.0, WORKFLOWS)
    good = await claimed(store, "r2")
    commits = store.commits
    results = await asyncio.gather(
        store.append_entry(stale, step_entry(1, "stale")),
        store.append_entry(good, step_entry(1, "good")),
        return_exceptions=True,
    )
    assert isinstance(results[0], LeaseLostError)
    assert results[1] is None
    assert store.commits == commits + 1
    assert await rows(store, "SELECT run_id, output FROM journal") == [("r2", '"good"')]


async def test_cancelled_run_rejects_its_workers_writes(store: AnyStore) -> None:
    fence = await claimed(store, "r1")
    run = await store.cancel_run("r1", "stop")
    assert run.status is RunStatus.CANCELLED
    assert run.error == {"type": "Cancelled", "message": "stop"}
    with pytest.raises(LeaseLostError):
        await store.append_entry(fence, step_entry(1, 1))
    assert await store.heartbeat("w1", ["r1"], 30.0) == set()
    with pytest.raises(RunNotFoundError):
        await store.cancel_run("nope", "x")


# -- journal ----------------------------------------------------------------------------
async def test_entries_are_sealed_in_place(store: AnyStore) -> None:
    fence = await claimed(store, "r1")
    now = time.time()
    await store.append_entry(
        fence,
        NewEntry(1, "sleep", "sleep", "waiting", '{"seconds": 5}', json.dumps(now), None, now),
    )
    [entry] = await store.list_entries("r1")
    assert entry.status is EntryStatus.WAITING
    assert entry.finished_at is None
    await store.append_entry(
        fence, NewEntry(1, "sleep", "sleep", "completed", None, json.dumps(now), None, now, now)
    )
    [entry] = await store.list_entries("r1")
    assert entry.status is EntryStatus.COMPLETED
    assert entry.input == {"seconds": 5}  # kept from the first write
    assert entry.finished_at == now
    state = await store.load_state("r1")
    assert list(state.entries) == [1]


async def test_a_plain_step_is_one_commit(store: AnyStore) -> None:
    fence = await claimed(store, "r1")
    before = store.commits
    for seq in range(1, 6):
        await store.append_entry(fence, step_entry(seq, seq))
        assert store.commits == before + seq
    assert [e.seq for e in await store.list_entries("r1")] == [1, 2, 3, 4, 5]


async def test_group_commit_batches_concurrent_runs(store: AnyStore) -> None:
    n = 20
    for i in range(n):
        await store.create_run(NewRun(f"r{i}", "flow", ARGS))
    fences = await store.claim_runs("w1", n, 30.0, WORKFLOWS)
    assert len(fences) == n
    before = store.commits
    await asyncio.gather(*(store.append_entry(f, step_entry(1, f.run_id)) for f in fences))
    assert store.commits == before + 1
    assert await rows(store, "SELECT count(*) FROM journal") == [(n,)]
    # And again, sequentially: one commit each (never deferred).
    before = store.commits
    for f in fences[:3]:
        await store.append_entry(f, step_entry(2, 2))
    assert store.commits == before + 3


async def test_large_values_are_stored_once_as_blobs(store: AnyStore) -> None:
    big = {"text": "lorem ipsum " * 1000, "n": [1, 2, 3]}
    text = json.dumps(big)
    assert len(text) > 4096
    small = await claimed(store, "r1")
    other = await claimed(store, "r2")
    await store.append_entry(small, step_entry(1, big))
    await store.append_entry(other, step_entry(1, big))
    now = time.time()
    await store.append_entry(other, NewEntry(2, "step", "echo", "completed", text, text, None, now))
    assert await rows(store, "SELECT count(*), sum(size) FROM blobs") == [(1, len(text))]
    journal = await rows(store, "SELECT output, output_ref FROM journal ORDER BY run_id, seq")
    assert all(output is None and ref for output, ref in journal)
    assert len({ref for _, ref in journal}) == 1
    for run_id in ("r1", "r2"):
        entries = await store.list_entries(run_id)
        assert entries[0].output == big
    state = await store.load_state("r2")
    assert state.entries[2].input == big
    assert state.entries[2].output == big


async def test_small_values_stay_inline(store: AnyStore) -> None:
    fence = await claimed(store, "r1")
    await store.append_entry(fence, step_entry(1, "x" * 100))
    assert await rows(store, "SELECT count(*) FROM blobs") == [(0,)]
    assert await rows(store, "SELECT output_ref FROM journal") == [(None,)]


# -- signals, waits, children -----------------------------------------------------------
async def test_signals_are_kept_in_order_and_consumed(store: AnyStore) -> None:
    fence = await claimed(store, "r1")
    for value in (1, 2, 3):
        await store.send_signal("r1", "go", json.dumps(value))
    await store.send_signal("r1", "other", "null")
    state = await store.load_state("r1")
    assert [(s.name, s.value) for s in state.signals] == [
        ("go", 1),
        ("go", 2),
        ("go", 3),
        ("other", None),
    ]
    first = state.signals[0]
    now = time.time()
    await store.append_entry(
        fence,
        NewEntry(1, "signal", "go", "completed", None, "1", None, now, now),
        consume_signal=first.id,
    )
    state = await store.load_state("r1")
    assert [s.value for s in state.signals if s.name == "go"] == [2, 3]
    with pytest.raises(RunNotFoundError):
        await store.send_signal("nope", "go", "1")


async def test_suspend_parks_the_run_and_a_signal_wakes_it(store: AnyStore) -> None:
    fence = await claimed(store, "r1")
    await store.suspend_run(
        fence, wake_at=None, signal_names=frozenset({"go"}), child_ids=frozenset()
    )
    run = await store.get_run("r1")
    assert run is not None
    assert run.status is RunStatus.WAITING
    assert run.lease_owner is None
    assert run.wake_at is None
    assert await store.claim_runs("w1", 10, 30.0, WORKFLOWS) == []
    await store.send_signal("r1", "go", "1")
    [again] = await store.claim_runs("w1", 10, 30.0, WORKFLOWS)
    assert again.fence == fence.fence + 1


async def test_suspend_wakes_at_once_when_a_signal_is_already_there(store: AnyStore) -> None:
    fence = await claimed(store, "r1")
    await store.send_signal("r1", "go", "1")  # arrives while the run is still running
    await store.suspend_run(
        fence, wake_at=time.time() + 3600, signal_names=frozenset({"go"}), child_ids=frozenset()
    )
    run = await store.get_run("r1")
    assert run is not None
    assert run.status is RunStatus.WAITING
    assert run.wake_at is not None and run.wake_at <= time.time()
    assert [f.run_id for f in await store.claim_runs("w1", 10, 30.0, WORKFLOWS)] == ["r1"]


async def test_suspend_ignores_signals_of_other_names(store: AnyStore) -> None:
    fence = await claimed(store, "r1")
    await store.send_signal("r1", "other", "1")
    await store.suspend_run(
        fence, wake_at=None, signal_names=frozenset({"go"}), child_ids=frozenset()
    )
    assert await store.claim_runs("w1", 10, 30.0, WORKFLOWS) == []


async def test_suspend_with_a_timer(store: AnyStore) -> None:
    fence = await claimed(store, "r1")
    wake = time.time() + 0.05
    await store.suspend_run(fence, wake_at=wake, signal_names=frozenset(), child_ids=frozenset())
    assert await store.next_wake_at(WORKFLOWS) == pytest.approx(wake)
    assert await store.claim_runs("w1", 10, 30.0, WORKFLOWS) == []
    await asyncio.sleep(0.08)
    assert [f.run_id for f in await store.claim_runs("w1", 10, 30.0, WORKFLOWS)] == ["r1"]


async def test_child_is_started_with_the_entry_and_wakes_the_parent(store: AnyStore) -> None:
    parent = await claimed(store, "p")
    await store.append_entry(
        parent,
        NewEntry(1, "child", "flow", "waiting", json.dumps({"run_id": "p:1"})),
        start_child=NewRun("p:1", "flow", ARGS, "p", 1),
    )
    child = await store.get_run("p:1")
    assert child is not None
    assert child.parent_run_id == "p"
    assert child.parent_seq == 1
    await store.suspend_run(
        parent, wake_at=None, signal_names=frozenset(), child_ids=frozenset({"p:1"})
    )
    [child_fence] = await store.claim_runs("w2", 10, 30.0, WORKFLOWS)
    assert child_fence.run_id == "p:1"
    await store.finish_run(child_fence, RunStatus.SUCCEEDED, result_json='"done"')
    [again] = await store.claim_runs("w1", 10, 30.0, WORKFLOWS)
    assert again.run_id == "p"
    state = await store.load_state("p")
    assert state.children["p:1"].status is RunStatus.SUCCEEDED
    assert state.children["p:1"].result == "done"


async def test_a_child_with_a_taken_run_id_writes_nothing(store: AnyStore) -> None:
    parent = await claimed(store, "p")
    await store.create_run(NewRun("taken", "flow", ARGS))
    for workflow in ("flow", "other"):
        with pytest.raises(RunIdConflictError, match="taken"):
            await store.append_entry(
                parent,
                NewEntry(1, "child", workflow, "waiting", json.dumps({"run_id": "taken"})),
                start_child=NewRun("taken", workflow, ARGS, "p", 1),
            )
    assert await store.list_entries("p") == []
    taken = await store.get_run("taken")
    assert taken is not None and taken.parent_run_id is None


async def test_suspend_wakes_at_once_when_a_child_already_ended(store: AnyStore) -> None:
    parent = await claimed(store, "p")
    await store.append_entry(
        parent,
        NewEntry(1, "child", "flow", "waiting", json.dumps({"run_id": "p:1"})),
        start_child=NewRun("p:1", "flow", ARGS, "p", 1),
    )
    [child_fence] = await store.claim_runs("w2", 10, 30.0, WORKFLOWS)
    # The child ends while the parent is still running: _wake_parent has nothing to wake.
    await store.finish_run(child_fence, RunStatus.FAILED, error_json='{"type": "E"}')
    await store.suspend_run(
        parent, wake_at=None, signal_names=frozenset(), child_ids=frozenset({"p:1"})
    )
    assert [f.run_id for f in await store.claim_runs("w1", 10, 30.0, WORKFLOWS)] == ["p"]


async def test_cancel_cascades_to_unfinished_descendants(store: AnyStore) -> None:
    await store.create_run(NewRun("p", "flow", ARGS))
    await store.create_run(NewRun("c1", "flow", ARGS, "p", 1))
    await store.create_run(NewRun("c2", "flow", ARGS, "p", 2))
    await store.create_run(NewRun("g1", "flow", ARGS, "c1", 1))
    fences = {f.run_id: f for f in await store.claim_runs("w", 10, 30.0, WORKFLOWS)}
    await store.finish_run(fences["c2"], RunStatus.SUCCEEDED, result_json="1")
    await store.cancel_run("p", "enough")
    statuses = {r.run_id: r.status for r in await store.list_runs()}
    assert statuses == {
        "p": RunStatus.CANCELLED,
        "c1": RunStatus.CANCELLED,
        "g1": RunStatus.CANCELLED,
        "c2": RunStatus.SUCCEEDED,
    }


# -- schema and pragmas -----------------------------------------------------------------
async def test_migrations_are_recorded_and_applied_once(db_url: str) -> None:
    store = open_store(db_url)
    await store.open()
    expected = [(m.version, m.name) for m in load_migrations(dialect(db_url))]
    recorded = await rows(store, "SELECT version, name, applied_at FROM schema_migrations")
    assert [(v, n) for v, n, _ in recorded] == expected
    await store.create_run(NewRun("r1", "flow", ARGS))
    await store.close()

    again = open_store(db_url)
    await again.open()
    assert await rows(again, "SELECT version, name, applied_at FROM schema_migrations") == recorded
    assert (await again.get_run("r1")) is not None  # data survived, nothing re-created
    await again.close()


async def test_two_stores_open_the_same_new_database(sqlite_url: str) -> None:
    a, b = SQLiteStore(sqlite_url), SQLiteStore(sqlite_url)
    await asyncio.gather(a.open(), b.open())
    count = len(load_migrations("sqlite"))
    assert await rows(a, "SELECT count(*) FROM schema_migrations") == [(count,)]
    await a.create_run(NewRun("r1", "flow", ARGS))
    assert await b.get_run("r1") is not None
    await a.close()
    await b.close()


async def test_wal_and_synchronous_full_by_default(sqlite_url: str) -> None:
    store = SQLiteStore(sqlite_url)
    await store.open()
    assert await rows(store, "PRAGMA journal_mode") == [("wal",)]
    assert await rows(store, "PRAGMA synchronous") == [(2,)]
    await store.close()


async def test_synchronous_normal_on_request(db_path: Path) -> None:
    store = SQLiteStore(f"sqlite:///{db_path}?synchronous=NORMAL")
    await store.open()
    assert await rows(store, "PRAGMA journal_mode") == [("wal",)]
    assert await rows(store, "PRAGMA synchronous") == [(1,)]
    await store.close()


async def test_open_without_create_on_a_missing_file(tmp_path: Path) -> None:
    from tether import DatabaseNotFoundError

    store = SQLiteStore(f"sqlite:///{tmp_path / 'missing.db'}")
    with pytest.raises(DatabaseNotFoundError, match="no database"):
        await store.open(create=False)
    assert not (tmp_path / "missing.db").exists()


async def test_a_failing_write_does_not_fail_its_batch_neighbours(tmp_path: Path) -> None:
    import asyncio
    import sqlite3

    from tether import StorageError
    from tether.storage import NewRun, SQLiteStore

    store = SQLiteStore(f"sqlite:///{tmp_path}/batch.db")
    await store.open()
    try:

        def bad(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO no_such_table VALUES (1)")

        results = await asyncio.gather(
            store.create_run(NewRun("a", "wf", "{}")),
            store._write(bad),
            store.create_run(NewRun("b", "wf", "{}")),
            return_exceptions=True,
        )
        assert isinstance(results[1], StorageError)
        assert not isinstance(results[0], BaseException)
        assert not isinstance(results[2], BaseException)
        assert await store.get_run("a") is not None
        assert await store.get_run("b") is not None
    finally:
        await store.close()


async def test_claim_takes_only_the_workflows_it_is_given(tmp_path: Path) -> None:
    store = SQLiteStore(f"sqlite:///{tmp_path}/filter.db")
    await store.open()
    try:
        await store.create_run(NewRun("old", "checkout", "{}"))
        await store.create_run(NewRun("new", "refund", "{}"))
        fences = await store.claim_runs("w1", 10, 30.0, frozenset({"checkout"}))
        assert [f.run_id for f in fences] == ["old"]
        assert await store.pending_workflows() == {"refund"}
        refund = await store.get_run("new")
        assert refund is not None and refund.status is RunStatus.PENDING
    finally:
        await store.close()


# -- content-addressed blobs and hand-backs (the agent layer) ---------------------------
def with_blobs(seq: int, *texts: str) -> NewEntry:
    entry = step_entry(seq, [blob_hash(t) for t in texts])
    entry.kind = "model"
    entry.blobs = tuple((blob_hash(t), t) for t in texts)
    return entry


async def test_an_entry_writes_its_blobs_once_with_it(store: AnyStore) -> None:
    a, b = await claimed(store, "r1"), await claimed(store, "r2")
    await store.append_entry(a, with_blobs(1, "system prompt", "hello"))
    await store.append_entry(b, with_blobs(1, "system prompt", "bye"))  # shares one
    assert await rows(store, "SELECT count(*) FROM blobs") == [(3,)]
    wanted = [blob_hash(t) for t in ("hello", "bye", "system prompt", "never stored")]
    found = await store.get_blobs(wanted)
    assert found == {blob_hash(t): t for t in ("hello", "bye", "system prompt")}
    assert await store.get_blobs([]) == {}
    many = [f"m{i}" for i in range(1200)]  # more than one SQLite parameter batch
    await store.append_entry(a, with_blobs(2, *many))
    assert len(await store.get_blobs([blob_hash(t) for t in many])) == 1200
    assert (await store.list_entries("r1"))[1].output == [blob_hash(t) for t in many]


async def test_a_stale_writer_writes_no_blob(store: AnyStore) -> None:
    await store.create_run(NewRun("r1", "flow", ARGS))
    [stale] = await store.claim_runs("w1", 10, 0.01, WORKFLOWS)
    await asyncio.sleep(0.03)
    [current] = await store.claim_runs("w2", 10, 30.0, WORKFLOWS)
    with pytest.raises(LeaseLostError):
        await store.append_entry(stale, with_blobs(1, "orphan"))
    assert await rows(store, "SELECT count(*) FROM blobs") == [(0,)]
    assert await rows(store, "SELECT count(*) FROM journal") == [(0,)]
    await store.append_entry(current, with_blobs(1, "kept"))
    assert await store.get_blobs([blob_hash("kept")]) == {blob_hash("kept"): "kept"}


async def test_hand_back_delivers_the_answer_to_a_run_stopped_that_way(store: AnyStore) -> None:
    fence = await claimed(store, "r1")
    error = json.dumps({"code": "budget_exceeded", "message": "over"})
    await store.finish_run(fence, RunStatus.NEEDS_ATTENTION, error_json=error)
    with pytest.raises(RunStateError, match="not stopped on other thing"):
        await store.hand_back("r1", code="other_thing", signal_name="s", value_json="1")
    with pytest.raises(RunNotFoundError):
        await store.hand_back("nope", code="budget_exceeded", signal_name="s", value_json="1")
    assert await store.list_signals("r1") == []

    run = await store.hand_back(
        "r1", code="budget_exceeded", signal_name="tether:budget", value_json='{"tokens": 9}'
    )
    assert run.status is RunStatus.PENDING and run.error is None
    [signal] = await store.list_signals("r1")
    assert (signal.name, signal.value) == ("tether:budget", {"tokens": 9})
    # Only once: the run is no longer stopped.
    with pytest.raises(RunStateError, match="it is pending"):
        await store.hand_back("r1", code="budget_exceeded", signal_name="s", value_json="1")
    assert [f.run_id for f in await store.claim_runs("w2", 10, 30.0, WORKFLOWS)] == ["r1"]
