"""The Store protocol's effect log, exercised directly against every backend: an intent and
its journal entry in one fenced write, sealing, doubt, resolution and approval."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from test_store import ARGS, WORKFLOWS, AnyStore, claimed, rows

from tether import (
    EffectState,
    EffectStateError,
    EntryStatus,
    LeaseLostError,
    RunNotFoundError,
    RunStatus,
)
from tether.storage import Fence, InDoubt, NewEffect, NewEntry, NewRun, open_store


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[AnyStore]:
    s = open_store(db_url)
    await s.open()
    yield s
    await s.close()


def effect(seq: int = 1, attempt: int = 1, event: str = "intent", **extra: Any) -> NewEffect:
    fields: dict[str, Any] = {
        "seq": seq,
        "kind": "irreversible",
        "idempotency_key": f"key-{seq}",
        "blast_radius": "one customer",
        "approval": "auto",
        "decision": "auto",
        "tainted": False,
        "attempt": attempt,
        "event_json": json.dumps({"event": event, "attempt": attempt}),
    } | extra
    return NewEffect(**fields)


def tool_entry(seq: int = 1, status: str = "intent", output: Any = None, **extra: Any) -> NewEntry:
    now = time.time()
    sealed = status in ("completed", "failed")
    return NewEntry(
        seq,
        "tool",
        "send",
        status,
        json.dumps({"to": "ada"}),
        json.dumps(output) if status == "completed" else None,
        json.dumps({"type": "X", "message": "no"}) if status == "failed" else None,
        now,
        now if sealed else None,
        1,
        delivery=seq if sealed else None,
        **extra,
    )


async def test_intent_then_completion(store: AnyStore) -> None:
    fence = await claimed(store, "r1")
    await store.append_entry(fence, tool_entry(), effect=effect())
    [found] = await store.list_effects(run_id="r1")
    assert found.state is EffectState.INTENT
    assert (found.tool, found.kind.value, found.idempotency_key) == (
        "send",
        "irreversible",
        "key-1",
    )
    assert found.args == {"to": "ada"} and found.result is None
    assert found.blast_radius == "one customer" and found.tainted is False
    assert [h["event"] for h in found.history] == ["intent"]
    state = await store.load_state("r1")
    assert state.entries[1].status is EntryStatus.INTENT
    assert set(state.effects) == {1}  # an unsealed call: the worker needs its record

    await store.append_entry(fence, tool_entry(status="completed", output="sent"))
    [done] = await store.list_effects(run_id="r1")
    assert done.state is EffectState.COMPLETED and done.result == "sent"
    assert done.finished_at is not None and done.started_at is not None
    assert (await store.load_state("r1")).effects == {}  # nothing to recover


async def test_a_stale_intent_writes_nothing(store: AnyStore) -> None:
    fence = await claimed(store, "r1")
    stale = Fence(fence.run_id, fence.worker_id, fence.fence + 7)
    with pytest.raises(LeaseLostError):
        await store.append_entry(stale, tool_entry(), effect=effect())
    assert await rows(store, "SELECT count(*) FROM effects") == [(0,)]
    assert await store.list_entries("r1") == []


async def test_an_intent_written_again_counts_attempts_and_keeps_history(
    store: AnyStore,
) -> None:
    fence = await claimed(store, "r1")
    await store.append_entry(fence, tool_entry(), effect=effect())
    await store.append_entry(fence, tool_entry(), effect=effect(attempt=2, event="rerun"))
    [found] = await store.list_effects(run_id="r1")
    assert found.attempt == 2 and found.state is EffectState.INTENT
    assert [h["event"] for h in found.history] == ["intent", "rerun"]
    assert found.idempotency_key == "key-1"  # the first write's key stays


async def test_in_doubt_resolution_and_back_to_the_workers(store: AnyStore) -> None:
    fence = await claimed(store, "r1")
    await store.append_entry(fence, tool_entry(), effect=effect())
    with pytest.raises(EffectStateError, match="is intent, not in doubt"):
        await store.resolve_effect("r1", 1, json.dumps({"action": "retry"}), "{}")

    doubt = InDoubt(1, json.dumps({"event": "in_doubt", "reason": "restart"}))
    error = json.dumps({"type": "EffectInDoubtError", "seq": 1})
    await store.finish_run(fence, RunStatus.NEEDS_ATTENTION, error_json=error, in_doubt=doubt)
    [found] = await store.list_effects(in_doubt=True)
    assert found.state is EffectState.IN_DOUBT and found.in_doubt
    assert (await store.get_run("r1")).status is RunStatus.NEEDS_ATTENTION

    resolution = {"action": "done", "result": "msg-1", "by": "ada", "reason": "found it"}
    event = json.dumps({"event": "resolved"} | resolution)
    resolved = await store.resolve_effect("r1", 1, json.dumps(resolution), event)
    assert resolved.state is EffectState.RESOLVED and resolved.resolution == resolution
    assert [h["event"] for h in resolved.history] == ["intent", "in_doubt", "resolved"]
    run = await store.get_run("r1")
    assert run.status is RunStatus.PENDING and run.error is None
    assert await store.list_effects(in_doubt=True) == []
    with pytest.raises(EffectStateError, match="is resolved"):  # decided once
        await store.resolve_effect("r1", 1, json.dumps(resolution), event)

    # A worker claims it and carries the decision out: the record it replays with.
    [again] = await store.claim_runs("w2", 10, 30.0, WORKFLOWS)
    assert (await store.load_state("r1")).effects[1].resolution == resolution
    await store.append_entry(again, tool_entry(status="completed", output="msg-1"))
    [done] = await store.list_effects(run_id="r1")
    assert done.state is EffectState.COMPLETED and done.result == "msg-1"


async def test_resolve_errors_name_the_problem(store: AnyStore) -> None:
    with pytest.raises(RunNotFoundError):
        await store.resolve_effect("nope", 1, "{}", "{}")
    await claimed(store, "r1")
    with pytest.raises(EffectStateError, match="no tool call at seq 4"):
        await store.resolve_effect("r1", 4, "{}", "{}")


async def test_approval_is_delivered_once_and_wakes_the_run(store: AnyStore) -> None:
    fence = await claimed(store, "r1")
    waiting = effect(attempt=0, event="approval_requested", decision="approve")
    await store.append_entry(fence, tool_entry(status="waiting"), effect=waiting)
    [found] = await store.list_effects(run_id="r1")
    assert found.state is EffectState.AWAITING_APPROVAL and found.decision.value == "approve"
    await store.suspend_run(
        fence, wake_at=None, signal_names=frozenset({"tether:approval:1"}), child_ids=frozenset()
    )
    assert await store.claim_runs("w1", 10, 30.0, WORKFLOWS) == []  # parked

    verdict = json.dumps({"approved": True, "by": "ada", "action": "approve"})
    decided = await store.decide_approval(
        "r1", 1, verdict, json.dumps({"event": "approval"}), "tether:approval:1"
    )
    assert decided.state is EffectState.RESOLVED
    [signal] = await store.list_signals("r1")
    assert signal.name == "tether:approval:1" and signal.value["approved"] is True
    with pytest.raises(EffectStateError, match="not awaiting approval"):
        await store.decide_approval("r1", 1, verdict, "{}", "tether:approval:1")
    assert len(await store.list_signals("r1")) == 1  # the refused second one wrote nothing

    [fence2] = await store.claim_runs("w1", 10, 30.0, WORKFLOWS)  # woken
    await store.append_entry(
        fence2, tool_entry(), effect=effect(attempt=1, event="approved"), consume_signal=signal.id
    )
    assert await store.list_signals("r1") == []
    [taken] = await store.list_effects(run_id="r1")
    assert taken.state is EffectState.INTENT and taken.resolution is None
    assert [h["event"] for h in taken.history] == ["approval_requested", "approval", "approved"]


async def test_effect_listing_puts_doubt_first(store: AnyStore) -> None:
    for run_id in ("a", "b", "c"):
        await store.create_run(NewRun(run_id, "flow", ARGS))
    fences = {f.run_id: f for f in await store.claim_runs("w1", 10, 30.0, WORKFLOWS)}
    for run_id in ("a", "b", "c"):
        await store.append_entry(fences[run_id], tool_entry(), effect=effect())
        await store.append_entry(fences[run_id], tool_entry(2, "completed", "ok"), effect=effect(2))
    doubt = InDoubt(1, json.dumps({"event": "in_doubt"}))
    await store.finish_run(fences["b"], RunStatus.NEEDS_ATTENTION, error_json="{}", in_doubt=doubt)
    listed = await store.list_effects()
    assert (listed[0].run_id, listed[0].seq, listed[0].state) == ("b", 1, EffectState.IN_DOUBT)
    assert len(listed) == 6
    assert [e.seq for e in await store.list_effects(run_id="a")] == [1, 2]
    assert len(await store.list_effects(limit=2, offset=5)) == 1


async def test_an_unfinished_call_of_an_ended_run_is_abandoned(store: AnyStore) -> None:
    fence = await claimed(store, "r1")
    await store.append_entry(fence, tool_entry(), effect=effect())
    doubt = InDoubt(1, json.dumps({"event": "in_doubt"}))
    await store.finish_run(fence, RunStatus.NEEDS_ATTENTION, error_json="{}", in_doubt=doubt)
    await store.cancel_run("r1", "changed our mind")
    [found] = await store.list_effects(run_id="r1")
    assert found.state is EffectState.ABANDONED
    assert await store.list_effects(in_doubt=True) == []  # nothing left to decide
    with pytest.raises(EffectStateError, match="ended before its 'send' call"):
        await store.resolve_effect("r1", 1, json.dumps({"action": "retry"}), "{}")
