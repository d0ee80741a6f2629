"""``tether demo``: a workflow survives a SIGKILL of the process running it.

1. A run of ``process_order`` starts: five steps of ~0.3 s each and a durable sleep.
2. A worker *process* executes it. Once three steps are in the journal, the demo kills that
   process with SIGKILL: no cleanup, no hand-back, exactly like a crash or an OOM kill.
3. A new worker process starts, takes over the dead worker's run at once (its lease names a
   process on this host that no longer exists), replays the completed steps from the
   journal without executing them, and executes the rest.
4. Every step body appends a line to a side-effect log; counting the lines proves that no
   completed step ran twice.

``make demo`` runs it against a fresh ``demo.db``. The worker processes are
``python -m tether.demo --worker DATABASE_URL SIDE_EFFECT_LOG``.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel
from rich import box
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ._records import EntryStatus, JournalEntry, RunStatus
from .engine import App, Context
from .interfaces._render import local_time, preview, run_report

__all__ = ["Order", "build_app", "run"]

STEP_SECONDS = 0.3  # long enough to watch, and to kill the worker in the middle of a step
PICKUP_WAIT = 1.0  # the durable sleep
KILL_AFTER = 3  # completed steps before the SIGKILL
PHASE_TIMEOUT = 30.0
POLL = 0.02
STEPS = ["check_inventory", "reserve_stock", "charge_card", "write_invoice", "send_confirmation"]


class Order(BaseModel):
    order_id: str
    sku: str
    quantity: int
    amount_cents: int
    email: str


def build_app(database_url: str, effects: Path) -> App:
    """The demo's App. Each step appends ``<pid> start|done <step>`` lines to ``effects``:
    the side effects that must not happen twice."""
    # A short lease only bounds the worst case; a dead local worker is taken over at once.
    app = App(database_url, lease_seconds=5.0, shutdown_grace=5.0)

    def work(step: str) -> None:
        _append(effects, f"{os.getpid()} start {step}\n")
        time.sleep(STEP_SECONDS)  # the work: sync step bodies run off the event loop
        _append(effects, f"{os.getpid()} done {step}\n")

    @app.step
    def check_inventory(sku: str, quantity: int) -> dict[str, Any]:
        work("check_inventory")
        return {"sku": sku, "available": 17, "requested": quantity}

    @app.step
    def reserve_stock(sku: str, quantity: int) -> str:
        work("reserve_stock")
        return f"rsv-{sku}-{quantity}"

    @app.step
    def charge_card(order_id: str, amount_cents: int) -> str:
        work("charge_card")
        return f"ch_{order_id}_{amount_cents}"

    @app.step
    def write_invoice(order_id: str, charge_id: str) -> str:
        work("write_invoice")
        return f"INV-{order_id.upper()}"

    @app.step
    def send_confirmation(email: str, invoice: str) -> str:
        work("send_confirmation")
        return f"mailed {invoice} to {email}"

    @app.workflow
    async def process_order(ctx: Context, order: Order) -> dict[str, str]:
        await check_inventory(order.sku, order.quantity)
        reservation = await reserve_stock(order.sku, order.quantity)
        charge = await charge_card(order.order_id, order.amount_cents)
        invoice = await write_invoice(order.order_id, charge)
        await ctx.sleep(PICKUP_WAIT)  # wait for the courier's pickup window, durably
        receipt = await send_confirmation(order.email, invoice)
        return {"reservation": reservation, "charge": charge, "invoice": invoice, "mail": receipt}

    return app


def _append(path: Path, line: str) -> None:
    # One write per line, appended: a SIGKILL cannot leave half of it behind in a buffer.
    with path.open("a", encoding="utf-8") as f:
        f.write(line)


# -- the worker processes -----------------------------------------------------------------
def _worker_main(database_url: str, effects: str) -> None:
    app = build_app(database_url, Path(effects))

    async def serve() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        async with app:
            await stop.wait()

    asyncio.run(serve())


# -- the narrated demo --------------------------------------------------------------------
class DemoFailed(Exception):
    pass


@dataclass
class Effects:
    """The side-effect log, parsed: which process started and finished which step."""

    started: dict[str, list[int]] = field(default_factory=dict)
    done: dict[str, list[int]] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> Effects:
        effects = cls()
        if not path.exists():
            return effects
        for line in path.read_text(encoding="utf-8").splitlines():
            pid, phase, step = line.split()
            target = effects.started if phase == "start" else effects.done
            target.setdefault(step, []).append(int(pid))
        return effects


@dataclass
class Demo:
    app: App
    url: str
    workdir: Path
    console: Console
    run_id: str = field(default_factory=lambda: f"order-{secrets.token_hex(3)}")
    shown: dict[int, EntryStatus] = field(default_factory=dict)

    @property
    def effects_path(self) -> Path:
        return self.workdir / "side-effects.log"

    def say(self, text: str, style: str = "") -> None:
        self.console.print(Text(text, style=style))

    async def spawn(self, label: str, log: IO[bytes]) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tether.demo",
            "--worker",
            self.url,
            str(self.effects_path),
            stdout=log,
            stderr=log,
        )
        self.say(f"   worker process {label} started (pid {proc.pid})", "dim")
        return proc

    def show_entries(self, entries: list[JournalEntry], pids: dict[int, str]) -> None:
        effects = Effects.read(self.effects_path)
        for entry in entries:
            if self.shown.get(entry.seq) == entry.status:
                continue
            self.shown[entry.seq] = entry.status
            line = Text("   ")
            if entry.status is EntryStatus.WAITING:
                line.append("⏸ ", style="yellow")
            elif entry.status is EntryStatus.COMPLETED:
                line.append("✓ ", style="green")
            else:
                line.append("✗ ", style="red")
            line.append(f"seq {entry.seq}  ")
            label = entry.kind if entry.kind == entry.name else f"{entry.kind:<5}  {entry.name}"
            line.append(f"{label:<25}", style="bold")
            if entry.status is EntryStatus.WAITING and entry.kind == "sleep":
                wake = local_time(float(entry.output))
                line.append(f"until {wake}; parked in the database, no worker held", "yellow")
            elif entry.finished_at is not None and entry.started_at is not None:
                took = (entry.finished_at - entry.started_at) * 1000
                line.append(f"{took:6.0f} ms  ", style="dim")
                if entry.kind == "step":
                    done_by = effects.done.get(entry.name, [])
                    who = pids.get(done_by[-1], "?") if done_by else "?"
                    line.append(f"[{who}] ", style="cyan")
                    line.append(preview(entry.output, 40))
            self.console.print(line, no_wrap=True, overflow="ellipsis")

    async def follow(
        self,
        proc: asyncio.subprocess.Process,
        pids: dict[int, str],
        until: Callable[[list[JournalEntry]], bool],
    ) -> list[JournalEntry]:
        deadline = time.monotonic() + PHASE_TIMEOUT
        while True:
            entries = await self.app.get_journal(self.run_id)
            self.show_entries(entries, pids)
            if until(entries):
                return entries
            run = await self.app.get_run(self.run_id)
            if run.status.is_terminal or run.status is RunStatus.NEEDS_ATTENTION:
                raise DemoFailed(f"the run ended early: {run.status.value} {run.error}")
            if proc.returncode is not None:
                raise DemoFailed(f"worker process {proc.pid} exited ({proc.returncode})")
            if time.monotonic() > deadline:
                raise DemoFailed(f"no progress within {PHASE_TIMEOUT:.0f} s")
            await asyncio.sleep(POLL)


def _completed_steps(entries: list[JournalEntry]) -> int:
    return sum(1 for e in entries if e.kind == "step" and e.status is EntryStatus.COMPLETED)


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def _demo(demo: Demo, logs: tuple[IO[bytes], IO[bytes]]) -> None:
    app, say = demo.app, demo.say
    order = Order(
        order_id=demo.run_id.removeprefix("order-"),
        sku="TEA-042",
        quantity=3,
        amount_cents=2970,
        email="ada@example.com",
    )
    await app.start("process_order", order, run_id=demo.run_id)
    demo.console.print(
        Panel(
            Text.assemble(
                ("A workflow survives a SIGKILL of the process running it.\n\n", "bold"),
                ("database  ", "dim"),
                demo.url,
                ("\nrun       ", "dim"),
                demo.run_id,
                ("\nworkflow  ", "dim"),
                "process_order, five steps and a durable sleep:\n",
                ("          ", "dim"),
                " → ".join([*STEPS[:4], f"sleep {PICKUP_WAIT:g} s", STEPS[4]]),
            ),
            title="Tether demo",
            title_align="left",
        )
    )

    say(f"\n1. Worker process A runs the order until {KILL_AFTER} steps are done", "bold")
    first = await demo.spawn("A", logs[0])
    pids = {first.pid: "A"}
    try:
        await demo.follow(first, pids, lambda entries: _completed_steps(entries) >= KILL_AFTER)
    finally:
        if first.returncode is None:
            os.kill(first.pid, signal.SIGKILL)  # a real SIGKILL: the process gets no say
            await first.wait()
    effects = Effects.read(demo.effects_path)
    in_flight = [
        s
        for s in STEPS
        if first.pid in set(effects.started.get(s, [])) - set(effects.done.get(s, []))
    ]
    doing = f", in the middle of {in_flight[0]}" if in_flight else ""
    say(f"\n2. SIGKILL to worker process A{doing}", "bold red")
    # The process is dead: this is exactly what survived it.
    journal = await app.get_journal(demo.run_id)
    recorded = {e.name for e in journal if e.kind == "step" and e.status is EntryStatus.COMPLETED}
    last = max((e.seq for e in journal), default=0)
    run = await app.get_run(demo.run_id)
    status = run.status.value
    say(f"   no cleanup ran: the run is still '{status}', leased by a dead process", "dim")

    say("\n3. Worker process B takes the run over and resumes it from the journal", "bold")
    started = time.monotonic()
    second = await demo.spawn("B", logs[1])
    pids[second.pid] = "B"
    say(f"   B replays seq 1-{last} from the journal, executing nothing, then goes on", "dim")
    resumed_after: list[float] = []
    known = len(demo.shown)

    def finished(entries: list[JournalEntry]) -> bool:
        if not resumed_after and len(entries) > known:
            resumed_after.append(time.monotonic() - started)
        return len(entries) == len(STEPS) + 1 and all(
            e.status is EntryStatus.COMPLETED for e in entries
        )

    try:
        await demo.follow(second, pids, finished)
        await app.handle(demo.run_id).result(timeout=PHASE_TIMEOUT)
    finally:
        await _stop(second)
    elapsed = time.monotonic() - started
    first_new = resumed_after[0] if resumed_after else elapsed
    say(f"   succeeded {elapsed:.1f} s after B started (first new entry after {first_new:.2f} s)")
    say(f"   B stopped on SIGTERM, gracefully (exit code {second.returncode})", "dim")

    _prove(demo, first.pid, second.pid, recorded)

    run = await app.get_run(demo.run_id)
    entries = await app.get_journal(demo.run_id)
    cmd = _tether_command()
    prefix = f"{cmd} -d {demo.url}" if _needs_url(demo.url) else cmd
    say(f"\n5. The run as `tether show {demo.run_id}` prints it", "bold")
    demo.console.print(run_report(run, entries))
    say("\nExplore it yourself:", "bold")
    for line in (
        f"{prefix} runs",
        f"{prefix} show {demo.run_id}",
        f"{prefix} show {demo.run_id} --json",
    ):
        say(f"   {line}", "cyan")


def _prove(demo: Demo, first: int, second: int, recorded: set[str]) -> None:
    """Steps in the journal before the kill must have run exactly once, on A; any other
    step A had started was in flight, and may run again on B."""
    effects = Effects.read(demo.effects_path)
    names = {first: "A", second: "B"}
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("STEP", "STARTED ON", "COMPLETED ON", "NOTE"):
        table.add_column(column, no_wrap=column != "NOTE")
    problems: list[str] = []
    for step in STEPS:
        started = [names.get(pid, str(pid)) for pid in effects.started.get(step, [])]
        done = [names.get(pid, str(pid)) for pid in effects.done.get(step, [])]
        if step in recorded:
            note = "B replayed it from the journal"
            if done != ["A"]:
                problems.append(f"{step} completed {len(done)} times ({' '.join(done)})")
        else:
            note = ""
            if "A" in started:
                note = "in flight at the kill: cut off on A, run again on B"
                if "A" in done:
                    note = "in flight at the kill: done on A but not recorded, run again"
            if done.count("B") != 1:
                problems.append(f"{step} completed {done.count('B')} times on B")
        table.add_row(
            step,
            " ".join(started),
            Text(" ".join(done), style="green" if len(done) == 1 else "red"),
            note,
        )
    demo.say("\n4. Proof, from the side-effect log every step body appends to", "bold")
    demo.console.print(table)
    if problems:
        raise DemoFailed("steps ran more often than allowed: " + "; ".join(problems))
    demo.say("✔ No completed step ran twice.", "bold green")
    demo.say(
        "  B replayed what A had recorded and executed only the rest. Only the step in "
        "flight at a crash runs again: steps are at least once.",
        "dim",
    )


def _needs_url(url: str) -> bool:
    return url != "sqlite:///tether.db"


def _tether_command() -> str:
    argv0 = sys.argv[0]
    if Path(argv0).name != "tether":
        return "tether"
    found = shutil.which("tether")
    if found and Path(found).resolve() == Path(argv0).resolve():
        return "tether"
    return argv0


async def _main(url: str, workdir: Path, logs: tuple[IO[bytes], IO[bytes]]) -> None:
    app = build_app(url, workdir / "side-effects.log")
    await app.open(worker=False)  # creates the database if needed; no worker in this process
    try:
        await _demo(Demo(app, url, workdir, Console(highlight=False)), logs)
    finally:
        await app.close()


def run(database_url: str) -> int:
    """Run the narrated demo against ``database_url``; return the exit code."""
    console = Console(stderr=True, highlight=False)
    with tempfile.TemporaryDirectory(prefix="tether-demo-") as tmp:
        workdir = Path(tmp)
        with (
            (workdir / "worker-a.log").open("wb") as log_a,
            (workdir / "worker-b.log").open("wb") as log_b,
        ):
            try:
                asyncio.run(_main(database_url, workdir, (log_a, log_b)))
            except DemoFailed as exc:
                console.print(Text.assemble(("demo failed: ", "bold red"), str(exc)))
                for name in ("worker-a.log", "worker-b.log"):
                    tail = (workdir / name).read_text(errors="replace").strip()[-2000:]
                    if tail:
                        console.print(Text(f"--- {name}\n{tail}", style="dim"))
                return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        _worker_main(sys.argv[2], sys.argv[3])
    else:
        sys.exit("usage: python -m tether.demo --worker DATABASE_URL SIDE_EFFECT_LOG")
