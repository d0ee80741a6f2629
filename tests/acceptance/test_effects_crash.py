"""The effect log under real SIGKILL: the crash matrix of issue 4.

One workflow (``effectful`` in crashapp.py) makes a step, one tool call at seq 2, another
step. Its worker process is killed with SIGKILL at one of four points of the tool call:

- ``intent``: just before the commit of the call's intent;
- ``before``: the intent is committed, the call starts, nothing is done yet;
- ``after``: inside the call, after its side effect (a line in a file, with its key);
- ``commit``: after the call returned, just before the commit of its completion.

for each kind of tool: READ, IDEMPOTENT, IRREVERSIBLE without a reconcile hook, and
IRREVERSIBLE with one (which looks for the call's key among the side effects). A second
process then recovers the run. Each cell asserts the real side effects (how many lines,
with which keys), the run's final status, and the key the effect log recorded. A run that
stops in doubt is resolved as a person would (``app.resolve``), and a third process
finishes it.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import pytest
from crashapp import (
    TOOL_KINDS,
    TOOL_PHASES,
    Child,
    children,
    mix,
    read_effects,
    snapshot,
    spawn,
    wait_for,
)

from tether import App, EffectRecord, EffectState, RunStatus
from tether.engine._tools import idempotency_key

RUN = "e1"
SEQ = 2  # the tool call's place in the journal (after step e1)
ARG = mix("e1", 1)  # what step e1 returns, the tool's argument

# (kind, phase) -> (side effects after recovery, status after recovery)
# A read or an idempotent write runs again (with the same key); an irreversible call that
# may have happened never does: its reconcile hook or a person decides.
OUTCOME: dict[tuple[str, str], tuple[int, RunStatus]] = {}
for _kind in TOOL_KINDS:
    OUTCOME[(_kind, "intent")] = (1, RunStatus.SUCCEEDED)  # no intent: a fresh call
    OUTCOME[(_kind, "before")] = (1, RunStatus.SUCCEEDED)
    OUTCOME[(_kind, "after")] = (2, RunStatus.SUCCEEDED)
    OUTCOME[(_kind, "commit")] = (2, RunStatus.SUCCEEDED)
for _phase in ("before", "after", "commit"):
    OUTCOME[("irreversible", _phase)] = (
        0 if _phase == "before" else 1,
        RunStatus.NEEDS_ATTENTION,
    )
    OUTCOME[("reconciled", _phase)] = (1, RunStatus.SUCCEEDED)


def _effects(db_url: str, run_id: str) -> list[EffectRecord]:
    async def read() -> list[EffectRecord]:
        app = App(db_url)
        await app.open(worker=False, create=False)
        try:
            return await app.list_effects(run_id)
        finally:
            await app.close()

    return asyncio.run(read())


def _resolve(db_url: str, action: str, **extra: Any) -> EffectRecord:
    async def act() -> EffectRecord:
        app = App(db_url)
        await app.open(worker=False, create=False)
        try:
            return await app.resolve(RUN, SEQ, action, by="tests", reason="checked", **extra)
        finally:
            await app.close()

    return asyncio.run(act())


def _recover(tmp_path: Path, db_url: str, effects: Path, spawned: list[Child]) -> Child:
    child = spawn(tmp_path, db_url, "--wait", RUN, "--effects", str(effects), name="recover")
    spawned.append(child)
    assert child.wait(60) == 0, child.describe()
    return child


def _tool_lines(effects: Path, kind: str) -> list[dict[str, Any]]:
    return [e for e in read_effects(effects) if e["step"] == f"t-{kind}"]


@pytest.mark.parametrize("phase", TOOL_PHASES)
@pytest.mark.parametrize("kind", TOOL_KINDS)
def test_crash_matrix(tmp_path: Path, db_url: str, kind: str, phase: str) -> None:
    effects = tmp_path / "effects.jsonl"
    key = idempotency_key(RUN, SEQ)
    label = f"t-{kind}"
    with children() as spawned:
        first = spawn(
            tmp_path, db_url,
            "--start", "effectful", RUN, f'["{kind}"]',
            "--wait", RUN,
            "--effects", str(effects),
            "--kill", f"{label}:{phase}",
        )  # fmt: skip
        spawned.append(first)
        assert first.wait(60) == -signal.SIGKILL, first.describe()

        # What the crash left: no intent (killed before it committed), or an intent
        # without a completion.
        before = snapshot(db_url, RUN)
        assert before.run is not None and before.run.status is RunStatus.RUNNING
        tool_entries = [e for e in before.entries if e.kind == "tool"]
        if phase == "intent":
            assert tool_entries == []
        else:
            assert [(e.seq, e.status.value) for e in tool_entries] == [(SEQ, "intent")]
        side_effects = 0 if phase in ("intent", "before") else 1
        assert len(_tool_lines(effects, kind)) == side_effects

        second = _recover(tmp_path, db_url, effects, spawned)
        count, status = OUTCOME[(kind, phase)]
        after = snapshot(db_url, RUN)
        assert after.run is not None
        assert after.run.status is status, (after.run.error, second.describe())
        lines = _tool_lines(effects, kind)
        assert len(lines) == count
        assert {line["key"] for line in lines} <= {key}  # every call got the same key
        [effect] = _effects(db_url, RUN)
        assert effect.idempotency_key == key and effect.seq == SEQ

        if status is RunStatus.NEEDS_ATTENTION:
            # An irreversible call in doubt: the run says which, and waits for a person.
            assert after.run.error is not None
            assert after.run.error["type"] == "EffectInDoubtError"
            assert after.run.error["seq"] == SEQ
            assert effect.state is EffectState.IN_DOUBT
            assert "in_doubt" in [h["event"] for h in effect.history]
            if phase == "before":  # a person finds no payment: retry, with the same key
                _resolve(db_url, "retry")
                count = 1
            else:  # a person finds the payment: done, with its result
                _resolve(db_url, "done", result=f"{label}:found")
            third = _recover(tmp_path, db_url, effects, spawned)
            result = third.event("result")
            assert "error" not in result, result
            expected = f"{label}:found" if phase != "before" else f"{label}:{ARG}"
            assert result["result"]["tool"] == expected
            lines = _tool_lines(effects, kind)
            assert len(lines) == count and {line["key"] for line in lines} == {key}
            [effect] = _effects(db_url, RUN)
            assert "resolved" in [h["event"] for h in effect.history]
        else:
            result = second.event("result")["result"]
            assert result["tool"] == f"{label}:{ARG}"
            if kind in ("read", "idempotent") and phase in ("before", "after", "commit"):
                assert effect.attempt == 2
                assert "rerun" in [h["event"] for h in effect.history]
            if kind == "reconciled" and phase != "intent":
                assert "reconciled" in [h["event"] for h in effect.history]

        final = snapshot(db_url, RUN)
        assert final.run is not None and final.run.status is RunStatus.SUCCEEDED
        [effect] = _effects(db_url, RUN)
        assert effect.state is EffectState.COMPLETED
        # The steps around the call ran exactly as a crash-free run: no step lost.
        assert [e.seq for e in final.entries] == [1, 2, 3]


def test_approved_call_runs_once_when_the_worker_dies_as_it_takes_the_approval(
    tmp_path: Path, db_url: str
) -> None:
    """The approval is recorded; the worker that wakes for it dies before its intent to
    call commits. The next worker makes the call exactly once, with the same key."""
    effects = tmp_path / "effects.jsonl"
    key = idempotency_key(RUN, SEQ)
    with children() as spawned:
        first = spawn(
            tmp_path, db_url,
            "--start", "effectful", RUN, '["approved"]',
            "--serve",
            "--effects", str(effects),
            "--kill", "t-approved:intent",
        )  # fmt: skip
        spawned.append(first)

        def waiting() -> bool:
            if not any(e["event"] == "started" for e in first.read_events()):
                return False
            found = _effects(db_url, RUN)
            return bool(found) and found[0].state is EffectState.AWAITING_APPROVAL

        wait_for(waiting, 30, "the refund to await approval", first)
        run = snapshot(db_url, RUN).run
        assert run is not None and run.status is RunStatus.WAITING  # holds no worker

        async def approve() -> None:
            app = App(db_url)
            await app.open(worker=False, create=False)
            try:
                await app.approve(RUN, by="alice", note="refund ok")
            finally:
                await app.close()

        asyncio.run(approve())
        assert first.wait(60) == -signal.SIGKILL, first.describe()  # died taking it
        assert _tool_lines(effects, "approved") == []
        [effect] = _effects(db_url, RUN)
        assert effect.state is EffectState.RESOLVED  # approved, not yet carried out

        second = _recover(tmp_path, db_url, effects, spawned)
        assert second.event("result")["result"]["tool"] == f"t-approved:{ARG}"

    lines = _tool_lines(effects, "approved")
    assert [line["key"] for line in lines] == [key]  # exactly once
    [effect] = _effects(db_url, RUN)
    assert effect.state is EffectState.COMPLETED and effect.attempt == 1
    events = [h["event"] for h in effect.history]
    assert events == ["approval_requested", "approval", "approved"]
    approval = effect.history[1]
    assert approval["by"] == "alice" and approval["note"] == "refund ok"


def test_approval_recorded_while_no_worker_runs(tmp_path: Path, db_url: str) -> None:
    """The worker dies while the run waits for approval; the approval is recorded with no
    worker alive; the next worker makes the call exactly once."""
    effects = tmp_path / "effects.jsonl"
    with children() as spawned:
        first = spawn(
            tmp_path, db_url,
            "--start", "effectful", RUN, '["approved"]',
            "--serve",
            "--effects", str(effects),
        )  # fmt: skip
        spawned.append(first)

        def waiting() -> bool:
            if not any(e["event"] == "started" for e in first.read_events()):
                return False
            found = _effects(db_url, RUN)
            return bool(found) and found[0].state is EffectState.AWAITING_APPROVAL

        wait_for(waiting, 30, "the refund to await approval", first)
        first.kill()

        async def approve() -> None:
            app = App(db_url)
            await app.open(worker=False, create=False)
            try:
                await app.approve(RUN, by="bob")
            finally:
                await app.close()

        asyncio.run(approve())
        second = _recover(tmp_path, db_url, effects, spawned)
        assert second.event("result")["result"]["tool"] == f"t-approved:{ARG}"
    assert len(_tool_lines(effects, "approved")) == 1


def test_an_agent_killed_between_a_model_call_and_its_tool_call_does_not_ask_again(
    tmp_path: Path, db_url: str
) -> None:
    """The model chose a payment; the worker dies before the payment's intent commits. The
    next worker replays the model's answer from the journal (the model is not called
    again) and makes the payment once."""
    effects = tmp_path / "effects.jsonl"
    with children() as spawned:
        first = spawn(
            tmp_path, db_url,
            "--start", "agentic", RUN, "[]",
            "--wait", RUN,
            "--effects", str(effects),
            "--kill", "t-agent:intent",
        )  # fmt: skip
        spawned.append(first)
        assert first.wait(60) == -signal.SIGKILL, first.describe()
        assert [e["step"] for e in read_effects(effects)] == ["model"]
        before = snapshot(db_url, RUN)
        assert [(e.kind, e.status.value) for e in before.entries] == [("model", "completed")]

        second = _recover(tmp_path, db_url, effects, spawned)
        assert second.event("result")["result"] == {"output": "paid", "turns": 2}

    lines = [e["step"] for e in read_effects(effects)]
    assert lines == ["model", "t-agent", "model"]  # two model calls in all, one payment
    after = snapshot(db_url, RUN)
    assert [e.kind for e in after.entries] == ["model", "tool", "model"]
