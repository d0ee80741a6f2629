"""The PostgreSQL part of the core benchmark: ``benchmarks/core.py --backend postgres``.

Usage::

    .venv/bin/python benchmarks/core.py --backend postgres             # full run (~1-2 min)
    .venv/bin/python benchmarks/core.py --backend postgres --quick     # CI smoke, ~10 s
    .venv/bin/python benchmarks/core.py --backend postgres --workers 1,2,4 --lease 2 --json

The server is named by ``TETHER_BENCH_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``); every run creates its own database
``tether_bench_<pid>`` there and drops it at the end (databases of earlier runs whose
process is gone are dropped too).

What it measures (one table, printed next to the targets of issue 3, never asserted):

a. ms per step of one 200-step workflow of trivial ``async`` steps, timed inside the
   workflow (median over several runs after warm-up), in one process whose App both
   starts and executes. Every step is one committed write. Interleaved with the runs, the
   floor: one committed ``INSERT`` per transaction (autocommit) with plain psycopg on the
   same server, ms per commit; and the step/floor ratio. For explaining the figure: the
   same floor through psycopg's async connection, a bare round trip (``SELECT 1``), and the
   200-step run with ``synchronous_commit=off`` (no wait for the WAL flush: what is left is
   round trips and CPU).
b. steps/s for 500 concurrent 10-step runs, end to end, executed by N worker processes
   (each an App with the same workflows, ``async with app:`` until told to stop) sharing the
   database; the parent (an App opened with ``worker=False``) starts the 500 runs and
   waits for all their results with ``handle.result()``. Timed from the first start to the
   last result, after a warm-up round, with the workers up and idle. Reported per N, with
   the commits of the workers and of the parent (steps per commit = batch size), how the
   runs spread over the workers, and the CPU used (workers, parent, whole machine). Also
   the in-process figure (one App starts and executes), as the SQLite benchmark measures.
c. failover: worker process A executes a long run; worker process B, presenting itself as
   on another host (``tether.storage._procs.host`` patched in B only, so it cannot see
   that A's pid died), is up and idle; A is killed with SIGKILL. Reported: the lease
   length, kill -> first recovered step (executed by B), lease expiry -> first recovered
   step, and whether B resumed at the step in flight. Also, with B on the same host and
   the default lease, the time until B sees A's pid gone and takes over.
d. tool calls, as ``core.py`` measures them (its section f): ms per call of a 200-call run
   of a trivial tool for each effect kind, next to ms per step of a 200-step run in the
   same rounds, and the ratio (target: at most twice a plain step), in one process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as _dt
import json
import os
import platform
import re
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import core

SCRIPT = Path(__file__).resolve()
DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
DB_PREFIX = "tether_bench_"

# Targets from issue 3 (2-core machine, fsync=on, synchronous_commit=on).
TARGET_MS_PER_STEP = 0.7
TARGET_STEPS_PER_S = 3000.0
FLOOR_HINT = "~0.5 ms"

FAILOVER_PACE = 0.005  # seconds per step of the run that is killed (it runs, not races)
FAILOVER_RUN_STEPS = 1_000_000  # it never ends by itself: cancelled once recovered
FAILOVER_KILL_AFTER = 20  # journal entries written by A before it is killed
SAME_HOST_LEASE = 15.0  # App's default lease: the dead pid, not the lease, must be seen


@dataclass(frozen=True)
class PgConfig:
    chain_steps: int = 200
    chain_reps: int = 15
    floor_batch: int = 200  # commits per floor batch, one batch before each chain run
    fan_runs: int = 500
    fan_steps: int = 10
    fan_reps: int = 3
    fan_warmup_runs: int = 500
    workers: tuple[int, ...] = (1, 2, 4)
    lease: float = 2.0
    failover_reps: int = 3
    same_host: bool = True
    tool_calls: int = 200  # calls per tool run, and steps of the plain run beside it
    tool_reps: int = 10  # rounds: one plain run, then one run per effect kind
    warmup: int = 3


QUICK = PgConfig(
    chain_reps=3,
    fan_runs=200,
    floor_batch=50,
    fan_reps=1,
    fan_warmup_runs=50,
    workers=(1,),
    lease=1.0,
    failover_reps=1,
    same_host=False,
    tool_calls=50,
    tool_reps=2,
    warmup=1,
)


# -- server and databases -----------------------------------------------------------------
def server_url() -> str:
    return os.environ.get("TETHER_BENCH_POSTGRES_URL", DEFAULT_SERVER)


def with_database(url: str, dbname: str, **params: str) -> str:
    parts = urlsplit(url)
    query = urlencode([*parse_qsl(parts.query), *params.items()])
    return urlunsplit(parts._replace(path=f"/{dbname}", query=query))


def admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(server_url(), autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.encode())


def drop_leftovers() -> list[str]:
    """Drop the databases of earlier benchmark runs whose process is gone (a killed run)."""
    import psycopg

    dropped = []
    with psycopg.connect(server_url(), autocommit=True, connect_timeout=5) as conn:
        names = [
            row[0]
            for row in conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s", (DB_PREFIX + "%",)
            )
        ]
        for name in names:
            pid = name.removeprefix(DB_PREFIX)
            if pid.isdigit() and int(pid) != os.getpid() and not Path(f"/proc/{pid}").exists():
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())
                dropped.append(name)
    return dropped


@contextlib.contextmanager
def bench_database() -> Iterator[str]:
    """A new, empty database for this run (the store migrates it on open); dropped after."""
    name = f"{DB_PREFIX}{os.getpid()}"
    admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(server_url(), name)
    finally:
        admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def server_info(url: str) -> dict[str, Any]:
    import psycopg

    from tether.storage import redact_url

    settings = [
        "server_version",
        "fsync",
        "synchronous_commit",
        "wal_sync_method",
        "full_page_writes",
        "commit_delay",
        "wal_level",
        "shared_buffers",
        "max_connections",
    ]
    info: dict[str, Any] = {"url": redact_url(url)}
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        for name in settings:
            row = conn.execute(f"SHOW {name}".encode()).fetchone()
            info[name] = None if row is None else row[0]
        try:
            row = conn.execute(b"SHOW data_directory").fetchone()
            info["data_directory"] = None if row is None else row[0]
        except psycopg.Error:  # not a superuser
            info["data_directory"] = None
        # The lease clock is the server's: how far it is from ours (same host: ~0).
        t0 = time.time()
        row = conn.execute(b"SELECT extract(epoch from clock_timestamp())::float8").fetchone()
        t1 = time.time()
        info["clock_offset_s"] = None if row is None else row[0] - (t0 + t1) / 2
    data = info["data_directory"]
    info["data_filesystem"] = (
        core.filesystem_of(Path(data)) if data and Path(data).exists() else None
    )
    return info


async def store_setting(app: Any, name: str) -> str | None:
    """A setting as the store's own connections see it (a URL may override it)."""
    async with app.store.pool.connection() as conn:
        cur = await conn.execute(f"SHOW {name}".encode())
        row = await cur.fetchone()
    return None if row is None else str(row[0])


# The server measured, when it runs on this machine: its postmaster's pid and our database.
SERVER: dict[str, Any] = {}
# A client backend's process title: "postgres: USER DB HOST(PORT) STATE" or "... [local] ...".
CLIENT_BACKEND = re.compile(r"\(\d+\)|\[local\]")
CpuSnapshot = tuple[float, float, float, dict[int, float]]


def find_server(url: str) -> int | None:
    """The postmaster: the parent of our own backend, if /proc shows it (a local server)."""
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        stat = proc_stat(conn.info.backend_pid)
        dbname = conn.info.dbname
    if stat is None:
        return None
    SERVER.update(pid=int(stat[1]), db=dbname)
    return int(stat[1])


def proc_stat(pid: int | str) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (state, ppid, ...), or None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2 :].split()


def server_cpu() -> dict[int, float]:
    """CPU seconds so far of each process working for us on the measured server: the
    postmaster, its background processes (WAL writer, checkpointer, ...) and the backends
    connected to our database, not other databases' (other clients of a shared server)."""
    postmaster, db = SERVER.get("pid"), SERVER.get("db")
    if postmaster is None:
        return {}
    out: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        fields = proc_stat(pid)
        if fields is None or (int(pid) != postmaster and fields[1] != str(postmaster)):
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                title = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if CLIENT_BACKEND.search(title) and f" {db} " not in title:
            continue
        out[int(pid)] = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return out


def server_cpu_delta(before: dict[int, float], after: dict[int, float]) -> float | None:
    """CPU used between two snapshots; a backend that exited meanwhile takes its share
    with it (an underestimate), one that started counts from zero."""
    if not after:
        return None
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def cpu_snapshot() -> CpuSnapshot:
    return time.perf_counter(), core.cpu_busy_s(), core.own_cpu_s(), server_cpu()


def background_cpu(before: CpuSnapshot, after: CpuSnapshot, other_s: float = 0.0) -> float:
    """Share of the CPUs used by processes other than this one, the server's processes
    working for us, and ``other_s`` CPU seconds of our own children."""
    wall = after[0] - before[0]
    busy = after[1] - before[1]
    own = after[2] - before[2]
    server = server_cpu_delta(before[3], after[3]) or 0.0
    return max(0.0, (busy - own - server - other_s) / (wall * (os.cpu_count() or 1)))


# -- the floor ----------------------------------------------------------------------------
class Floor:
    """Plain psycopg, autocommit: one INSERT, one transaction, one WAL flush per commit."""

    def __init__(self, url: str) -> None:
        import psycopg

        self.url = url
        self.conn = psycopg.connect(url, autocommit=True)
        self.conn.execute(
            b"CREATE TABLE IF NOT EXISTS bench_floor (run_id TEXT, seq INTEGER, output TEXT, "
            b"PRIMARY KEY (run_id, seq))"
        )
        self.aconn: Any = None
        self.key = f"floor-{os.getpid()}-{id(self):x}"  # rows of its own, whatever else ran
        self.seq = 0

    async def open_async(self) -> None:
        import psycopg

        self.aconn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)

    def batch(self, n: int) -> float:
        """ms per commit over ``n`` commits (a mean, like ms per step of a run)."""
        t0 = time.perf_counter()
        for _ in range(n):
            self.seq += 1
            self.conn.execute(
                b"INSERT INTO bench_floor VALUES (%s, %s, %s)", (self.key, self.seq, "1")
            )
        return (time.perf_counter() - t0) / n * 1000

    async def async_batch(self, n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            self.seq += 1
            await self.aconn.execute(
                b"INSERT INTO bench_floor VALUES (%s, %s, %s)", (self.key, self.seq, "1")
            )
        return (time.perf_counter() - t0) / n * 1000

    def round_trip(self, n: int) -> float:
        """ms per bare round trip (``SELECT 1``: no commit to flush)."""
        t0 = time.perf_counter()
        for _ in range(n):
            self.conn.execute(b"SELECT 1").fetchone()
        return (time.perf_counter() - t0) / n * 1000

    async def close(self) -> None:
        self.conn.close()
        if self.aconn is not None:
            await self.aconn.close()


# -- the workflows ------------------------------------------------------------------------
def build_app(
    url: str,
    *,
    max_concurrency: int = 100,
    lease_seconds: float = 15.0,
    on_tick: Callable[[int], None] | None = None,
) -> tuple[Any, Any, Any, Any]:
    """The SQLite benchmark's App (``chain``, ``fan``) plus ``paced``, a long run for the
    failover measurement. Parent and worker processes build the same."""
    from tether import App, Context

    built = core.build_app(url, max_concurrency=max_concurrency, lease_seconds=lease_seconds)
    app: App = built[0]
    _, chain, fan = built

    @app.step
    async def tick(i: int, pace: float) -> int:
        if on_tick is not None:
            on_tick(i)
        await asyncio.sleep(pace)
        return i

    @app.workflow
    async def paced(ctx: Context, n: int, pace: float) -> int:
        total = 0
        for i in range(n):
            total += await tick(i, pace)
        return total

    return app, chain, fan, paced


# -- worker processes ---------------------------------------------------------------------
def emit(event: dict[str, Any]) -> None:
    print(json.dumps(event), flush=True)


def worker_stats(app: Any, event: str) -> dict[str, Any]:
    t = os.times()
    worker = app.worker
    return {
        "event": event,
        "pid": os.getpid(),
        "commits": core.commits(app),
        "claimed": 0 if worker is None else worker.claimed,
        "cpu_s": t.user + t.system,
        "t": time.time(),
    }


async def worker_main(url: str, concurrency: int, lease: float, host: str | None) -> None:
    """A worker process: ``async with app`` until SIGTERM. Prints JSON lines: ``ready``;
    ``stats`` on SIGUSR1; ``first_step`` when it first executes a ``tick``; ``exit``."""
    if host is not None:
        # Fault injection, here only: this worker presents itself as on another machine,
        # so it cannot see the other workers' pids and waits for their leases to expire.
        from tether.storage import _procs

        # (setattr: ``host`` may be a cached function; the Worker calls it through the module.)
        setattr(_procs, "host", lambda: host)  # noqa: B010

    first: list[int] = []

    def on_tick(i: int) -> None:
        if not first:
            first.append(i)
            emit({"event": "first_step", "i": i, "t": time.time(), "pid": os.getpid()})

    app, *_ = build_app(url, max_concurrency=concurrency, lease_seconds=lease, on_tick=on_tick)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, lambda: emit(worker_stats(app, "stats")))
    async with app:
        # Warm the JSON/pydantic paths a first run would pay for, before saying ready.
        from tether._serde import decode

        decode(1, int)
        ready = worker_stats(app, "ready")
        ready["worker_id"] = app.worker.worker_id
        emit(ready)
        await stop.wait()
    emit(worker_stats(app, "exit"))


class WorkerProcess:
    """A worker child, driven by signals; its JSON lines arrive on a queue."""

    def __init__(self, proc: asyncio.subprocess.Process, label: str, log: Path) -> None:
        self.proc = proc
        self.label = label
        self.log = log
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.reader = asyncio.create_task(self._read())
        self.ready: dict[str, Any] = {}

    @classmethod
    async def spawn(
        cls,
        url: str,
        label: str,
        logdir: Path,
        *,
        concurrency: int,
        lease: float,
        host: str | None = None,
    ) -> WorkerProcess:
        log = logdir / f"{label}.log"
        argv = [
            str(SCRIPT),
            "--phase",
            "worker",
            "--url",
            url,
            "--concurrency",
            str(concurrency),
            "--lease",
            str(lease),
        ]
        if host is not None:
            argv += ["--host", host]
        err = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, *argv, stdout=asyncio.subprocess.PIPE, stderr=err
            )
        finally:
            os.close(err)
        return cls(proc, label, log)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            with contextlib.suppress(ValueError):
                await self.events.put(json.loads(line))

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    def stderr_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    async def expect(self, event: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                got = await asyncio.wait_for(self.events.get(), max(0.0, left))
            except TimeoutError:
                raise RuntimeError(
                    f"worker {self.label} (pid {self.pid}) sent no {event!r} in {timeout} s "
                    f"(exit code {self.proc.returncode}):\n{self.stderr_tail()}"
                ) from None
            if got.get("event") == event:
                return got

    async def wait_ready(self, timeout: float = 30.0) -> dict[str, Any]:
        self.ready = await self.expect("ready", timeout)
        return self.ready

    async def stats(self) -> dict[str, Any]:
        self.proc.send_signal(signal.SIGUSR1)
        return await self.expect("stats", 10.0)

    async def stop(self, timeout: float = 30.0) -> dict[str, Any] | None:
        """SIGTERM (a graceful shutdown); the final stats, or None if it was killed."""
        final: dict[str, Any] | None = None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                final = await self.expect("exit", timeout)
            except RuntimeError:
                self.proc.kill()
        await self.proc.wait()
        await self.reader
        return final

    async def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        await self.reader


@contextlib.asynccontextmanager
async def parent_app(url: str) -> Any:
    """The parent's App: starts runs and waits for results, executes nothing."""
    app, chain, fan, paced = build_app(url)
    await app.open(worker=False)
    try:
        yield app, chain, fan, paced
    finally:
        await app.close()


async def wait_idle(url: str, timeout: float = 60.0) -> None:
    """Until no run is pending or running (the workers have nothing left to do)."""
    import psycopg

    deadline = time.monotonic() + timeout
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            cur = await conn.execute(
                b"SELECT count(*) FROM runs WHERE status IN ('pending', 'running')"
            )
            row = await cur.fetchone()
            if row is not None and row[0] == 0:
                return
            await asyncio.sleep(0.05)
    raise RuntimeError("runs still pending or running after the warm-up")


# -- (a): one 200-step run, with the floor interleaved ------------------------------------
async def bench_chain(url: str, cfg: PgConfig) -> dict[str, Any]:
    app, chain, _fan, _paced = build_app(url, max_concurrency=max(100, cfg.fan_runs))
    floor = Floor(url)
    out: dict[str, Any] = {}
    try:
        await floor.open_async()
        async with app:
            out["store_synchronous_commit"] = await store_setting(app, "synchronous_commit")
            for rep in range(cfg.warmup):
                floor.batch(cfg.floor_batch // 4)
                await floor.async_batch(cfg.floor_batch // 4)
                handle = await app.start(chain, cfg.chain_steps, run_id=f"warm-{rep}")
                await handle.result(timeout=120)
            per_step: list[float] = []
            end_to_end: list[float] = []
            floors: list[float] = []
            async_floors: list[float] = []
            trips: list[float] = []
            commit_counts: list[int] = []
            cpu0 = cpu_snapshot()
            for rep in range(cfg.chain_reps):
                floors.append(floor.batch(cfg.floor_batch))
                async_floors.append(await floor.async_batch(cfg.floor_batch))
                trips.append(floor.round_trip(cfg.floor_batch // 2))
                before = core.commits(app)
                t0 = time.perf_counter()
                handle = await app.start(chain, cfg.chain_steps, run_id=f"chain-{rep}")
                inside = await handle.result(timeout=120)
                total = time.perf_counter() - t0
                per_step.append(inside / cfg.chain_steps * 1000)
                end_to_end.append(total / cfg.chain_steps * 1000)
                commit_counts.append(core.commits(app) - before)
            # Before any connection closes: a server backend's CPU leaves /proc with it.
            out["background_cpu"] = background_cpu(cpu0, cpu_snapshot())
            out["chain_ms_per_step"] = statistics.median(per_step)
            out["chain_ms_per_step_all"] = per_step
            out["chain_ms_per_step_end_to_end"] = statistics.median(end_to_end)
            out["chain_commits_per_run"] = statistics.median(commit_counts)
            out["floor_ms_per_commit"] = statistics.median(floors)
            out["floor_ms_per_commit_all"] = floors
            out["floor_async_ms_per_commit"] = statistics.median(async_floors)
            out["round_trip_ms"] = statistics.median(trips)
            out["step_over_floor"] = statistics.median(
                s / f for s, f in zip(per_step, floors, strict=True)
            )
    finally:
        await floor.close()
    return out


async def bench_chain_no_flush(url: str, cfg: PgConfig) -> dict[str, Any]:
    """The 200-step run with ``synchronous_commit=off`` on the store's connections: a
    commit no longer waits for its WAL flush; what is left is round trips and CPU."""
    off_url = with_database(url, urlsplit(url).path.lstrip("/"), options="-csynchronous_commit=off")
    app, chain, _fan, _paced = build_app(off_url)
    per_step: list[float] = []
    async with app:
        level = await store_setting(app, "synchronous_commit")
        for rep in range(cfg.warmup + cfg.chain_reps):
            handle = await app.start(chain, cfg.chain_steps, run_id=f"nosync-{rep}")
            inside = await handle.result(timeout=120)
            if rep >= cfg.warmup:
                per_step.append(inside / cfg.chain_steps * 1000)
    return {"nosync_ms_per_step": statistics.median(per_step), "nosync_setting": level}


# -- (d): tool calls against plain steps ---------------------------------------------------
async def bench_tools(url: str, cfg: PgConfig) -> dict[str, Any]:
    """core.py's section f on this server: one process, the store's own settings."""
    app, chain, _fan = core.build_app(url)
    tool_chain = core.add_tool_chain(app)
    rounds: list[dict[str, tuple[float, int]]] = []
    async with app:
        for rep in range(cfg.warmup):
            await core.tool_round(app, chain, tool_chain, cfg.tool_calls, f"tools-warm-{rep}", rep)
        cpu0 = cpu_snapshot()
        for rep in range(cfg.tool_reps):
            rounds.append(
                await core.tool_round(app, chain, tool_chain, cfg.tool_calls, f"tools-{rep}", rep)
            )
        background = background_cpu(cpu0, cpu_snapshot())
    return {**core.tool_figures(rounds, cfg.tool_calls), "tool_background_cpu": background}


# -- (b): 500 concurrent 10-step runs -----------------------------------------------------
async def fan_round(
    app: Any, fan: Any, cfg: PgConfig, prefix: str, runs: int, *, by_query: bool = False
) -> float:
    """Start ``runs`` runs, wait for all of them to succeed; seconds from first start to
    last success. Waiting is ``handle.result()`` of each run, or with ``by_query`` one
    count query every 10 ms (the parent's own cost out of the way)."""
    t0 = time.perf_counter()
    handles = await asyncio.gather(
        *(app.start(fan, cfg.fan_steps, run_id=f"{prefix}-{i}") for i in range(runs))
    )
    if by_query:
        async with app.store.pool.connection() as conn:
            while True:
                cur = await conn.execute(
                    b"SELECT count(*) FILTER (WHERE status = 'succeeded'), "
                    b"count(*) FILTER (WHERE status IN ('failed', 'cancelled', "
                    b"'needs_attention')) FROM runs WHERE run_id LIKE %s",
                    (f"{prefix}-%",),
                )
                row = await cur.fetchone()
                assert row is not None
                if row[1]:
                    raise RuntimeError(f"{prefix}: {row[1]} run(s) did not succeed")
                if row[0] == runs:
                    break
                await asyncio.sleep(0.01)
        return time.perf_counter() - t0
    results = await asyncio.gather(*(h.result(timeout=300) for h in handles))
    elapsed = time.perf_counter() - t0
    expected = sum(range(cfg.fan_steps))
    if any(r != expected for r in results):
        raise RuntimeError(f"{prefix}: a run returned a wrong result")
    return elapsed


async def bench_fan_in_process(url: str, cfg: PgConfig) -> dict[str, Any]:
    app, _chain, fan, _paced = build_app(url, max_concurrency=max(100, cfg.fan_runs))
    rates: list[float] = []
    batch: list[float] = []
    async with app:
        await fan_round(app, fan, cfg, "inproc-warm", cfg.fan_warmup_runs)
        for rep in range(cfg.fan_reps):
            before = core.commits(app)
            elapsed = await fan_round(app, fan, cfg, f"inproc-{rep}", cfg.fan_runs)
            steps = cfg.fan_runs * cfg.fan_steps
            rates.append(steps / elapsed)
            batch.append(steps / max(1, core.commits(app) - before))
    return {
        "fan_in_process_steps_per_s": statistics.median(rates),
        "fan_in_process_steps_per_s_all": rates,
        "fan_in_process_steps_per_commit": statistics.median(batch),
    }


def deltas(after: list[dict[str, Any]], before: list[dict[str, Any]], key: str) -> list[Any]:
    return [a[key] - b[key] for a, b in zip(after, before, strict=True)]


async def bench_fan_processes(url: str, cfg: PgConfig, n: int, logdir: Path) -> dict[str, Any]:
    workers = [
        await WorkerProcess.spawn(url, f"fan{n}-w{i}", logdir, concurrency=cfg.fan_runs, lease=15)
        for i in range(n)
    ]
    rounds: list[dict[str, Any]] = []
    by_query: list[tuple[float, float]] = []
    finals: list[dict[str, Any] | None] = []
    try:
        for w in workers:
            await w.wait_ready()
        async with parent_app(url) as (app, _chain, fan, _paced):
            # Warm-up: every worker's pool grows, pydantic's validators are built.
            await fan_round(app, fan, cfg, f"p{n}-warm", cfg.fan_warmup_runs)
            await wait_idle(url)
            await asyncio.sleep(0.3)  # let the claim loops settle back to waiting
            steps = cfg.fan_runs * cfg.fan_steps
            for rep in range(cfg.fan_reps):
                before = [await w.stats() for w in workers]
                parent_before = core.commits(app)
                snap0 = cpu_snapshot()
                elapsed = await fan_round(app, fan, cfg, f"p{n}-{rep}", cfg.fan_runs)
                snap1 = cpu_snapshot()
                after = [await w.stats() for w in workers]
                worker_cpu = deltas(after, before, "cpu_s")
                worker_commits = deltas(after, before, "commits")
                rounds.append(
                    {
                        "steps_per_s": steps / elapsed,
                        "elapsed_s": elapsed,
                        "worker_commits": worker_commits,
                        "parent_commits": core.commits(app) - parent_before,
                        "claimed": deltas(after, before, "claimed"),
                        "worker_cpu_s": worker_cpu,
                        "parent_cpu_s": snap1[2] - snap0[2],
                        "server_cpu_s": server_cpu_delta(snap0[3], snap1[3]),
                        "machine_busy": (snap1[1] - snap0[1]) / (elapsed * (os.cpu_count() or 1)),
                        "others_busy": background_cpu(snap0, snap1, sum(worker_cpu)),
                        "steps_per_worker_commit": steps / max(1, sum(worker_commits)),
                    }
                )
                await wait_idle(url)
                # The same round, the parent waiting by one count query, not result().
                own0 = time.process_time()
                elapsed = await fan_round(
                    app, fan, cfg, f"p{n}-{rep}-q", cfg.fan_runs, by_query=True
                )
                by_query.append((steps / elapsed, time.process_time() - own0))
                await wait_idle(url)
    finally:
        for w in workers:
            finals.append(await w.stop())
    best = sorted(rounds, key=lambda r: r["steps_per_s"])[len(rounds) // 2]  # the median
    return {
        "workers": n,
        "steps_per_s": statistics.median(r["steps_per_s"] for r in rounds),
        "steps_per_s_all": [r["steps_per_s"] for r in rounds],
        "median_round": best,
        "rounds": rounds,
        "by_query_steps_per_s": statistics.median(r for r, _ in by_query),
        "by_query_steps_per_s_all": [r for r, _ in by_query],
        "by_query_parent_cpu_s": statistics.median(c for _, c in by_query),
        "worker_commits_at_exit": [None if f is None else f["commits"] for f in finals],
    }


# -- (c): failover after SIGKILL ----------------------------------------------------------
async def run_row(url: str, run_id: str) -> tuple[Any, ...] | None:
    """(lease_owner, lease_expires_at, fence, status, journal entries, server clock minus
    ours in seconds) of one run."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        t0 = time.time()
        cur = await conn.execute(
            b"SELECT r.lease_owner, r.lease_expires_at, r.fence, r.status, "
            b"(SELECT count(*) FROM journal j WHERE j.run_id = r.run_id), "
            b"extract(epoch from clock_timestamp())::float8 "
            b"FROM runs r WHERE r.run_id = %s",
            (run_id,),
        )
        row = await cur.fetchone()
        t1 = time.time()
    return None if row is None else (*row[:5], row[5] - (t0 + t1) / 2)


async def failover_once(
    url: str, rep: int, logdir: Path, *, lease: float, other_host: bool
) -> dict[str, Any]:
    run_id = f"failover-{'remote' if other_host else 'local'}-{rep}"
    a = await WorkerProcess.spawn(url, f"{run_id}-A", logdir, concurrency=10, lease=lease)
    b: WorkerProcess | None = None
    try:
        ready_a = await a.wait_ready()
        async with parent_app(url) as (app, _chain, _fan, paced):
            await app.start(paced, FAILOVER_RUN_STEPS, FAILOVER_PACE, run_id=run_id)
            # A holds the run and is in the middle of it.
            deadline = time.monotonic() + 30
            while True:
                row = await run_row(url, run_id)
                if row and row[0] == ready_a["worker_id"] and row[4] >= FAILOVER_KILL_AFTER:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"worker A never made progress on {run_id}: {row}")
                await asyncio.sleep(0.01)
            # B: up and idle before the kill (it sees A's lease, valid, and waits).
            host = f"bench-other-host-{os.getpid()}" if other_host else None
            b = await WorkerProcess.spawn(
                url, f"{run_id}-B", logdir, concurrency=10, lease=lease, host=host
            )
            await b.wait_ready()
            await asyncio.sleep(0.2)
            row = await run_row(url, run_id)
            if row is None or row[0] != ready_a["worker_id"]:
                raise RuntimeError(f"B took the run before A was killed: {row}")
            t_kill = time.time()
            await a.kill()
            await asyncio.sleep(0.02)  # a commit A sent just before it died lands first
            row = await run_row(url, run_id)
            assert row is not None
            _owner, expires_at, fence, _status, entries, offset = row
            first = await b.expect("first_step", lease * 3 + 30)
            # ``paced`` journals nothing but its steps: the step in flight at the kill has
            # index `entries`, and B must execute that one first.
            await app.cancel(run_id, "benchmark done")
            expiry_local = expires_at - offset
            return {
                "lease_s": lease,
                "kill_to_first_step_s": first["t"] - t_kill,
                "expiry_to_first_step_s": first["t"] - expiry_local,
                "kill_to_expiry_s": expiry_local - t_kill,
                "first_index": first["i"],
                "entries_at_kill": entries,
                "resumed_in_flight_step": first["i"] == entries,
                "fence_at_kill": fence,
                "server_clock_offset_s": offset,
            }
    finally:
        if a.proc.returncode is None:
            await a.kill()
        else:
            await a.stop()
        if b is not None:
            await b.stop()


async def bench_failover(url: str, cfg: PgConfig, logdir: Path) -> dict[str, Any]:
    remote = [
        await failover_once(url, rep, logdir, lease=cfg.lease, other_host=True)
        for rep in range(cfg.failover_reps)
    ]
    out: dict[str, Any] = {
        "failover_lease_s": cfg.lease,
        "failover_kill_to_first_step_s": statistics.median(
            d["kill_to_first_step_s"] for d in remote
        ),
        "failover_expiry_to_first_step_s": statistics.median(
            d["expiry_to_first_step_s"] for d in remote
        ),
        "failover_kill_to_expiry_s": statistics.median(d["kill_to_expiry_s"] for d in remote),
        "failover_resumed_in_flight_step": all(d["resumed_in_flight_step"] for d in remote),
        "failover_all": remote,
    }
    if cfg.same_host:
        local = [
            await failover_once(url, rep, logdir, lease=SAME_HOST_LEASE, other_host=False)
            for rep in range(cfg.failover_reps)
        ]
        out["same_host_lease_s"] = SAME_HOST_LEASE
        out["same_host_kill_to_first_step_s"] = statistics.median(
            d["kill_to_first_step_s"] for d in local
        )
        out["same_host_resumed_in_flight_step"] = all(d["resumed_in_flight_step"] for d in local)
        out["same_host_all"] = local
    return out


# -- report -------------------------------------------------------------------------------
def fmt_s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def table(rows: list[tuple[str, ...]]) -> list[str]:
    header = ("figure", "measured", "target", "")
    cells = [(*row, "", "", "")[:4] for row in rows]
    widths = [max(len(r[i]) for r in [header, *cells]) for i in range(4)]
    lines = [
        "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip(),
        "  ".join("-" * w for w in widths),
    ]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return lines


def report(machine: dict[str, Any], server: dict[str, Any], f: dict[str, Any]) -> str:
    fs = server.get("data_filesystem") or {}
    where = (
        f"data {server['data_directory']} on {fs.get('device', '?')} ({fs.get('fstype', '?')})"
        if server.get("data_directory")
        else "data directory not visible"
    )
    rows: list[tuple[str, ...]] = [
        (
            "a. durable step, one 200-step run",
            f"{f['chain_ms_per_step']:.3f} ms/step",
            f"<= {TARGET_MS_PER_STEP} ms",
            core.verdict(f["chain_ms_per_step"] <= TARGET_MS_PER_STEP),
        ),
        ("   same, end to end (start..result)", f"{f['chain_ms_per_step_end_to_end']:.3f} ms/step"),
        ("   commits per 200-step run", f"{f['chain_commits_per_run']:.0f}"),
        (
            "   floor: 1 INSERT per commit (psycopg)",
            f"{f['floor_ms_per_commit']:.3f} ms/commit",
            FLOOR_HINT,
        ),
        ("   step / floor", f"{f['step_over_floor']:.2f}x"),
        ("   floor, async psycopg connection", f"{f['floor_async_ms_per_commit']:.3f} ms/commit"),
        ("   bare round trip (SELECT 1)", f"{f['round_trip_ms']:.3f} ms"),
        (
            f"   step, synchronous_commit={f['nosync_setting']}",
            f"{f['nosync_ms_per_step']:.3f} ms/step",
            "reference",
        ),
    ]
    previous: float | None = None
    for fan in f["fan_processes"]:
        n = fan["workers"]
        label = f"b. {f['fan_runs']} x {f['fan_steps']}-step runs, {n} worker process" + (
            "es" if n > 1 else ""
        )
        if previous is None:
            target = f">= {TARGET_STEPS_PER_S:,.0f}"
            ok = fan["steps_per_s"] >= TARGET_STEPS_PER_S
        else:
            target, ok = "rising", fan["steps_per_s"] > previous
        previous = fan["steps_per_s"]
        if n != f["fan_processes"][0]["workers"]:
            label = "   " + label[3:]
        m = fan["median_round"]
        rows += [
            (label, f"{fan['steps_per_s']:,.0f} steps/s", target, core.verdict(ok)),
            (
                "     commits: workers (parent)",
                f"{'+'.join(str(c) for c in m['worker_commits'])} ({m['parent_commits']})",
            ),
            ("     steps per worker commit", f"{m['steps_per_worker_commit']:.1f}"),
            ("     runs claimed per worker", "/".join(str(c) for c in m["claimed"])),
            (
                "     CPU s: workers, parent, server",
                f"{'+'.join(f'{c:.2f}' for c in m['worker_cpu_s'])}, "
                f"{m['parent_cpu_s']:.2f}, {fmt_s(m['server_cpu_s'])}",
            ),
            (
                "     machine CPU busy (other processes)",
                f"{m['machine_busy']:.0%} ({m['others_busy']:.0%})",
            ),
            (
                f"     same, parent waits by query ({fan['by_query_parent_cpu_s']:.2f} s CPU)",
                f"{fan['by_query_steps_per_s']:,.0f} steps/s",
                "reference",
            ),
        ]
    rows += [
        (
            "   in-process (one App starts + runs)",
            f"{f['fan_in_process_steps_per_s']:,.0f} steps/s",
            "reference",
        ),
        ("     steps per commit", f"{f['fan_in_process_steps_per_commit']:.1f}"),
        (
            f"c. failover, lease {f['failover_lease_s']:g} s: kill -> 1st step",
            f"{f['failover_kill_to_first_step_s'] * 1000:.0f} ms",
            "reference",
        ),
        (
            "   lease expiry -> first recovered step",
            f"{f['failover_expiry_to_first_step_s'] * 1000:.0f} ms",
        ),
        ("   kill -> lease expiry", f"{f['failover_kill_to_expiry_s'] * 1000:.0f} ms"),
        (
            "   resumed at the step in flight",
            "yes" if f["failover_resumed_in_flight_step"] else "NO",
        ),
    ]
    if "same_host_kill_to_first_step_s" in f:
        rows.append(
            (
                f"   same host, lease {f['same_host_lease_s']:g} s: kill -> 1st step",
                f"{f['same_host_kill_to_first_step_s'] * 1000:.0f} ms",
                "reference",
            )
        )
    rows += core.tool_rows(f, "d")
    lines = [
        f"machine: {machine['nproc']} CPU ({machine['cpu']}), Python {machine['python']}, "
        f"psycopg {machine['psycopg']} ({machine['psycopg_impl']}, libpq {machine['libpq']})",
        f"server:  PostgreSQL {server['server_version']} at {server['url']}, {where}",
        f"settings: fsync={server['fsync']}, synchronous_commit={server['synchronous_commit']} "
        f"(store connections: {f['store_synchronous_commit']}), "
        f"wal_sync_method={server['wal_sync_method']}, full_page_writes="
        f"{server['full_page_writes']}, commit_delay={server['commit_delay']}",
        f"load:    other processes used {machine.get('background_cpu', 0.0):.0%} of the CPUs "
        "during (a)",
        "",
        *table(rows),
    ]
    if machine.get("background_cpu", 0.0) > 0.1:
        lines.append(
            f"\nWARNING: other processes used {machine['background_cpu']:.0%} of the CPUs "
            "during (a); the figures are pessimistic. Rerun on a quiet machine."
        )
    if server["fsync"] != "on" or server["synchronous_commit"] != "on":
        lines.append("\nWARNING: fsync or synchronous_commit is off: commits cost no flush.")
    if f.get("tool_background_cpu", 0.0) > 0.1:
        lines.append(
            f"\nWARNING: other processes used {f['tool_background_cpu']:.0%} of the CPUs "
            "during (d); its figures are pessimistic."
        )
    return "\n".join(lines)


def pg_machine_info() -> dict[str, Any]:
    import psycopg

    return {
        "nproc": os.cpu_count(),
        "cpu": core.cpu_model(),
        "python": platform.python_version(),
        "psycopg": psycopg.__version__,
        "psycopg_impl": psycopg.pq.__impl__,
        "libpq": psycopg.pq.version(),
        "platform": platform.platform(),
    }


def config_from(args: argparse.Namespace) -> PgConfig:
    cfg = QUICK if args.quick else PgConfig()
    if args.workers:
        counts = tuple(int(x) for x in args.workers.split(",") if x.strip())
        if not counts or min(counts) < 1:
            raise SystemExit("--workers takes process counts, e.g. 1,2,4")
        cfg = replace(cfg, workers=counts)
    if args.lease is not None:
        if args.lease <= 0:
            raise SystemExit("--lease must be > 0")
        cfg = replace(cfg, lease=args.lease)
    return cfg


def run_benchmark(args: argparse.Namespace) -> int:
    from tether.storage import redact_url

    cfg = config_from(args)
    try:
        for name in drop_leftovers():
            print(f"dropped {name}, left by an earlier run", file=sys.stderr)
    except Exception as exc:
        print(f"no PostgreSQL server at {redact_url(server_url())}: {exc}", file=sys.stderr)
        return 2
    machine = pg_machine_info()
    figures: dict[str, Any] = {}
    started = time.perf_counter()
    with bench_database() as url, tempfile.TemporaryDirectory(prefix="tether-pgbench-") as tmp:
        logdir = Path(tmp)
        server = server_info(url)
        server["postmaster_pid"] = find_server(url)
        print(f"database {urlsplit(url).path.lstrip('/')} (dropped at the end)", flush=True)

        def chain_part() -> dict[str, Any]:
            out = asyncio.run(bench_chain(url, cfg))
            machine["background_cpu"] = out.pop("background_cpu")
            return out

        def fan_part() -> dict[str, Any]:
            return {
                "fan_runs": cfg.fan_runs,
                "fan_steps": cfg.fan_steps,
                "fan_processes": [
                    asyncio.run(bench_fan_processes(url, cfg, n, logdir)) for n in cfg.workers
                ],
            }

        parts: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            ("(a) 200-step run + floor", chain_part),
            ("(a) synchronous_commit=off", lambda: asyncio.run(bench_chain_no_flush(url, cfg))),
            (f"(b) worker processes {cfg.workers}", fan_part),
            ("(b) in-process", lambda: asyncio.run(bench_fan_in_process(url, cfg))),
            ("(c) failover", lambda: asyncio.run(bench_failover(url, cfg, logdir))),
            ("(d) tool calls", lambda: asyncio.run(bench_tools(url, cfg))),
        ]
        for label, part in parts:
            t0 = time.perf_counter()
            figures.update(part())
            print(f"measured {label} in {time.perf_counter() - t0:.1f} s", flush=True)
    wall = time.perf_counter() - started
    print(f"total {wall:.1f} s{' (--quick)' if args.quick else ''}\n")
    print(report(machine, server, figures))
    if args.json is not None:
        default = core.RESULTS / f"core-postgres-{_dt.date.today()}.json"
        path = Path(args.json) if args.json else default
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "backend": "postgres",
            "quick": bool(args.quick),
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(cfg).items()},
            "targets": {
                "ms_per_step": TARGET_MS_PER_STEP,
                "steps_per_s": TARGET_STEPS_PER_S,
                "tool_call_over_step": core.TARGET_TOOL_OVER_STEP,
            },
            "machine": machine,
            "server": server,
            "figures": figures,
        }
        path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Child phases only (the benchmark itself runs from core.py --backend postgres)."""
    parser = argparse.ArgumentParser(description=argparse.SUPPRESS)
    parser.add_argument("--phase", choices=["worker"], required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--lease", type=float, default=15.0)
    parser.add_argument("--host")
    args = parser.parse_args(argv)
    asyncio.run(worker_main(args.url, args.concurrency, args.lease, args.host))
    return 0


if __name__ == "__main__":
    sys.exit(main())
