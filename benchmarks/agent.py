"""Agent benchmark: what a model call stores, and what it costs next to a plain step.

Usage::

    .venv/bin/python benchmarks/agent.py             # full run (about 10-20 s)
    .venv/bin/python benchmarks/agent.py --quick     # CI smoke, a few seconds
    .venv/bin/python benchmarks/agent.py --json      # also write results/agent-BACKEND-DATE.json
    .venv/bin/python benchmarks/agent.py --backend postgres

a. Bytes stored per turn. One agent run of 50 turns (``ScriptedModel``: 49 turns that call
   a tool returning ~400 bytes, then an answer; a ~400-byte system prompt). For the model
   entries at turns 1, 10 and 50: the bytes the entry stored (its input and output JSON
   plus the blobs first written for it), next to the bytes of the request and response
   it stands for (what a journal that copies the conversation into every entry stores).
   Also the totals over the run, for conversations of 1, 10 and 50 turns.
b. ms per model call: one agent run of 200 turns of an instant ``ScriptedModel`` whose
   turns call nothing (each turn a model call and nothing else: the tool loop is not
   timed), next to ms per step of a 200-step workflow, in alternating rounds; medians.

Figures are printed, never asserted. Databases live under ``<repo>/.bench-tmp`` (the same
disk as the repository), SQLite with ``synchronous=FULL``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from tether import App, Context, Effect
from tether.agent import Agent, Message, ModelRequest, ModelResponse, ScriptedModel, ToolCall

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PG_SERVER = os.environ.get(
    "TETHER_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
NOTE = "n" * 400
INSTRUCTIONS = "You are a careful operations agent. Read every note before you answer. " * 6


def script(turns: int) -> list[Any]:
    calls: list[Any] = [
        ToolCall(id=f"c{i}", name="note", arguments={"i": i}) for i in range(1, turns)
    ]
    return [*calls, "all notes read"]


class Database:
    """A fresh database per measurement: a SQLite file, or a PostgreSQL database."""

    def __init__(self, backend: str, tmp: Path) -> None:
        self.backend = backend
        self.tmp = tmp
        self.made: list[str] = []

    def url(self) -> str:
        if self.backend == "sqlite":
            return f"sqlite:///{self.tmp / (uuid.uuid4().hex + '.db')}?synchronous=full"
        import psycopg

        name = f"tether_bench_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(PG_SERVER, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.made.append(name)
        return PG_SERVER.rsplit("/", 1)[0] + "/" + name

    def drop(self) -> None:
        if not self.made:
            return
        import psycopg

        with psycopg.connect(PG_SERVER, autocommit=True) as conn:
            for name in self.made:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def reader_app(url: str, model: ScriptedModel, turns: int) -> App:
    app = App(url)

    @app.tool(effect=Effect.READ)
    async def note(i: int) -> str:
        """Read note i."""
        return f"{i}:{NOTE}"

    agent: Agent[str] = Agent(model, [note], INSTRUCTIONS, max_turns=turns)

    @app.workflow
    async def reader(ctx: Context) -> int:
        return (await agent.run(ctx, "read the notes, then summarise")).turns

    return app


async def entry_bytes(app: App, run_id: str) -> list[int]:
    """Bytes each model entry stored, its new blobs included (see the docstring)."""
    entries = [e for e in await app.get_journal(run_id) if e.kind == "model"]
    answers = {e.output["message_hash"] for e in entries}
    sizes = []
    for entry in entries:
        record = entry.input["args"][0]
        new = [h for h in record["messages"] if h not in answers]
        if record["after"] is None:
            new.append(record["tools"])
        blobs = await app.blobs(new)
        own = len(json.dumps(entry.input)) + len(json.dumps(entry.output))
        sizes.append(own + sum(len(text) for text in blobs.values()))
    return sizes


async def storage(db: Database, turns_list: tuple[int, ...]) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for turns in turns_list:
        model = ScriptedModel(script(turns))
        app = reader_app(db.url(), model, turns)
        async with app:
            await (await app.start("reader", run_id="r")).result(timeout=120)
            stored = await entry_bytes(app, "r")
        copied = [
            len(request.model_dump_json()) + len(json.dumps(entry_out))
            for request, entry_out in zip(model.requests, _answers(model), strict=True)
        ]
        figures[f"total_{turns}"] = {"stored": sum(stored), "copied": sum(copied)}
        if turns == max(turns_list):
            for turn in (1, 10, 50):
                if turn <= turns:
                    figures[f"turn_{turn}"] = {
                        "stored": stored[turn - 1],
                        "copied": copied[turn - 1],
                    }
    return figures


def _answers(model: ScriptedModel) -> list[dict[str, Any]]:
    """The responses a ScriptedModel gave, as the JSON a copying journal would store."""
    out = []
    for request in model.requests:
        index = sum(1 for m in request.messages if m.role == "assistant")
        turn = model.script[index]
        message = (
            Message.assistant(turn) if isinstance(turn, str) else Message.assistant(None, turn)
        )
        out.append(ModelResponse(message=message).model_dump(mode="json"))
    return out


class Instant:
    """A model that answers at once and never calls a tool (each turn: one model call)."""

    name = "instant"

    async def request(self, request: ModelRequest) -> ModelResponse:
        return ModelResponse(message=Message.assistant("ok"))

    def cost_usd(self, usage: Any) -> float:
        return 0.0


async def overhead(db: Database, calls: int, rounds: int) -> dict[str, float]:
    """ms per model call (an agent of ``calls`` one-turn runs in one workflow) against ms
    per plain step, alternating, medians over ``rounds`` after one warm-up round."""
    app = App(db.url())
    agent: Agent[str] = Agent(Instant(), [], "be brief")

    @app.step
    async def noop(i: int) -> int:
        return i

    @app.workflow
    async def steps(ctx: Context, n: int) -> float:
        started = time.perf_counter()
        for i in range(n):
            await noop(i)
        return (time.perf_counter() - started) * 1000 / n

    @app.workflow
    async def models(ctx: Context, n: int) -> float:
        started = time.perf_counter()
        for i in range(n):
            await agent.run(ctx, f"question {i}")
        return (time.perf_counter() - started) * 1000 / n

    step_ms, model_ms = [], []
    async with app:
        for round_ in range(rounds + 1):
            a = await (await app.start("steps", calls)).result(timeout=300)
            b = await (await app.start("models", calls)).result(timeout=300)
            if round_:
                step_ms.append(a)
                model_ms.append(b)
    step, model = statistics.median(step_ms), statistics.median(model_ms)
    return {"step_ms": step, "model_call_ms": model, "model_over_step": model / step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds, for CI")
    parser.add_argument("--json", nargs="?", const="", default=None, metavar="FILE")
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    args = parser.parse_args()
    (ROOT / ".bench-tmp").mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=ROOT / ".bench-tmp"))
    db = Database(args.backend, tmp)
    turns_list = (1, 10, 50)
    calls, rounds = (20, 1) if args.quick else (200, 5)
    try:
        store = asyncio.run(storage(db, turns_list))
        cost = asyncio.run(overhead(db, calls, rounds))
    finally:
        db.drop()
        shutil.rmtree(tmp, ignore_errors=True)

    version = platform.python_version()
    print(f"agent benchmark: {args.backend}, python {version}, {os.cpu_count()} CPUs")
    print("\na. bytes stored per model call (entry + its new blobs) vs a copy of request+response")
    print(f"   {'turn':>6} {'stored':>10} {'copied':>10} {'ratio':>7}")
    for turn in (1, 10, 50):
        row = store[f"turn_{turn}"]
        ratio = row["copied"] / row["stored"]
        print(f"   {turn:>6} {row['stored']:>10,} {row['copied']:>10,} {ratio:>6.1f}x")
    print(f"   {'run of':>6} {'stored':>10} {'copied':>10}")
    for turns in turns_list:
        row = store[f"total_{turns}"]
        print(f"   {turns:>6} {row['stored']:>10,} {row['copied']:>10,}")
    print(f"\nb. ms per model call (instant model) vs ms per plain step, {calls} calls,")
    print(f"   median of {rounds} rounds")
    print(
        f"   step {cost['step_ms']:.3f} ms   model call {cost['model_call_ms']:.3f} ms   "
        f"ratio {cost['model_over_step']:.2f}x"
    )

    if args.json is not None:
        out = (
            Path(args.json)
            if args.json
            else RESULTS / (f"agent-{args.backend}-{_dt.date.today().isoformat()}.json")
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        machine = {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "backend": args.backend,
            "quick": args.quick,
        }
        out.write_text(
            json.dumps({"machine": machine, "storage": store, "overhead": cost}, indent=2)
        )
        print(f"\nwrote {out}")


if __name__ == "__main__":
    sys.exit(main())
