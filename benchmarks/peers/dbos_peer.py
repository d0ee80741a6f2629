"""The peer workloads (see ``_harness.py``) on DBOS Transact: ``@DBOS.step()`` steps in a
``@DBOS.workflow()``, run by the process that starts them, on DBOS's system database only
(DBOS 3 has no application database).

DBOS-specific choices:

* Workflows and steps are ``async def`` (DBOS documents sync and async alike).
  ``DBOS.start_workflow_async`` takes coroutine workflows only and runs each as a task on
  the caller's event loop, so ``throughput`` and ``waiting`` need them; ``step`` uses the
  same workflow. A sync workflow of sync steps (``DBOS.start_workflow``, one executor
  thread per run) was measured too: per step it was within noise of the async one on both
  backends, the async one slightly ahead, so every workload runs one code path. Each
  step's checkpoint check and write run through ``asyncio.to_thread`` on DBOS's executor
  (unbounded), which DBOS installs as the loop's default executor.
* SQLite: DBOS creates its SQLAlchemy engine itself and sets only ``busy_timeout`` and
  ``foreign_keys`` (and ``isolation_level = "IMMEDIATE"``). A global SQLAlchemy
  ``connect`` listener on :class:`sqlalchemy.engine.Engine` runs ``PRAGMA
  journal_mode=WAL`` and ``PRAGMA synchronous=FULL`` on every new sqlite3 connection, next
  to DBOS's own listener (the sqlite3 module opens no transaction for a PRAGMA, so DBOS's
  IMMEDIATE handling is untouched; SQLite's own defaults are ``delete`` and FULL).
  ``sqlite_pragmas`` is read back through a connection of DBOS's own engine
  (``DBOS._sys_db.engine``, an internal), after the workload. ``recorded`` does not launch
  DBOS (that would recover the run); it reads ``operation_outputs`` on a read-only sqlite3
  / psycopg connection of its own, and its ``sqlite_pragmas`` are that connection's
  (``wal`` is the file's mode).
* ``waiting``: a workflow waits in ``DBOS.recv_async("go", timeout_seconds=3600)``. There is
  no "waiting" workflow status in DBOS (the run stays ``PENDING``), so the signal that a
  run waits is the one DBOS itself writes: recv first registers the waiter in the
  notification map, checks for a message already there, and only then checkpoints its
  timeout as a ``DBOS.sleep`` row in ``operation_outputs``. Every run has waited once the
  system database holds one such row per run (one ``COUNT`` on DBOS's engine per poll);
  ``waiters_registered`` is the size of DBOS's in-memory waiter map at that moment. ``go``
  is sent with one ``DBOS.send_async`` per run (``send_bulk_async`` would batch them). On
  PostgreSQL a send wakes its waiter through LISTEN/NOTIFY; on SQLite DBOS's notification
  listener polls every 1 s (``notification_listener_polling_interval_sec``, default kept),
  one query per registered waiter.
* Recovery: DBOS recovers, at ``DBOS.launch()``, the ``PENDING`` workflows of its own
  executor id (``"local"`` unless configured: the victim and the recovering process share
  it) and application version (a hash of the workflows' source, the app name and the DBOS
  version: the same file gives the same version). Both are left at their defaults and
  reported. Recovery re-enqueues the run on DBOS's internal queue, whose worker polls once a
  second. ``recover`` awaits the result with a handle polling every 50 ms (the handle's
  default is 1 s) so that the observer adds little to ``done_s``.
* Logging goes to stderr; ``log_level`` is ``WARNING`` so stdout ends with the RESULT line.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h
import psycopg
import sqlalchemy as sa
from dbos import DBOS, DBOSConfig, SetWorkflowID, WorkflowHandleAsync

APP_NAME = "tether-bench"
STEP_NAME = "work"  # the function_name of a step's row in operation_outputs
TOPIC = "go"
RESULT_POLL_S = 0.05  # how often `recover` asks for the recovered run's result


# -- the workflows --------------------------------------------------------------------------
# Registered at import, so that every process (victim and recover alike) defines the same
# workflows and DBOS computes the same application version. The step reads its pace and log
# from module state, set from the command line before DBOS is launched.
class _StepSettings:
    pace: float = 0.0
    log: str | None = None


@DBOS.step(name=STEP_NAME)
async def work(i: int) -> int:
    if _StepSettings.pace:
        await asyncio.sleep(_StepSettings.pace)
    if _StepSettings.log is not None:
        h.log_step(_StepSettings.log, i)
    return i + 1


@DBOS.workflow()
async def steps(n: int) -> int:
    total = 0
    for i in range(n):
        total += await work(i)
    return total


@DBOS.workflow()
async def waiter() -> int:
    return int(await DBOS.recv_async(TOPIC, timeout_seconds=3600))


def expected(n: int) -> int:
    return n * (n + 1) // 2


# -- DBOS lifecycle ---------------------------------------------------------------------------
def url_of(args: h.Args) -> str:
    if args.backend == "sqlite":
        return f"sqlite:///{Path(args.db).resolve()}"
    return args.db  # postgresql://...; DBOS switches the driver to psycopg itself


def _sqlite_durability(dbapi_connection: Any, connection_record: Any) -> None:
    if isinstance(dbapi_connection, sqlite3.Connection):
        dbapi_connection.execute("PRAGMA journal_mode=WAL")
        dbapi_connection.execute("PRAGMA synchronous=FULL")


def open_dbos(args: h.Args) -> DBOS:
    """Configure DBOS (not launched yet) and, on SQLite, the pragmas of its connections."""
    _StepSettings.pace = args.pace
    _StepSettings.log = args.log
    if args.backend == "sqlite" and not sa.event.contains(
        sa.engine.Engine, "connect", _sqlite_durability
    ):
        sa.event.listen(sa.engine.Engine, "connect", _sqlite_durability)
    config: DBOSConfig = {
        "name": APP_NAME,
        "system_database_url": url_of(args),
        "log_level": "WARNING",
    }
    return DBOS(config=config)


def figures(dbos: DBOS, args: h.Args, **more: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "versions": h.versions("dbos", "sqlalchemy"),
        "application_version": DBOS.application_version,
        "executor_id": DBOS.executor_id,
    }
    if args.backend == "sqlite":
        with dbos._sys_db.engine.connect() as conn:  # DBOS's own engine and pool
            out["sqlite_pragmas"] = h.sqlite_pragmas(conn.connection.dbapi_connection)
    out.update(more)
    return out


def launched(
    body: Callable[[DBOS, h.Args], Coroutine[Any, Any, dict[str, Any] | None]],
    *,
    paced: bool = True,
) -> Callable[[h.Args], dict[str, Any] | None]:
    """A workload run on a launched DBOS, destroyed when it is over. Unpaced workloads run
    their steps without the recovery workload's sleep and log, as tether_peer's do."""

    def run(args: h.Args) -> dict[str, Any] | None:
        if not paced:
            args = h.Args(**{**args.__dict__, "pace": 0.0, "log": None})
        dbos = open_dbos(args)
        DBOS.launch()
        try:
            return asyncio.run(body(dbos, args))
        finally:
            DBOS.destroy()

    return run


# -- the workloads ----------------------------------------------------------------------------
async def _step(dbos: DBOS, args: h.Args) -> dict[str, Any]:
    times: list[float] = []
    for i in range(args.warmup + args.repeats):
        t0 = time.perf_counter()
        handle = await DBOS.start_workflow_async(steps, args.steps)
        result = await handle.get_result()
        elapsed = time.perf_counter() - t0
        assert result == expected(args.steps), result
        if i >= args.warmup:
            times.append(elapsed * 1000)
    return figures(dbos, args, per_step_ms=h.median(times) / args.steps, runs_ms=times)


async def _round(runs: int, n: int, limit: int) -> float:
    gate = asyncio.Semaphore(limit)

    async def one() -> None:
        async with gate:
            handle = await DBOS.start_workflow_async(steps, n)
            result = await handle.get_result()
            assert result == expected(n), result

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(runs)))
    return time.perf_counter() - t0


async def _throughput(dbos: DBOS, args: h.Args) -> dict[str, Any]:
    await _round(min(args.runs, 50), args.steps, args.concurrency)
    seconds = await _round(args.runs, args.steps, args.concurrency)
    return figures(
        dbos,
        args,
        steps_per_s=args.runs * args.steps / seconds,
        seconds=seconds,
        runs=args.runs,
        steps=args.steps,
        concurrency=args.concurrency,
    )


async def _victim(dbos: DBOS, args: h.Args) -> None:
    with SetWorkflowID(args.run_id):
        handle = await DBOS.start_workflow_async(steps, args.steps)
    await handle.get_result()
    raise SystemExit("the victim should have been killed")


def _recover(args: h.Args) -> dict[str, Any]:
    dbos = open_dbos(args)
    launched_s = time.time()
    DBOS.launch()  # finds the dead process's PENDING run and re-enqueues it
    try:
        result: int = DBOS.retrieve_workflow(args.run_id).get_result(
            polling_interval_sec=RESULT_POLL_S
        )
        done_s = time.time()
        return figures(
            dbos,
            args,
            launched_s=launched_s,
            done_s=done_s,
            result_ok=result == expected(args.steps),
        )
    finally:
        DBOS.destroy()


def _recorded(args: h.Args) -> dict[str, Any]:
    """Completed steps of the run, read straight from the system database (DBOS is not
    launched: launching it would recover the run)."""
    # A step's row is written once, when it has completed (DBOS.* rows are not steps).
    where = "workflow_uuid = {p} AND function_name = {p} AND error IS NULL"
    out: dict[str, Any] = {"versions": h.versions("dbos", "sqlalchemy")}
    if args.backend == "sqlite":
        uri = f"file:{Path(args.db).resolve()}?mode=ro"
        conn = sqlite3.connect(uri, uri=True)
        try:
            conn.execute("PRAGMA synchronous=FULL")
            sql = "SELECT COUNT(*) FROM operation_outputs WHERE " + where.format(p="?")
            (recorded,) = conn.execute(sql, (args.run_id, STEP_NAME)).fetchone()
            out["sqlite_pragmas"] = h.sqlite_pragmas(conn)
        finally:
            conn.close()
    else:
        with psycopg.connect(args.db) as pg:
            sql = "SELECT COUNT(*) FROM dbos.operation_outputs WHERE " + where.format(p="%s")
            row = pg.execute(sql, (args.run_id, STEP_NAME)).fetchone()
            assert row is not None
            recorded = row[0]
    out["recorded"] = int(recorded)
    return out


async def _count_waiting(dbos: DBOS) -> int:
    """Runs whose recv has registered its waiter (and then checkpointed its timeout): in
    this fresh database, the only ``DBOS.sleep`` rows are the waiters' recv timeouts."""
    sys_db = dbos._sys_db
    outputs = sys_db.tables.operation_outputs
    query = (
        sa.select(sa.func.count())
        .select_from(outputs)
        .where(outputs.c.function_name == "DBOS.sleep")
    )

    def count() -> int:
        with sys_db.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    return await asyncio.to_thread(count)


async def _waiting(dbos: DBOS, args: h.Args) -> dict[str, Any]:
    baseline = (h.rss_mb(), h.os_threads())
    t0 = time.perf_counter()
    gate = asyncio.Semaphore(h.WAIT_CALLERS)

    async def start(i: int) -> WorkflowHandleAsync[int]:
        async with gate:
            with SetWorkflowID(f"w{i}"):
                return await DBOS.start_workflow_async(waiter)

    async def send(i: int) -> None:
        async with gate:
            await DBOS.send_async(f"w{i}", 1, TOPIC)

    handles = await asyncio.gather(*(start(i) for i in range(args.runs)))
    while True:
        if await _count_waiting(dbos) >= args.runs:
            break
        await asyncio.sleep(0.05)
    started = time.perf_counter() - t0
    waiting = (h.rss_mb(), h.os_threads())
    registered = len(dbos._sys_db.notifications_map.snapshot())  # in-memory waiters
    t1 = time.perf_counter()
    await asyncio.gather(*(send(i) for i in range(args.runs)))
    results = await asyncio.gather(*(handle.get_result() for handle in handles))
    woke = time.perf_counter() - t1
    assert sum(results) == args.runs, results
    return figures(
        dbos,
        args,
        baseline_rss_mb=baseline[0],
        baseline_threads=baseline[1],
        waiting_rss_mb=waiting[0],
        waiting_threads=waiting[1],
        start_s=started,
        wake_s=woke,
        waiters_registered=registered,
    )


if __name__ == "__main__":
    sys.exit(
        h.main(
            {
                "step": launched(_step, paced=False),
                "throughput": launched(_throughput, paced=False),
                "victim": launched(_victim),
                "recover": _recover,
                "recorded": _recorded,
                "waiting": launched(_waiting),
            }
        )
    )
