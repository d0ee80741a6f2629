"""Workflows, a child-process entry point and a harness for the real-process failure tests.

The tests run this file as a script in a child process (``python crashapp.py --db URL ...``),
kill it with real signals, and start another process on the same database (a SQLite file or
a PostgreSQL database). Every step
body appends one line to a side-effect file (``O_APPEND``, then ``fsync``) before it returns,
so a test counts real executions across processes, including processes that were killed.

Fault injection lives here, in the test helper, never in ``src``: a step can hang (and say
so through a ready file), a process can SIGKILL itself inside a step body or just before
the commit that would seal a step's entry, and the store's ``append_entry`` is wrapped to
report writes rejected by fencing (``LeaseLostError``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tether import (
    App,
    Context,
    Done,
    Effect,
    LeaseLostError,
    NotDone,
    Run,
    RunFailedError,
    RunNotFoundError,
)
from tether.agent import Agent, ModelRequest, ScriptedModel, ToolCall
from tether.storage import _procs as procs
from tether.storage._postgres import PostgresStore
from tether.storage._sqlite import SQLiteStore

HERE = Path(__file__).resolve()

# Where a kill happens inside one step: in its body before the side effect, in its body
# after the side effect, or after the body returned but before the commit of its entry.
PHASES = ("before", "after", "commit")
# A tool call has one more: before the commit of its intent.
TOOL_PHASES = ("intent", "before", "after", "commit")
TOOL_KINDS = ("read", "idempotent", "irreversible", "reconciled")

PROP_LABELS = tuple(f"p{i}" for i in range(1, 14))


# -- fault injection (child side) --------------------------------------------------------
@dataclass
class Faults:
    effects: Path | None = None
    hang: str | None = None  # the label of the step that hangs after its side effect
    hang_seconds: float = 3600.0
    hang_blocking: bool = False  # block the event loop (time.sleep) instead of awaiting
    ready: Path | None = None  # created when the hanging step starts hanging
    kill: tuple[str, str] | None = None  # (label, phase): SIGKILL this process there
    armed: bool = False  # kill at the next commit


FAULTS = Faults()


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)  # never reached: SIGKILL cannot be caught


def _maybe_kill(label: str, phase: str) -> None:
    if FAULTS.kill == (label, phase):
        _die()


def record_effect(label: str, key: str | None = None) -> None:
    """The step's side effect: one durable line per real execution (with the idempotency
    key a tool was given)."""
    if FAULTS.effects is None:
        return
    line = json.dumps({"step": label, "pid": os.getpid(), "t": time.time(), "key": key}) + "\n"
    fd = os.open(FAULTS.effects, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def _enter(label: str, key: str | None = None) -> bool:
    """Run the side effect with its kill points; True if this step should hang now."""
    _maybe_kill(label, "before")
    record_effect(label, key)
    _maybe_kill(label, "after")
    if FAULTS.hang != label:
        return False
    if FAULTS.ready is not None:
        FAULTS.ready.touch()
    return True


async def _enter_async(label: str, key: str | None = None) -> None:
    if _enter(label, key):
        if FAULTS.hang_blocking:
            time.sleep(FAULTS.hang_seconds)  # noqa: ASYNC251 -- freezes the loop on purpose
        else:
            await asyncio.sleep(FAULTS.hang_seconds)


def mix(label: str, x: int) -> int:
    """A deterministic step result, so an interrupted run must end like an uninterrupted."""
    return (x * 1_000_003 + sum(map(ord, label))) % 2_147_483_647


def _install_store_hooks(emit: Callable[[dict[str, Any]], None]) -> None:
    for store_class in (SQLiteStore, PostgresStore):
        _hook_append(store_class, emit)
    original_flush = SQLiteStore._flush

    def flush(self: SQLiteStore) -> None:
        if not FAULTS.armed or self._conn is None:
            original_flush(self)
            return
        real = self._conn
        self._conn = _KillBeforeCommit(real)  # type: ignore[assignment]
        try:
            original_flush(self)
        finally:
            self._conn = real

    SQLiteStore._flush = flush  # type: ignore[method-assign]

    original_pg_flush = PostgresStore._flush

    async def pg_flush(self: PostgresStore, batch: list[Any]) -> None:
        if not FAULTS.armed:
            await original_pg_flush(self, batch)
            return
        # Write the batch inside a transaction, then die before its COMMIT: the server
        # rolls the transaction back when the connection drops.
        async with self.pool.connection() as conn:
            await conn.execute("BEGIN")
            for op in batch:
                await op.run(conn)
            _die()

    PostgresStore._flush = pg_flush  # type: ignore[method-assign]


def _hook_append(store_class: Any, emit: Callable[[dict[str, Any]], None]) -> None:
    original_append = store_class.append_entry

    async def append_entry(self: Any, fence: Any, entry: Any, **extra: Any) -> None:
        if FAULTS.kill is not None and FAULTS.kill[1] in ("commit", "intent"):
            # "commit": the write that would seal a step's or tool's entry; "intent": the
            # write of a tool call's intent. The next COMMIT would make it durable: die first.
            if entry.kind == "step":
                label = json.loads(entry.input_json)["args"][0]
            elif entry.kind == "tool":
                label = json.loads(entry.input_json)["label"]
            else:
                label = None
            phase = "intent" if entry.status == "intent" else "commit"
            if label == FAULTS.kill[0] and phase == FAULTS.kill[1]:
                FAULTS.armed = entry.status in ("intent", "completed")
        try:
            await original_append(self, fence, entry, **extra)
        except LeaseLostError:
            emit({"event": "lease_lost", "run_id": fence.run_id, "seq": entry.seq})
            raise

    store_class.append_entry = append_entry


class _KillBeforeCommit:
    """A connection whose COMMIT kills the process: the batch was written, not committed."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, sql: str, *params: Any) -> Any:
        if sql == "COMMIT":
            _die()
        return self._conn.execute(sql, *params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


# -- the application ---------------------------------------------------------------------
def build_app(db_url: str, *, lease_seconds: float = 30.0, **options: Any) -> App:
    app = App(db_url, lease_seconds=lease_seconds, **options)

    @app.step
    async def work(label: str, x: int) -> int:
        await _enter_async(label)
        return mix(label, x)

    @app.step
    def work_sync(label: str, x: int) -> int:
        # A sync body runs on the thread pool; a kill from there ends the whole process.
        if _enter(label):
            time.sleep(FAULTS.hang_seconds)
        return mix(label, x)

    @app.step
    async def whoami(label: str) -> int:
        await _enter_async(label)
        return os.getpid()

    @app.step
    async def echo(label: str, text: str) -> str:
        await _enter_async(label)
        return text

    @app.step
    async def clock(label: str) -> float:
        await _enter_async(label)
        return time.time()

    @app.step
    async def unit(label: str, delay: float) -> str:
        await _enter_async(label)
        await asyncio.sleep(delay)
        return label

    # Tools: the side effect is a line with the idempotency key the tool was given.
    @app.tool(effect=Effect.READ)
    async def fetch(label: str, x: int, *, idempotency_key: str) -> str:
        await _enter_async(label, idempotency_key)
        return f"{label}:{x}"

    @app.tool(effect=Effect.IDEMPOTENT)
    async def upsert(label: str, x: int, *, idempotency_key: str) -> str:
        await _enter_async(label, idempotency_key)
        return f"{label}:{x}"

    @app.tool(effect=Effect.IRREVERSIBLE)
    async def pay(label: str, x: int, *, idempotency_key: str) -> str:
        await _enter_async(label, idempotency_key)
        return f"{label}:{x}"

    def find_payment(label: str, x: int, *, idempotency_key: str) -> Done | NotDone:
        """Reconcile: look for the payment's line (its key) in the side-effect file."""
        keys = {e.get("key") for e in read_effects(FAULTS.effects)} if FAULTS.effects else set()
        return Done(f"{label}:{x}") if idempotency_key in keys else NotDone()

    @app.tool(effect=Effect.IRREVERSIBLE, reconcile=find_payment)
    async def pay_checked(label: str, x: int, *, idempotency_key: str) -> str:
        await _enter_async(label, idempotency_key)
        return f"{label}:{x}"

    @app.tool(effect=Effect.IRREVERSIBLE, approval="approve")
    async def refund(label: str, x: int, *, idempotency_key: str) -> str:
        await _enter_async(label, idempotency_key)
        return f"{label}:{x}"

    tools = {
        "read": fetch,
        "idempotent": upsert,
        "irreversible": pay,
        "reconciled": pay_checked,
        "approved": refund,
    }

    def model_turn(answer: Any) -> Any:
        def turn(request: ModelRequest) -> Any:
            record_effect("model")  # one line per real model call, across processes
            return answer

        return turn

    # The model asks for a payment, then answers; the kill lands between the two.
    agent: Agent[str] = Agent(
        ScriptedModel(
            [
                model_turn(ToolCall(id="c1", name="pay", arguments={"label": "t-agent", "x": 1})),
                model_turn("paid"),
            ]
        ),
        [pay],
    )

    @app.workflow
    async def agentic(ctx: Context) -> dict[str, Any]:
        result = await agent.run(ctx, "pay it")
        return {"output": result.output, "turns": result.turns}

    @app.workflow
    async def effectful(ctx: Context, kind: str) -> dict[str, Any]:
        """A step, one tool call of the given kind at seq 2 (labelled t-KIND), a step."""
        a = await work("e1", 1)
        out = await tools[kind](f"t-{kind}", a)
        b = await work("e2", a)
        return {"tool": out, "total": b}

    @app.workflow
    async def fleet(ctx: Context, steps: int, delay: float) -> list[str]:
        """Many of these run side by side in the multi-worker tests: each step's side
        effect is labelled run_id/i, so a repeated execution shows up by name."""
        return [await unit(f"{ctx.run_id}/{i}", delay) for i in range(1, steps + 1)]

    @app.workflow
    async def linear(ctx: Context, n: int) -> dict[str, Any]:
        total = 0
        for i in range(1, n + 1):
            total = await work(f"step{i}", total)
        return {"total": total}

    @app.workflow
    async def fenced(ctx: Context) -> dict[str, Any]:
        a = await work("f1", 1)
        holder = await whoami("f2")
        b = await work("f3", a)
        return {"total": b, "f2_pid": holder}

    @app.workflow
    async def sleeper(ctx: Context, seconds: float) -> dict[str, Any]:
        started = (await ctx.now()).timestamp()
        await work("before", 0)
        await ctx.sleep(seconds)
        woke = await clock("after")
        return {"t0": started, "woke": woke}

    @app.workflow
    async def signaled(ctx: Context, k: int) -> int:
        await work("pre", k)
        value = await ctx.wait_signal("go")
        return k + int(value)

    @app.workflow
    async def prop(ctx: Context, seed: int) -> dict[str, Any]:
        a = await work("p1", seed)
        tag = str(await ctx.uuid())
        b, c = await asyncio.gather(work("p2", a), work_sync("p3", a))
        d = await work("p4", b ^ c)
        echoed = await echo("p5", tag)
        e, f, g = await asyncio.gather(work("p6", d), work("p7", d + 1), work("p8", d + 2))
        h = await work("p9", (e + f + g) % 2_147_483_647)

        # Branches of two calls each: the sync first call (thread pool) finishes after
        # the async one, so the branches' second calls take seqs out of branch order, and
        # replay must hand results back in that same (delivery) order.
        async def branch(first: str, second: str, x: int, sync: bool) -> int:
            y = await (work_sync(first, x) if sync else work(first, x))
            return await work(second, y)

        i, j = await asyncio.gather(branch("p10", "p11", h, True), branch("p12", "p13", h, False))
        # A uuid that were not recorded would differ after a crash from the one the
        # (already committed) echo step returned.
        return {"value": h, "branches": [i, j], "uuid_consistent": echoed == tag}

    return app


def expected_linear(n: int) -> int:
    total = 0
    for i in range(1, n + 1):
        total = mix(f"step{i}", total)
    return total


# -- child entry point -------------------------------------------------------------------
def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--db", required=True)
    p.add_argument("--lease", type=float, default=30.0)
    p.add_argument("--events", type=Path, required=True)
    p.add_argument("--effects", type=Path)
    p.add_argument("--start", nargs=3, action="append", default=[], metavar=("WF", "ID", "JSON"))
    p.add_argument("--wait", action="append", default=[], metavar="RUN_ID")
    p.add_argument("--serve", action="store_true", help="run until SIGTERM")
    p.add_argument("--at", type=float, help="open the App at this epoch time")
    p.add_argument("--hang")
    p.add_argument("--hang-seconds", type=float, default=3600.0)
    p.add_argument("--hang-blocking", action="store_true")
    p.add_argument("--ready", type=Path)
    p.add_argument("--kill", help="LABEL:PHASE")
    p.add_argument("--host", help="present this worker as running on another machine")
    p.add_argument("--concurrency", type=int, default=100)
    return p.parse_args(argv)


async def _child(args: argparse.Namespace) -> None:
    fd = os.open(args.events, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def emit(event: dict[str, Any]) -> None:
        os.write(fd, (json.dumps(event | {"pid": os.getpid()}) + "\n").encode())

    FAULTS.effects = args.effects
    FAULTS.hang = args.hang
    FAULTS.hang_seconds = args.hang_seconds
    FAULTS.hang_blocking = args.hang_blocking
    FAULTS.ready = args.ready
    if args.kill:
        label, phase = args.kill.split(":")
        FAULTS.kill = (label, phase)
    _install_store_hooks(emit)
    if args.host:
        # Another machine: this worker cannot see the others' processes, so it can take
        # their runs over only when their leases expire.
        procs.host = lambda: args.host

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    app = build_app(args.db, lease_seconds=args.lease, max_concurrency=args.concurrency)
    emit({"event": "opening", "t": time.time()})
    async with app:
        assert app.worker is not None
        emit({"event": "opened", "t": time.time(), "worker_id": app.worker.worker_id})
        for workflow, run_id, args_json in args.start:
            await app.start(workflow, *json.loads(args_json), run_id=run_id)
            emit({"event": "started", "run_id": run_id})
        for run_id in args.wait:
            try:
                result = await app.handle(run_id).result(timeout=120)
            except RunFailedError as exc:  # failed, cancelled or stopped for a person
                emit({"event": "result", "run_id": run_id, "error": exc.error, "t": time.time()})
                continue
            emit({"event": "result", "run_id": run_id, "result": result, "t": time.time()})
        if args.serve:
            await stop.wait()
            emit({"event": "stopping", "t": time.time()})
    emit({"event": "closed", "t": time.time()})
    os.close(fd)


def main(argv: list[str]) -> None:
    args = _parse(argv)
    if args.at is not None:  # several processes open the database at one instant
        while time.time() < args.at:
            time.sleep(0.001)
    asyncio.run(_child(args))


# -- parent side -------------------------------------------------------------------------
@dataclass
class Child:
    """One child process running this file; its output goes to files (no pipe to drain)."""

    proc: subprocess.Popen[bytes]
    events: Path
    stderr: Path
    _files: list[Any] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def read_events(self) -> list[dict[str, Any]]:
        if not self.events.exists():
            return []
        lines = self.events.read_text().splitlines()
        return [e for e in map(json.loads, lines) if e.get("pid") == self.pid]

    def event(self, name: str) -> dict[str, Any]:
        found = [e for e in self.read_events() if e["event"] == name]
        assert found, f"child {self.pid} emitted no {name!r} event\n{self.describe()}"
        return found[-1]

    def describe(self) -> str:
        err = self.stderr.read_text()[-4000:] if self.stderr.exists() else ""
        return f"returncode={self.proc.returncode}\nstderr:\n{err}"

    def wait(self, timeout: float = 60.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"child {self.pid} did not exit in {timeout} s") from None

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL and reap: a dead pid (not a zombie) is what a new worker checks."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)
            self.proc.kill()
        self.proc.wait()
        self.close()

    def close(self) -> None:
        for f in self._files:
            f.close()
        self._files.clear()


def spawn(workdir: Path, db_url: str, *args: str, name: str = "child") -> Child:
    events = workdir / "events.jsonl"
    stderr = workdir / f"{name}-{time.monotonic_ns()}.stderr"
    out = open(stderr, "wb")  # noqa: SIM115 -- closed by Child.close
    proc = subprocess.Popen(
        [sys.executable, str(HERE), "--db", db_url, "--events", str(events), *args],
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT,
        cwd=workdir,
    )
    return Child(proc, events, stderr, [out])


@contextlib.contextmanager
def children() -> Iterator[list[Child]]:
    """Collect spawned children; whatever happens, none outlives the test."""
    spawned: list[Child] = []
    try:
        yield spawned
    finally:
        for child in spawned:
            child.kill()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, *watch: Child) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        for child in watch:
            if child.proc.poll() is not None:
                raise AssertionError(
                    f"child {child.pid} exited while waiting for {what}\n{child.describe()}"
                )
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def read_effects(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def count_effects(path: Path, pid: int | None = None) -> Counter[str]:
    return Counter(e["step"] for e in read_effects(path) if pid is None or e["pid"] == pid)


@dataclass
class Snapshot:
    run: Run | None
    steps: dict[str, Any]  # label -> output of each completed step entry
    entries: list[Any]


def snapshot(db_url: str, run_id: str) -> Snapshot:
    """Read a run and its journal through the App API (no worker), from this process."""
    return snapshots(db_url, [run_id])[run_id]


def snapshots(db_url: str, run_ids: list[str]) -> dict[str, Snapshot]:
    """``snapshot`` of many runs through one App, so that reading them all takes one open."""

    async def read() -> dict[str, Snapshot]:
        app = App(db_url)
        await app.open(worker=False, create=False)
        found: dict[str, Snapshot] = {}
        try:
            for run_id in run_ids:
                try:
                    run: Run | None = await app.get_run(run_id)
                    entries = await app.get_journal(run_id)
                except RunNotFoundError:
                    run, entries = None, []
                steps = {
                    e.input["args"][0]: e.output
                    for e in entries
                    if e.kind == "step" and e.status == "completed"
                }
                found[run_id] = Snapshot(run, steps, entries)
        finally:
            await app.close()
        return found

    return asyncio.run(read())


def start_runs(db_url: str, workflow: str, run_ids: list[str], *args: Any) -> None:
    """Start many runs of one workflow (same arguments) from this process, without a
    worker: whichever worker processes are running pick them up."""

    async def start() -> None:
        app = build_app(db_url)
        await app.open(worker=False, create=False)
        try:
            for i in range(0, len(run_ids), 100):  # concurrent starts share commits
                chunk = run_ids[i : i + 100]
                await asyncio.gather(*(app.start(workflow, *args, run_id=r) for r in chunk))
        finally:
            await app.close()

    asyncio.run(start())


def list_runs(db_url: str) -> list[Run]:
    async def read() -> list[Run]:
        app = App(db_url)
        await app.open(worker=False, create=False)
        try:
            return await app.list_runs(limit=100_000)
        finally:
            await app.close()

    return asyncio.run(read())


def create_database(db_url: str) -> None:
    async def create() -> None:
        app = App(db_url)
        await app.open(worker=False)
        await app.close()

    asyncio.run(create())


if __name__ == "__main__":
    main(sys.argv[1:])
