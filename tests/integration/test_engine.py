"""Engine semantics, in process: replay, nondeterminism, retries, waits, cancellation,
child runs and errors. Each test opens its own App(s) on a fresh SQLite file."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import logging
import threading
import time
import uuid
from datetime import datetime
from typing import Any, cast

import pydantic
import pytest

from tether import (
    App,
    ChildRunFailedError,
    Context,
    EntryStatus,
    JournalEntry,
    NotInWorkflowError,
    RegistrationError,
    Run,
    RunCancelledError,
    RunFailedError,
    RunIdConflictError,
    RunNeedsAttentionError,
    RunNotFoundError,
    RunStatus,
    SerializationError,
    SignalTimeoutError,
    StepFailedError,
    UnknownWorkflowError,
)
from tether.engine._worker import Worker
from tether.storage import SQLiteStore

# Step and workflow annotations are resolved from module globals, so typed values live here.


class Item(pydantic.BaseModel):
    name: str
    qty: int


@dataclasses.dataclass
class Pair:
    left: int
    right: str


async def wait_status(app: App, run_id: str, *statuses: RunStatus, timeout: float = 5.0) -> Run:
    deadline = time.monotonic() + timeout
    run: Run | None = None
    while time.monotonic() < deadline:
        runs = await app.list_runs(limit=10_000)
        run = next((r for r in runs if r.run_id == run_id), None)
        if run is not None and run.status in statuses:
            return run
        await asyncio.sleep(0.01)
    raise AssertionError(f"run {run_id} never reached {statuses}: {run}")


async def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition never became true")
        await asyncio.sleep(0.01)


def entry_summary(entries: list[JournalEntry]) -> list[tuple[int, str, str, str]]:
    return [(e.seq, e.kind, e.name, e.status.value) for e in entries]


def worker_of(app: App) -> Worker:
    assert app.worker is not None
    return app.worker


# -- replay -----------------------------------------------------------------------------
def build_replay_app(
    db_url: str, calls: list[str], gate: asyncio.Event | None, entered: asyncio.Event | None
) -> App:
    app = App(db_url, shutdown_grace=5.0)

    @app.step
    async def first(x: int) -> int:
        calls.append("first")
        return x + 1

    @app.step
    async def second(x: int) -> Item:
        calls.append("second")
        if entered is not None:
            entered.set()
        if gate is not None:
            await gate.wait()
        return Item(name="apples", qty=x)

    @app.step
    def third(item: Item) -> Pair:
        calls.append("third")
        return Pair(item.qty, item.name)

    @app.workflow
    async def flow(ctx: Context, n: int) -> dict[str, Any]:
        a = await first(n)
        item = await second(a)
        pair = await third(item)
        return {
            "a": a,
            "item": item,
            "item_type": type(item).__name__,
            "pair": pair,
            "pair_type": type(pair).__name__,
        }

    return app


async def test_completed_steps_replay_without_executing_after_restart(db_url: str) -> None:
    calls1: list[str] = []
    gate, entered = asyncio.Event(), asyncio.Event()
    app1 = build_replay_app(db_url, calls1, gate, entered)
    await app1.open()
    worker = worker_of(app1)
    await app1.start("flow", 1, run_id="r1")
    await asyncio.wait_for(entered.wait(), 5)
    # Shut down while `second` is in flight: it finishes and commits, `third` never starts.
    closing = asyncio.create_task(app1.close())
    await wait_until(lambda: "r1" in worker.contexts and worker.contexts["r1"].draining)
    gate.set()
    await asyncio.wait_for(closing, 5)
    assert calls1 == ["first", "second"]

    calls2: list[str] = []
    app2 = build_replay_app(db_url, calls2, None, None)
    run = await app2.get_run("r1")
    assert run.status is RunStatus.PENDING  # handed back, not left leased
    assert entry_summary(await app2.get_journal("r1")) == [
        (1, "step", "first", "completed"),
        (2, "step", "second", "completed"),
    ]
    async with app2:
        result = await app2.handle("r1").result(timeout=5)
    assert calls2 == ["third"]  # first and second came from the journal
    assert result["a"] == 2
    assert result["item_type"] == "Item"  # replayed as the model, not a dict
    assert result["pair_type"] == "Pair"
    assert result["item"] == {"name": "apples", "qty": 2}
    assert result["pair"] == {"left": 2, "right": "apples"}


async def test_models_and_dataclasses_round_trip_on_replay(db_url: str) -> None:
    app = App(db_url)
    calls: list[str] = []
    seen: list[tuple[type, type, type, type]] = []

    @app.step
    async def make_item() -> Item:
        calls.append("item")
        return Item(name="x", qty=3)

    @app.step
    def make_pair() -> Pair:
        calls.append("pair")
        return Pair(1, "one")

    @app.step
    async def make_pairs() -> list[Pair]:
        calls.append("pairs")
        return [Pair(2, "two")]

    @app.workflow
    async def flow(ctx: Context) -> Item:
        item = await make_item()
        pair = await make_pair()
        pairs = await make_pairs()
        seen.append((type(item), type(pair), type(pairs), type(pairs[0])))
        await ctx.wait_signal("go")
        return Item(name=item.name + pair.right, qty=item.qty + pairs[0].left)

    async with app:
        handle = await app.start(flow, run_id="r1")
        await wait_status(app, "r1", RunStatus.WAITING)
        await app.signal("r1", "go")
        result = await handle.result(timeout=5)
    assert calls == ["item", "pair", "pairs"]
    assert seen == [(Item, Pair, list, Pair)] * 2  # first execution, then the replay
    assert result == Item(name="xone", qty=5)
    assert (await app.get_run("r1")).result == {"name": "xone", "qty": 5}


# -- nondeterminism -----------------------------------------------------------------------
def build_ab_app(db_url: str, calls: list[str]) -> App:
    app = App(db_url)

    @app.step
    async def a() -> int:
        calls.append("a")
        return 1

    @app.step
    async def b() -> int:
        calls.append("b")
        return 2

    @app.workflow
    async def flow(ctx: Context) -> int:
        x = await a()
        y = await b()
        await ctx.wait_signal("go")
        return x + y

    return app


async def park_flow(db_url: str) -> list[str]:
    """Run flow (a, b, wait) with the original code until it waits, then shut down."""
    calls: list[str] = []
    app = build_ab_app(db_url, calls)
    async with app:
        await app.start("flow", run_id="r1")
        await wait_status(app, "r1", RunStatus.WAITING)
    return calls


async def assert_not_reclaimed(app: App, run_id: str) -> None:
    worker = worker_of(app)
    attempts = (await app.get_run(run_id)).attempts
    claimed = worker.claimed
    await asyncio.sleep(0.3)  # many poll intervals
    assert (await app.get_run(run_id)).attempts == attempts
    assert worker.claimed == claimed
    assert (await app.get_run(run_id)).status is RunStatus.NEEDS_ATTENTION


async def test_changed_step_order_moves_the_run_to_needs_attention(db_url: str) -> None:
    assert await park_flow(db_url) == ["a", "b"]

    calls: list[str] = []
    app = App(db_url, poll_interval=0.02)

    @app.step
    async def a() -> int:
        calls.append("a")
        return 1

    @app.step
    async def b() -> int:
        calls.append("b")
        return 2

    @app.workflow(name="flow")
    async def changed(ctx: Context) -> int:
        y = await b()  # was a(), b()
        x = await a()
        await ctx.wait_signal("go")
        return x + y

    async with app:
        await app.signal("r1", "go")
        run = await wait_status(app, "r1", RunStatus.NEEDS_ATTENTION)
        assert calls == []  # the mismatching call is not executed
        assert run.error is not None
        assert run.error["type"] == "NondeterminismError"
        assert run.error["code"] == "nondeterminism"
        assert run.error["seq"] == 1
        assert run.error["recorded"] == {"kind": "step", "name": "a"}
        assert run.error["expected"] == {"kind": "step", "name": "b"}
        assert "seq 1" in run.error["message"]
        assert "'a'" in run.error["message"] and "'b'" in run.error["message"]
        with pytest.raises(RunNeedsAttentionError) as info:
            await app.handle("r1").result(timeout=1)
        assert isinstance(info.value, RunFailedError)
        await assert_not_reclaimed(app, "r1")
    # The journal is left as recorded, for a person to inspect.
    assert [e.name for e in await app.get_journal("r1")][:2] == ["a", "b"]


async def test_workflow_that_now_calls_fewer_steps_needs_attention(db_url: str) -> None:
    await park_flow(db_url)

    calls: list[str] = []
    app = App(db_url, poll_interval=0.02)

    @app.step
    async def a() -> int:
        calls.append("a")
        return 1

    @app.workflow(name="flow")
    async def shorter(ctx: Context) -> int:
        return await a()

    async with app:
        await app.signal("r1", "go")
        run = await wait_status(app, "r1", RunStatus.NEEDS_ATTENTION)
        assert calls == []
        assert run.error is not None
        assert run.error["type"] == "NondeterminismError"
        assert run.error["seq"] == 2
        assert run.error["recorded"] == {"kind": "step", "name": "b"}
        assert run.result is None
        await assert_not_reclaimed(app, "r1")


async def test_nondeterminism_cannot_be_swallowed_by_the_workflow(db_url: str) -> None:
    await park_flow(db_url)
    app = App(db_url, poll_interval=0.02)

    @app.step
    async def c() -> int:
        return 3

    @app.workflow(name="flow")
    async def sneaky(ctx: Context) -> int:
        try:
            return await c()
        except Exception:
            return -1

    async with app:
        await app.signal("r1", "go")
        run = await wait_status(app, "r1", RunStatus.NEEDS_ATTENTION)
        assert run.error is not None
        assert run.error["expected"] == {"kind": "step", "name": "c"}
        assert run.result is None


async def test_changed_kind_of_call_is_nondeterminism(db_url: str) -> None:
    await park_flow(db_url)
    app = App(db_url)

    @app.workflow(name="flow")
    async def sleeper(ctx: Context) -> int:
        await ctx.sleep(0)
        return 0

    async with app:
        await app.signal("r1", "go")
        run = await wait_status(app, "r1", RunStatus.NEEDS_ATTENTION)
    assert run.error is not None
    assert run.error["recorded"] == {"kind": "step", "name": "a"}
    assert run.error["expected"] == {"kind": "sleep", "name": "sleep"}


# -- starts -------------------------------------------------------------------------------
async def test_duplicate_start_returns_the_same_run(db_url: str) -> None:
    app = App(db_url)
    calls: list[int] = []

    @app.step
    async def double(x: int) -> int:
        calls.append(x)
        return 2 * x

    @app.workflow
    async def flow(ctx: Context, n: int) -> int:
        return await double(n)

    @app.workflow
    async def other(ctx: Context, n: int) -> int:
        return n

    async with app:
        h1 = await app.start(flow, 5, run_id="dup")
        h2 = await app.start(flow, 99, run_id="dup")
        assert h1.run_id == h2.run_id == "dup"
        assert await h1.result(timeout=5) == 10
        assert await h2.result(timeout=5) == 10
        h3 = await app.start(flow, 7, run_id="dup")  # after it ended: still the same run
        assert await h3.result(timeout=5) == 10
        with pytest.raises(RunIdConflictError, match="dup"):
            await app.start(other, 1, run_id="dup")
        await asyncio.sleep(0.1)
        runs = await app.list_runs()
    assert calls == [5]
    assert [(r.run_id, r.workflow, r.attempts) for r in runs] == [("dup", "flow", 1)]


async def test_generated_run_ids_are_distinct(db_url: str) -> None:
    app = App(db_url)

    @app.workflow
    async def flow(ctx: Context) -> str:
        return ctx.run_id

    async with app:
        handles = [await app.start(flow) for _ in range(3)]
        results = [await h.result(timeout=5) for h in handles]
    assert results == [h.run_id for h in handles]
    assert len(set(results)) == 3


# -- retries, failures, timeouts ----------------------------------------------------------
async def test_retries_with_backoff_then_success(db_url: str) -> None:
    app = App(db_url)
    attempts: list[float] = []

    @app.step(retries=3, backoff=0.01, backoff_max=0.05)
    async def flaky() -> str:
        attempts.append(time.monotonic())
        if len(attempts) < 3:
            raise ConnectionError(f"try {len(attempts)}")
        return "ok"

    @app.workflow
    async def flow(ctx: Context) -> str:
        return await flaky()

    async with app:
        assert await (await app.start(flow, run_id="r1")).result(timeout=5) == "ok"
        [entry] = await app.get_journal("r1")
    assert len(attempts) == 3
    assert entry.status is EntryStatus.COMPLETED
    assert entry.attempts == 3
    assert entry.output == "ok"
    # Backoff waited at least half the nominal delay between attempts (10 ms, then 20 ms).
    assert attempts[1] - attempts[0] >= 0.004
    assert attempts[2] - attempts[1] >= 0.009


async def test_exhausted_retries_are_recorded_and_replayed_as_the_same_error(
    db_url: str,
) -> None:
    app = App(db_url)
    calls: list[int] = []
    caught: list[tuple[str, Any, Any, Any]] = []

    @app.step(retries=1, backoff=0.001)
    def broken(x: int) -> int:
        calls.append(x)
        raise ValueError(f"bad {x}")

    @app.workflow
    async def flow(ctx: Context) -> dict[str, Any]:
        try:
            await broken(7)
        except StepFailedError as exc:
            caught.append((str(exc), exc.error_type, exc.error_message, exc.seq))  # type: ignore[attr-defined]
        await ctx.wait_signal("go")  # forces a replay of everything above
        return {"caught": len(caught)}

    async with app:
        handle = await app.start(flow, run_id="r1")
        await wait_status(app, "r1", RunStatus.WAITING)
        entry, wait = await app.get_journal("r1")
        assert wait.kind == "signal" and wait.status is EntryStatus.WAITING
        assert entry.status is EntryStatus.FAILED
        assert entry.attempts == 2
        assert entry.error is not None
        assert entry.error["type"] == "ValueError"
        assert entry.error["message"] == "bad 7"
        await app.signal("r1", "go")
        assert await handle.result(timeout=5) == {"caught": 2}
    assert calls == [7, 7]  # two attempts in the first execution, none on replay
    assert caught[0] == caught[1]
    assert caught[0][1:] == ("ValueError", "bad 7", 1)


async def test_uncaught_step_failure_fails_the_run(db_url: str) -> None:
    app = App(db_url)

    @app.step
    async def boom() -> None:
        raise RuntimeError("kaput")

    @app.workflow
    async def flow(ctx: Context) -> None:
        await boom()

    async with app:
        handle = await app.start(flow, run_id="r1")
        with pytest.raises(RunFailedError, match="kaput") as info:
            await handle.result(timeout=5)
        assert not isinstance(info.value, RunCancelledError | RunNeedsAttentionError)
        run = await app.get_run("r1")
    assert run.status is RunStatus.FAILED
    assert run.error is not None
    assert run.error["type"] == "StepFailedError"
    assert run.error["code"] == "step_failed"
    assert "kaput" in run.error["message"]


async def test_step_timeout(db_url: str) -> None:
    app = App(db_url)
    calls: list[int] = []

    @app.step(timeout=0.05, retries=1, backoff=0.001)
    async def slow() -> int:
        calls.append(1)
        await asyncio.sleep(10)
        return 1

    @app.workflow
    async def flow(ctx: Context) -> str:
        try:
            await slow()
        except StepFailedError as exc:
            return str(exc.error_type)  # type: ignore[attr-defined]
        return "no timeout"

    started = time.monotonic()
    async with app:
        assert await (await app.start(flow, run_id="r1")).result(timeout=5) == "TimeoutError"
        [entry] = await app.get_journal("r1")
    assert time.monotonic() - started < 3
    assert len(calls) == 2
    assert entry.status is EntryStatus.FAILED
    assert entry.attempts == 2
    assert entry.error is not None and "timed out" in entry.error["message"]


# -- where bodies run ---------------------------------------------------------------------
async def test_sync_steps_run_off_the_event_loop(db_url: str) -> None:
    app = App(db_url)
    threads: list[threading.Thread] = []

    @app.step
    def blocking(x: int) -> int:
        threads.append(threading.current_thread())
        time.sleep(0.01)
        return x + 1

    @app.step
    async def non_blocking(x: int) -> int:
        threads.append(threading.current_thread())
        return x + 1

    @app.workflow
    async def flow(ctx: Context) -> int:
        return await non_blocking(await blocking(1))

    async with app:
        assert await (await app.start(flow)).result(timeout=5) == 3
    assert threads[0] is not threading.main_thread()
    assert threads[1] is threading.main_thread()


async def test_steps_cannot_make_durable_calls(db_url: str) -> None:
    app = App(db_url)

    @app.step
    async def inner() -> int:
        return 1

    @app.step
    async def outer() -> int:
        return await inner()

    @app.workflow
    async def flow(ctx: Context) -> str:
        try:
            await outer()
        except StepFailedError as exc:
            return str(exc.error_type)  # type: ignore[attr-defined]
        return "nested call allowed"

    async with app:
        assert await (await app.start(flow)).result(timeout=5) == "NotInWorkflowError"


# -- parallel steps -----------------------------------------------------------------------
async def test_gather_numbers_calls_in_argument_order(db_url: str) -> None:
    app = App(db_url)
    finished: list[str] = []
    calls: list[str] = []

    @app.step
    async def slow(x: int) -> int:
        calls.append(f"slow{x}")
        await asyncio.sleep(0.02 * (4 - x))  # later arguments finish first
        finished.append(f"slow{x}")
        return x * 10

    @app.step
    async def fast(x: int) -> int:
        calls.append(f"fast{x}")
        finished.append(f"fast{x}")
        return x * 100

    @app.workflow
    async def flow(ctx: Context) -> list[int]:
        results = await asyncio.gather(slow(1), fast(2), slow(3))
        await ctx.wait_signal("go")
        return list(results)

    async with app:
        handle = await app.start(flow, run_id="r1")
        await wait_status(app, "r1", RunStatus.WAITING)
        await app.signal("r1", "go")
        assert await handle.result(timeout=5) == [10, 200, 30]
        journal = await app.get_journal("r1")
    assert entry_summary(journal)[:3] == [
        (1, "step", "slow", "completed"),
        (2, "step", "fast", "completed"),
        (3, "step", "slow", "completed"),
    ]
    assert [e.input for e in journal[:3]] == [{"args": [1]}, {"args": [2]}, {"args": [3]}]
    assert [e.output for e in journal[:3]] == [10, 200, 30]
    assert journal[3].kind == "signal"
    assert sorted(calls) == ["fast2", "slow1", "slow3"]  # each once: replay did not re-run
    assert finished[0] == "fast2"


# -- recorded non-determinism ---------------------------------------------------------------
async def test_now_uuid_random_are_recorded_and_replayed(db_url: str) -> None:
    app = App(db_url)
    seen: list[tuple[datetime, uuid.UUID, float]] = []

    @app.workflow
    async def flow(ctx: Context) -> list[Any]:
        t = await ctx.now()
        u = await ctx.uuid()
        r = await ctx.random()
        seen.append((t, u, r))
        await ctx.wait_signal("go")
        return [t.isoformat(), str(u), r]

    before = time.time()
    async with app:
        handle = await app.start(flow, run_id="r1")
        await wait_status(app, "r1", RunStatus.WAITING)
        await asyncio.sleep(0.02)  # so that a fresh ctx.now() would differ
        await app.signal("r1", "go")
        result = await handle.result(timeout=5)
        journal = await app.get_journal("r1")
    assert len(seen) == 2
    assert seen[0] == seen[1]
    t, u, r = seen[0]
    assert isinstance(t, datetime) and t.tzinfo is not None
    assert before - 1 <= t.timestamp() <= time.time()
    assert isinstance(u, uuid.UUID) and u.version == 4
    assert isinstance(r, float) and 0.0 <= r < 1.0
    assert result == [t.isoformat(), str(u), r]
    assert [e.kind for e in journal] == ["now", "uuid", "random", "signal"]


# -- durable waits ------------------------------------------------------------------------
async def test_durable_sleep(db_url: str) -> None:
    app = App(db_url)
    calls: list[str] = []

    @app.step
    async def mark(label: str) -> str:
        calls.append(label)
        return label

    @app.workflow
    async def flow(ctx: Context) -> str:
        await mark("before")
        await ctx.sleep(0.4)
        return await mark("after")

    async with app:
        started = time.time()
        handle = await app.start(flow, run_id="r1")
        run = await wait_status(app, "r1", RunStatus.WAITING)
        assert run.wake_at is not None
        assert started + 0.35 <= run.wake_at <= time.time() + 0.45
        assert run.lease_owner is None
        assert worker_of(app).active == {}
        assert calls == ["before"]
        assert await handle.result(timeout=5) == "after"
        assert time.time() - started >= 0.38
        journal = await app.get_journal("r1")
    assert calls == ["before", "after"]
    assert entry_summary(journal) == [
        (1, "step", "mark", "completed"),
        (2, "sleep", "sleep", "completed"),
        (3, "step", "mark", "completed"),
    ]


async def test_durable_sleep_keeps_its_wake_time_across_a_restart(db_url: str) -> None:
    app1 = App(db_url)

    @app1.workflow
    async def flow(ctx: Context) -> str:
        await ctx.sleep(0.5)
        return "awake"

    async with app1:
        await app1.start(flow, run_id="r1")
        run = await wait_status(app1, "r1", RunStatus.WAITING)
    assert run.wake_at is not None
    wake_at = run.wake_at

    app2 = App(db_url)
    app2.workflow(flow.fn)
    async with app2:
        assert (await app2.get_run("r1")).wake_at == wake_at  # not restarted by reopening
        assert await app2.handle("r1").result(timeout=5) == "awake"
    assert time.time() >= wake_at
    [entry] = await app2.get_journal("r1")
    assert entry.output == wake_at


@pytest.mark.postgres
async def test_a_run_started_while_announcements_are_not_heard_starts_at_once(
    postgres_url: str,
) -> None:
    """Where the store hears announcements, a start leaves the worker's wake-up to the
    run's own announcement. With the notification channel down, the start wakes the
    worker itself: the run does not wait for a poll."""
    app = App(postgres_url, poll_interval=30)

    @app.workflow
    async def quick(ctx: Context) -> int:
        return 7

    async with app:
        store = app.store
        listener = store._listener  # type: ignore[attr-defined]
        listener.cancel()
        with pytest.raises(asyncio.CancelledError):
            await listener
        assert not store.listening
        handle = await app.start(quick)
        assert await handle.result(timeout=10) == 7


@pytest.mark.postgres
async def test_a_lease_taken_after_the_last_look_is_taken_over_when_it_expires(
    postgres_url: str,
) -> None:
    """The claim loop keeps what it last read of the next lease expiry, and looks again
    when that read is half a lease old: a lease another worker took after the read (and
    let lapse) is taken over then, not a poll interval (30 s here) later."""
    app = App(postgres_url, poll_interval=30, lease_seconds=4)

    @app.workflow
    async def quick(ctx: Context) -> int:
        return 9

    async with app:
        await asyncio.sleep(0.2)  # the claim loop has looked and gone to sleep
        # Another worker's run, leased for one second and never heartbeaten (written
        # directly: no announcement wakes anyone).
        await app.store._write(  # type: ignore[attr-defined]
            lambda conn: conn.execute(
                "INSERT INTO runs (run_id, workflow, status, args, created_at, updated_at, "
                "lease_owner, fence, lease_expires_at, attempts) VALUES ('taken', 'quick', "
                "'running', %s, 0, 0, 'gone', 1, "
                "extract(epoch from statement_timestamp()) + 1, 1)",
                (json.dumps({"args": [], "kwargs": {}}),),
            ),
            single=True,
        )
        assert await app.handle("taken").result(timeout=10) == 9


async def test_timers_set_after_the_last_look_still_wake_their_runs(db_url: str) -> None:
    """The claim loop keeps what it last read of the next timer (where timers are
    announced): each timer set later must still wake its run, with no poll to fall back
    on. The run parks on each sleep, and its worker wakes it from the announcement."""
    app = App(db_url, poll_interval=30)

    @app.workflow
    async def naps(ctx: Context) -> int:
        for _ in range(3):
            await ctx.sleep(0.2)
        return 3

    async with app:
        handles = [await app.start(naps) for _ in range(3)]
        for handle in handles:
            assert await handle.result(timeout=15) == 3


async def test_a_signal_sent_while_the_run_is_busy_is_not_lost(db_url: str) -> None:
    app = App(db_url, poll_interval=30)  # no polling: the wake-up must come from suspend
    entered, release = asyncio.Event(), asyncio.Event()

    @app.step
    async def busy() -> None:
        entered.set()
        await release.wait()

    @app.workflow
    async def flow(ctx: Context) -> Any:
        await busy()
        return await ctx.wait_signal("go")

    async with app:
        handle = await app.start(flow, run_id="r1")
        await asyncio.wait_for(entered.wait(), 5)
        await app.signal("r1", "go", "early")
        release.set()
        assert await handle.result(timeout=5) == "early"


async def test_a_branch_waits_while_another_keeps_working(db_url: str) -> None:
    app = App(db_url)
    calls: list[int] = []

    @app.step
    async def work(x: int) -> int:
        calls.append(x)
        await asyncio.sleep(0.02)
        return x

    @app.workflow
    async def flow(ctx: Context) -> list[Any]:
        async def steps() -> int:
            return await work(1) + await work(2)

        return list(await asyncio.gather(ctx.wait_signal("go"), steps()))

    async with app:
        handle = await app.start(flow, run_id="r1")
        await wait_status(app, "r1", RunStatus.WAITING)
        # It suspends only once the working branch is done too.
        assert entry_summary(await app.get_journal("r1")) == [
            (1, "signal", "go", "waiting"),
            (2, "step", "work", "completed"),
            (3, "step", "work", "completed"),
        ]
        await app.signal("r1", "go", "v")
        assert await handle.result(timeout=5) == ["v", 3]
    assert calls == [1, 2]


async def test_signals_sent_before_the_wait_are_kept_in_order(db_url: str) -> None:
    app = App(db_url)

    @app.workflow
    async def flow(ctx: Context) -> list[Any]:
        a = await ctx.wait_signal("x")
        b = await ctx.wait_signal("x")
        c = await ctx.wait_signal("y")
        d = await ctx.wait_signal("x")
        return [a, b, c, d]

    # Start and signal while no worker runs: everything lands in the mailbox first.
    handle = await app.start(flow, run_id="r1")
    await app.signal("r1", "x", 1)
    await app.signal("r1", "y", {"k": "v"})
    await app.signal("r1", "x", 2)
    async with app:
        await wait_status(app, "r1", RunStatus.WAITING)
        assert (await app.get_run("r1")).status is RunStatus.WAITING  # blocked on the 3rd x
        await app.signal("r1", "x", 3)
        assert await handle.result(timeout=5) == [1, 2, {"k": "v"}, 3]
        journal = await app.get_journal("r1")
        state = await app.store.load_state("r1")
    assert [(e.name, e.output) for e in journal] == [
        ("x", 1),
        ("x", 2),
        ("y", {"k": "v"}),
        ("x", 3),
    ]
    assert state.signals == []  # every signal consumed


async def test_signal_timeout(db_url: str) -> None:
    app = App(db_url)
    caught: list[BaseException] = []

    @app.workflow
    async def flow(ctx: Context) -> str:
        try:
            await ctx.wait_signal("never", timeout=0.2)
        except SignalTimeoutError as exc:
            caught.append(exc)
            return "timed out"
        return "signalled"

    async with app:
        handle = await app.start(flow, run_id="r1")
        run = await wait_status(app, "r1", RunStatus.WAITING)
        assert run.wake_at is not None  # the deadline is durable
        assert await handle.result(timeout=5) == "timed out"
        [entry] = await app.get_journal("r1")
    assert isinstance(caught[0], TimeoutError)
    assert entry.kind == "signal" and entry.status is EntryStatus.FAILED


async def test_uncaught_signal_timeout_fails_the_run(db_url: str) -> None:
    app = App(db_url)

    @app.workflow
    async def flow(ctx: Context) -> Any:
        return await ctx.wait_signal("never", timeout=0.05)

    async with app:
        with pytest.raises(RunFailedError, match="SignalTimeoutError"):
            await (await app.start(flow, run_id="r1")).result(timeout=5)


async def test_result_timeout_on_a_waiting_run(db_url: str) -> None:
    app = App(db_url)

    @app.workflow
    async def flow(ctx: Context) -> Any:
        return await ctx.wait_signal("go")

    async with app:
        handle = await app.start(flow, run_id="r1")
        await wait_status(app, "r1", RunStatus.WAITING)
        started = time.monotonic()
        with pytest.raises(TimeoutError) as info:
            await handle.result(timeout=0.2)
        assert not isinstance(info.value, RunFailedError)
        assert 0.15 <= time.monotonic() - started < 2
        assert await handle.status() is RunStatus.WAITING
        await app.signal("r1", "go", "v")
        assert await handle.result(timeout=5) == "v"


async def test_many_result_calls_on_runs_executed_elsewhere_share_one_read(
    db_url: str,
) -> None:
    """The runs execute in another App (another process, as far as this one knows); this
    App's result() calls learn of their end through one read of all of them each
    poll_interval, not one read per handle per interval."""
    n = 50
    executor = App(db_url)
    client = App(db_url, poll_interval=0.1)  # its worker runs none of these

    @executor.workflow
    async def flow(ctx: Context, i: int) -> int:
        return i + int(await ctx.wait_signal("go"))

    @client.workflow
    async def other(ctx: Context) -> None: ...

    async with executor, client:
        for i in range(n):
            await executor.start(flow, i, run_id=f"r{i}")
        for i in range(n):
            await wait_status(executor, f"r{i}", RunStatus.WAITING)
        store = client.store
        reads = {"get_run": 0, "stopped_runs": 0}
        get_run, stopped_runs = store.get_run, store.stopped_runs

        async def counted_get_run(run_id: str) -> Run | None:
            reads["get_run"] += 1
            return await get_run(run_id)

        async def counted_stopped_runs(run_ids: list[str]) -> list[str]:
            reads["stopped_runs"] += 1
            return await stopped_runs(run_ids)

        store.get_run = counted_get_run  # type: ignore[method-assign]
        store.stopped_runs = counted_stopped_runs  # type: ignore[method-assign]
        waiting = asyncio.gather(*(client.handle(f"r{i}").result(timeout=30) for i in range(n)))
        await asyncio.sleep(1.0)  # ten poll intervals with every handle waiting
        assert not waiting.done()
        for i in range(n):
            await executor.signal(f"r{i}", "go", 1000)
        assert await waiting == [i + 1000 for i in range(n)]
    # One read per handle to start, one to see its result; the rest are shared reads.
    # (A read per handle per interval would have made about n * 10 before the signals.)
    assert reads["get_run"] <= 2 * n + 5, reads
    assert reads["stopped_runs"] >= 1, reads


async def test_waiting_runs_hold_no_task(db_url: str) -> None:
    app = App(db_url, max_concurrency=10)
    n = 40

    @app.workflow
    async def flow(ctx: Context, i: int) -> int:
        value = await ctx.wait_signal("go")
        return int(value) + i

    async with app:
        worker = worker_of(app)
        handles = [await app.start(flow, i, run_id=f"r{i}") for i in range(n)]

        async def all_waiting() -> bool:
            return len(await app.list_runs(status=RunStatus.WAITING, limit=1000)) == n

        deadline = time.monotonic() + 10
        while not await all_waiting():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.05)
        assert worker.active == {}
        assert worker.contexts == {}
        run_tasks = [t for t in asyncio.all_tasks() if t.get_name().startswith("tether-run-")]
        assert run_tasks == []
        assert all(r.lease_owner is None for r in await app.list_runs(limit=1000))
        for i in range(n):
            await app.signal(f"r{i}", "go", 100)
        results = [await h.result(timeout=10) for h in handles]
    assert results == [100 + i for i in range(n)]


# -- cancellation -------------------------------------------------------------------------
async def test_cancel_a_waiting_run(db_url: str) -> None:
    app = App(db_url, poll_interval=0.02)
    calls: list[str] = []

    @app.step
    async def after() -> None:
        calls.append("after")

    @app.workflow
    async def flow(ctx: Context) -> None:
        await ctx.wait_signal("go")
        await after()

    async with app:
        handle = await app.start(flow, run_id="r1")
        await wait_status(app, "r1", RunStatus.WAITING)
        run = await app.cancel("r1", "not needed")
        assert run.status is RunStatus.CANCELLED
        with pytest.raises(RunCancelledError, match="not needed"):
            await handle.result(timeout=5)
        await app.signal("r1", "go")
        await asyncio.sleep(0.2)
        run = await app.get_run("r1")
    assert run.status is RunStatus.CANCELLED
    assert run.error == {"type": "Cancelled", "message": "not needed"}
    assert calls == []


@pytest.mark.parametrize("sync_body", [False, True], ids=["async-step", "sync-step"])
async def test_cancel_a_running_run(db_url: str, sync_body: bool) -> None:
    app = App(db_url, poll_interval=0.02)
    calls: list[str] = []
    entered = threading.Event()
    release = threading.Event()
    release_async = asyncio.Event()

    async def wait_async() -> str:
        entered.set()
        await release_async.wait()
        calls.append("blocker done")
        return "done"

    def wait_sync() -> str:
        entered.set()
        release.wait(5)
        calls.append("blocker done")
        return "done"

    blocker = app.step(name="blocker")(wait_sync if sync_body else wait_async)

    @app.step
    async def after() -> None:
        calls.append("after")

    @app.workflow
    async def flow(ctx: Context) -> None:
        await blocker()
        await after()

    async with app:
        handle = await app.start(flow, run_id="r1")
        await wait_until(entered.is_set)
        await app.cancel("r1")
        with pytest.raises(RunCancelledError):
            await handle.result(timeout=5)
        release.set()
        release_async.set()
        await asyncio.sleep(0.2)
        await wait_until(lambda: worker_of(app).active == {})
        run = await app.get_run("r1")
        journal = await app.get_journal("r1")
    assert run.status is RunStatus.CANCELLED
    assert "after" not in calls
    assert journal == []  # the step in flight was not recorded, nothing after it ran
    if sync_body:
        assert calls == ["blocker done"]  # a thread cannot be interrupted; its result is dropped
    else:
        assert calls == []


async def test_cancelling_a_parent_cancels_its_unfinished_children(db_url: str) -> None:
    app = App(db_url, poll_interval=0.02)

    @app.workflow
    async def quick(ctx: Context) -> int:
        return 1

    @app.workflow
    async def slow(ctx: Context) -> Any:
        return await ctx.wait_signal("go")

    @app.workflow
    async def parent(ctx: Context) -> list[Any]:
        a = await ctx.child(quick)
        b = await ctx.child(slow)
        return [a, b]

    async with app:
        handle = await app.start(parent, run_id="p")
        await wait_status(app, "p:2", RunStatus.WAITING)
        await wait_status(app, "p", RunStatus.WAITING)
        await app.cancel("p")
        with pytest.raises(RunCancelledError):
            await handle.result(timeout=5)
        with pytest.raises(RunCancelledError):
            await app.handle("p:2").result(timeout=5)
        statuses = {r.run_id: r.status for r in await app.list_runs()}
    assert statuses == {
        "p": RunStatus.CANCELLED,
        "p:1": RunStatus.SUCCEEDED,
        "p:2": RunStatus.CANCELLED,
    }


async def test_cancelling_a_parent_stops_a_child_in_flight(db_url: str) -> None:
    app = App(db_url, poll_interval=0.02)
    calls: list[str] = []
    entered, release = asyncio.Event(), asyncio.Event()

    @app.step
    async def blocker() -> None:
        entered.set()
        await release.wait()
        calls.append("blocker")

    @app.step
    async def after() -> None:
        calls.append("after")

    @app.workflow
    async def child(ctx: Context) -> None:
        await blocker()
        await after()

    @app.workflow
    async def parent(ctx: Context) -> None:
        await ctx.child(child)

    async with app:
        await app.start(parent, run_id="p")
        await asyncio.wait_for(entered.wait(), 5)
        await app.cancel("p")
        release.set()
        with pytest.raises(RunCancelledError):
            await app.handle("p:1").result(timeout=5)
        await wait_until(lambda: worker_of(app).active == {})
        await asyncio.sleep(0.1)
        statuses = {r.run_id: r.status for r in await app.list_runs()}
        journal = await app.get_journal("p:1")
    assert statuses == {"p": RunStatus.CANCELLED, "p:1": RunStatus.CANCELLED}
    assert "after" not in calls
    assert journal == []


# -- child runs ---------------------------------------------------------------------------
async def test_child_run_returns_its_result(db_url: str) -> None:
    app = App(db_url)
    calls: list[int] = []

    @app.step
    async def make(n: int) -> Item:
        calls.append(n)
        return Item(name="c", qty=n)

    @app.workflow
    async def child(ctx: Context, n: int) -> Item:
        return await make(n)

    @app.workflow
    async def parent(ctx: Context, n: int) -> dict[str, Any]:
        await ctx.now()  # seq 1
        first = await ctx.child(child, n)  # seq 2
        second = await ctx.child(child, n + 1, run_id="custom-child")  # seq 3
        return {"types": [type(first).__name__, type(second).__name__], "qty": first.qty}

    async with app:
        result = await (await app.start(parent, 5, run_id="p")).result(timeout=5)
        default_child = await app.get_run("p:2")
        custom_child = await app.get_run("custom-child")
        journal = await app.get_journal("p")
    assert result == {"types": ["Item", "Item"], "qty": 5}
    assert default_child.parent_run_id == "p"
    assert default_child.parent_seq == 2
    assert default_child.status is RunStatus.SUCCEEDED
    assert default_child.result == {"name": "c", "qty": 5}
    assert custom_child.parent_run_id == "p"
    assert custom_child.result == {"name": "c", "qty": 6}
    assert entry_summary(journal) == [
        (1, "now", "now", "completed"),
        (2, "child", "child", "completed"),
        (3, "child", "child", "completed"),
    ]
    assert calls == [5, 6]  # the parent's replays did not re-run the children


async def test_failing_child_raises_in_the_parent(db_url: str) -> None:
    app = App(db_url)

    @app.workflow
    async def child(ctx: Context) -> None:
        raise ValueError("child broke")

    @app.workflow
    async def parent(ctx: Context) -> dict[str, Any]:
        try:
            await ctx.child(child)
        except ChildRunFailedError as exc:
            return {
                "run": exc.child_run_id,  # type: ignore[attr-defined]
                "status": exc.child_status,  # type: ignore[attr-defined]
                "type": exc.child_error["type"],  # type: ignore[attr-defined]
            }
        return {}

    async with app:
        result = await (await app.start(parent, run_id="p")).result(timeout=5)
        [entry] = await app.get_journal("p")
    assert result == {"run": "p:1", "status": "failed", "type": "ValueError"}
    assert entry.status is EntryStatus.FAILED


async def test_uncaught_child_failure_fails_the_parent(db_url: str) -> None:
    app = App(db_url)

    @app.workflow
    async def child(ctx: Context) -> None:
        raise ValueError("child broke")

    @app.workflow
    async def parent(ctx: Context) -> None:
        await ctx.child(child)

    async with app:
        with pytest.raises(RunFailedError, match="ChildRunFailedError"):
            await (await app.start(parent, run_id="p")).result(timeout=5)


@pytest.mark.parametrize("owner", ["other", "child"])
async def test_child_run_id_that_is_already_taken(db_url: str, owner: str) -> None:
    app = App(db_url, poll_interval=0.02)
    executions: list[int] = []
    errors: list[str] = []

    @app.workflow
    async def other(ctx: Context) -> int:
        return 0

    @app.workflow
    async def child(ctx: Context) -> int:
        return 1

    @app.workflow
    async def parent(ctx: Context) -> str:
        executions.append(1)
        try:
            await ctx.child(child, run_id="taken")
        except RunIdConflictError as exc:
            errors.append(exc.message)
        await ctx.wait_signal("go")  # forces a replay of the child call
        return "ok"

    async with app:
        await (await app.start(owner, run_id="taken")).result(timeout=5)
        handle = await app.start(parent, run_id="p")
        await wait_status(app, "p", RunStatus.WAITING)
        await app.signal("p", "go")
        assert await handle.result(timeout=5) == "ok"
        taken = await app.get_run("taken")
        parent_run = await app.get_run("p")
        journal = await app.get_journal("p")
    assert taken.workflow == owner
    assert taken.parent_run_id is None
    # The conflict is raised on every execution and leaves no child entry behind.
    assert len(executions) == 2
    assert len(errors) == 2 and "'taken'" in errors[0]
    assert [e.kind for e in journal] == ["signal"]
    assert parent_run.attempts == 2  # claimed once per execution, no crash loop


# -- errors -------------------------------------------------------------------------------
async def test_step_outside_a_workflow(db_url: str) -> None:
    app = App(db_url)

    @app.step
    async def s() -> int:
        return 1

    with pytest.raises(NotInWorkflowError):
        await s()


def test_bad_workflow_definitions_fail_at_decoration(db_url: str) -> None:
    app = App(db_url)
    with pytest.raises(RegistrationError):

        @app.workflow
        async def no_ctx() -> None:  # pragma: no cover - never registered
            pass

    with pytest.raises(RegistrationError):

        @app.workflow  # type: ignore[arg-type]
        def not_async(ctx: Context) -> None:  # pragma: no cover - never registered
            pass

    assert app.workflows == {}


async def test_unknown_workflow_at_start(db_url: str) -> None:
    app = App(db_url)

    @app.workflow
    async def flow(ctx: Context) -> None:
        pass

    with pytest.raises(UnknownWorkflowError, match="'nope'") as info:
        await app.start("nope")
    assert "flow" in str(info.value)
    await app.close()


async def test_a_worker_without_the_workflow_leaves_its_runs_for_one_that_has_it(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Rolling deploy: a run of a workflow this worker does not register is not claimed
    (and so not failed); the worker says so once, and a worker that has it runs it."""
    app1 = App(db_url)

    @app1.workflow
    async def flow(ctx: Context) -> int:
        return 1

    await app1.start(flow, run_id="r1")  # no worker: stays pending
    await app1.close()

    app2 = App(db_url, poll_interval=0.02)

    @app2.workflow
    async def something_else(ctx: Context) -> int:
        return 2

    with caplog.at_level(logging.WARNING, logger="tether.worker"):
        async with app2:
            await asyncio.sleep(0.3)
            run = await app2.get_run("r1")
            assert run.status is RunStatus.PENDING and run.attempts == 0
    warnings = [r.getMessage() for r in caplog.records if "'flow'" in r.getMessage()]
    assert len(warnings) == 1 and "does not register it" in warnings[0]

    app3 = App(db_url, poll_interval=0.02)

    @app3.workflow(name="flow")
    async def flow_again(ctx: Context) -> int:
        return 3

    async with app3:
        assert await app3.handle("r1").result(timeout=10) == 3


async def test_unserializable_workflow_argument_stores_nothing(db_url: str) -> None:
    app = App(db_url)

    @app.workflow
    async def flow(ctx: Context, x: Any) -> None:
        pass

    async with app:
        with pytest.raises(SerializationError, match="arguments of 'flow'"):
            await app.start(flow, object(), run_id="r1")
        assert await app.list_runs() == []


async def test_unserializable_step_result_fails_the_step(db_url: str) -> None:
    app = App(db_url)

    @app.step
    async def opaque() -> Any:
        return threading.Lock()

    @app.workflow
    async def flow(ctx: Context) -> dict[str, Any]:
        try:
            await opaque()
        except StepFailedError as exc:
            return {"type": exc.error_type, "message": exc.error_message}  # type: ignore[attr-defined]
        return {}

    async with app:
        result = await (await app.start(flow, run_id="r1")).result(timeout=5)
        [entry] = await app.get_journal("r1")
    assert result["type"] == "SerializationError"
    assert "return value of step 'opaque'" in result["message"]
    assert entry.status is EntryStatus.FAILED
    assert entry.error is not None
    assert entry.error["type"] == "SerializationError"
    assert entry.error["code"] == "serialization"


async def test_unserializable_step_argument_raises_in_the_workflow(db_url: str) -> None:
    app = App(db_url)
    calls: list[Any] = []

    @app.step
    async def take(x: Any) -> None:
        calls.append(x)

    @app.workflow
    async def flow(ctx: Context) -> str:
        try:
            await take(object())
        except SerializationError as exc:
            return exc.message
        return "stored"

    async with app:
        message = await (await app.start(flow, run_id="r1")).result(timeout=5)
        assert await app.get_journal("r1") == []
    assert "arguments of step 'take'" in message
    assert calls == []


async def test_unserializable_workflow_result_fails_the_run(db_url: str) -> None:
    app = App(db_url)

    @app.workflow
    async def flow(ctx: Context) -> Any:
        return object()

    async with app:
        with pytest.raises(RunFailedError, match="cannot be stored as JSON"):
            await (await app.start(flow, run_id="r1")).result(timeout=5)
        run = await app.get_run("r1")
    assert run.error is not None and run.error["type"] == "SerializationError"


async def test_workflow_exception_fails_the_run_with_a_traceback(db_url: str) -> None:
    app = App(db_url)

    @app.workflow
    async def flow(ctx: Context) -> None:
        raise KeyError("missing")

    async with app:
        with pytest.raises(RunFailedError, match="KeyError") as info:
            await (await app.start(flow, run_id="r1")).result(timeout=5)
    assert info.value.run_id == "r1"  # type: ignore[attr-defined]
    error = info.value.error  # type: ignore[attr-defined]
    assert error["type"] == "KeyError"
    assert "Traceback" in error["traceback"]


async def test_unknown_run_ids(db_url: str) -> None:
    app = App(db_url)
    async with app:
        with pytest.raises(RunNotFoundError, match="nope"):
            await app.get_run("nope")
        with pytest.raises(RunNotFoundError):
            await app.signal("nope", "go")
        with pytest.raises(RunNotFoundError):
            await app.cancel("nope")
        with pytest.raises(RunNotFoundError):
            await app.get_journal("nope")


# -- fencing between two workers ----------------------------------------------------------
def build_fenced_app(db_url: str, label: str, log: list[str], gate: asyncio.Event) -> App:
    app = App(db_url, lease_seconds=0.3, poll_interval=0.05)

    @app.step
    async def work() -> str:
        log.append(f"{label} started")
        await gate.wait()
        log.append(f"{label} finished")
        return label

    @app.step
    async def after(x: str) -> str:
        log.append(f"{label} after")
        return x

    @app.workflow
    async def flow(ctx: Context) -> str:
        return await after(await work())

    return app


async def test_a_paused_worker_cannot_overwrite_the_new_owner(db_url: str) -> None:
    log: list[str] = []
    gate_a, gate_b = asyncio.Event(), asyncio.Event()
    gate_b.set()
    app_a = build_fenced_app(db_url, "A", log, gate_a)
    app_b = build_fenced_app(db_url, "B", log, gate_b)
    async with app_a:
        worker_a = worker_of(app_a)
        await app_a.start("flow", run_id="r1")
        await wait_until(lambda: log == ["A started"])
        # A is paused (no heartbeat, no claiming), so its lease expires mid-step.
        for task in worker_a._tasks:
            task.cancel()
        async with app_b:
            assert await app_b.handle("r1").result(timeout=5) == "B"
            gate_a.set()  # A wakes up and tries to record its step
            await wait_until(lambda: worker_a.active == {})
            run = await app_b.get_run("r1")
            journal = await app_b.get_journal("r1")
    assert log == ["A started", "B started", "B finished", "B after", "A finished"]
    assert run.status is RunStatus.SUCCEEDED
    assert run.result == "B"
    assert run.fence == 2
    assert [(e.seq, e.output) for e in journal] == [(1, "B"), (2, "B")]


# -- commits --------------------------------------------------------------------------------
async def test_a_plain_step_costs_one_commit(db_url: str) -> None:
    # A long poll interval and lease keep the worker quiet while the steps run, and no
    # notifications (PostgreSQL): the run's own start would wake the worker to claim again.
    app = App(db_url, poll_interval=30, lease_seconds=60)
    app.store.subscribe = lambda handler: None  # type: ignore[method-assign]
    deltas: list[int] = []

    @app.step
    async def inc(x: int) -> int:
        return x + 1

    @app.workflow
    async def flow(ctx: Context, n: int) -> int:
        store = cast(SQLiteStore, app.store)
        x = 0
        for _ in range(n):
            before = store.commits
            x = await inc(x)
            deltas.append(store.commits - before)
        return x

    async with app:
        assert await (await app.start(flow, 30, run_id="r1")).result(timeout=10) == 30
    # The first steps may share a transaction (or a round) with the worker's claims just
    # after the start; once it settles, each step is exactly one commit.
    assert deltas[-15:] == [1] * 15


async def test_concurrent_runs_share_commits(db_url: str) -> None:
    app = App(db_url, poll_interval=30, lease_seconds=60)
    runs, steps = 20, 5

    @app.step
    async def inc(x: int) -> int:
        return x + 1

    @app.workflow
    async def flow(ctx: Context) -> int:
        x = 0
        for _ in range(steps):
            x = await inc(x)
        return x

    store = cast(SQLiteStore, app.store)
    for i in range(runs):  # no worker yet: all pending, claimed together on open
        await app.start(flow, run_id=f"r{i}")
    before = store.commits
    async with app:
        results = [await app.handle(f"r{i}").result(timeout=10) for i in range(runs)]
        commits = store.commits - before
    assert results == [steps] * runs
    # 100 step entries plus 20 finishes and the claims, in far fewer transactions.
    assert commits <= (runs * steps) // 2


async def test_a_long_run_of_steps_lets_other_tasks_run(tmp_path: Any) -> None:
    """SQLite commits a write at once when nothing else is ready to run (so nothing could
    join its batch), sparing a step two trips through the loop; but a run of such writes
    still goes through the loop every few steps, or one long workflow would keep timers
    and I/O (heartbeats, signal handlers, other runs' wake-ups) waiting until it ended."""
    app = App(f"sqlite:///{tmp_path}/long.db")
    done = 0
    seen: list[int] = []

    @app.step
    async def add(i: int) -> int:
        nonlocal done
        done += 1
        return i + 1

    @app.workflow
    async def many(ctx: Context, n: int) -> int:
        return sum([await add(i) for i in range(n)])

    # Every loop iteration asks the selector for I/O (and then runs due timers): spy on it.
    selector = asyncio.get_running_loop()._selector  # type: ignore[attr-defined]
    select = selector.select

    def spied(timeout: float | None = None) -> Any:
        seen.append(done)
        return select(timeout)

    async with app:
        handle = await app.start(many, 400)
        store = cast(SQLiteStore, app.store)
        commits = store.commits
        selector.select = spied
        try:
            assert await handle.result(timeout=60) == sum(range(1, 401))
        finally:
            selector.select = select
        assert store.commits - commits >= 400  # one commit per step: no write-behind
    gaps = [b - a for a, b in itertools.pairwise(seen)]
    assert max(gaps) <= 17, f"{max(gaps)} steps in a row ran without the loop looking at I/O"


async def test_a_run_costs_two_claims(db_url: str) -> None:
    """The worker claims once when a run is started and once more at most (a slot freed,
    or a parent perhaps woken where the store cannot announce it): not again after a claim
    that found fewer runs than it asked for, nor for every run that ends while slots are
    free. Where the store announces new runs (PostgreSQL), the announcement alone wakes
    the worker: one claim a run, and the claim loop's look at the timers is not read
    again per claim (announced timers are folded in)."""
    app = App(db_url, poll_interval=30.0)

    @app.workflow
    async def quick(ctx: Context, i: int) -> int:
        return i

    async with app:
        await (await app.start(quick, 0)).result(timeout=10)
        store = app.store
        claim_runs, next_wake_at = store.claim_runs, store.next_wake_at
        claims = reads = 0

        async def counted(*args: Any, **kwargs: Any) -> Any:
            nonlocal claims
            claims += 1
            return await claim_runs(*args, **kwargs)

        async def read(*args: Any, **kwargs: Any) -> Any:
            nonlocal reads
            reads += 1
            return await next_wake_at(*args, **kwargs)

        store.claim_runs = counted  # type: ignore[method-assign]
        store.next_wake_at = read  # type: ignore[method-assign]
        for i in range(10):
            assert await (await app.start(quick, i)).result(timeout=10) == i
        await asyncio.sleep(0.2)  # a late notification of the last start
    if store.notifies:
        assert 10 <= claims <= 12, f"{claims} claims for 10 runs"  # it was 2 a run
        assert reads <= 2, f"{reads} reads of the next wake-up for 10 runs"  # it was 20
    else:
        assert 10 <= claims <= 22, f"{claims} claims for 10 runs"  # it was 3 a run
