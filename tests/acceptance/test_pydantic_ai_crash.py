"""A Pydantic AI agent under real SIGKILL: the worker dies inside the tool the model chose,
after the model's request was recorded and the tool call's intent committed, before its
completion. The next worker replays the model's response from the journal (the model is
not asked again) and recovers the tool call by its effect kind: an idempotent payment is
made again with the same key; an irreversible one is never repeated, and the run waits
for a person, who says it happened; then the agent finishes."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import pytest
from crashapp import Child, children, snapshot
from pydai_app import read_calls, spawn

from tether import App, EffectRecord, EffectState, RunStatus
from tether.engine._tools import idempotency_key

RUN = "c1"
SEQ = 2  # the payment: after the first model request


def _run(tmp_path: Path, db_url: str, spawned: list[Child], *args: str, name: str) -> Child:
    child = spawn(tmp_path, db_url, "--calls", str(tmp_path / "calls.jsonl"), *args, name=name)
    spawned.append(child)
    child.wait(60)
    return child


def _outcome(tmp_path: Path, name: str) -> dict[str, Any]:
    outcome: dict[str, Any] = json.loads((tmp_path / f"{name}.json").read_text())
    return outcome


def _effect(db_url: str) -> EffectRecord:
    async def read() -> EffectRecord:
        app = App(db_url)
        await app.open(worker=False, create=False)
        try:
            [effect] = await app.list_effects(RUN)
            return effect
        finally:
            await app.close()

    return asyncio.run(read())


def _resolve_done(db_url: str, result: Any) -> None:
    async def act() -> None:
        app = App(db_url)
        await app.open(worker=False, create=False)
        try:
            await app.resolve(RUN, SEQ, "done", result=result, by="tests", reason="in the ledger")
        finally:
            await app.close()

    asyncio.run(act())


@pytest.mark.parametrize("kind", ["idempotent", "irreversible"])
def test_a_killed_agent_resumes_without_asking_the_model_again(
    tmp_path: Path, db_url: str, kind: str
) -> None:
    calls = tmp_path / "calls.jsonl"
    key = idempotency_key(RUN, SEQ)
    with children() as spawned:
        first = _run(
            tmp_path, db_url, spawned,
            "--start", RUN, kind, "--wait", RUN, "--out", str(tmp_path / "first.json"), "--kill",
            name="first",
        )  # fmt: skip
        assert first.proc.returncode == -signal.SIGKILL, first.describe()
        assert [(c["what"], c.get("key")) for c in read_calls(calls)] == [
            ("model", None),
            ("pay", key),
        ]
        before = snapshot(db_url, RUN)
        assert before.run is not None and before.run.status is RunStatus.RUNNING
        assert [(e.kind, e.status.value) for e in before.entries] == [
            ("model", "completed"),
            ("tool", "intent"),
        ]

        second = _run(
            tmp_path, db_url, spawned, "--wait", RUN, "--out", str(tmp_path / "second.json"),
            name="second",
        )  # fmt: skip
        assert second.proc.returncode == 0, second.describe()
        outcome = _outcome(tmp_path, "second")
        effect = _effect(db_url)
        assert effect.seq == SEQ and effect.idempotency_key == key

        if kind == "idempotent":
            # Made again, with the same key: the callee deduplicates it.
            assert outcome == {"result": {"output": "paid", "messages": 4}}, outcome
            assert [(c["what"], c.get("key")) for c in read_calls(calls)] == [
                ("model", None),  # the first request: asked once, in the killed process
                ("pay", key),
                ("pay", key),
                ("model", None),  # the second request, after the payment
            ]
            assert effect.state is EffectState.COMPLETED and effect.attempt == 2
            assert "rerun" in [h["event"] for h in effect.history]
        else:
            # Maybe paid: never again without a person.
            assert outcome["error"]["type"] == "EffectInDoubtError", outcome
            assert [c["what"] for c in read_calls(calls)] == ["model", "pay"]
            assert effect.state is EffectState.IN_DOUBT
            _resolve_done(db_url, "charged 1250")  # the tool's result, as the ledger shows it
            third = _run(
                tmp_path, db_url, spawned, "--wait", RUN, "--out", str(tmp_path / "third.json"),
                name="third",
            )  # fmt: skip
            assert third.proc.returncode == 0, third.describe()
            assert _outcome(tmp_path, "third") == {"result": {"output": "paid", "messages": 4}}
            assert [c["what"] for c in read_calls(calls)] == ["model", "pay", "model"]

    after = snapshot(db_url, RUN)
    assert after.run is not None and after.run.status is RunStatus.SUCCEEDED
    assert [(e.kind, e.status.value) for e in after.entries] == [
        ("model", "completed"),
        ("tool", "completed"),
        ("model", "completed"),
    ]
