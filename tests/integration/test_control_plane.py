"""The control plane's query and command API: run tags, approval deadlines with a default
action, the approvals inbox, the roll-up and hashed bearer tokens, on both backends."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path
from typing import Any

import pytest
from test_effects import wait_effect, wait_status

from tether import (
    App,
    ApprovalRejectedError,
    Context,
    Decision,
    Effect,
    EffectState,
    EffectStateError,
    RegistrationError,
    Role,
    RunStatus,
    TetherError,
)

POLL = 0.05


def build(db_url: str, calls: list[str], **options: Any) -> App:
    app = App(db_url, poll_interval=POLL, **options)

    @app.tool(effect=Effect.IRREVERSIBLE, approval=Decision.APPROVE, blast_radius="money")
    async def refund(order: str, *, idempotency_key: str) -> str:
        calls.append(order)
        return f"refunded {order}"

    @app.tool(
        effect=Effect.IRREVERSIBLE,
        approval=Decision.APPROVE,
        approval_timeout=0.6,
        on_timeout="reject",
    )
    async def wire(order: str) -> str:
        calls.append(f"wire {order}")
        return f"wired {order}"

    @app.tool(
        effect=Effect.IDEMPOTENT,
        approval=Decision.APPROVE,
        approval_timeout=0.6,
        on_timeout="approve",
    )
    async def restock(item: str, *, idempotency_key: str) -> str:
        calls.append(f"restock {item}")
        return f"restocked {item}"

    @app.tool(effect=Effect.IRREVERSIBLE)
    async def email(to: str) -> str:
        calls.append(f"email {to}")
        return "sent"

    @app.workflow
    async def pay(ctx: Context, order: str) -> str:
        return await refund(order)

    @app.workflow
    async def pay_by_wire(ctx: Context, order: str) -> str:
        try:
            return await wire(order)
        except ApprovalRejectedError as exc:
            return f"not wired: {exc.message}"

    @app.workflow
    async def replenish(ctx: Context, item: str) -> str:
        return await restock(item)

    @app.workflow
    async def notify(ctx: Context, to: str) -> str:
        return await email(to)

    @app.workflow
    async def parent(ctx: Context, order: str) -> str:
        return await ctx.child(pay, order, run_id=f"{ctx.run_id}-child")

    return app


# -- tags ---------------------------------------------------------------------------------
async def test_tags_are_stored_filtered_on_and_inherited_by_children(db_url: str) -> None:
    calls: list[str] = []
    app = build(db_url, calls)
    async with app:
        await app.start("parent", "o-1", run_id="p1", tags=["prod", "tenant:acme", "prod"])
        await app.start("notify", "x@example.com", run_id="n1", tags=["staging"])
        await wait_status(app, "p1", RunStatus.WAITING)
        await wait_effect(app, "p1-child", 1, EffectState.AWAITING_APPROVAL)
        assert (await app.get_run("p1")).tags == ("prod", "tenant:acme")  # deduplicated
        assert (await app.get_run("p1-child")).tags == ("prod", "tenant:acme")
        assert {r.run_id for r in await app.list_runs(tag="prod")} == {"p1", "p1-child"}
        assert [r.run_id for r in await app.list_runs(tag="staging")] == ["n1"]
        assert await app.list_runs(tag="tenant:other") == []
        assert [r.run_id for r in await app.list_runs(tag="prod", workflow="pay")] == ["p1-child"]
        # Starting an existing run_id again neither starts nor retags anything.
        await app.start("parent", "o-1", run_id="p1", tags=["other"])
        assert (await app.get_run("p1")).tags == ("prod", "tenant:acme")
        assert await app.list_runs(tag="other") == []


@pytest.mark.parametrize(
    ("tags", "problem"),
    [
        ("prod", "must be a list of strings"),
        ([""], "a tag must be a non-empty string"),
        ([42], "a tag must be a non-empty string"),
        (["x" * 101], "at most 100 characters"),
        ([f"t{i}" for i in range(33)], "at most 32 tags"),
    ],
)
async def test_bad_tags_are_refused_before_anything_is_stored(
    sqlite_url: str, tags: Any, problem: str
) -> None:
    app = build(sqlite_url, [])
    async with app:
        with pytest.raises(TetherError, match=problem):
            await app.start("notify", "x", run_id="bad", tags=tags)
        assert await app.list_runs() == []


async def test_a_policy_rule_on_tags_gates_only_the_runs_carrying_them(
    db_url: str, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('[[rule]]\ntool = "email"\ntags = ["prod"]\ndecision = "approve"\n')
    calls: list[str] = []
    app = build(db_url, calls, policy=policy)
    async with app:
        staging = await app.start("notify", "a@example.com", run_id="s1", tags=["staging"])
        assert await staging.result(timeout=30) == "sent"
        await app.start("notify", "b@example.com", run_id="p1", tags=["prod"])
        held = await wait_effect(app, "p1", 1, EffectState.AWAITING_APPROVAL)
        assert held.decision is Decision.APPROVE
        assert held.history[0]["rule"] == f"rule at {policy}:1"
        assert calls == ["email a@example.com"]


# -- approval deadlines -------------------------------------------------------------------
async def test_no_decision_by_the_deadline_rejects_by_default(db_url: str) -> None:
    calls: list[str] = []
    app = build(db_url, calls)
    async with app:
        started = time.time()
        handle = await app.start("pay_by_wire", "o-1", run_id="w1")
        held = await wait_effect(app, "w1", 1, EffectState.AWAITING_APPROVAL)
        assert held.on_timeout == "reject"
        assert held.deadline is not None and started < held.deadline <= time.time() + 0.6
        result = await handle.result(timeout=30)
        assert result.startswith("not wired: tether (deadline) rejected calling tool 'wire'")
        effect = await app.get_effect("w1", 1)
        assert effect.state is EffectState.FAILED
        assert effect.history[-1]["event"] == "rejected"
        assert effect.history[-1]["timed_out"] is True
        assert calls == []
        assert await app.list_approvals() == []


async def test_no_decision_by_the_deadline_approves_when_so_declared(db_url: str) -> None:
    calls: list[str] = []
    app = build(db_url, calls)
    async with app:
        handle = await app.start("replenish", "bolts", run_id="r1")
        assert await handle.result(timeout=30) == "restocked bolts"
        effect = await app.get_effect("r1", 1)
        assert [e["event"] for e in effect.history] == [
            "approval_requested",
            "approval",
            "approved",
        ]
        assert effect.history[-1]["by"] == "tether (deadline)"
        assert calls == ["restock bolts"]


async def test_a_person_deciding_before_the_deadline_wins(db_url: str) -> None:
    calls: list[str] = []
    app = build(db_url, calls)
    async with app:
        handle = await app.start("pay_by_wire", "o-2", run_id="w2")
        await wait_effect(app, "w2", 1, EffectState.AWAITING_APPROVAL)
        await app.approve("w2", 1, by="alice", note="checked")
        assert await handle.result(timeout=30) == "wired o-2"
        await asyncio.sleep(0.8)  # past the deadline: nothing more happens
        effect = await app.get_effect("w2", 1)
        assert [e["event"] for e in effect.history] == [
            "approval_requested",
            "approval",
            "approved",
        ]
        assert effect.history[-1]["by"] == "alice"
        assert calls == ["wire o-2"]


async def test_a_deadline_that_passed_while_no_worker_ran_is_applied_on_resume(
    db_url: str,
) -> None:
    calls: list[str] = []
    app = build(db_url, calls)
    async with app:
        await app.start("pay_by_wire", "o-3", run_id="w3")
        await wait_effect(app, "w3", 1, EffectState.AWAITING_APPROVAL)
        await wait_status(app, "w3", RunStatus.WAITING)
    await asyncio.sleep(0.8)  # the deadline passes with no worker at all
    again = build(db_url, calls)
    async with again:
        result = await again.handle("w3").result(timeout=30)
        assert result.startswith("not wired")
    assert calls == []


async def test_a_decision_made_in_time_wins_even_if_no_worker_ran_until_after_the_deadline(
    db_url: str,
) -> None:
    calls: list[str] = []
    app = build(db_url, calls)
    async with app:
        await app.start("pay_by_wire", "o-5", run_id="w5")
        await wait_effect(app, "w5", 1, EffectState.AWAITING_APPROVAL)
        await wait_status(app, "w5", RunStatus.WAITING)
    desk = build(db_url, calls)  # a person's desk: no worker runs here
    await desk.open(worker=False)
    try:
        await desk.approve("w5", 1, by="alice", note="in time")
    finally:
        await desk.close()
    await asyncio.sleep(0.8)  # the deadline passes before any worker sees the approval
    again = build(db_url, calls)
    async with again:
        assert await again.handle("w5").result(timeout=30) == "wired o-5"
        effect = await again.get_effect("w5", 1)
        assert [e["event"] for e in effect.history] == [
            "approval_requested",
            "approval",
            "approved",
        ]
        with pytest.raises(EffectStateError, match="not awaiting approval"):
            await again.approve("w5", 1, approved=False)
    assert calls == ["wire o-5"]


async def test_a_policy_deadline_overrides_the_tools(db_url: str, tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(
        '[[rule]]\ntool = "refund"\ndecision = "approve"\ntimeout = 0.5\non_timeout = "approve"\n'
    )
    calls: list[str] = []
    app = build(db_url, calls, policy=policy)
    async with app:
        handle = await app.start("pay", "o-4", run_id="d1")
        assert await handle.result(timeout=30) == "refunded o-4"
        assert calls == ["o-4"]


def test_bad_deadline_declarations_are_refused_at_registration() -> None:
    app = App("sqlite:///unused.db")
    for bad in (0, -1, float("inf"), "4h", True):
        with pytest.raises(RegistrationError, match="approval_timeout must be seconds > 0"):
            app.tool(effect=Effect.READ, approval_timeout=bad)(lambda: None)
    with pytest.raises(RegistrationError, match="on_timeout must be 'reject' or 'approve'"):
        app.tool(effect=Effect.READ, on_timeout="ignore")(lambda: None)


# -- the approvals inbox and the roll-up --------------------------------------------------
async def test_the_inbox_lists_waiting_calls_soonest_deadline_first(db_url: str) -> None:
    calls: list[str] = []
    app = build(db_url, calls)
    async with app:
        await app.start("pay", "o-1", run_id="a1")
        await wait_effect(app, "a1", 1, EffectState.AWAITING_APPROVAL)
        await app.start("pay", "o-2", run_id="a2")
        await wait_effect(app, "a2", 1, EffectState.AWAITING_APPROVAL)
        await app.start("notify", "x", run_id="n1")  # needs no approval
        inbox = await app.list_approvals()
        assert [(e.run_id, e.tool) for e in inbox] == [("a1", "refund"), ("a2", "refund")]
        assert [e.run_id for e in await app.list_approvals(limit=1, offset=1)] == ["a2"]
        await app.approve("a1", 1, by="alice")
        await app.cancel("a2")
        await wait_status(app, "a1", RunStatus.SUCCEEDED)
        assert await app.list_approvals() == []  # approved, or of a run that ended
        with pytest.raises(TetherError, match="limit must be a whole number >= 1"):
            await app.list_approvals(limit=0)


async def test_the_roll_up_orders_what_needs_a_person_by_urgency(db_url: str) -> None:
    calls: list[str] = []
    app = build(db_url, calls)

    @app.workflow
    async def broken(ctx: Context) -> None:
        raise ValueError("the payload had no order id")

    async with app:
        await app.start("pay", "o-1", run_id="plain", tags=["prod"])
        await wait_effect(app, "plain", 1, EffectState.AWAITING_APPROVAL)
        await app.start("pay_by_wire", "o-2", run_id="deadline")
        await wait_effect(app, "deadline", 1, EffectState.AWAITING_APPROVAL)
        failed = await app.start(broken, run_id="failed")
        with pytest.raises(Exception, match="no order id"):
            await failed.result(timeout=30)
        view = await app.overview()
        kinds = [(item.kind, item.run_id) for item in view.attention]
        assert kinds[:3] == [("approval", "deadline"), ("approval", "plain"), ("failed", "failed")]
        first = view.attention[0]
        assert first.deadline is not None and first.workflow == "pay_by_wire"
        assert first.action == "tether approve deadline 1  (or --reject --note '<why>')"
        assert view.counts == {"waiting": 2, "failed": 1}
        assert len(view.workers) == 1 and view.workers[0].runs == []
        assert len((await app.overview(limit=1)).attention) == 1


async def test_the_roll_up_shows_what_each_worker_is_doing(db_url: str) -> None:
    app = App(db_url, poll_interval=POLL)
    release = asyncio.Event()

    @app.step
    async def slow() -> str:
        await release.wait()
        return "done"

    @app.workflow
    async def busy(ctx: Context) -> str:
        return await slow()

    async with app:
        handle = await app.start(busy, run_id="b1")
        await wait_status(app, "b1", RunStatus.RUNNING)
        view = await app.overview()
        assert [[r.run_id for r in w.runs] for w in view.workers] == [["b1"]]
        assert view.counts == {"running": 1}
        release.set()
        assert await handle.result(timeout=30) == "done"


# -- tokens -------------------------------------------------------------------------------
async def test_tokens_are_stored_hashed_checked_and_revoked(db_url: str) -> None:
    app = App(db_url)
    async with app:
        token, secret = await app.create_token("approver", name="alice", by="admin")
        assert token.role is Role.APPROVER and token.name == "alice" and token.active
        assert secret.startswith(f"tt_{token.token_id}_")
        found = await app.check_token(secret)
        assert found is not None and found.token_id == token.token_id
        assert found.role is Role.APPROVER
        touched = next(t for t in await app.list_tokens() if t.token_id == token.token_id)
        assert touched.last_used_at is not None
        # Near misses and garbage are refused without error.
        for wrong in (secret[:-1] + ("A" if secret[-1] != "A" else "B"), "", "tt_", "x" * 500):
            assert await app.check_token(wrong) is None
        revoked = await app.revoke_token(token.token_id)
        assert revoked.revoked_at is not None and not revoked.active
        assert await app.check_token(secret) is None
        again = await app.revoke_token(token.token_id)  # revoking twice keeps the first time
        assert again.revoked_at == revoked.revoked_at
        with pytest.raises(TetherError, match="no token 'nope'"):
            await app.revoke_token("nope")
        with pytest.raises(TetherError, match="role 'root' is not one of viewer, approver"):
            await app.create_token("root")
        with pytest.raises(TetherError, match="name must be a non-empty string"):
            await app.create_token("viewer", name="  ")


def read_database(db_path: Path) -> bytes:
    wal = Path(f"{db_path}-wal")
    return db_path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


async def test_the_secret_itself_is_never_stored(sqlite_url: str, db_path: Path) -> None:
    app = App(sqlite_url)
    async with app:
        _, secret = await app.create_token("admin")
    raw = await asyncio.to_thread(read_database, db_path)
    assert secret.encode() not in raw
    assert hashlib.sha256(secret.encode()).hexdigest().encode() in raw


async def test_values_json_cannot_carry_are_refused_alike_on_both_backends(db_url: str) -> None:
    calls: list[str] = []
    app = build(db_url, calls)
    async with app:
        await app.start("pay", "o-1", run_id="a1")
        await wait_effect(app, "a1", 1, EffectState.AWAITING_APPROVAL)
        for bad in ("a\x00b",):
            with pytest.raises(TetherError, match="holds a NUL character"):
                await app.approve("a1", 1, note=bad)
            with pytest.raises(TetherError, match="holds a NUL character"):
                await app.approve("a1", 1, by=bad)
        with pytest.raises(TetherError, match="holds NaN, which JSON cannot carry"):
            await app.resolve("a1", 1, "done", result=float("nan"), reason="checked")
        with pytest.raises(TetherError, match="holds Infinity"):
            await app.resolve("a1", 1, "done", result={"x": [float("inf")]}, reason="checked")
        effect = await app.get_effect("a1", 1)
        assert effect.state is EffectState.AWAITING_APPROVAL  # nothing was stored
        assert [e["event"] for e in effect.history] == ["approval_requested"]
