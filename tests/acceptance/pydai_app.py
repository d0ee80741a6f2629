"""A Pydantic AI agent in a Tether workflow, run in a child process that the crash tests
kill with SIGKILL (``python pydai_app.py --db URL ...``), and the harness that spawns it.

The agent's model (a ``FunctionModel``) asks for one payment, then answers. Every real
model request and every real payment appends one line to a calls file (``O_APPEND``, then
``fsync``), so a test counts real executions across processes, the killed one included.
With ``--kill``, the process SIGKILLs itself inside the payment, just after its line:
the model's request is recorded, the payment's intent too, its completion is not.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from crashapp import Child
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from tether import App, Context, Effect, RunFailedError
from tether.integrations.pydantic_ai import TetherAgent, idempotency_key

HERE = Path(__file__).resolve()
KINDS = ("idempotent", "irreversible")


class Calls:
    path: Path | None = None
    kill = False


def record(what: str, **extra: Any) -> None:
    """One durable line per real execution."""
    if Calls.path is None:
        return
    line = json.dumps({"what": what, "pid": os.getpid(), **extra}) + "\n"
    fd = os.open(Calls.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def read_calls(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def build_app(db_url: str) -> App:
    app = App(db_url)

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        record("model")
        if not any(isinstance(m, ModelResponse) for m in messages):
            return ModelResponse(parts=[ToolCallPart("pay", {"cents": 1250}, "c1")])
        return ModelResponse(parts=[TextPart("paid")])

    agent: Agent[None, str] = Agent(FunctionModel(respond), name="cashier")

    @agent.tool_plain
    def pay(cents: int) -> str:
        """Charge the customer."""
        record("pay", key=idempotency_key(), cents=cents)
        if Calls.kill:
            os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(60)  # never reached
        return f"charged {cents}"

    durable = {kind: TetherAgent(agent, effects={"pay": Effect(kind)}) for kind in KINDS}

    @app.workflow
    async def checkout(ctx: Context, kind: str) -> dict[str, Any]:
        result = await durable[kind].run(ctx, "charge the order")
        return {"output": result.output, "messages": len(result.all_messages())}

    return app


async def _child(args: argparse.Namespace) -> None:
    Calls.path = args.calls
    Calls.kill = args.kill
    app = build_app(args.db)
    async with app:
        if args.start:
            run_id, kind = args.start
            await app.start("checkout", kind, run_id=run_id)
        if args.wait:
            try:
                outcome = {"result": await app.handle(args.wait).result(timeout=60)}
            except RunFailedError as exc:  # failed, or stopped for a person
                outcome = {"error": exc.error}
            args.out.write_text(json.dumps(outcome))


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--db", required=True)
    p.add_argument("--calls", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--start", nargs=2, metavar=("RUN_ID", "KIND"))
    p.add_argument("--wait", metavar="RUN_ID")
    p.add_argument("--kill", action="store_true", help="SIGKILL inside the payment")
    asyncio.run(_child(p.parse_args(argv)))


def spawn(workdir: Path, db_url: str, *args: str, name: str) -> Child:
    stderr = workdir / f"{name}.stderr"
    out = open(stderr, "wb")  # noqa: SIM115 -- closed by Child.close
    proc = subprocess.Popen(
        [sys.executable, str(HERE), "--db", db_url, *args],
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT,
        cwd=workdir,
    )
    return Child(proc, workdir / f"{name}.events", stderr, [out])


if __name__ == "__main__":
    main(sys.argv[1:])
