"""Fork benchmark: what ``app.fork`` costs as the origin's journal grows.

Usage::

    .venv/bin/python benchmarks/fork.py              # origins of 10 to 100,000 entries
    .venv/bin/python benchmarks/fork.py --quick      # CI smoke: 10 and 1,000, a few seconds
    .venv/bin/python benchmarks/fork.py --json       # also write results/fork-BACKEND-DATE.json
    .venv/bin/python benchmarks/fork.py --backend postgres [--quick] [--json]
    .venv/bin/python benchmarks/fork.py --explain    # also the plans of the journal reads

The origin. A workflow ``loop(n)`` calls a cheap step ``tick(i)`` for i in 0..n-2, one
after the other, then a step ``last(n)`` that raises: the origin is a failed run of ``n``
journal entries whose last step is left to do. Origins of 10, 1,000 and 10,000 entries
(``--quick``: 10 and 1,000) are built by executing it. The 100,000-entry origin is
**bulk-inserted** (``executemany`` on SQLite, ``COPY`` on PostgreSQL): its run row and its
journal rows have the shape the executed ones have (same columns, kinds, names, inputs,
outputs, error and delivery order; only the times differ); the benchmark checks that at
every executed size the rows it would insert equal the executed ones but for the times.
Each size has its own database. On PostgreSQL ``ANALYZE`` runs after seeding, as
autovacuum would after that many inserts; SQLite is left without statistics, as the
engine leaves it.

What it measures, for each origin of ``n`` entries (figures printed, never asserted):

a. The time of ``await app.fork(origin, n)`` (a fork at the last entry: it shares the
   n - 1 entries before it) by an App opened with ``worker=False`` (as ``tether serve`` and
   the CLI open it), median of 9 forks after one warm-up (``--quick``: 5). Also the time of
   ``store.list_entries(origin)`` alone, for scale: reading the origin's whole journal,
   which is what the fork did to check its position before it used index lookups.
b. What those forks added, per fork: journal rows and effects rows whose run_id is a fork,
   rows in ``runs``, and bytes: the growth of the database file on SQLite (after a
   ``wal_checkpoint(TRUNCATE)`` before and after, so the WAL is in the file), the growth
   of ``pg_total_relation_size`` summed over runs, run_tags, journal, effects and blobs
   (tables, indexes, TOAST) on PostgreSQL; divided by the number of forks. Both grow by
   whole pages, so beside them the growth of the records' own bytes ("payload"): on SQLite
   the payload of every table and index b-tree (``dbstat``), on PostgreSQL the rows'
   ``pg_column_size`` (tables only).
c. Replay, claim to result: a fresh App with a worker forks the origin at ``n`` (the
   fork's journal is then the origin's n - 1 entries, read through ``forked_from``) and
   the time from the fork's return to its result is taken: the worker is woken, claims
   the run, loads its journal, replays the n - 1 shared entries and executes ``last``.
   Against it, the origin's own replay at the same length: a fresh App retries a copy of
   the origin from seq ``n`` (``app.retry``; its entry n is set aside), and the time from
   the retry's return to its result is taken: the same claim, load of n - 1 entries (its
   own rows), replay and one step. The copies of the origin that the retries consume are
   made with ``INSERT ... SELECT`` of its rows under another run_id, before timing. The two
   alternate, one warm-up round, then the median of 5 rounds (``--quick``: 3). Also
   ``store.load_state`` alone (median of 5 reads after one), the journal read of a claim
   without the replay: of a fork at n + 1 (all n entries shared) and of the origin (its n
   own entries), by an App opened with ``worker=False``; and the same two reads for a
   10-entry run (``small``, executed in every database) and a fork of it: a fork's read
   should cost what its own journal costs, whatever else the journal table holds.
d. As a reference, what a fork that copied its prefix would write: the n - 1 rows copied
   with one ``INSERT INTO journal ... SELECT`` under a new run_id, their bytes and payload
   (measured as in b) and the time of that statement and its commit.

Databases live under ``<repo>/.bench-tmp`` (SQLite, ``synchronous=full``) or, with
``--backend postgres``, in databases of their own on the server at
``TETHER_BENCH_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``),
created and dropped by the run.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import os
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tether import App, Context, RunFailedError
from tether.storage._rows import JOURNAL_COLUMNS, RUN_COLUMNS, lineage_query

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PG_SERVER = os.environ.get(
    "TETHER_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
SIZES = (10, 1_000, 10_000, 100_000)
QUICK_SIZES = (10, 1_000)
EXECUTED_UP_TO = 10_000  # larger origins are bulk-inserted
PG_TABLES = ("runs", "run_tags", "journal", "effects", "blobs")
FAIL = {"last": True}  # whether ``last`` raises (origins) or returns (forks, retries)


def bench_app(url: str) -> App:
    app = App(url)

    @app.step
    async def tick(i: int) -> int:
        return i + 1

    @app.step
    async def last(n: int) -> int:
        if FAIL["last"]:
            raise RuntimeError("left to do")
        return n

    @app.workflow
    async def loop(ctx: Context, n: int) -> int:
        total = 0
        for i in range(n - 1):
            total += await tick(i)
        return total + await last(n)

    return app


class Database:
    """One database per origin size: a SQLite file, or a PostgreSQL database; plain SQL
    on it (``?`` placeholders) for seeding, copying, counting and sizing."""

    def __init__(self, backend: str, tmp: Path) -> None:
        self.backend = backend
        self.tmp = tmp
        self.made: list[str] = []
        self.path = ""
        self.url = ""

    def create(self) -> str:
        if self.backend == "sqlite":
            self.path = str(self.tmp / (uuid.uuid4().hex + ".db"))
            self.url = f"sqlite:///{self.path}?synchronous=full"
            return self.url
        import psycopg

        name = f"tether_bench_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(PG_SERVER, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"'.encode())
        self.made.append(name)
        self.url = PG_SERVER.rsplit("/", 1)[0] + "/" + name
        return self.url

    def drop(self) -> None:
        if not self.made:
            return
        import psycopg

        with psycopg.connect(PG_SERVER, autocommit=True) as conn:
            for name in self.made:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())

    @contextmanager
    def connect(self) -> Iterator[Any]:
        """A connection in autocommit mode (``BEGIN``/``COMMIT`` by hand)."""
        if self.backend == "sqlite":
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=30)
            conn.execute("PRAGMA synchronous = FULL")
            try:
                yield conn
            finally:
                conn.close()
            return
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as pg:
            yield pg

    def q(self, query: str) -> str:
        return query if self.backend == "sqlite" else query.replace("?", "%s")

    def rows(self, conn: Any, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return list(conn.execute(self.q(query), params).fetchall())

    def size_bytes(self, conn: Any) -> int:
        """The file after a checkpoint (SQLite), the tables' total relation size (PG)."""
        if self.backend == "sqlite":
            for _ in range(50):
                busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
                if not busy:
                    break
                time.sleep(0.02)
            return os.path.getsize(self.path)
        names = ", ".join(f"'{t}'" for t in PG_TABLES)
        row = conn.execute(
            f"SELECT sum(pg_total_relation_size(c)) FROM unnest(ARRAY[{names}]) c".encode()
        ).fetchone()
        return int(row[0])

    def payload_bytes(self, conn: Any) -> int:
        """The bytes of the stored records: on SQLite the payload of every b-tree (tables
        and indexes, from ``dbstat``); on PostgreSQL the rows' ``pg_column_size`` (tables
        only, without page or index overhead)."""
        if self.backend == "sqlite":
            return int(conn.execute("SELECT sum(payload) FROM dbstat").fetchone()[0])
        total = 0
        for table in PG_TABLES:
            row = conn.execute(f"SELECT sum(pg_column_size(t.*)) FROM {table} t".encode())
            total += int(row.fetchone()[0] or 0)
        return total

    def analyze(self, conn: Any) -> None:
        if self.backend == "postgres":
            conn.execute(b"ANALYZE")

    def copy_run(self, conn: Any, origin: str, new: str, *, below: int | None = None) -> None:
        """The origin's run row (unless ``below``) and journal rows (those below seq
        ``below``, if given) under run_id ``new``, in one transaction."""
        jcols = JOURNAL_COLUMNS.split(", ")[1:]
        rcols = RUN_COLUMNS.split(", ")[1:]
        conn.execute("BEGIN")
        if below is None:
            conn.execute(
                self.q(
                    f"INSERT INTO runs (run_id, {', '.join(rcols)}) "
                    f"SELECT ?, {', '.join(rcols)} FROM runs WHERE run_id = ?"
                ),
                (new, origin),
            )
        where = "run_id = ?" + ("" if below is None else " AND seq < ?")
        params = (new, origin) if below is None else (new, origin, below)
        conn.execute(
            self.q(
                f"INSERT INTO journal (run_id, {', '.join(jcols)}) "
                f"SELECT ?, {', '.join(jcols)} FROM journal WHERE {where}"
            ),
            params,
        )
        conn.execute("COMMIT")


# -- origins ---------------------------------------------------------------------------


def journal_shape(run_id: str, n: int, t0: float, error: str) -> Iterator[tuple[Any, ...]]:
    """The journal rows of ``loop(n)`` failed at ``last``, in JOURNAL_COLUMNS order, as the
    engine writes them; ``error`` is the failed entry's (from an executed run)."""
    for seq in range(1, n):
        at = t0 + seq * 1e-4
        yield (run_id, seq, "step", "tick", "completed", f'{{"args":[{seq - 1}]}}', None,
               str(seq), None, None, at, at, 1, seq, seq - 1, seq - 1)  # fmt: skip
    at = t0 + n * 1e-4
    yield (run_id, n, "step", "last", "failed", f'{{"args":[{n}]}}', None, None, None, error,
           at, at, 1, n, n - 1, n - 1)  # fmt: skip


def _untimed(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return [row[:10] + row[12:] for row in rows]


async def execute_origin(url: str, n: int, run_id: str = "o") -> None:
    FAIL["last"] = True
    async with bench_app(url) as app:
        try:
            await (await app.start("loop", n, run_id=run_id)).result(timeout=3600)
        except RunFailedError:
            pass
        else:
            raise SystemExit("the origin was meant to fail at its last step")


def seed(db: Database, n: int) -> dict[str, Any]:
    """Run ``o``, a failed ``loop(n)``: executed, or bulk-inserted from an executed one."""
    started = time.perf_counter()
    executed = n <= EXECUTED_UP_TO
    if executed:
        asyncio.run(execute_origin(db.url, n))
    else:
        asyncio.run(execute_origin(db.url, 10))  # the template: its run row and its error
        with db.connect() as conn:
            run = db.rows(conn, f"SELECT {RUN_COLUMNS} FROM runs WHERE run_id = 'o'")[0]
            error = db.rows(conn, "SELECT error FROM journal WHERE run_id = 'o' AND seq = 10")
            conn.execute("BEGIN")
            conn.execute("DELETE FROM journal WHERE run_id = 'o'")
            conn.execute("DELETE FROM runs WHERE run_id = 'o'")
            cols = RUN_COLUMNS.split(", ")
            values = dict(zip(cols, run, strict=True))
            values["args"] = json.dumps({"args": [n], "kwargs": {}}, separators=(",", ":"))
            values["error"] = values["error"].replace("(seq 10)", f"(seq {n})")
            marks = ", ".join("?" for _ in cols)
            conn.execute(db.q(f"INSERT INTO runs ({RUN_COLUMNS}) VALUES ({marks})"),
                         tuple(values[c] for c in cols))  # fmt: skip
            rows = journal_shape("o", n, time.time() - 60, error[0][0])
            if db.backend == "sqlite":
                marks = ", ".join("?" for _ in JOURNAL_COLUMNS.split(", "))
                conn.executemany(f"INSERT INTO journal ({JOURNAL_COLUMNS}) VALUES ({marks})", rows)
            else:
                with conn.cursor().copy(f"COPY journal ({JOURNAL_COLUMNS}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
            conn.execute("COMMIT")
    asyncio.run(execute_origin(db.url, 10, "small"))  # for load_small_* in replay_times
    with db.connect() as conn:
        stored = db.rows(conn, f"SELECT {JOURNAL_COLUMNS} FROM journal WHERE run_id = 'o' "
                               "ORDER BY seq")  # fmt: skip
        error = stored[-1][9]
        db.analyze(conn)
    # Executed: would the bulk insert have written these rows? (Bulk: nothing to check.)
    shape_ok = _untimed(stored) == _untimed(list(journal_shape("o", n, 0.0, error)))
    return {
        "built": "executed" if executed else "bulk-inserted",
        "seed_s": time.perf_counter() - started,
        "shape_matches": shape_ok if executed else None,
        "rows": len(stored),
    }


# -- measurements ----------------------------------------------------------------------


def _stats(values: list[float]) -> dict[str, Any]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "all": values,
    }


async def fork_times(db: Database, n: int, forks: int) -> dict[str, Any]:
    """a and b: ``forks`` forks at seq n by a worker-less App, and what they added."""
    app = bench_app(db.url)
    await app.open(worker=False)
    try:
        await app.fork("o", n)  # warm-up
        reads = []
        for _ in range(5):
            started = time.perf_counter()
            await app.store.list_entries("o")
            reads.append((time.perf_counter() - started) * 1000)
        with db.connect() as conn:
            before = db.size_bytes(conn)
            payload = db.payload_bytes(conn)
            runs_before = db.rows(conn, "SELECT count(*) FROM runs")[0][0]
            journal_before = db.rows(conn, "SELECT count(*) FROM journal")[0][0]
        times, made = [], []
        for _ in range(forks):
            started = time.perf_counter()
            handle = await app.fork("o", n)
            times.append((time.perf_counter() - started) * 1000)
            made.append(handle.run_id)
        with db.connect() as conn:
            after = db.size_bytes(conn)
            payload = db.payload_bytes(conn) - payload
            marks = ", ".join("?" for _ in made)
            own = db.rows(conn, f"SELECT count(*) FROM journal WHERE run_id IN ({marks})",
                          tuple(made))[0][0]  # fmt: skip
            effects = db.rows(conn, f"SELECT count(*) FROM effects WHERE run_id IN ({marks})",
                              tuple(made))[0][0]  # fmt: skip
            runs_after = db.rows(conn, "SELECT count(*) FROM runs")[0][0]
            journal_after = db.rows(conn, "SELECT count(*) FROM journal")[0][0]
            origin_rows = db.rows(conn, "SELECT count(*) FROM journal WHERE run_id = 'o'")[0][0]
        shared = len(await app.get_journal(made[-1]))
    finally:
        await app.close()
    return {
        "fork_ms": _stats(times),
        "list_entries_ms": _stats(reads),
        "added_per_fork": {
            "journal_rows": own / forks,
            "journal_rows_any_run": (journal_after - journal_before) / forks,
            "effects_rows": effects / forks,
            "run_rows": (runs_after - runs_before) / forks,
            "bytes": (after - before) / forks,
            "payload_bytes": payload / forks,
        },
        "origin_rows_after": origin_rows,
        "fork_journal_entries": shared,
    }


async def _timed_fork(url: str, n: int) -> tuple[float, str]:
    async with bench_app(url) as app:
        handle = await app.fork("o", n)
        started = time.perf_counter()
        await handle.result(timeout=3600)
        return (time.perf_counter() - started) * 1000, handle.run_id


async def _timed_retry(url: str, run_id: str, n: int) -> float:
    async with bench_app(url) as app:
        await app.retry(run_id, n, by="bench", reason="replay")
        started = time.perf_counter()
        await app.handle(run_id).result(timeout=3600)
        return (time.perf_counter() - started) * 1000


async def _load_times(url: str, run_id: str, reads: int) -> list[float]:
    app = bench_app(url)
    await app.open(worker=False)
    try:
        times = []
        for _ in range(reads):
            started = time.perf_counter()
            await app.store.load_state(run_id)
            times.append((time.perf_counter() - started) * 1000)
        return times
    finally:
        await app.close()


def replay_times(db: Database, n: int, rounds: int) -> dict[str, Any]:
    """c: claim to result of a fork at n against a retry of a copy of the origin from n."""
    copies = [f"o-copy-{i}" for i in range(rounds + 1)]
    with db.connect() as conn:
        for copy in copies:
            db.copy_run(conn, "o", copy)
        db.analyze(conn)
    FAIL["last"] = False
    forks, retries, fork_ids = [], [], []
    for round_, copy in enumerate(copies):
        fork_ms, fork_id = asyncio.run(_timed_fork(db.url, n))
        retry_ms = asyncio.run(_timed_retry(db.url, copy, n))
        fork_ids.append(fork_id)
        if round_:  # the first round warms up
            forks.append(fork_ms)
            retries.append(retry_ms)
    # The journal read of a claim alone: an unclaimed fork at n + 1 (it shares all n
    # entries) against the origin (its n own entries); the first read warms up.
    pending = asyncio.run(_fork_pending(db.url, "o", n))
    load_fork = asyncio.run(_load_times(db.url, pending, 6))[1:]
    load_origin = asyncio.run(_load_times(db.url, "o", 6))[1:]
    # The same for a 10-entry run in this database: a fork's read should cost what its
    # own journal costs, whatever else the journal table holds.
    small = asyncio.run(_fork_pending(db.url, "small", 10))
    small_fork = asyncio.run(_load_times(db.url, small, 6))[1:]
    small_origin = asyncio.run(_load_times(db.url, "small", 6))[1:]
    fork, origin = statistics.median(forks), statistics.median(retries)
    return {
        "fork_ms": _stats(forks),
        "origin_ms": _stats(retries),
        "fork_over_origin": fork / origin,
        "load_fork_ms": _stats(load_fork),
        "load_origin_ms": _stats(load_origin),
        "load_fork_over_origin": statistics.median(load_fork) / statistics.median(load_origin),
        "load_small_fork_ms": _stats(small_fork),
        "load_small_origin_ms": _stats(small_origin),
        "small_fork_id": small,
        "fork_ids": fork_ids,
    }


async def _fork_pending(url: str, origin: str, n: int) -> str:
    """A fork at n + 1 (all n entries shared) that nothing runs."""
    app = bench_app(url)
    await app.open(worker=False)
    try:
        return (await app.fork(origin, n + 1)).run_id
    finally:
        await app.close()


def copying_fork(db: Database, n: int) -> dict[str, Any]:
    """d: the rows and bytes a fork that copied its prefix would write, and the time."""
    with db.connect() as conn:
        before = db.size_bytes(conn)
        conn.execute(
            "INSERT INTO runs (run_id, workflow, status, args, created_at, updated_at) "
            "VALUES ('copied', 'loop', 'cancelled', '{}', 0, 0)"
        )
        payload = db.payload_bytes(conn)
        started = time.perf_counter()
        db.copy_run(conn, "o", "copied", below=n)
        elapsed = (time.perf_counter() - started) * 1000
        after = db.size_bytes(conn)
        payload = db.payload_bytes(conn) - payload
        rows = db.rows(conn, "SELECT count(*) FROM journal WHERE run_id = 'copied'")[0][0]
    return {"rows": rows, "bytes": after - before, "payload_bytes": payload, "ms": elapsed}


def explain(db: Database, fork_id: str, small_id: str) -> dict[str, list[str]]:
    """The plans of the two journal reads of a claim: a fork's (the lineage query) and a
    run's own (its rows by primary key)."""
    cols = "j.run_id, j.seq, j.kind, j.output"
    lineage = lineage_query("?" if db.backend == "sqlite" else "%s", cols)
    own = "SELECT j.run_id, j.seq, j.kind, j.output FROM journal j WHERE j.run_id = ? ORDER BY 2"
    plans = {}
    with db.connect() as conn:
        for name, query, params in (
            ("fork (lineage query)", lineage, (fork_id, fork_id)),
            ("origin (own rows)", own, ("o",)),
            ("fork of the 10-entry run (lineage query)", lineage, (small_id, small_id)),
        ):
            if db.backend == "sqlite":
                rows = db.rows(conn, "EXPLAIN QUERY PLAN " + query, params)
                plans[name] = [f"{row[0]}/{row[1]} {row[3]}" for row in rows]
            else:
                rows = db.rows(conn, "EXPLAIN (ANALYZE, BUFFERS) " + query, params)
                plans[name] = [row[0] for row in rows]
    return plans


# -- report ----------------------------------------------------------------------------


def machine_info(backend: str) -> dict[str, Any]:
    cpu = "?"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(),
        "backend": backend,
        "loadavg_at_start": os.getloadavg()[0],
    }
    if backend == "postgres":
        import psycopg

        with psycopg.connect(PG_SERVER) as conn:
            row = conn.execute(b"SHOW server_version").fetchone()
            info["postgres"] = None if row is None else str(row[0])
    return info


def print_report(results: dict[str, Any]) -> None:
    m = results["machine"]
    server = f", PostgreSQL {m['postgres']}" if "postgres" in m else ", synchronous=FULL"
    print(
        f"fork benchmark: {m['backend']}{server}, python {m['python']}, {m['cpus']} CPUs, "
        f"load {m['loadavg_at_start']:.2f} at start"
    )
    sizes = results["sizes"]
    checked = {True: ", the bulk shape checked", False: ", NOT THE BULK SHAPE", None: ""}
    built = ", ".join(
        f"{int(n):,} {s['origin']['built']} ({s['origin']['seed_s']:.1f} s"
        f"{checked[s['origin']['shape_matches']]})"
        for n, s in sizes.items()
    )
    print(f"origins (entries): {built}")
    print(
        f"\na. app.fork(origin, n), worker-less App, ms: median [min-max] of {results['forks']};"
        "\n   list_entries(origin) alone, for scale (reading the origin's whole journal)"
    )
    print(f"   {'entries':>8} {'fork ms':>9} {'[min-max]':>17} {'list_entries ms':>16}")
    for n, s in sizes.items():
        f = s["fork"]["fork_ms"]
        span = f"[{f['min']:.2f}-{f['max']:.2f}]"
        read = s["fork"]["list_entries_ms"]["median"]
        print(f"   {int(n):>8,} {f['median']:>9.2f} {span:>17} {read:>16.2f}")
    print(
        "\nb. what one fork adds: journal rows of the fork, effects rows, run rows, bytes "
        "(growth of\n   the file or relations; payload: the records' own bytes)"
    )
    print(
        f"   {'entries':>8} {'journal':>8} {'effects':>8} {'runs':>5} {'bytes':>9} {'payload':>8}"
    )
    for n, s in sizes.items():
        a = s["fork"]["added_per_fork"]
        print(
            f"   {int(n):>8,} {a['journal_rows']:>8.0f} {a['effects_rows']:>8.0f} "
            f"{a['run_rows']:>5.0f} {a['bytes']:>9,.0f} {a['payload_bytes']:>8,.0f}"
        )
    print(
        f"\nc. claim to result, ms, median of {results['rounds']}: a fork at n (replays the "
        "n-1 shared\n   entries, runs the last step) vs a retry of the origin from n "
        "(replays its own n-1);\n   load_state alone (the journal read of the claim), "
        "median of 5"
    )
    print(
        f"   {'entries':>8} {'fork':>9} {'origin':>9} {'ratio':>6} "
        f"{'load fork':>10} {'load origin':>12} {'ratio':>6}"
    )
    for n, s in sizes.items():
        r = s["replay"]
        print(
            f"   {int(n):>8,} {r['fork_ms']['median']:>9.1f} {r['origin_ms']['median']:>9.1f} "
            f"{r['fork_over_origin']:>5.2f}x {r['load_fork_ms']['median']:>10.2f} "
            f"{r['load_origin_ms']['median']:>12.2f} {r['load_fork_over_origin']:>5.2f}x"
        )
    print("   load_state of a fork of a 10-entry run in the same database vs that run's own:")
    for n, s in sizes.items():
        r = s["replay"]
        fork, own = r["load_small_fork_ms"]["median"], r["load_small_origin_ms"]["median"]
        print(f"   {int(n):>8,} {fork:>9.2f} {own:>9.2f} {fork / own:>5.2f}x")
    print("\nd. for reference, a fork that copied its prefix (INSERT ... SELECT of n-1 rows)")
    print(f"   {'entries':>8} {'rows':>8} {'bytes':>12} {'payload':>12} {'ms':>9}")
    for n, s in sizes.items():
        c = s["copy"]
        print(
            f"   {int(n):>8,} {c['rows']:>8,} {c['bytes']:>12,} {c['payload_bytes']:>12,} "
            f"{c['ms']:>9.2f}"
        )
    if results.get("explain"):
        print(f"\nplans of the claim's journal read at {int(list(sizes)[-1]):,} entries")
        for name, plan in results["explain"].items():
            print(f"  {name}")
            for line in plan:
                print(f"    {line}")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10 and 1,000 entries, for CI")
    parser.add_argument("--json", nargs="?", const="", default=None, metavar="FILE")
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--explain", action="store_true", help="print the journal reads' plans")
    args = parser.parse_args()
    sizes = QUICK_SIZES if args.quick else SIZES
    forks, rounds = (5, 3) if args.quick else (9, 5)
    (ROOT / ".bench-tmp").mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=ROOT / ".bench-tmp"))
    db = Database(args.backend, tmp)
    results: dict[str, Any] = {
        "machine": machine_info(args.backend),
        "quick": args.quick,
        "forks": forks,
        "rounds": rounds,
        "sizes": {},
    }
    try:
        for n in sizes:
            db.create()
            origin = seed(db, n)
            replay = replay_times(db, n, rounds)
            measured = asyncio.run(fork_times(db, n, forks))
            copy = copying_fork(db, n)
            results["sizes"][str(n)] = {
                "origin": origin,
                "fork": measured,
                "replay": replay,
                "copy": copy,
            }
            if args.explain and n == sizes[-1]:
                results["explain"] = explain(db, replay["fork_ids"][-1], replay["small_fork_id"])
            print(f"  {n:,} entries measured", file=sys.stderr)
    finally:
        db.drop()
        shutil.rmtree(tmp, ignore_errors=True)

    print_report(results)
    if args.json is not None:
        out = (
            Path(args.json)
            if args.json
            else RESULTS / f"fork-{args.backend}-{_dt.date.today().isoformat()}.json"
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))
        print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
