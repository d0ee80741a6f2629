"""The peer workloads (see ``_harness.py``) on LangGraph: a ``StateGraph`` with a
checkpointer, run in the caller's process.

A durable step is one superstep of a graph whose single node ``step`` takes the state
``{"i", "total", "n"}``, returns ``i + 1`` and adds it to ``total``; a conditional edge
loops back to ``step`` until ``i == n``, then goes to ``END``. The graph is compiled with
the checkpointer and invoked with ``durability="sync"``: the loop waits for a superstep's
checkpoint to be saved before it starts the next one. A step is two commits: the node's
writes (three ``writes`` rows: ``i``, ``total`` and the branch to ``step``), then the
checkpoint (one ``checkpoints`` row holding the whole state; on Postgres its ints are
inlined in the row's JSONB, only the run's input goes to ``checkpoint_blobs``).
``recursion_limit`` is ``n + 10``; each run has a thread id of its own. (LangGraph's
functional API, ``@entrypoint`` with ``@task``, stores one ``writes`` row per task and two
checkpoints per run, so one commit per step, and a crashed run replays the entrypoint
with the recorded tasks' results: closer to Tether's model; the graph loop is the
canonical use and is what is measured here.)

Savers: SQLite ``SqliteSaver`` (sync) / ``AsyncSqliteSaver`` (async, aiosqlite) on a
connection made here, with ``PRAGMA journal_mode=WAL`` and ``PRAGMA synchronous=FULL``
run on it before it is handed over (the savers' ``setup()`` sets ``journal_mode=WAL``
itself, never ``synchronous``); the pragmas are read back through ``saver.conn``.
PostgreSQL ``PostgresSaver`` on one ``psycopg.Connection`` (sync) /
``AsyncPostgresSaver`` on an ``AsyncConnectionPool`` (async), every connection with
``autocommit=True, prepare_threshold=0, row_factory=dict_row`` as the docs require;
``setup()`` is called once. Every saver, sync or async, serialises its database calls
through one lock of its own, so the pool's size does not add concurrency; the async
Postgres saver also (de)serialises in ``asyncio.to_thread``, hence the loop's executor
threads in ``waiting``.

Workloads:

``step``
    The sync API (``graph.invoke``), faster than ``ainvoke`` on both backends for one run
    at a time (see ``STEP_API``).
``throughput``
    The async API: ``await graph.ainvoke(...)`` per run under an
    ``asyncio.Semaphore(concurrency)``; Postgres pool of ``min(concurrency, 20)``.
``waiting``
    A graph whose node calls ``interrupt("go")``: ``ainvoke`` returns when the run is
    interrupted (checkpointed, with no coroutine or thread left behind), then
    ``ainvoke(Command(resume=1))`` on each thread finishes it; both phases run under a
    semaphore of ``WAIT_LIMIT`` (100), Postgres pool of 20.
``victim`` / ``recover`` / ``recorded``
    The sync API. LangGraph has no automatic recovery: nothing finds a run a dead process
    left behind; whoever resumes it (a person, a supervisor) must know its thread id and
    invoke the graph again with input ``None`` on that thread, which continues from the
    latest checkpoint (with any pending writes of the interrupted superstep). That is what
    ``recover`` does. ``recorded`` reads the latest checkpoint of the thread: its ``i``,
    raised to the ``i`` of a pending write if the killed superstep's writes were saved
    before its checkpoint.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, Literal, TypedDict

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h
import aiosqlite
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command, interrupt
from psycopg import Connection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

STEP_API: Literal["sync", "async"] = "sync"  # the faster for ``step`` on both backends
WAIT_LIMIT = h.WAIT_CALLERS  # runs started / resumed at once by ``waiting``
MAX_POOL = 20  # the AsyncConnectionPool's size is min(concurrency, MAX_POOL)
PG_KWARGS: dict[str, Any] = {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row}
PACKAGES = (
    "langgraph",
    "langgraph-checkpoint",
    "langgraph-checkpoint-sqlite",
    "langgraph-checkpoint-postgres",
    "aiosqlite",
    "psycopg",
)

Graph = CompiledStateGraph[Any, Any, Any, Any]


class Steps(TypedDict):
    i: int  # steps done
    total: int  # the sum of their results
    n: int  # steps to do


class Waiting(TypedDict):
    value: int


# -- savers -------------------------------------------------------------------------------
def sqlite_connect(path: str) -> sqlite3.Connection:
    # the sync graph saves checkpoints from a background thread; the saver locks the conn
    conn = sqlite3.connect(path, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


@contextmanager
def sync_saver(args: h.Args) -> Iterator[BaseCheckpointSaver[Any]]:
    if args.backend == "sqlite":
        conn = sqlite_connect(args.db)
        try:
            saver = SqliteSaver(conn)
            saver.setup()
            yield saver
        finally:
            conn.close()
    else:
        with Connection.connect(args.db, **PG_KWARGS) as pg:
            pg_saver = PostgresSaver(pg)  # type: ignore[arg-type]
            pg_saver.setup()
            yield pg_saver


@asynccontextmanager
async def async_saver(args: h.Args, *, pool_size: int) -> AsyncIterator[BaseCheckpointSaver[Any]]:
    if args.backend == "sqlite":
        conn = await aiosqlite.connect(args.db)
        try:
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute("PRAGMA synchronous=FULL")
            saver = AsyncSqliteSaver(conn)
            await saver.setup()
            yield saver
        finally:
            await conn.close()
    else:
        size = max(1, min(pool_size, MAX_POOL))
        pool = AsyncConnectionPool(
            args.db, min_size=size, max_size=size, kwargs=PG_KWARGS, open=False
        )
        await pool.open(wait=True)  # every connection made before anything is measured
        try:
            pg_saver = AsyncPostgresSaver(pool)  # type: ignore[arg-type]
            await pg_saver.setup()
            yield pg_saver
        finally:
            await pool.close()


def figures(saver: BaseCheckpointSaver[Any], **more: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"versions": h.versions(*PACKAGES)}
    if isinstance(saver, SqliteSaver):
        with saver.lock:
            out["sqlite_pragmas"] = h.sqlite_pragmas(saver.conn)
    out.update(more)
    return out


async def afigures(saver: BaseCheckpointSaver[Any], **more: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"versions": h.versions(*PACKAGES)}
    if isinstance(saver, AsyncSqliteSaver):
        async with saver.conn.execute("PRAGMA journal_mode") as cur:
            mode = await cur.fetchone()
        async with saver.conn.execute("PRAGMA synchronous") as cur:
            sync = await cur.fetchone()
        assert mode is not None and sync is not None
        out["sqlite_pragmas"] = {"journal_mode": str(mode[0]).lower(), "synchronous": int(sync[0])}
    if isinstance(saver, AsyncPostgresSaver):
        out["pool_size"] = saver.conn.max_size  # type: ignore[union-attr]
    out.update(more)
    return out


# -- graphs -------------------------------------------------------------------------------
def steps_graph(
    saver: BaseCheckpointSaver[Any],
    *,
    use_async: bool,
    pace: float = 0.0,
    log: str | None = None,
) -> Graph:
    """The loop of ``step`` supersteps; ``async def`` node and route for the async API (a
    sync node or route under ``ainvoke`` is run in the loop's executor thread pool)."""

    def advance(state: Steps) -> dict[str, int]:
        i = state["i"]
        if pace:
            time.sleep(pace)
        if log is not None:
            h.log_step(log, i)
        return {"i": i + 1, "total": state["total"] + i + 1}

    async def aadvance(state: Steps) -> dict[str, int]:
        i = state["i"]
        if pace:
            await asyncio.sleep(pace)
        if log is not None:
            h.log_step(log, i)
        return {"i": i + 1, "total": state["total"] + i + 1}

    def route(state: Steps) -> str:
        return "step" if state["i"] < state["n"] else END

    async def aroute(state: Steps) -> str:
        return route(state)

    builder = StateGraph(Steps)
    builder.add_node("step", aadvance if use_async else advance)
    builder.add_edge(START, "step")
    builder.add_conditional_edges("step", aroute if use_async else route, ["step", END])
    return builder.compile(checkpointer=saver)


def waiting_graph(saver: BaseCheckpointSaver[Any]) -> Graph:
    async def wait(state: Waiting) -> dict[str, int]:
        return {"value": int(interrupt("go"))}

    builder = StateGraph(Waiting)
    builder.add_node("wait", wait)
    builder.add_edge(START, "wait")
    builder.add_edge("wait", END)
    return builder.compile(checkpointer=saver)


def config_of(thread_id: str, steps: int = 0) -> RunnableConfig:
    return {"configurable": {"thread_id": thread_id}, "recursion_limit": steps + 10}


def start_of(n: int) -> Steps:
    return {"i": 0, "total": 0, "n": n}


def expected(n: int) -> int:
    return n * (n + 1) // 2


# -- workloads ----------------------------------------------------------------------------
def _step_sync(args: h.Args) -> dict[str, Any]:
    times: list[float] = []
    with sync_saver(args) as saver:
        graph = steps_graph(saver, use_async=False)
        for r in range(args.warmup + args.repeats):
            t0 = time.perf_counter()
            out = graph.invoke(
                start_of(args.steps), config_of(f"step-{r}", args.steps), durability="sync"
            )
            elapsed = time.perf_counter() - t0
            assert out["total"] == expected(args.steps), out
            if r >= args.warmup:
                times.append(elapsed * 1000)
        return figures(saver, api="sync", per_step_ms=h.median(times) / args.steps, runs_ms=times)


async def _step_async(args: h.Args) -> dict[str, Any]:
    times: list[float] = []
    async with async_saver(args, pool_size=1) as saver:
        graph = steps_graph(saver, use_async=True)
        for r in range(args.warmup + args.repeats):
            t0 = time.perf_counter()
            out = await graph.ainvoke(
                start_of(args.steps), config_of(f"step-{r}", args.steps), durability="sync"
            )
            elapsed = time.perf_counter() - t0
            assert out["total"] == expected(args.steps), out
            if r >= args.warmup:
                times.append(elapsed * 1000)
        return await afigures(
            saver, api="async", per_step_ms=h.median(times) / args.steps, runs_ms=times
        )


def _step(args: h.Args) -> dict[str, Any]:
    no_pace = h.Args(**{**args.__dict__, "pace": 0.0})
    return _step_sync(no_pace) if STEP_API == "sync" else asyncio.run(_step_async(no_pace))


async def _round(graph: Graph, tag: str, runs: int, n: int, limit: int) -> float:
    gate = asyncio.Semaphore(limit)

    async def one(k: int) -> None:
        async with gate:
            out = await graph.ainvoke(start_of(n), config_of(f"{tag}-{k}", n), durability="sync")
            assert out["total"] == expected(n), out

    t0 = time.perf_counter()
    await asyncio.gather(*(one(k) for k in range(runs)))
    return time.perf_counter() - t0


async def _throughput(args: h.Args) -> dict[str, Any]:
    limit = max(args.concurrency, 1)
    async with async_saver(args, pool_size=limit) as saver:
        graph = steps_graph(saver, use_async=True)
        await _round(graph, "warm", min(args.runs, 50), args.steps, limit)
        seconds = await _round(graph, "run", args.runs, args.steps, limit)
        return await afigures(
            saver,
            steps_per_s=args.runs * args.steps / seconds,
            seconds=seconds,
            runs=args.runs,
            steps=args.steps,
            concurrency=args.concurrency,
        )


def _victim(args: h.Args) -> None:
    with sync_saver(args) as saver:
        graph = steps_graph(saver, use_async=False, pace=args.pace, log=args.log)
        graph.invoke(start_of(args.steps), config_of(args.run_id, args.steps), durability="sync")
    raise SystemExit("the victim should have been killed")


def _recover(args: h.Args) -> dict[str, Any]:
    with sync_saver(args) as saver:
        graph = steps_graph(saver, use_async=False, pace=args.pace, log=args.log)
        launched = time.time()
        # the documented way on: invoke the thread again with no input
        out = graph.invoke(None, config_of(args.run_id, args.steps), durability="sync")
        done = time.time()
        return figures(
            saver,
            launched_s=launched,
            done_s=done,
            result_ok=out is not None and out.get("total") == expected(args.steps),
        )


def _recorded(args: h.Args) -> dict[str, Any]:
    with sync_saver(args) as saver:
        found = saver.get_tuple({"configurable": {"thread_id": args.run_id, "checkpoint_ns": ""}})
        checkpoint_i = 0 if found is None else int(found.checkpoint["channel_values"].get("i", 0))
        pending = [] if found is None else list(found.pending_writes or [])
        pending_i = [int(value) for _, channel, value in pending if channel == "i"]
        return figures(
            saver,
            recorded=max([checkpoint_i, *pending_i]),
            checkpoint_i=checkpoint_i,
            pending_writes=len(pending),
        )


async def _waiting(args: h.Args) -> dict[str, Any]:
    async with async_saver(args, pool_size=WAIT_LIMIT) as saver:
        graph = waiting_graph(saver)
        baseline = (h.rss_mb(), h.os_threads())
        gate = asyncio.Semaphore(WAIT_LIMIT)

        async def start(k: int) -> None:
            async with gate:
                out = await graph.ainvoke({"value": 0}, config_of(f"w{k}"), durability="sync")
                assert "__interrupt__" in out, out  # the run is interrupted: it waits

        async def wake(k: int) -> int:
            async with gate:
                out = await graph.ainvoke(Command(resume=1), config_of(f"w{k}"), durability="sync")
                return int(out["value"])

        t0 = time.perf_counter()
        await asyncio.gather(*(start(k) for k in range(args.runs)))
        started = time.perf_counter() - t0
        waiting = (h.rss_mb(), h.os_threads())
        t1 = time.perf_counter()
        results = await asyncio.gather(*(wake(k) for k in range(args.runs)))
        woke = time.perf_counter() - t1
        assert sum(results) == args.runs, sum(results)
        return await afigures(
            saver,
            baseline_rss_mb=baseline[0],
            baseline_threads=baseline[1],
            waiting_rss_mb=waiting[0],
            waiting_threads=waiting[1],
            start_s=started,
            wake_s=woke,
            limit=WAIT_LIMIT,
        )


def run(coro: Any) -> Any:
    return lambda args: asyncio.run(coro(args))


if __name__ == "__main__":
    sys.exit(
        h.main(
            {
                "step": _step,
                "throughput": run(_throughput),
                "victim": _victim,
                "recover": _recover,
                "recorded": _recorded,
                "waiting": run(_waiting),
            }
        )
    )
