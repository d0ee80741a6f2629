"""What every peer script shares: its command line, the workloads' parameters, the step log
of the recovery workload, process figures, and the one line of JSON it prints.

A peer script (``tether_peer.py``, ``dbos_peer.py``, ``langgraph_peer.py``) implements the
same workloads on its own system, in a process of its own, and is run by ``compare.py``::

    python benchmarks/peers/<system>_peer.py WORKLOAD --backend sqlite|postgres --db DB
        [--steps N] [--runs N] [--concurrency N] [--repeats N] [--warmup N]
        [--log PATH] [--run-id ID] [--pace S] [--kill-after N]

``--db`` is a file path (SQLite; the file does not exist yet) or a PostgreSQL URL
``postgresql://user@host:port/dbname`` of an empty database made for this invocation.
Each script converts it to the form its system takes.

Workloads (every one prints ``RESULT {json}`` as its last line of stdout; the keys below
are required, more are welcome):

``step``
    One workflow of ``--steps`` (200) sequential trivial steps (each returns its index
    plus one), ``--warmup`` (2) runs first, then ``--repeats`` (5) runs, each timed from
    start to result in the same process. Keys: ``per_step_ms`` (median over the repeats of
    run time / steps), ``runs_ms`` (each run's time).
``throughput``
    ``--runs`` (500) runs of a ``--steps`` (10) step workflow; at most ``--concurrency``
    (default: all) in flight at once, each started and awaited under a semaphore by the
    same process. A warm-up round of ``min(runs, 50)`` runs first. Timed from the first
    start to the last result. Keys: ``steps_per_s``, ``seconds``, ``runs``, ``steps``,
    ``concurrency``.
``victim`` (the first half of recovery)
    Starts one run (id ``--run-id``) of ``--steps`` steps; step ``i`` sleeps ``--pace`` s
    and then calls ``log_step(i)``. The process runs until ``compare.py`` kills it with
    SIGKILL after ``--kill-after`` steps are logged; nothing is printed.
``recover`` (the second half)
    A fresh process opens the system on the same database so that the run goes on: on its
    own (Tether, DBOS) or as the system's documented way to resume it (LangGraph: invoke
    the thread again). It waits for the run's result and exits. Keys: ``launched_s``
    (``time.time()`` when the system was opened, after imports), ``done_s`` (when the
    result was in), ``result_ok``.
``recorded``
    Reads the database after the kill: how many of the run's steps the system had
    durably recorded as completed. Key: ``recorded``.
``waiting``
    ``--runs`` (10,000) runs that each wait for a signal / message / resume named ``go``
    and then return, started ``WAIT_CALLERS`` (100) at a time, as a server answering
    requests would. Once every run waits (the system says so), the process's resident
    memory and OS thread count; then ``go`` is sent to every run, again 100 at a time,
    and the time until all have finished. Keys: ``baseline_rss_mb``, ``baseline_threads``
    (after opening the system, before any run), ``waiting_rss_mb``, ``waiting_threads``,
    ``start_s`` (time to get all runs waiting), ``wake_s`` (time to get them all finished
    after ``go``).

On SQLite every system runs with ``journal_mode=WAL`` and ``synchronous=FULL``, set
explicitly, and reports what its own connection read back: key ``sqlite_pragmas``
``{"journal_mode": "wal", "synchronous": 2}``. Every workload reports ``versions``
(``{package: version}``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

WORKLOADS = ("step", "throughput", "victim", "recover", "recorded", "waiting")
DEFAULTS: dict[str, dict[str, Any]] = {
    "step": {"steps": 200, "repeats": 5, "warmup": 2},
    "throughput": {"steps": 10, "runs": 500},
    "victim": {"steps": 200, "pace": 0.005, "kill_after": 100},
    "recover": {"steps": 200, "pace": 0.005},
    "recorded": {"steps": 200},
    "waiting": {"runs": 10_000},
}
SYNC_NAMES = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
WAIT_CALLERS = 100  # starts and sends of the waiting workload in flight at once
median = statistics.median  # for the peer scripts


@dataclass(frozen=True)
class Args:
    workload: str
    backend: str  # "sqlite" | "postgres"
    db: str  # a file path (sqlite) or a postgresql:// URL
    steps: int
    runs: int
    concurrency: int  # at most this many runs in flight
    repeats: int
    warmup: int
    log: str | None  # the recovery workload's step log
    run_id: str
    pace: float
    kill_after: int


def parse(argv: list[str] | None = None) -> Args:
    p = argparse.ArgumentParser()
    p.add_argument("workload", choices=WORKLOADS)
    p.add_argument("--backend", choices=("sqlite", "postgres"), required=True)
    p.add_argument("--db", required=True)
    p.add_argument("--steps", type=int)
    p.add_argument("--runs", type=int)
    p.add_argument("--concurrency", type=int)
    p.add_argument("--repeats", type=int)
    p.add_argument("--warmup", type=int)
    p.add_argument("--log")
    p.add_argument("--run-id", default="recover-me")
    p.add_argument("--pace", type=float)
    p.add_argument("--kill-after", type=int)
    ns = p.parse_args(argv)
    d = DEFAULTS[ns.workload]

    def pick(name: str, fallback: Any) -> Any:
        value = getattr(ns, name)
        return value if value is not None else d.get(name, fallback)

    runs = pick("runs", 1)
    return Args(
        workload=ns.workload,
        backend=ns.backend,
        db=ns.db,
        steps=pick("steps", 10),
        runs=runs,
        concurrency=pick("concurrency", runs),
        repeats=pick("repeats", 5),
        warmup=pick("warmup", 2),
        log=ns.log,
        run_id=ns.run_id,
        pace=pick("pace", 0.005),
        kill_after=pick("kill_after", 100),
    )


def emit(result: dict[str, Any]) -> None:
    """The workload's figures: the last line of stdout."""
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()


def main(workloads: dict[str, Callable[[Args], dict[str, Any] | None]]) -> int:
    """Run the workload named on the command line and print its figures."""
    args = parse()
    result = workloads[args.workload](args)
    if result is not None:
        emit(result)
    return 0


def versions(*packages: str) -> dict[str, str]:
    found = {}
    for name in packages:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "?"
    found["python"] = sys.version.split()[0]
    return found


# -- recovery: the step log ---------------------------------------------------------------
_log_fd: int | None = None


def log_step(path: str, i: int) -> None:
    """Append ``pid index time`` for an executed step (one unbuffered write: a SIGKILL keeps
    it, since it is in the page cache, not in this process)."""
    global _log_fd
    if _log_fd is None:
        _log_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(_log_fd, f"{os.getpid()} {i} {time.time():.6f}\n".encode())


def read_step_log(path: str | Path) -> list[tuple[int, int, float]]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    rows = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3:  # a line being written is skipped until it is whole
            rows.append((int(parts[0]), int(parts[1]), float(parts[2])))
    return rows


# -- process figures ----------------------------------------------------------------------
def _status(field: str) -> int:
    with open("/proc/self/status", encoding="utf-8") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def rss_mb() -> float:
    """Resident memory of this process, MiB."""
    return _status("VmRSS") / 1024


def os_threads() -> int:
    """OS threads of this process (the kernel's count, not only Python's)."""
    return _status("Threads")


# -- SQLite -------------------------------------------------------------------------------
def sqlite_pragmas(conn: Any) -> dict[str, Any]:
    """What a DB-API SQLite connection has in force (the keys of ``sqlite_pragmas``)."""
    mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    sync = conn.execute("PRAGMA synchronous").fetchone()[0]
    return {"journal_mode": str(mode).lower(), "synchronous": int(sync)}
