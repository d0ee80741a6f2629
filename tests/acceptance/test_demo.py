"""``tether demo`` end to end: the real CLI, two real worker processes, a real SIGKILL.

The demo runs once per module (about 6 s); the tests read what it left behind: its output,
the side-effect ledger next to ``demo.db``, and the database through the CLI.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tether import App

TETHER = Path(sys.executable).parent / "tether"
CUSTOMERS = ["maya.chen@example.com", "jonas.weber@example.de", "priya.natarajan@example.in"]


@dataclass
class Demo:
    workdir: Path
    env: dict[str, str]
    result: subprocess.CompletedProcess[str]
    seconds: float
    ledger: list[dict[str, Any]]

    def tether(self, *args: str) -> Any:
        done = subprocess.run(
            [str(TETHER), *args, "--json"],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.workdir,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def tools(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.ledger if line.get("tool") == name]

    def asked(self, pid: int) -> list[int]:
        return [
            line["turn"]
            for line in self.ledger
            if line["call"] == "model" and line["phase"] == "asked" and line["pid"] == pid
        ]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    workdir = tmp_path_factory.mktemp("demo")
    env = dict(os.environ, TETHER_DATABASE_URL="sqlite:///demo.db", COLUMNS="120")
    started = time.monotonic()
    result = subprocess.run(
        [str(TETHER), "demo"],
        capture_output=True,
        text=True,
        env=env,
        cwd=workdir,
        timeout=110,
        stdin=subprocess.DEVNULL,
    )
    seconds = time.monotonic() - started
    path = workdir / "demo.db-ledger.jsonl"
    ledger = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return Demo(workdir, env, result, seconds, ledger)


@pytest.mark.slow
def test_the_demo_succeeds_within_a_minute(demo: Demo) -> None:
    assert demo.result.returncode == 0, demo.result.stdout + demo.result.stderr
    assert demo.seconds < 60
    out = demo.result.stdout
    assert "SIGKILL to worker process A" in out
    assert "Nothing happened twice" in out
    assert "demo failed" not in out + demo.result.stderr
    runs = demo.tether("runs")
    assert [(r["workflow"], r["status"]) for r in runs] == [("support_shift", "succeeded")]
    assert runs[0]["run_id"] in out  # the inspect commands name the run


@pytest.mark.slow
def test_the_worker_was_killed_mid_run_and_another_process_finished(demo: Demo) -> None:
    pids = list(dict.fromkeys(line["pid"] for line in demo.ledger))
    assert len(pids) == 2, pids
    a, b = pids
    assert f"SIGKILL to worker process A (pid {a})" in demo.result.stdout
    assert f"Worker process B (pid {b}) takes the run over" in demo.result.stdout
    assert not Path(f"/proc/{a}").exists()  # killed; B was stopped with SIGTERM
    # A was killed while the model was drafting the replies: after the refund, before any
    # email. Turn 4 was asked on A and never answered there; B asked it again.
    assert demo.asked(a) == [1, 2, 3, 4]
    assert demo.asked(b) == [4, 5]  # turns 1-3 replayed from the journal, never asked
    answered_on_a = [
        line["turn"] for line in demo.ledger if line.get("phase") == "answered" and line["pid"] == a
    ]
    assert answered_on_a == [1, 2, 3]
    assert [line["pid"] for line in demo.tools("issue_refund")] == [a]
    assert [line["pid"] for line in demo.tools("send_email")] == [b, b, b]


@pytest.mark.slow
def test_no_refund_or_email_happened_twice(demo: Demo) -> None:
    refunds = demo.tools("issue_refund")
    assert len(refunds) == 1
    assert refunds[0]["args"]["amount_cents"] == 4900
    sent = Counter(line["args"]["to"] for line in demo.tools("send_email"))
    assert sent == Counter(CUSTOMERS)
    assert len(demo.tools("create_reset_link")) == 1
    keys = Counter(line["key"] for line in demo.ledger if line.get("key"))
    assert keys and set(keys.values()) == {1}

    run_id = demo.tether("runs")[0]["run_id"]
    effects = demo.tether("effects", run_id)
    writes = [e for e in effects if e["kind"] != "read"]
    assert sorted((e["tool"], e["kind"]) for e in writes) == [
        ("create_reset_link", "idempotent"),
        ("issue_refund", "irreversible"),
        ("send_email", "irreversible"),
        ("send_email", "irreversible"),
        ("send_email", "irreversible"),
    ]
    assert all(e["state"] == "completed" and e["attempt"] == 1 for e in effects)
    # The effect log and the other side agree, key for key.
    assert {e["idempotency_key"] for e in writes} == set(keys)


@pytest.mark.slow
def test_the_journal_holds_each_model_answer_once(demo: Demo) -> None:
    run_id = demo.tether("runs")[0]["run_id"]
    shown = demo.tether("show", run_id)
    events = [(e["kind"], e["name"]) for e in shown["events"]]
    model = ("model", "scripted")
    assert events == [
        model,
        ("tool", "list_tickets"),
        model,
        *[("tool", "lookup_customer")] * 3,
        model,
        ("tool", "issue_refund"),
        ("tool", "track_shipment"),
        ("tool", "create_reset_link"),
        model,
        *[("tool", "send_email")] * 3,
        model,
    ]
    assert all(e["status"] == "completed" for e in shown["events"])
    assert shown["result"]["model_calls"] == 5
    assert shown["result"]["summary"].startswith("Closed 3 tickets, 3 replies sent.")


@pytest.mark.slow
def test_the_proof_fails_on_a_doubled_refund(demo: Demo) -> None:
    """The demo's own check, given the run it left plus a second refund line (as if the
    refund had been made again after the kill), reports it: the demo would exit 1."""
    from tether.demo._run import Snapshot, _check

    async def snapshot() -> tuple[Snapshot, list[Any]]:
        app = App(f"sqlite:///{demo.workdir / 'demo.db'}")
        await app.open(worker=False, create=False)
        try:
            run = (await app.list_runs())[0]
            entries = await app.get_journal(run.run_id)
            effects = await app.list_effects(run.run_id)
        finally:
            await app.close()
        by_seq = {e.seq: e for e in effects}
        return Snapshot(run, entries, by_seq, list(demo.ledger)), effects

    now, effects = asyncio.run(snapshot())
    a, b = list(dict.fromkeys(line["pid"] for line in demo.ledger))
    assert _check(now, effects, a, b, replayed=3) == []
    now.ledger.append({**demo.tools("issue_refund")[0], "pid": b})
    problems = _check(now, effects, a, b, replayed=3)
    assert any("issue_refund happened 2 times" in p for p in problems), problems
    assert any("2 refunds in the ledger" in p for p in problems), problems
