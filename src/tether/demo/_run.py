"""The narrated demo: start the run, SIGKILL its worker process, resume it, prove it.

1. Worker process A runs the agent. Once the refund is in the effect log and the model is
   drafting the replies (turn ``KILL_TURN``), the demo kills A with SIGKILL: no cleanup, no
   hand-back, exactly like a crash or an OOM kill.
2. Worker process B takes the run over at once (its lease names a process on this host
   that no longer exists), replays the recorded model answers and tool results from the
   journal without asking the model or calling a tool, and runs the rest.
3. The ledger (what the outside world saw) is compared with the effect log: every refund
   and every email happened exactly once. Any doubling is a failure (exit code 1).
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
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.status import Status
from rich.text import Text

from .._records import Effect, EffectRecord, EffectState, EntryStatus, JournalEntry, Run, RunStatus
from ..engine import App
from ..storage import redact_url
from ._ops import KILL_TURN, MODEL, build_app
from ._show import entry_line, header, ledger_lines, model_calls, proof_table, status_line
from ._world import TICKETS, read_ledger

__all__ = ["DemoFailed", "run"]

PHASE_TIMEOUT = 30.0
POLL = 0.03


class DemoFailed(Exception):
    pass


@dataclass
class Snapshot:
    run: Run
    entries: list[JournalEntry]
    effects: dict[int, EffectRecord]
    ledger: list[dict[str, Any]]


@dataclass
class Demo:
    app: App
    url: str
    ledger: Path
    logs: Path
    console: Console
    run_id: str = field(default_factory=lambda: f"shift-{secrets.token_hex(3)}")
    shown: set[int] = field(default_factory=set)
    names: dict[int, str] = field(default_factory=dict)  # worker pid -> "A" | "B"

    def say(self, text: str, style: str = "") -> None:
        self.console.print(Text(text, style=style))

    async def spawn(self, name: str) -> asyncio.subprocess.Process:
        log = (self.logs / f"worker-{name}.log").open("wb")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tether.demo",
            "--worker",
            self.url,
            str(self.ledger),
            stdout=log,
            stderr=log,
        )
        log.close()  # the child has its own copy
        self.names[proc.pid] = name
        return proc

    async def snapshot(self) -> Snapshot:
        run = await self.app.get_run(self.run_id)
        entries = await self.app.get_journal(self.run_id)
        effects = await self.app.list_effects(self.run_id, limit=1000)
        return Snapshot(run, entries, {e.seq: e for e in effects}, read_ledger(self.ledger))

    def show(self, now: Snapshot, worker: str) -> None:
        """Print each entry once, when it is finished (parallel calls as they finish)."""
        turns = {e.seq: i for i, e in enumerate(_models(now.entries), start=1)}
        for entry in now.entries:
            finished = entry.status in (EntryStatus.COMPLETED, EntryStatus.FAILED)
            if entry.seq in self.shown or not finished:
                continue
            self.shown.add(entry.seq)
            effect, turn = now.effects.get(entry.seq), turns.get(entry.seq)
            line = entry_line(entry, effect, turn, worker, narrow=self.console.width < 96)
            self.console.print(line, no_wrap=True, overflow="ellipsis")

    async def follow(
        self,
        proc: asyncio.subprocess.Process,
        until: Callable[[Snapshot], bool],
    ) -> Snapshot:
        """Show the run's progress until ``until`` holds; fail if it stalls or ends."""
        worker = self.names[proc.pid]
        deadline = time.monotonic() + PHASE_TIMEOUT
        with Status("", console=self.console, spinner="dots") as status:
            while True:
                now = await self.snapshot()
                self.show(now, worker)
                status.update(status_line(worker, proc.pid, len(now.entries), _doing(now, proc)))
                if until(now):
                    return now
                run = now.run
                if run.status.is_terminal or run.status is RunStatus.NEEDS_ATTENTION:
                    raise DemoFailed(f"the run ended early: {run.status.value} {run.error}")
                if proc.returncode is not None:
                    raise DemoFailed(f"worker process {proc.pid} exited ({proc.returncode})")
                if time.monotonic() > deadline:
                    raise DemoFailed(f"no progress within {PHASE_TIMEOUT:.0f} s")
                await asyncio.sleep(POLL)


def _recorded(now: Snapshot) -> list[JournalEntry]:
    return [e for e in now.entries if e.status is EntryStatus.COMPLETED]


def _models(entries: list[JournalEntry]) -> list[JournalEntry]:
    return [e for e in entries if e.kind == "model"]


def _asked(ledger: list[dict[str, Any]], pid: int, phase: str = "asked") -> list[int]:
    """The model turns process ``pid`` really asked for (or got an answer to)."""
    return [
        int(line["turn"])
        for line in ledger
        if line.get("call") == "model" and line.get("phase") == phase and line["pid"] == pid
    ]


def _doing(now: Snapshot, proc: asyncio.subprocess.Process) -> list[str]:
    """What the worker has in flight: a model turn, tool calls (intent, no completion)."""
    answered = _asked(now.ledger, proc.pid, "answered")
    thinking = [t for t in _asked(now.ledger, proc.pid) if t not in answered]
    doing = [f"the model is thinking (turn {t})" for t in thinking]
    tools = Counter(e.tool for e in now.effects.values() if e.state is EffectState.INTENT)
    for tool, n in tools.items():
        doing.append(f"{tool} x{n} in flight" if n > 1 else f"{tool} in flight")
    return doing


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def _demo(demo: Demo) -> None:
    app = demo.app
    await app.start("support_shift", "support", run_id=demo.run_id)
    kinds = {name: tool.effect.value for name, tool in app.tools.items()}
    kept = demo.ledger.parent != demo.logs
    where = _shown_path(demo.ledger) if kept else "a temporary file"
    demo.console.print(header(redact_url(demo.url), demo.run_id, where, kinds))
    first, at_kill = await _until_drafting(demo)
    second, result = await _take_over(demo, at_kill)
    await _prove(demo, first, second, at_kill)
    summary = Text(str(result.get("summary", "")))
    summary.append(
        f"\n\n{result.get('model_calls')} model calls · {result.get('tokens'):,} tokens · "
        f"${result.get('cost_usd', 0):.4f}",
        style="dim",
    )
    demo.console.print(Panel(summary, title="the agent's report (the run's result)"))
    _explore(demo)


async def _until_drafting(demo: Demo) -> tuple[int, Snapshot]:
    """Worker A runs the agent until the model drafts the replies; then SIGKILL."""
    first = await demo.spawn("A")
    demo.say(f"\n1. Worker process A (pid {first.pid}) runs the agent", "bold")
    try:
        await demo.follow(first, lambda now: KILL_TURN in _asked(now.ledger, first.pid))
    finally:
        if first.returncode is None:
            os.kill(first.pid, signal.SIGKILL)  # a real SIGKILL: the process gets no say
            await first.wait()

    # The process is dead: this is exactly what survived it.
    at_kill = await demo.snapshot()
    effects = list(at_kill.effects.values())
    refund = next((e for e in effects if e.tool == "issue_refund"), None)
    if refund is None or refund.state is not EffectState.COMPLETED:
        raise DemoFailed("the kill came before the refund was in the effect log")
    if any(e.tool == "send_email" for e in effects):
        raise DemoFailed("the kill came after the first email: too late to show anything")
    recorded = _recorded(at_kill)
    demo.say(
        f"\n💥 SIGKILL to worker process A (pid {first.pid}) in the middle of model turn "
        f"{KILL_TURN}",
        "bold red",
    )
    demo.say("   Nothing ran on the way down. What the database says now:", "dim")
    writes = ", ".join(f"{e.tool} {e.state.value}" for e in effects if e.kind is not Effect.READ)
    for label, text in (
        ("run", f"{at_kill.run.status.value}, leased by the dead process"),
        (
            "journal",
            f"seq 1-{len(recorded)}: {len(_models(recorded))} model answers, "
            f"{len(effects)} tool results",
        ),
        ("effects", f"{writes}; no email yet"),
        ("lost", f"model turn {KILL_TURN}, in flight: it will be asked again"),
    ):
        demo.console.print(Text.assemble((f"   {label:<9}", "dim"), text))
    return first.pid, at_kill


async def _take_over(demo: Demo, at_kill: Snapshot) -> tuple[int, dict[str, Any]]:
    """Worker B resumes the run from the journal and finishes it; then SIGTERM."""
    started = time.monotonic()
    second = await demo.spawn("B")
    recorded = len(_recorded(at_kill))
    demo.say(f"\n2. Worker process B (pid {second.pid}) takes the run over", "bold")
    demo.say(f"   It replays seq 1-{recorded} from the journal: no model asked, no tool called")
    try:
        await demo.follow(second, lambda now: now.run.status is RunStatus.SUCCEEDED)
        result = await demo.app.handle(demo.run_id).result(timeout=PHASE_TIMEOUT)
    finally:
        await _stop(second)
    demo.say(
        f"   succeeded {time.monotonic() - started:.1f} s after B started; B stopped on "
        f"SIGTERM (exit code {second.returncode})",
        "dim",
    )
    return second.pid, result


async def _prove(demo: Demo, first: int, second: int, at_kill: Snapshot) -> None:
    """The ledger against the effect log, and the model's calls against the journal."""
    end = await demo.snapshot()
    effects = sorted(end.effects.values(), key=lambda e: e.seq)
    replayed = len(_models(_recorded(at_kill)))
    demo.say("\n3. Proof: the ledger (what the outside world saw) against the effect log", "bold")
    demo.console.print(proof_table(effects, end.ledger, demo.names))
    asked = {"A": _asked(end.ledger, first), "B": _asked(end.ledger, second)}
    demo.console.print(model_calls(asked, replayed, len(_models(end.entries)), KILL_TURN))
    problems = _check(end, effects, first, second, replayed)
    if problems:
        raise DemoFailed("; ".join(problems))
    refunds = sum(1 for e in effects if e.tool == "issue_refund")
    emails = sum(1 for e in effects if e.tool == "send_email")
    demo.say(
        f"\n✔ Nothing happened twice: {refunds} refund and {emails} emails (one per customer), "
        "each once in the ledger and once in the effect log.",
        "bold green",
    )
    demo.say(
        f"✔ The model was not asked again for the {replayed} answers the journal had.",
        "bold green",
    )


def _check(end: Snapshot, effects: list[EffectRecord], a: int, b: int, replayed: int) -> list[str]:
    """Everything that would mean a call happened twice, or the model was asked again."""
    problems = []
    for effect in effects:
        count = len(ledger_lines(effect, end.ledger))
        if effect.state is not EffectState.COMPLETED or effect.attempt != 1:
            problems.append(
                f"seq {effect.seq} {effect.tool} is {effect.state.value}, try {effect.attempt}"
            )
        if count != 1:
            problems.append(f"seq {effect.seq} {effect.tool} happened {count} times")
    tools = Counter(line.get("tool") for line in end.ledger if line.get("call") == "tool")
    if tools["issue_refund"] != 1:
        problems.append(f"{tools['issue_refund']} refunds in the ledger, not 1")
    sent = Counter(line["args"]["to"] for line in end.ledger if line.get("tool") == "send_email")
    if sent != Counter(t["from"] for t in TICKETS):
        problems.append(f"emails in the ledger: {dict(sent)}, not one per customer")
    again = [t for t in _asked(end.ledger, b) if t <= replayed]
    if again:
        problems.append(f"worker B asked the model again for recorded turns {again}")
    if not _asked(end.ledger, a) or a == b:
        problems.append("the run was not split between two worker processes")
    if [e.name for e in _models(end.entries)] != [MODEL] * len(_models(end.entries)):
        problems.append("unexpected model entries in the journal")
    return problems


def _explore(demo: Demo) -> None:
    command = _tether_command()
    demo.say("\nExplore it yourself:", "bold")
    lines = [f"export TETHER_DATABASE_URL={redact_url(demo.url)}"] if _needs_url(demo.url) else []
    lines += [
        f"{command} runs",
        f"{command} show {demo.run_id}",
        f"{command} effects {demo.run_id}",
    ]
    if demo.ledger.parent != demo.logs:  # kept next to the database
        lines.append(f"cat {_shown_path(demo.ledger)}")
    for line in lines:
        demo.console.print(Text(f"   {line}", style="cyan"), soft_wrap=True)


def _shown_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


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


def _ledger_path(database_url: str, workdir: Path) -> Path:
    """Next to a SQLite file (``demo.db`` -> ``demo.db-ledger.jsonl``), so that it stays
    to look at; in ``workdir`` for any other database."""
    prefix = "sqlite:///"
    if database_url.startswith(prefix):
        path = database_url[len(prefix) :].split("?", 1)[0]
        if path and ":memory:" not in path:
            return Path(f"{path}-ledger.jsonl")
    return workdir / "ledger.jsonl"


async def _main(url: str, workdir: Path, console: Console) -> None:
    ledger = _ledger_path(url, workdir)
    ledger.unlink(missing_ok=True)  # the outside world starts afresh with each demo
    app = build_app(url, ledger)
    await app.open(worker=False)  # creates the database if needed; no worker in this process
    try:
        await _demo(Demo(app, url, ledger, workdir, console))
    finally:
        await app.close()


def run(database_url: str) -> int:
    """Run the narrated demo against ``database_url``; return the exit code."""
    console = Console(highlight=False)
    errors = Console(stderr=True, highlight=False)
    with tempfile.TemporaryDirectory(prefix="tether-demo-") as tmp:
        workdir = Path(tmp)
        try:
            asyncio.run(_main(database_url, workdir, console))
        except DemoFailed as exc:
            errors.print(Text.assemble(("demo failed: ", "bold red"), str(exc)))
            for log in sorted(workdir.glob("worker-*.log")):
                tail = log.read_text(errors="replace").strip()[-2000:]
                if tail:
                    errors.print(Text(f"--- {log.name}\n{tail}", style="dim"))
            return 1
    return 0
