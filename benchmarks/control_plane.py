"""Control-plane benchmark: what a person's dashboard reads cost as the database grows.

Usage::

    .venv/bin/python benchmarks/control_plane.py            # 1k, 10k, 100k runs (1-2 min)
    .venv/bin/python benchmarks/control_plane.py --quick    # CI smoke: 1k runs, a few seconds
    .venv/bin/python benchmarks/control_plane.py --json     # also write results/control-plane-
                                                            #   BACKEND-DATE.json
    .venv/bin/python benchmarks/control_plane.py --backend postgres [--quick] [--json]
    .venv/bin/python benchmarks/control_plane.py --explain  # also each read's SQL and plans
    .venv/bin/python benchmarks/control_plane.py --keep     # keep the database to explore it

For databases of 1,000, 10,000 and 100,000 runs (``--quick``: 1,000), median and p95 ms of
the reads behind ``tether serve`` and the roll-up, each called in turn (round-robin, after
warm-up) by an App opened with ``worker=False``, as ``tether serve`` opens it:

- ``app.overview()`` (counts by status, what needs a person, what live workers do)
- ``app.list_approvals()`` (the inbox, its default page of 100)
- ``app.list_runs(limit=50)``; with ``status="waiting"``; with ``tag="tenant:7"``; and a deep
  page, ``offset`` = half the runs (the page a person reaches paging back halfway)
- ``app.check_token(secret)`` (every API request and page does it first)
- ``GET /api/v1/overview`` and ``GET /`` (the web Overview page, HTML) through
  ``httpx.AsyncClient(transport=httpx.ASGITransport(create_app(app)))`` with a viewer's
  bearer token: the whole request (auth, the reads, JSON or Jinja2), without a socket.

The mix of runs (the same at every size): 87% succeeded orders (2 steps, a read tool, an
idempotent charge, an irreversible receipt: 5 journal entries, 3 effects), 5% failed (a step
raised), 2% refunds approved by a person and 0.5% rejected (both succeeded), 0.5%
cancelled, 2% waiting on a signal and 2% sleeping for a week, 1% awaiting approval of an
irreversible tool call (half with a 3-day deadline). At every size, whatever the size, 3 runs
are stopped on an irreversible call in doubt (``needs_attention``: a person resolves those,
so they do not pile up), and 3 live workers (fresh heartbeat) hold 4 running runs each.
Every run is tagged ``tenant:N`` (N uniform in 0..49, so ``tenant:7`` is ~2% of runs)
and ``prod`` (80%) or ``dev``. Finished runs were created over the last 30 days, live ones
(waiting, awaiting approval, in doubt, running) over the last 3 days.

How the database is seeded. Running 100,000 workflows one by one would take many minutes,
so only a sample is real: first, an App with a worker runs 3 runs of each kind above (1
with ``--quick``) to their state through the public API (``app.start``, ``app.approve``,
``app.cancel``) and makes the viewer token. The rest is **bulk-inserted** with plain
``sqlite3`` (``executemany``, one transaction per 2,000 runs) or psycopg (``COPY``): for each
new run, the rows of a sample run of its kind from ``runs``, ``journal`` and ``effects``
are copied with a new run id (16 hex digits, as ``app.start`` makes), its times shifted to
the new creation time (the run's, its entries', its effects' and their deadlines and
wake-up times), the effect's idempotency key derived again from the new run id, and new
tags (``runs.tags`` and ``run_tags``). The 3 workers and their 12 running runs (lease held
for a day, the first entries of a waiting sample run) are inserted the same way. Sizes
grow in place: 1k, measure, +9k, measure, +90k, measure. On PostgreSQL ``VACUUM ANALYZE``
runs after each growth, as autovacuum would after that many inserts; SQLite is left
without ``ANALYZE`` statistics, as the engine leaves it.

Figures are printed, never asserted (the benchmark only checks that each HTTP answer is a
200). The share of the machine's CPUs busy while measuring is printed (on PostgreSQL the
server's own work is part of it). Databases live under ``<repo>/.bench-tmp`` (SQLite,
``synchronous=full``) or, with ``--backend postgres``, in a database of their own on the
server at ``TETHER_BENCH_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``), created and dropped by the run.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import hashlib
import json
import logging
import math
import os
import platform
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tether import (
    App,
    ApprovalRejectedError,
    Context,
    Decision,
    Effect,
    OutcomeUnknown,
    RunStatus,
)
from tether.interfaces.http import create_app

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PG_SERVER = os.environ.get(
    "TETHER_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)

SIZES = (1_000, 10_000, 100_000)
DAY = 86_400.0
HISTORY_DAYS = 30  # finished runs were created over this many days
LIVE_DAYS = 3  # live runs (waiting, awaiting approval, in doubt) over this many
TENANTS = 50
PROD_SHARE = 0.8
WORKERS = 3
RUNNING_PER_WORKER = 4
CHUNK = 2_000  # runs per bulk-insert transaction
PAGE = 50

# Share of each kind of run; "ok" (a succeeded order) is the rest. Kinds in LIVE are
# not finished: they were created recently.
MIX = {
    "failed": 0.05,
    "approved": 0.02,
    "rejected": 0.005,
    "cancelled": 0.005,
    "signal": 0.02,
    "sleep": 0.02,
    "approval": 0.005,
    "approval_deadline": 0.005,
}
# Kinds of which there are this many runs at every size.
FIXED = {"in_doubt": 3}
KINDS = ("ok", *MIX, *FIXED)
LIVE = {"signal", "sleep", "approval", "approval_deadline", "in_doubt"}
# kind -> (workflow, extra arguments, the status the sample run ends in)
SAMPLE = {
    "ok": ("order", {}, RunStatus.SUCCEEDED),
    "failed": ("order", {"bad": True}, RunStatus.FAILED),
    "approved": ("refund", {}, RunStatus.SUCCEEDED),
    "rejected": ("refund", {}, RunStatus.SUCCEEDED),
    "cancelled": ("followup", {}, RunStatus.CANCELLED),
    "signal": ("followup", {}, RunStatus.WAITING),
    "sleep": ("reminder", {}, RunStatus.WAITING),
    "approval": ("refund", {}, RunStatus.WAITING),
    "approval_deadline": ("wire", {}, RunStatus.WAITING),
    "in_doubt": ("settle", {}, RunStatus.NEEDS_ATTENTION),
}

NOTE = "Customer asked for the parcel to be left with the neighbour at number 12. " * 2


# -- the workflows of the sample ----------------------------------------------------------
def seed_app(url: str) -> App:
    """The workflows whose real runs are the templates of the bulk-inserted ones."""
    app = App(url, poll_interval=0.05)

    @app.step
    async def load_order(order: int) -> dict[str, Any]:
        return {
            "order": order,
            "sku": f"SKU-{order % 97:04d}",
            "qty": 1 + order % 3,
            "customer": f"cust-{order % 1000:04d}",
            "note": NOTE,
        }

    @app.step
    async def price(item: dict[str, Any], bad: bool) -> int:
        if bad:
            raise ValueError(f"order {item['order']}: no price for {item['sku']} in EUR")
        return 1999 * int(item["qty"])

    @app.tool(effect=Effect.READ)
    async def lookup_customer(customer: str) -> dict[str, Any]:
        return {"customer": customer, "tier": "gold", "email": f"{customer}@example.com"}

    @app.tool(effect=Effect.IDEMPOTENT)
    async def charge(customer: str, cents: int, *, idempotency_key: str) -> str:
        return f"ch_{idempotency_key[:16]}"

    @app.tool(effect=Effect.IRREVERSIBLE)
    async def send_receipt(customer: str, cents: int) -> str:
        return f"receipt sent to {customer}"

    @app.tool(effect=Effect.IRREVERSIBLE, approval=Decision.APPROVE, blast_radius="money")
    async def issue_refund(customer: str, cents: int, *, idempotency_key: str) -> str:
        return f"re_{idempotency_key[:16]}"

    @app.tool(
        effect=Effect.IRREVERSIBLE,
        approval=Decision.APPROVE,
        blast_radius="money",
        approval_timeout=LIVE_DAYS * DAY,
        on_timeout="reject",
    )
    async def wire_transfer(customer: str, cents: int) -> str:
        return f"wired {cents} to {customer}"

    @app.tool(effect=Effect.IRREVERSIBLE, blast_radius="money")
    async def payout(customer: str, cents: int) -> str:
        raise OutcomeUnknown("the bank's API timed out after the request was sent")

    @app.workflow
    async def order(ctx: Context, order: int, bad: bool = False) -> str:
        item = await load_order(order)
        who = await lookup_customer(item["customer"])
        cents = await price(item, bad)
        receipt = await charge(who["customer"], cents)
        await send_receipt(who["customer"], cents)
        return receipt

    @app.workflow
    async def refund(ctx: Context, order: int) -> str:
        item = await load_order(order)
        try:
            return await issue_refund(item["customer"], 1999)
        except ApprovalRejectedError as exc:
            return f"no refund: {exc.message}"

    @app.workflow
    async def wire(ctx: Context, order: int) -> str:
        item = await load_order(order)
        return await wire_transfer(item["customer"], 250_000)

    @app.workflow
    async def followup(ctx: Context, order: int) -> Any:
        await load_order(order)
        return await ctx.wait_signal("customer_reply")

    @app.workflow
    async def reminder(ctx: Context, order: int) -> str:
        await load_order(order)
        await ctx.sleep(7 * DAY)
        return "reminded"

    @app.workflow
    async def settle(ctx: Context, order: int) -> str:
        item = await load_order(order)
        return await payout(item["customer"], 1999)

    return app


def tags_for(rng: random.Random) -> list[str]:
    return [f"tenant:{rng.randrange(TENANTS)}", "prod" if rng.random() < PROD_SHARE else "dev"]


async def wait_status(app: App, run_id: str, status: RunStatus, timeout: float = 60.0) -> None:
    give_up = time.monotonic() + timeout
    while (run := await app.get_run(run_id)).status is not status:
        if time.monotonic() > give_up:
            raise RuntimeError(f"sample run {run_id}: {run.status.value}, not {status.value}")
        await asyncio.sleep(0.02)


async def run_sample(url: str, per_kind: int, rng: random.Random) -> tuple[dict[str, Any], str]:
    """Real runs of every kind, driven to their state; their ids by kind, and a viewer's
    token secret."""
    app = seed_app(url)
    ids: dict[str, list[str]] = {kind: [] for kind in KINDS}
    # The in-doubt sample stops for a person, which the engine logs as a warning.
    logging.getLogger("tether").setLevel(logging.ERROR)
    async with app:
        for kind in KINDS:
            workflow, extra, _ = SAMPLE[kind]
            for _ in range(per_kind):
                run_id = os.urandom(8).hex()
                order = 1000 + len(ids[kind]) + 100 * KINDS.index(kind)
                await app.start(workflow, order, run_id=run_id, tags=tags_for(rng), **extra)
                ids[kind].append(run_id)
        for kind in KINDS:
            _, _, final = SAMPLE[kind]
            for run_id in ids[kind]:
                if kind in ("approved", "rejected", "cancelled"):
                    await wait_status(app, run_id, RunStatus.WAITING)
                    if kind == "cancelled":
                        await app.cancel(run_id, "the customer called back")
                    else:
                        await app.approve(
                            run_id,
                            approved=kind == "approved",
                            by="alice",
                            note="checked the order" if kind == "approved" else "duplicate",
                        )
                await wait_status(app, run_id, final)
        _, secret = await app.create_token("viewer", name="dashboard", by="bench")
    return ids, secret


# -- bulk insert ----------------------------------------------------------------------------
def idempotency_key(run_id: str, seq: int) -> str:
    """As the engine derives it (engine/_tools.py)."""
    return hashlib.sha256(f"tether:{run_id}:{seq}".encode()).hexdigest()[:32]


class Database:
    """One database (a SQLite file or a PostgreSQL database of its own) and a plain DB-API
    connection to it for reading the templates and bulk-inserting."""

    def __init__(self, backend: str, tmp: Path) -> None:
        self.backend = backend
        self.name = ""
        if backend == "sqlite":
            self.path = tmp / f"control-plane-{uuid.uuid4().hex[:8]}.db"
            self.url = f"sqlite:///{self.path}?synchronous=full"
        else:
            import psycopg

            self.name = f"tether_bench_{uuid.uuid4().hex[:12]}"
            with psycopg.connect(PG_SERVER, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{self.name}"')
            self.url = PG_SERVER.rsplit("/", 1)[0] + "/" + self.name

    @contextmanager
    def connect(self) -> Iterator[Any]:
        conn: Any
        if self.backend == "sqlite":
            conn = sqlite3.connect(self.path, isolation_level=None)
            conn.execute("PRAGMA busy_timeout = 10000")
        else:
            import psycopg

            conn = psycopg.connect(self.url, autocommit=True)
        try:
            yield conn
        finally:
            conn.close()

    @property
    def mark(self) -> str:
        return "?" if self.backend == "sqlite" else "%s"

    def select(self, conn: Any, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        cur = conn.execute(sql.replace("?", self.mark), params)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def insert(self, conn: Any, table: str, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        columns = list(rows[0])
        values = [tuple(row[c] for c in columns) for row in rows]
        if self.backend == "sqlite":
            marks = ", ".join("?" for _ in columns)
            conn.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", values)
            return
        with conn.cursor().copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for value in values:
                copy.write_row(value)

    @contextmanager
    def transaction(self, conn: Any) -> Iterator[None]:
        if self.backend == "sqlite":
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        else:
            with conn.transaction():
                yield

    def after_growth(self, conn: Any) -> None:
        if self.backend == "postgres":
            conn.execute("VACUUM ANALYZE")

    def size_bytes(self, conn: Any) -> int:
        if self.backend == "sqlite":
            wal = Path(f"{self.path}-wal")
            return self.path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
        return int(conn.execute("SELECT pg_database_size(current_database())").fetchone()[0])

    def drop(self) -> None:
        if not self.name:
            return
        import psycopg

        with psycopg.connect(PG_SERVER, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


class Template:
    """A sample run's rows: run, journal entries, effects."""

    def __init__(self, run: dict[str, Any], journal: list[dict[str, Any]], effects: list[Any]):
        self.run = run
        self.journal = journal
        self.effects = effects


def load_templates(db: Database, conn: Any, ids: dict[str, list[str]]) -> dict[str, list[Any]]:
    out: dict[str, list[Template]] = {}
    for kind, run_ids in ids.items():
        out[kind] = []
        for run_id in run_ids:
            (run,) = db.select(conn, "SELECT * FROM runs WHERE run_id = ?", (run_id,))
            journal = db.select(
                conn, "SELECT * FROM journal WHERE run_id = ? ORDER BY seq", (run_id,)
            )
            effects = db.select(
                conn, "SELECT * FROM effects WHERE run_id = ? ORDER BY seq", (run_id,)
            )
            out[kind].append(Template(run, journal, effects))
    return out


def _shift(value: Any, delta: float) -> Any:
    return None if value is None else value + delta


def _shift_json_number(text: Any, delta: float) -> Any:
    """A waiting entry's output that is a time (a sleep's wake-up, a deadline), shifted."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return text
    if isinstance(value, float | int) and not isinstance(value, bool) and value > 1e9:
        return json.dumps(value + delta)
    return text


def copy_run(
    template: Template, run_id: str, created: float, tags: list[str], rows: dict[str, list[Any]]
) -> None:
    """Append the rows of a copy of ``template`` (see the module docstring) to ``rows``."""
    delta = created - template.run["created_at"]
    run = dict(template.run)
    run.update(
        run_id=run_id,
        created_at=created,
        updated_at=run["updated_at"] + delta,
        wake_at=_shift(run["wake_at"], delta),
        lease_expires_at=_shift(run["lease_expires_at"], delta),
        tags=json.dumps(tags),
    )
    rows["runs"].append(run)
    for entry in template.journal:
        entry = dict(entry)
        entry.update(
            run_id=run_id,
            started_at=_shift(entry["started_at"], delta),
            finished_at=_shift(entry["finished_at"], delta),
        )
        if entry["status"] == "waiting":
            entry["output"] = _shift_json_number(entry["output"], delta)
        rows["journal"].append(entry)
    for effect in template.effects:
        effect = dict(effect)
        effect.update(
            run_id=run_id,
            idempotency_key=idempotency_key(run_id, effect["seq"]),
            created_at=effect["created_at"] + delta,
            deadline=_shift(effect["deadline"], delta),
        )
        rows["effects"].append(effect)
    rows["run_tags"] += [{"tag": tag, "run_id": run_id} for tag in tags]


def running_copy(
    template: Template, run_id: str, created: float, tags: list[str], worker_id: str, now: float
) -> Template:
    """A run a live worker is executing: the first entries of a sample run, leased."""
    run = dict(template.run)
    run.update(
        status="running",
        result=None,
        error=None,
        wake_at=None,
        lease_owner=worker_id,
        lease_expires_at=now + DAY,
        fence=max(1, int(run["fence"])),
        attempts=max(1, int(run["attempts"])),
    )
    journal = [e for e in template.journal if e["status"] == "completed"]
    out = Template(run, journal, [])
    rows: dict[str, list[Any]] = {"runs": [], "journal": [], "effects": [], "run_tags": []}
    copy_run(out, run_id, created, tags, rows)
    (run,) = rows["runs"]
    run["updated_at"] = now - 1.0
    run["lease_expires_at"] = now + DAY
    return Template(run, rows["journal"], [])


class Seeder:
    """Grows the database to a number of runs, with the mix of the module docstring."""

    def __init__(
        self, db: Database, templates: dict[str, list[Template]], rng: random.Random, now: float
    ) -> None:
        self.db = db
        self.templates = templates
        self.rng = rng
        self.now = now
        self.runs = sum(len(v) for v in templates.values())  # the sample, already there
        self.placed = {kind: len(v) for kind, v in templates.items()}

    def plan(self, target: int) -> list[str]:
        """The kinds of the runs to add so that ``target`` runs hold the mix."""
        todo: list[str] = []
        for kind, share in MIX.items():
            todo += [kind] * max(0, round(target * share) - self.placed[kind])
        for kind, count in FIXED.items():
            todo += [kind] * max(0, count - self.placed[kind])
        todo += ["ok"] * max(0, target - self.runs - len(todo))
        self.rng.shuffle(todo)
        return todo

    def created(self, kind: str) -> float:
        days = LIVE_DAYS if kind in LIVE else HISTORY_DAYS
        return self.now - 60.0 - self.rng.random() * days * DAY

    def live_workers(self, conn: Any, progress: Progress) -> None:
        """3 workers with a fresh heartbeat, each holding 4 running runs."""
        template = self.templates["signal"][0]
        workers: list[dict[str, Any]] = []
        rows: dict[str, list[Any]] = {"runs": [], "journal": [], "effects": [], "run_tags": []}
        for w in range(WORKERS):
            worker_id = f"bench-{w}-{os.urandom(4).hex()}"
            workers.append(
                {
                    "worker_id": worker_id,
                    "host": f"worker-host-{w}",
                    "boot_id": "bench",
                    "pid": 1000 + w,
                    "pid_start": "0",
                    "started_at": self.now - 3600.0,
                    "heartbeat_at": self.now,
                }
            )
            for _ in range(RUNNING_PER_WORKER):
                run_id = self.rng.randbytes(8).hex()
                created = self.now - self.rng.random() * 600.0
                tags = tags_for(self.rng)
                copy = running_copy(template, run_id, created, tags, worker_id, self.now)
                rows["runs"].append(copy.run)
                rows["journal"] += copy.journal
                rows["run_tags"] += [{"tag": t, "run_id": run_id} for t in tags]
        with self.db.transaction(conn):
            self.db.insert(conn, "workers", workers)
            for table, table_rows in rows.items():
                self.db.insert(conn, table, table_rows)
        self.runs += WORKERS * RUNNING_PER_WORKER
        progress.console.log(f"{WORKERS} live workers, {len(rows['runs'])} running runs")

    def grow(self, conn: Any, target: int, progress: Progress) -> None:
        todo = self.plan(target)
        task = progress.add_task(f"bulk insert to {target:,} runs", total=len(todo))
        for start in range(0, len(todo), CHUNK):
            rows: dict[str, list[Any]] = {"runs": [], "journal": [], "effects": [], "run_tags": []}
            for kind in todo[start : start + CHUNK]:
                template = self.rng.choice(self.templates[kind])
                run_id = self.rng.randbytes(8).hex()
                copy_run(template, run_id, self.created(kind), tags_for(self.rng), rows)
                self.placed[kind] += 1
            with self.db.transaction(conn):
                for table, table_rows in rows.items():
                    self.db.insert(conn, table, table_rows)
            self.runs += len(rows["runs"])
            progress.advance(task, len(rows["runs"]))
        self.db.after_growth(conn)


def refresh_heartbeats(db: Database, conn: Any) -> None:
    now = time.time()
    conn.execute(f"UPDATE workers SET heartbeat_at = {db.mark}", (now,))


# -- measurement ----------------------------------------------------------------------------
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
    return t.user + t.system


def server_cpu_s() -> float:
    """CPU seconds of this machine's PostgreSQL processes (with the exited children the
    postmaster reaped: parallel workers), or 0 if there are none."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name, _, rest = text.rpartition(")")
        if not name.endswith("(postgres"):
            continue
        fields = rest.split()  # from the state, the stat file's 3rd field
        total += sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
    return total / os.sysconf("SC_CLK_TCK")


def p95(values: list[float]) -> float:
    """Nearest-rank 95th percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


async def measure(
    url: str, secret: str, runs: int, reps: int, warmup: int, explain: bool, db: Database
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Median and p95 ms of each read, called round-robin ``reps`` times after warm-up."""
    app = App(url)
    await app.open(worker=False)
    server = create_app(app)
    deep = (runs // 2) // PAGE * PAGE
    headers = {"Authorization": f"Bearer {secret}", "Accept": "text/html"}
    transport = httpx.ASGITransport(app=server)
    facts: dict[str, Any] = {"deep_offset": deep}
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver", headers=headers
        ) as client:

            async def get(path: str, kind: str) -> None:
                response = await client.get(path)
                if response.status_code != 200 or kind not in response.headers["content-type"]:
                    raise RuntimeError(f"GET {path}: {response.status_code} {response.text[:300]}")

            ops: dict[str, Callable[[], Awaitable[Any]]] = {
                "overview()": lambda: app.overview(),
                "list_approvals()": lambda: app.list_approvals(),
                "list_runs(limit=50)": lambda: app.list_runs(limit=PAGE),
                'list_runs(status="waiting", limit=50)': lambda: app.list_runs(
                    status="waiting", limit=PAGE
                ),
                'list_runs(tag="tenant:7", limit=50)': lambda: app.list_runs(
                    tag="tenant:7", limit=PAGE
                ),
                "list_runs(limit=50, offset=N/2)": lambda: app.list_runs(limit=PAGE, offset=deep),
                "check_token(secret)": lambda: app.check_token(secret),
                "GET /api/v1/overview": lambda: get("/api/v1/overview", "application/json"),
                "GET / (HTML)": lambda: get("/", "text/html"),
            }
            overview = await app.overview()
            facts["counts"] = dict(sorted(overview.counts.items()))
            facts["attention_items"] = len(overview.attention)
            facts["workers"] = len(overview.workers)
            facts["running_shown"] = sum(len(w.runs) for w in overview.workers)
            facts["approvals_page"] = len(await app.list_approvals())
            facts["tenant_7_runs"] = len(await app.list_runs(tag="tenant:7", limit=1_000_000))
            if await app.check_token(secret) is None:
                raise RuntimeError("the viewer token is not accepted")
            samples: dict[str, list[float]] = {name: [] for name in ops}
            wall, busy, own, server = (
                time.perf_counter(),
                cpu_busy_s(),
                own_cpu_s(),
                server_cpu_s(),
            )
            for rep in range(warmup + reps):
                for name, op in ops.items():
                    t0 = time.perf_counter()
                    await op()
                    ms = (time.perf_counter() - t0) * 1000
                    if rep >= warmup:
                        samples[name].append(ms)
            capacity = (time.perf_counter() - wall) * (os.cpu_count() or 1) / 100
            facts["machine_busy_pct"] = (cpu_busy_s() - busy) / capacity
            facts["own_cpu_pct"] = (own_cpu_s() - own) / capacity
            facts["server_cpu_pct"] = (server_cpu_s() - server) / capacity
            if explain:
                facts["plans"] = await query_plans(app, ops, db)
    finally:
        await app.close()
    figures = {
        name: {
            "median_ms": statistics.median(values),
            "p95_ms": p95(values),
            "samples_ms": [round(v, 4) for v in values],
        }
        for name, values in samples.items()
    }
    return figures, facts


async def query_plans(
    app: App, ops: dict[str, Callable[[], Awaitable[Any]]], db: Database
) -> dict[str, list[dict[str, Any]]]:
    """The statements each store read sends (recorded by wrapping the store's ``_read``)
    and their plans: SQLite's EXPLAIN QUERY PLAN, PostgreSQL's EXPLAIN (ANALYZE, BUFFERS)."""
    store: Any = app.store
    original = store._read
    seen: list[tuple[str, tuple[Any, ...]]] = []

    if db.backend == "sqlite":

        def recording(sql: str, params: tuple[Any, ...] = ()) -> Any:
            seen.append((sql, params))
            return original(sql, params)

    else:

        async def recording(sql: str, params: tuple[Any, ...] = ()) -> Any:  # type: ignore[misc]
            seen.append((sql, params))
            return await original(sql, params)

    plans: dict[str, list[dict[str, Any]]] = {}
    store._read = recording
    try:
        for name, op in ops.items():
            if name.startswith("GET"):
                continue
            seen.clear()
            await op()
            statements: dict[str, dict[str, Any]] = {}
            for sql, params in seen:
                text = " ".join(sql.split())
                if text in statements:
                    statements[text]["calls"] += 1
                    continue
                ms, plan = explain_one(db, sql, params)
                statements[text] = {"sql": text, "calls": 1, "ms": ms, "plan": plan}
            plans[name] = list(statements.values())
    finally:
        store._read = original
    return plans


def explain_one(db: Database, sql: str, params: tuple[Any, ...]) -> tuple[float, list[str]]:
    """The statement's median ms over 5 runs on a connection of its own, and its plan."""
    with db.connect() as conn:
        query: Any = sql if db.backend == "sqlite" else sql.encode()
        times = []
        for _ in range(6):
            t0 = time.perf_counter()
            conn.execute(query, params).fetchall()
            times.append((time.perf_counter() - t0) * 1000)
        ms = statistics.median(times[1:])
        if db.backend == "sqlite":
            rows = conn.execute(f"EXPLAIN QUERY PLAN {sql}", params).fetchall()
            return ms, [f"{row[0]}|{row[1]}: {row[3]}" for row in rows]
        rows = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}".encode(), params).fetchall()
        return ms, [row[0] for row in rows]


# -- report ---------------------------------------------------------------------------------
def print_report(results: dict[str, Any], args: argparse.Namespace) -> None:
    sizes = list(results["sizes"])
    machine = results["machine"]
    print(
        f"control plane benchmark: {args.backend}, python {machine['python']}, "
        f"{machine['cpus']} CPUs, reps {results['reps']} (after {results['warmup']} warm-up)"
    )
    for size in sizes:
        row = results["sizes"][size]
        facts = row["facts"]
        counts = ", ".join(f"{k} {v:,}" for k, v in facts["counts"].items())
        print(
            f"\n{int(size):,} runs ({row['db_bytes'] / 1e6:.1f} MB, seeded in "
            f"{row['seed_s']:.1f} s): {counts}"
        )
        print(
            f"   attention items {facts['attention_items']}, workers {facts['workers']} "
            f"({facts['running_shown']} running runs), approvals page {facts['approvals_page']}, "
            f"tenant:7 runs {facts['tenant_7_runs']:,}, deep offset {facts['deep_offset']:,}"
        )
        server = ""
        if args.backend == "postgres":
            server = f", PostgreSQL processes {facts['server_cpu_pct']:.0f}%"
        print(
            f"   CPUs busy while measuring: {facts['machine_busy_pct']:.0f}% of "
            f"{machine['cpus']} (this process {facts['own_cpu_pct']:.0f}%{server})"
        )
    print("\nms per call, median / p95")
    names = list(results["sizes"][sizes[0]]["ops"])
    width = max(len(n) for n in names) + 2
    header = "".join(f"{int(s):>20,}" for s in sizes)
    print(f"   {'read':<{width}}{header}")
    for name in names:
        cells = ""
        for size in sizes:
            op = results["sizes"][size]["ops"][name]
            cells += f"{op['median_ms']:>11.2f} /{op['p95_ms']:>7.2f}"
        print(f"   {name:<{width}}{cells}")
    if len(sizes) > 1:
        first, last = sizes[0], sizes[-1]
        growth = int(last) / int(first)
        print(f"\nmedian at {int(last):,} runs / median at {int(first):,} runs (x{growth:g} runs)")
        for name in names:
            ratio = (
                results["sizes"][last]["ops"][name]["median_ms"]
                / results["sizes"][first]["ops"][name]["median_ms"]
            )
            print(f"   {name:<{width}}{ratio:>8.1f}x")
    for size in sizes:
        plans = results["sizes"][size]["facts"].get("plans")
        if not plans:
            continue
        print(f"\nquery plans at {int(size):,} runs")
        for name, statements in plans.items():
            print(f"  {name}")
            for statement in statements:
                calls = f" (x{statement['calls']})" if statement["calls"] > 1 else ""
                print(f"    {statement['ms']:.2f} ms{calls}: {statement['sql'][:400]}")
                for line in statement["plan"]:
                    print(f"        {line}")


def machine_info() -> dict[str, Any]:
    cpu = "?"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(),
    }


def server_version(db: Database) -> str | None:
    if db.backend != "postgres":
        return None
    with db.connect() as conn:
        return str(conn.execute("SHOW server_version").fetchone()[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 runs only, for CI")
    parser.add_argument("--json", nargs="?", const="", default=None, metavar="FILE")
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument(
        "--explain", action="store_true", help="print each read's statements and their plans"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the database at the end (its URL is printed)"
    )
    args = parser.parse_args()
    sizes = SIZES[:1] if args.quick else SIZES
    reps, warmup = (10, 2) if args.quick else (50, 5)
    (ROOT / ".bench-tmp").mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=ROOT / ".bench-tmp"))
    console = Console(stderr=True)
    results: dict[str, Any] = {
        "machine": machine_info(),
        "backend": args.backend,
        "quick": args.quick,
        "reps": reps,
        "warmup": warmup,
        "mix": {"ok": round(1 - sum(MIX.values()), 4), **MIX, "fixed_counts": FIXED},
        "sizes": {},
    }
    db = Database(args.backend, tmp)
    try:
        results["machine"]["postgres"] = server_version(db)
        rng = random.Random(6)
        t0 = time.perf_counter()
        ids, secret = asyncio.run(run_sample(db.url, 1 if args.quick else 3, rng))
        sample_s = time.perf_counter() - t0
        console.log(f"sample: {sum(map(len, ids.values()))} real runs in {sample_s:.1f} s")
        with db.connect() as conn:
            templates = load_templates(db, conn, ids)
        seeder = Seeder(db, templates, rng, time.time())
        for size in sizes:
            t0 = time.perf_counter()
            progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
            )
            with db.connect() as conn, progress:
                if size == sizes[0]:
                    seeder.live_workers(conn, progress)
                seeder.grow(conn, size, progress)
                refresh_heartbeats(db, conn)
                db_bytes = db.size_bytes(conn)
            seed_s = time.perf_counter() - t0 + (sample_s if size == sizes[0] else 0.0)
            explain = args.explain and size == sizes[-1]
            console.log(f"measuring at {seeder.runs:,} runs")
            ops, facts = asyncio.run(measure(db.url, secret, size, reps, warmup, explain, db))
            results["sizes"][str(size)] = {
                "runs": seeder.runs,
                "db_bytes": db_bytes,
                "seed_s": seed_s,
                "ops": ops,
                "facts": facts,
            }
    finally:
        if args.keep:
            print(f"kept the database: {db.url}", file=sys.stderr)
        else:
            db.drop()
        if not (args.keep and args.backend == "sqlite"):
            shutil.rmtree(tmp, ignore_errors=True)

    print_report(results, args)
    if args.json is not None:
        out = (
            Path(args.json)
            if args.json
            else RESULTS / f"control-plane-{args.backend}-{_dt.date.today().isoformat()}.json"
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))
        print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
