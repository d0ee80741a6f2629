"""Core engine benchmark: the cost of a durable step against the disk's commit floor.

Usage::

    .venv/bin/python benchmarks/core.py            # full run (about 15-30 s)
    .venv/bin/python benchmarks/core.py --quick    # CI smoke, a few seconds
    .venv/bin/python benchmarks/core.py --json     # also write benchmarks/results/core-<date>.json
    .venv/bin/python benchmarks/core.py --json out.json
    .venv/bin/python benchmarks/core.py --backend postgres [--quick] [--workers 1,2,4]

``--backend postgres`` measures the PostgreSQL store instead (see ``_pgbench.py``: the step
against the server's commit floor, worker processes sharing one database, failover after
SIGKILL); the rest of this docstring is about the default, ``--backend sqlite``.

What it measures (one table, printed next to the targets of issue 2):

a. ms per step of one 200-step workflow of trivial ``async`` steps, timed inside the
   workflow (median over several runs, after warm-up). Every step is one committed write.
b. steps/s for 500 concurrent 10-step runs, end to end: ``app.start`` of all 500, then
   ``handle.result()`` of all 500 (run creation, claim, 10 steps and finish included).
c. the same two loops as plain function calls (no durability), for reference.
d. the floor: one committed ``INSERT`` per transaction with plain ``sqlite3`` (WAL,
   ``synchronous=FULL``) in the same directory, ms per commit. Measured in batches
   interleaved with the runs of (a), so that both see the same disk at the same time.
e. recovery: a child process is killed with SIGKILL in the middle of a run; a fresh
   process then measures the time from ``async with app`` opening to the first recovered
   step executing (and checks that it is the step that was in flight).
f. tool calls: ms per call of one workflow making 200 sequential calls of a trivial tool,
   for each effect kind (``Effect.READ``, ``Effect.IDEMPOTENT`` taking an
   ``idempotency_key``, ``Effect.IRREVERSIBLE``), next to ms per step of a 200-step run
   measured in the same rounds (a step, then one run per kind, in rotating order; median
   over several rounds after warm-up). A tool call is two committed writes (the intent
   before the call, the completion after it), a step one; the target is a tool call
   costing at most twice a plain step (the ratio is the median of the per-round ratios).
   The same section runs with ``--backend postgres``.

Also, for explaining the figures: the 200-step run again with ``synchronous=NORMAL`` (no
fsync per commit in WAL mode: the engine's CPU cost per step), the cost of a bare 4 KiB
``fdatasync``, and the recovery time when pydantic is already warm in the fresh process.

All databases live in a temporary directory under ``<repo>/.bench-tmp`` (on the same disk
as the repository: ``/tmp`` may be a tmpfs, where fsync costs nothing). The filesystem
used and the ``PRAGMA synchronous`` actually in force are printed. Figures are printed,
never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_TMP = ROOT / ".bench-tmp"
RESULTS = ROOT / "benchmarks" / "results"

# Targets from issue 2 (2-core machine, synchronous=FULL).
TARGET_MS_PER_STEP = 0.35
TARGET_STEPS_PER_S = 3500.0
TARGET_RECOVERY_S = 0.1
TARGET_TOOL_OVER_STEP = 2.0  # a tool call (intent + completion) vs a plain step

TOOL_KINDS = ("read", "idempotent", "irreversible")  # Effect values, in report order

RECOVERY_STEPS = 400
RECOVERY_KILL_AT = 150  # the step in flight when the process is killed
SYNC_NAMES = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


@dataclass(frozen=True)
class Config:
    chain_steps: int = 200
    chain_reps: int = 15
    fan_runs: int = 500
    fan_steps: int = 10
    fan_reps: int = 5
    floor_batch: int = 200  # commits per floor batch, one batch before each chain run
    recovery_reps: int = 5
    tool_calls: int = 200  # calls per tool run, and steps of the plain run beside it
    tool_reps: int = 15  # rounds: one plain run, then one run per effect kind
    warmup: int = 2


QUICK = Config(
    chain_reps=3,
    fan_reps=1,
    floor_batch=100,
    recovery_reps=1,
    tool_calls=50,
    tool_reps=2,
    warmup=1,
)


# -- environment --------------------------------------------------------------------------
def filesystem_of(path: Path) -> dict[str, str]:
    """The mount holding ``path``: the longest matching mount point in /proc/mounts."""
    best = {"mount": "?", "device": "?", "fstype": "?"}
    best_len = -1
    target = str(path.resolve())
    try:
        with open("/proc/mounts", encoding="utf-8") as mounts:
            for line in mounts:
                device, mount, fstype, *_ = line.split()
                mount = mount.replace("\\040", " ")
                inside = target == mount or target.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= best_len:
                    best, best_len = (
                        {"mount": mount, "device": device, "fstype": fstype},
                        len(mount),
                    )
    except OSError:
        pass
    return best


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def machine_info(workdir: Path) -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(),
        "workdir": str(workdir),
        "filesystem": filesystem_of(workdir),
    }


def cpu_busy_s() -> float:
    """Busy CPU seconds of the whole machine so far (from /proc/stat), or nan."""
    try:
        with open("/proc/stat", encoding="utf-8") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


# -- the floor ----------------------------------------------------------------------------
class Floor:
    """Plain sqlite3, WAL, synchronous=FULL: BEGIN IMMEDIATE; one INSERT; COMMIT."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = FULL")
        self.synchronous = SYNC_NAMES.get(self.conn.execute("PRAGMA synchronous").fetchone()[0])
        self.conn.execute(
            "CREATE TABLE t (run_id TEXT, seq INTEGER, output TEXT, PRIMARY KEY (run_id, seq))"
        )
        self.seq = 0
        self.wal = Path(f"{path}-wal")

    def batch(self, n: int) -> float:
        """ms per commit over ``n`` commits (a mean, like ms per step of a run)."""
        t0 = time.perf_counter()
        for _ in range(n):
            self.seq += 1
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.execute("INSERT INTO t VALUES (?, ?, ?)", ("floor", self.seq, "1"))
            self.conn.execute("COMMIT")
        return (time.perf_counter() - t0) / n * 1000

    def warm_up(self, n: int, max_batches: int = 30) -> list[float]:
        """Commit in batches until the WAL file stops growing; return the batches' ms per
        commit measured while it grew (a new WAL, as after every process start)."""
        growing: list[float] = []
        for _ in range(max_batches):
            size = wal_size(self.wal)
            ms = self.batch(n)
            if wal_size(self.wal) <= size:
                break
            growing.append(ms)
        return growing

    def close(self) -> None:
        self.conn.close()


def median_or_none(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def wal_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def bare_fdatasync_ms(path: Path, n: int = 200) -> float:
    """Median cost of rewriting one 4 KiB block of an existing file and fdatasync-ing it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, b"\0" * 65536, 0)
        os.fsync(fd)
        times: list[float] = []
        for i in range(n):
            t0 = time.perf_counter()
            os.pwrite(fd, b"x" * 4096, (i % 16) * 4096)
            os.fdatasync(fd)
            times.append((time.perf_counter() - t0) * 1000)
    finally:
        os.close(fd)
    return statistics.median(times)


# -- the workflows ------------------------------------------------------------------------
def build_app(url: str, *, max_concurrency: int = 100, **options: Any) -> tuple[Any, Any, Any]:
    """An App with a trivial step, a long chain workflow and a short (fan) workflow;
    ``options`` go to ``App``."""
    from tether import App, Context

    app = App(url, max_concurrency=max_concurrency, **options)

    @app.step
    async def noop(i: int) -> int:
        return i

    @app.workflow
    async def chain(ctx: Context, n: int) -> float:
        # Timed inside the workflow: only the durable steps, not start/claim/finish.
        t0 = time.perf_counter()
        for i in range(n):
            await noop(i)
        return time.perf_counter() - t0

    @app.workflow
    async def fan(ctx: Context, n: int) -> int:
        total = 0
        for i in range(n):
            total += await noop(i)
        return total

    return app, chain, fan


def add_tool_chain(app: Any) -> Any:
    """Register three trivial tools, one per effect kind, and a workflow that calls one of
    them ``n`` times in sequence, timing its own loop (as ``chain`` does)."""
    from tether import Context, Effect

    @app.tool(effect=Effect.READ)
    async def read_tool(i: int) -> int:
        return i

    @app.tool(effect=Effect.IDEMPOTENT)
    async def idempotent_tool(i: int, *, idempotency_key: str) -> int:
        return i

    @app.tool(effect=Effect.IRREVERSIBLE)
    async def irreversible_tool(i: int) -> int:
        return i

    tools = {"read": read_tool, "idempotent": idempotent_tool, "irreversible": irreversible_tool}
    assert tuple(tools) == TOOL_KINDS and all(str(t.effect) == k for k, t in tools.items())

    @app.workflow
    async def tool_chain(ctx: Context, kind: str, n: int) -> float:
        tool = tools[kind]
        t0 = time.perf_counter()
        for i in range(n):
            await tool(i)
        return time.perf_counter() - t0

    return tool_chain


def commits(app: Any) -> int:
    return int(getattr(app.store, "commits", 0))


def pragma(app: Any, name: str) -> Any:
    conn = getattr(app.store, "conn", None)
    return None if conn is None else conn.execute(f"PRAGMA {name}").fetchone()[0]


# -- (a), (b) and (d): durable loops, with the floor interleaved ----------------------------
async def bench_durable(workdir: Path, cfg: Config) -> dict[str, Any]:
    max_conc = max(100, cfg.fan_runs)
    app, chain, fan = build_app(f"sqlite:///{workdir / 'core.db'}", max_concurrency=max_conc)
    floor = Floor(workdir / "floor.db")
    out: dict[str, Any] = {"floor_synchronous": floor.synchronous}
    try:
        async with app:
            out["pragma_synchronous"] = SYNC_NAMES.get(pragma(app, "synchronous"))
            out["pragma_journal_mode"] = pragma(app, "journal_mode")

            # Warm-up. A new WAL file grows until the first checkpoint (1000 pages), and
            # appending to a file costs about twice an overwrite on ext4 (fdatasync must
            # also commit the file's new size). SQLite deletes the WAL when the last
            # connection closes, so every process start begins with a growing WAL. The
            # main figures are for the steady state; the growing phase is reported apart.
            wal = Path(f"{workdir / 'core.db'}-wal")
            growing: list[float] = []
            for rep in range(max(cfg.warmup, 30)):
                size = wal_size(wal)
                handle = await app.start(chain, cfg.chain_steps, run_id=f"warm-{rep}")
                inside = await handle.result(timeout=120)
                grew = wal_size(wal) > size
                if grew and rep > 0:  # the very first run also pays one-time costs
                    growing.append(inside / cfg.chain_steps * 1000)
                if not grew and rep + 1 >= cfg.warmup:
                    break
            out["chain_ms_per_step_wal_growing"] = median_or_none(growing)
            floor_growing = floor.warm_up(cfg.floor_batch)
            out["floor_ms_per_commit_wal_growing"] = median_or_none(floor_growing)

            # (a) one 200-step workflow at a time; (d) a floor batch before each.
            per_step: list[float] = []
            end_to_end: list[float] = []
            floors: list[float] = []
            commit_counts: list[int] = []
            for rep in range(cfg.chain_reps):
                floors.append(floor.batch(cfg.floor_batch))
                before = commits(app)
                t0 = time.perf_counter()
                handle = await app.start(chain, cfg.chain_steps, run_id=f"chain-{rep}")
                inside = await handle.result(timeout=120)
                total = time.perf_counter() - t0
                per_step.append(inside / cfg.chain_steps * 1000)
                end_to_end.append(total / cfg.chain_steps * 1000)
                commit_counts.append(commits(app) - before)
            out["chain_ms_per_step"] = statistics.median(per_step)
            out["chain_ms_per_step_all"] = per_step
            out["chain_ms_per_step_end_to_end"] = statistics.median(end_to_end)
            out["chain_commits_per_run"] = statistics.median(commit_counts)
            out["floor_ms_per_commit"] = statistics.median(floors)
            out["floor_ms_per_commit_all"] = floors
            out["step_over_floor"] = statistics.median(
                s / f for s, f in zip(per_step, floors, strict=True)
            )

            # (b) 500 concurrent 10-step runs, end to end.
            rates: list[float] = []
            batch: list[float] = []
            for rep in range(cfg.warmup + cfg.fan_reps):
                before = commits(app)
                t0 = time.perf_counter()
                handles = await asyncio.gather(
                    *(
                        app.start(fan, cfg.fan_steps, run_id=f"fan-{rep}-{i}")
                        for i in range(cfg.fan_runs)
                    )
                )
                await asyncio.gather(*(h.result(timeout=300) for h in handles))
                elapsed = time.perf_counter() - t0
                if rep >= cfg.warmup:
                    steps = cfg.fan_runs * cfg.fan_steps
                    rates.append(steps / elapsed)
                    batch.append(steps / max(1, commits(app) - before))
            out["fan_steps_per_s"] = statistics.median(rates)
            out["fan_steps_per_s_all"] = rates
            out["fan_steps_per_commit"] = statistics.median(batch)
            out["fan_max_concurrency"] = max_conc
    finally:
        floor.close()
    return out


async def bench_cpu_only(workdir: Path, cfg: Config) -> dict[str, Any]:
    """The 200-step run with synchronous=NORMAL: WAL commits without fsync, so what is
    left is the CPU cost of a step (engine + SQLite statements)."""
    app, chain, _fan = build_app(f"sqlite:///{workdir / 'cpu.db'}?synchronous=NORMAL")
    per_step: list[float] = []
    async with app:
        level = SYNC_NAMES.get(pragma(app, "synchronous"))
        for rep in range(cfg.warmup + cfg.chain_reps):
            handle = await app.start(chain, cfg.chain_steps, run_id=f"cpu-{rep}")
            inside = await handle.result(timeout=120)
            if rep >= cfg.warmup:
                per_step.append(inside / cfg.chain_steps * 1000)
    return {"cpu_ms_per_step": statistics.median(per_step), "cpu_synchronous": level}


# -- (f): tool calls against plain steps, in the same rounds ------------------------------
async def tool_round(
    app: Any, chain: Any, tool_chain: Any, n: int, prefix: str, rotate: int = 0
) -> dict[str, tuple[float, int]]:
    """One ``n``-step run and one ``n``-call run per effect kind (the order rotated by
    ``rotate``): for each, ms per step or call (timed inside the workflow) and commits."""
    kinds = ("step", *TOOL_KINDS)
    rotate %= len(kinds)
    out: dict[str, tuple[float, int]] = {}
    for kind in kinds[rotate:] + kinds[:rotate]:
        before = commits(app)
        if kind == "step":
            handle = await app.start(chain, n, run_id=f"{prefix}-step")
        else:
            handle = await app.start(tool_chain, kind, n, run_id=f"{prefix}-{kind}")
        inside = await handle.result(timeout=300)
        out[kind] = (inside / n * 1000, commits(app) - before)
    return out


def tool_figures(rounds: list[dict[str, tuple[float, int]]], n: int) -> dict[str, Any]:
    """The medians over the rounds; a ratio is the median of the per-round ratios."""
    steps = [r["step"][0] for r in rounds]
    out: dict[str, Any] = {
        "tool_calls_per_run": n,
        "tool_rounds": len(rounds),
        "tool_step_ms_per_step": statistics.median(steps),
        "tool_step_ms_per_step_all": steps,
        "tool_step_commits_per_run": statistics.median(r["step"][1] for r in rounds),
    }
    for kind in TOOL_KINDS:
        calls = [r[kind][0] for r in rounds]
        out[f"tool_{kind}_ms_per_call"] = statistics.median(calls)
        out[f"tool_{kind}_ms_per_call_all"] = calls
        out[f"tool_{kind}_over_step"] = statistics.median(
            c / s for c, s in zip(calls, steps, strict=True)
        )
        out[f"tool_{kind}_commits_per_run"] = statistics.median(r[kind][1] for r in rounds)
    return out


async def bench_tools(workdir: Path, cfg: Config) -> dict[str, Any]:
    """(f) on a database of its own, synchronous=FULL, once its WAL file stops growing."""
    app, chain, _fan = build_app(f"sqlite:///{workdir / 'tools.db'}")
    tool_chain = add_tool_chain(app)
    wal = Path(f"{workdir / 'tools.db'}-wal")
    rounds: list[dict[str, tuple[float, int]]] = []
    async with app:
        for rep in range(max(cfg.warmup, 30)):  # warm-up: see bench_durable
            size = wal_size(wal)
            await tool_round(app, chain, tool_chain, cfg.tool_calls, f"tools-warm-{rep}", rep)
            if wal_size(wal) <= size and rep + 1 >= cfg.warmup:
                break
        for rep in range(cfg.tool_reps):
            rounds.append(
                await tool_round(app, chain, tool_chain, cfg.tool_calls, f"tools-{rep}", rep)
            )
    return tool_figures(rounds, cfg.tool_calls)


def tool_rows(f: dict[str, Any], letter: str) -> list[tuple[str, ...]]:
    """The report rows of (f): ms per plain step, then per kind ms per call and the ratio."""
    n = f["tool_calls_per_run"]
    rows: list[tuple[str, ...]] = [
        (
            f"{letter}. plain step, {n}-step run (same rounds)",
            f"{f['tool_step_ms_per_step']:.3f} ms/step",
            "reference",
        ),
    ]
    labels = {
        "read": "read tool",
        "idempotent": "idempotent tool (idempotency_key)",
        "irreversible": "irreversible tool",
    }
    for kind in TOOL_KINDS:
        ratio = f[f"tool_{kind}_over_step"]
        rows += [
            (f"   {labels[kind]}, {n}-call run", f"{f[f'tool_{kind}_ms_per_call']:.3f} ms/call"),
            (
                "     tool call / plain step",
                f"{ratio:.2f}x",
                f"<= {TARGET_TOOL_OVER_STEP:g}x a step",
                verdict(ratio <= TARGET_TOOL_OVER_STEP),
            ),
        ]
    counts = "/".join(f"{f[f'tool_{kind}_commits_per_run']:.0f}" for kind in TOOL_KINDS)
    rows.append(
        (
            "   commits per run: read/idem./irrev.",
            f"{counts} (step run: {f['tool_step_commits_per_run']:.0f})",
        )
    )
    return rows


# -- (c): plain calls ---------------------------------------------------------------------
async def bench_plain(cfg: Config) -> dict[str, Any]:
    async def noop(i: int) -> int:
        return i

    async def chain(n: int) -> float:
        t0 = time.perf_counter()
        for i in range(n):
            await noop(i)
        return time.perf_counter() - t0

    async def fan(n: int) -> int:
        total = 0
        for i in range(n):
            total += await noop(i)
        return total

    per_step: list[float] = []
    for _ in range(cfg.warmup + max(cfg.chain_reps, 5)):
        per_step.append((await chain(cfg.chain_steps)) / cfg.chain_steps * 1000)
    rates: list[float] = []
    for _ in range(cfg.warmup + max(cfg.fan_reps, 3)):
        t0 = time.perf_counter()
        await asyncio.gather(*(fan(cfg.fan_steps) for _ in range(cfg.fan_runs)))
        rates.append(cfg.fan_runs * cfg.fan_steps / (time.perf_counter() - t0))
    return {
        "plain_chain_ms_per_step": statistics.median(per_step[cfg.warmup :]),
        "plain_fan_steps_per_s": statistics.median(rates[cfg.warmup :]),
    }


# -- (e): recovery after SIGKILL ----------------------------------------------------------
def recovery_app(url: str, state: dict[str, Any]) -> tuple[Any, Any]:
    from tether import App, Context

    app = App(url)

    @app.step
    async def work(i: int) -> int:
        if state.get("first") is None:
            state["first"] = (time.perf_counter(), i)
        if i == state.get("kill_at"):
            os.kill(os.getpid(), signal.SIGKILL)  # mid-step: this step's entry is never written
        return i

    @app.workflow
    async def long_run(ctx: Context, n: int) -> int:
        total = 0
        for i in range(n):
            total += await work(i)
        return total

    return app, long_run


async def recovery_crash(url: str) -> None:
    """Child process 1: start a run and die by SIGKILL in the middle of it."""
    app, long_run = recovery_app(url, {"kill_at": RECOVERY_KILL_AT})
    async with app:
        handle = await app.start(long_run, RECOVERY_STEPS, run_id="recover-me")
        await handle.result(timeout=60)
    raise SystemExit("the crash phase should have been killed")


async def recovery_resume(url: str, warm: bool) -> None:
    """Child process 2 (fresh): open the app, time the first recovered step, finish."""
    if warm:  # build pydantic's validator for `int` before the clock starts
        from tether._serde import decode

        decode(1, int)
    state: dict[str, Any] = {}
    app, _long_run = recovery_app(url, state)
    t0 = time.perf_counter()
    async with app:
        opened = time.perf_counter()
        result = await app.handle("recover-me").result(timeout=60)
    first_at, first_index = state["first"]
    detail = {
        "first_step_s": first_at - t0,
        "open_s": opened - t0,
        "first_index": first_index,
        "result_ok": result == sum(range(RECOVERY_STEPS)),
    }
    print(json.dumps(detail))


def recover_once(db: Path, *, warm: bool) -> dict[str, Any]:
    script = str(Path(__file__).resolve())
    url = f"sqlite:///{db}"
    crash = subprocess.run(
        [sys.executable, script, "--phase", "crash", "--url", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if crash.returncode != -signal.SIGKILL:
        raise RuntimeError(f"crash phase ended with {crash.returncode}: {crash.stderr}")
    phase = "resume-warm" if warm else "resume"
    resume = subprocess.run(
        [sys.executable, script, "--phase", phase, "--url", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if resume.returncode != 0:
        raise RuntimeError(f"resume phase failed: {resume.stderr}")
    detail: dict[str, Any] = json.loads(resume.stdout.strip().splitlines()[-1])
    if detail["first_index"] != RECOVERY_KILL_AT or not detail["result_ok"]:
        raise RuntimeError(f"recovery did not resume at the step in flight: {detail}")
    return detail


def bench_recovery(workdir: Path, cfg: Config) -> dict[str, Any]:
    cold = [recover_once(workdir / f"rec-{i}.db", warm=False) for i in range(cfg.recovery_reps)]
    warm = [recover_once(workdir / f"warm-{i}.db", warm=True) for i in range(cfg.recovery_reps)]
    return {
        "recovery_first_step_s": statistics.median(d["first_step_s"] for d in cold),
        "recovery_first_step_s_all": [d["first_step_s"] for d in cold],
        "recovery_open_s": statistics.median(d["open_s"] for d in cold),
        "recovery_first_step_warm_s": statistics.median(d["first_step_s"] for d in warm),
        "recovery_replayed_steps": RECOVERY_KILL_AT,
    }


# -- report -------------------------------------------------------------------------------
def fmt(value: float | None, unit: str) -> str:
    return "n/a" if value is None else f"{value:.3f} {unit}"


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def report(machine: dict[str, Any], f: dict[str, Any]) -> str:
    fs = machine["filesystem"]
    rows: list[tuple[str, ...]] = [
        (
            "a. durable step, one 200-step run",
            f"{f['chain_ms_per_step']:.3f} ms/step",
            f"<= {TARGET_MS_PER_STEP} ms",
            verdict(f["chain_ms_per_step"] <= TARGET_MS_PER_STEP),
        ),
        ("   same, end to end (start..result)", f"{f['chain_ms_per_step_end_to_end']:.3f} ms/step"),
        ("   commits per 200-step run", f"{f['chain_commits_per_run']:.0f}"),
        (
            "   while the WAL file grows (new db)",
            fmt(f["chain_ms_per_step_wal_growing"], "ms/step"),
        ),
        (
            "b. 500 concurrent 10-step runs",
            f"{f['fan_steps_per_s']:,.0f} steps/s",
            f">= {TARGET_STEPS_PER_S:,.0f}",
            verdict(f["fan_steps_per_s"] >= TARGET_STEPS_PER_S),
        ),
        ("   steps per commit (group commit)", f"{f['fan_steps_per_commit']:.1f}"),
        (
            "c. plain calls, 200-step loop",
            f"{f['plain_chain_ms_per_step'] * 1000:.3f} us/step",
            "reference",
        ),
        (
            "   plain calls, 500 x 10 gathered",
            f"{f['plain_fan_steps_per_s']:,.0f} steps/s",
            "reference",
        ),
        (
            "d. floor: 1 INSERT per commit",
            f"{f['floor_ms_per_commit']:.3f} ms/commit",
            "~0.25 ms",
        ),
        ("   step / floor", f"{f['step_over_floor']:.2f}x"),
        (
            "   floor while the WAL file grows",
            fmt(f["floor_ms_per_commit_wal_growing"], "ms/commit"),
        ),
        ("   bare 4 KiB write + fdatasync", f"{f['fdatasync_ms']:.3f} ms"),
        ("   step CPU cost (synchronous=NORMAL)", f"{f['cpu_ms_per_step'] * 1000:.1f} us/step"),
        (
            "e. recovery: open -> first step",
            f"{f['recovery_first_step_s'] * 1000:.1f} ms",
            f"<= {TARGET_RECOVERY_S * 1000:.0f} ms",
            verdict(f["recovery_first_step_s"] <= TARGET_RECOVERY_S),
        ),
        ("   of which open (migrations, claim)", f"{f['recovery_open_s'] * 1000:.1f} ms"),
        ("   same, pydantic already warm", f"{f['recovery_first_step_warm_s'] * 1000:.1f} ms"),
        *tool_rows(f, "f"),
    ]
    header = ("figure", "measured", "target", "")
    cells = [(*row, "", "")[:4] for row in rows]
    widths = [max(len(r[i]) for r in [header, *cells]) for i in range(4)]
    lines = [
        f"machine: {machine['nproc']} CPU ({machine['cpu']}), Python {machine['python']}, "
        f"SQLite {machine['sqlite']}",
        f"disk:    {machine['workdir']} on {fs['device']} ({fs['fstype']}, "
        f"mounted at {fs['mount']})",
        f"load:    other processes used {machine.get('background_cpu', 0.0):.0%} of the CPUs "
        "during the run",
        f"sqlite:  engine journal_mode={f['pragma_journal_mode']}, PRAGMA synchronous="
        f"{f['pragma_synchronous']}; floor synchronous={f['floor_synchronous']}",
        "",
        "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip(),
        "  ".join("-" * w for w in widths),
    ]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    if machine.get("background_cpu", 0.0) > 0.1:
        lines.append(
            f"\nWARNING: other processes used {machine['background_cpu']:.0%} of the CPUs "
            f"during the run (load average {machine['loadavg_at_start']:.2f} at start); "
            "the figures are pessimistic. Rerun on a quiet machine."
        )
    if fs["fstype"] in ("tmpfs", "ramfs", "overlay", "9p", "fuse"):
        lines.append(
            f"\nWARNING: {fs['fstype']} may not be a real disk; commit costs may be unreal."
        )
    return "\n".join(lines)


def run_benchmark(args: argparse.Namespace) -> int:
    cfg = QUICK if args.quick else Config()
    try:
        BENCH_TMP.mkdir(exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix="core-", dir=BENCH_TMP))
    except OSError as exc:  # a read-only checkout: fall back to the system's temp dir
        print(f"cannot use {BENCH_TMP} ({exc}); using the system temp dir", file=sys.stderr)
        workdir = Path(tempfile.mkdtemp(prefix="tether-bench-"))
    machine = machine_info(workdir)
    load = os.getloadavg()[0]
    figures: dict[str, Any] = {}
    parts: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("durable loops + floor", lambda: asyncio.run(bench_durable(workdir, cfg))),
        ("cpu-only loop", lambda: asyncio.run(bench_cpu_only(workdir, cfg))),
        ("plain calls", lambda: asyncio.run(bench_plain(cfg))),
        ("fdatasync", lambda: {"fdatasync_ms": bare_fdatasync_ms(workdir / "raw.bin")}),
        ("recovery", lambda: bench_recovery(workdir, cfg)),
        ("tool calls", lambda: asyncio.run(bench_tools(workdir, cfg))),
    ]
    started = time.perf_counter()
    busy0, own0 = cpu_busy_s(), own_cpu_s()
    try:
        for label, part in parts:
            t0 = time.perf_counter()
            figures.update(part())
            print(f"measured {label} in {time.perf_counter() - t0:.1f} s", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    wall = time.perf_counter() - started
    others = (cpu_busy_s() - busy0 - (own_cpu_s() - own0)) / (wall * (os.cpu_count() or 1))
    machine["background_cpu"] = max(0.0, others)
    machine["loadavg_at_start"] = load
    print(f"total {wall:.1f} s{' (--quick)' if args.quick else ''}\n")
    print(report(machine, figures))
    if args.json is not None:
        path = Path(args.json) if args.json else RESULTS / f"core-{_dt.date.today()}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "quick": bool(args.quick),
            "targets": {
                "ms_per_step": TARGET_MS_PER_STEP,
                "steps_per_s": TARGET_STEPS_PER_S,
                "recovery_first_step_s": TARGET_RECOVERY_S,
                "tool_call_over_step": TARGET_TOOL_OVER_STEP,
            },
            "machine": machine,
            "figures": figures,
        }
        path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Tether core benchmark (see module docstring)")
    parser.add_argument("--quick", action="store_true", help="short CI smoke run (< 10 s)")
    parser.add_argument(
        "--backend",
        choices=["sqlite", "postgres"],
        default="sqlite",
        help="sqlite (default) or postgres (server: $TETHER_BENCH_POSTGRES_URL, default "
        "postgresql://postgres@127.0.0.1:5432/postgres; a database is created and dropped)",
    )
    parser.add_argument(
        "--workers",
        metavar="N,N,...",
        help="postgres: worker process counts for the concurrent runs (default 1,2,4)",
    )
    parser.add_argument(
        "--lease",
        type=float,
        metavar="SECONDS",
        help="postgres: lease length for the failover measurement (default 2)",
    )
    parser.add_argument(
        "--json",
        nargs="?",
        const="",
        default=None,
        metavar="PATH",
        help="also write the results as JSON (default: benchmarks/results/core-<date>.json)",
    )
    parser.add_argument(
        "--phase", choices=["crash", "resume", "resume-warm"], help=argparse.SUPPRESS
    )
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phase == "crash":
        asyncio.run(recovery_crash(args.url))
        return 0
    if args.phase is not None:
        resume: Coroutine[Any, Any, None] = recovery_resume(args.url, args.phase == "resume-warm")
        asyncio.run(resume)
        return 0
    if args.backend == "postgres":
        import _pgbench  # beside this file: the script's directory is on sys.path

        return _pgbench.run_benchmark(args)
    if args.workers is not None or args.lease is not None:
        parser.error("--workers and --lease apply to --backend postgres only")
    return run_benchmark(args)


if __name__ == "__main__":
    sys.exit(main())
