"""Regression tests for defects an adversarial review found in the effect log: a call
decided while its thread still runs, secrets cut out of JSON text, secrets in logs and in
reasons, non-text secrets, and a sibling call's result dropped when its run ended."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import pytest
from test_effects import eventually, wait_status

from tether import App, Context, Done, Effect, EffectState, NotDone, RunStatus

POLL = 0.05


async def test_a_secret_inside_a_number_does_not_corrupt_the_stored_result(db_url: str) -> None:
    app = App(db_url, poll_interval=POLL)

    @app.tool(effect=Effect.READ, secret_params=("pin",))
    async def account(user: str, pin: str) -> dict[str, Any]:
        return {"user": user, "balance_cents": 1204817, "echo": f"pin {pin} ok", "pin": pin}

    @app.workflow
    async def flow(ctx: Context) -> dict[str, Any]:
        return await account("ada", "0481")

    async with app:
        result = await (await app.start(flow, run_id="r1")).result(timeout=10)
        [effect] = await app.list_effects("r1")
        journal = await app.get_journal("r1")
    expected = {
        "user": "ada",
        "balance_cents": 1204817,
        "echo": "pin [secret] ok",
        "pin": "[secret]",
    }
    assert result == expected  # the workflow sees what the journal holds
    assert effect.result == expected and journal[0].output == expected


async def test_a_sync_irreversible_call_past_its_timeout_is_decided_only_once_it_ended(
    db_url: str,
) -> None:
    """A thread cannot be stopped: the engine waits for it before asking the reconcile
    hook, so the hook sees the message sent and nothing is sent twice."""
    sent: list[str] = []
    lock = threading.Lock()
    app = App(db_url, poll_interval=POLL)

    def find_sent(to: str, *, idempotency_key: str) -> Done | NotDone:
        with lock:
            return Done(f"msg-{idempotency_key[:4]}") if idempotency_key in sent else NotDone()

    @app.tool(effect=Effect.IRREVERSIBLE, reconcile=find_sent, timeout=0.2, retries=2)
    def send(to: str, *, idempotency_key: str) -> str:
        time.sleep(0.5)
        with lock:
            sent.append(idempotency_key)
        return f"msg-{idempotency_key[:4]}"

    @app.workflow
    async def flow(ctx: Context) -> str:
        return await send("ada")

    async with app:
        result = await (await app.start(flow, run_id="r1")).result(timeout=10)
        [effect] = await app.list_effects("r1")
    assert len(sent) == 1 and result == f"msg-{sent[0][:4]}"
    assert [h["event"] for h in effect.history] == ["intent", "reconciled"]


async def test_shutdown_waits_for_an_irreversible_thread_before_handing_the_run_back(
    db_url: str,
) -> None:
    sent: list[str] = []
    lock = threading.Lock()

    def build(grace: float) -> App:
        app = App(db_url, poll_interval=POLL, shutdown_grace=grace)

        def find_sent(to: str, *, idempotency_key: str) -> Done | NotDone:
            with lock:
                return Done("msg") if idempotency_key in sent else NotDone()

        @app.tool(effect=Effect.IRREVERSIBLE, reconcile=find_sent)
        def send(to: str, *, idempotency_key: str) -> str:
            time.sleep(0.6)
            with lock:
                sent.append(idempotency_key)
            return "msg"

        @app.workflow
        async def flow(ctx: Context) -> str:
            return await send("ada")

        return app

    first = build(grace=0.05)
    await first.open()
    await first.start("flow", run_id="r1")
    await eventually(lambda: first.list_effects("r1"))  # the call is in flight
    await first.close()  # grace over before the body ends: the run is cancelled, handed back
    assert len(sent) == 1  # ...but only once the body's thread had ended
    second = build(grace=5)
    async with second:
        assert await second.handle("r1").result(timeout=10) == "msg"
        [effect] = await second.list_effects("r1")
    assert len(sent) == 1
    assert effect.state is EffectState.COMPLETED and effect.history[-1]["event"] == "reconciled"


async def test_retry_logs_do_not_show_secrets(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = App(db_url, poll_interval=POLL)
    tries: list[int] = []

    @app.tool(effect=Effect.READ, secret_params=("token",), retries=2, backoff=0.001)
    async def page(url: str, token: str) -> str:
        tries.append(1)
        if len(tries) < 3:
            raise PermissionError(f"rejected: Bearer {token}")
        return "ok"

    @app.workflow
    async def flow(ctx: Context) -> str:
        return await page("https://example.com", "sk-live-SECRET123")

    caplog.set_level(logging.INFO, logger="tether")
    async with app:
        assert await (await app.start(flow, run_id="r1")).result(timeout=10) == "ok"
    retried = [r.getMessage() for r in caplog.records if "attempt" in r.getMessage()]
    assert len(retried) == 2 and all("Bearer [secret]" in line for line in retried)
    assert "sk-live-SECRET123" not in caplog.text


async def test_reasons_do_not_show_secrets(db_url: str) -> None:
    from tether import OutcomeUnknown

    app = App(db_url, poll_interval=POLL)

    def odd_hook(to: str, token: str) -> Any:
        return {"headers": {"Authorization": f"Bearer {token}"}}  # neither Done nor NotDone

    @app.tool(effect=Effect.IRREVERSIBLE, reconcile=odd_hook, secret_params=("token",))
    async def send(to: str, token: str) -> str:
        raise OutcomeUnknown("reset")

    @app.workflow
    async def flow(ctx: Context) -> str:
        return await send("ada", "sk-live-SECRET456")

    async with app:
        await app.start(flow, run_id="r1")
        run = await wait_status(app, "r1", RunStatus.NEEDS_ATTENTION, timeout=10)
        [effect] = await app.list_effects("r1")
    assert run.error is not None and "Bearer [secret]" in run.error["reason"]
    assert "sk-live-SECRET456" not in str(run.error) + str(effect.history)


async def test_numbers_and_containers_given_as_secrets_are_scrubbed(db_url: str) -> None:
    app = App(db_url, poll_interval=POLL)

    @app.tool(effect=Effect.READ, secret_params=("pin", "creds"))
    async def login(user: str, pin: int, creds: dict[str, str]) -> str:
        raise PermissionError(f"bad pin {pin} / creds {creds}")

    @app.workflow
    async def flow(ctx: Context) -> str:
        try:
            return await login("ada", 987654, {"api_key": "sk-XYZ-777"})
        except Exception as exc:
            return str(exc)

    async with app:
        message = await (await app.start(flow, run_id="r1")).result(timeout=10)
        [effect] = await app.list_effects("r1")
    assert "987654" not in message and "sk-XYZ-777" not in message
    assert effect.error is not None
    assert effect.error["message"] == "bad pin [secret] / creds {'api_key': '[secret]'}"


async def test_a_call_in_flight_when_the_workflow_fails_is_still_recorded(db_url: str) -> None:
    sent: list[str] = []
    app = App(db_url, poll_interval=POLL)

    @app.tool(effect=Effect.IRREVERSIBLE)
    async def send_email(to: str) -> str:
        await asyncio.sleep(0.2)
        sent.append(to)
        return f"sent to {to}"

    @app.tool(effect=Effect.READ)
    async def lookup(key: str) -> str:
        raise RuntimeError("not found")

    @app.workflow
    async def flow(ctx: Context) -> list[str]:
        return list(await asyncio.gather(send_email("ada"), lookup("x")))

    async with app:
        await app.start(flow, run_id="r1")
        run = await wait_status(
            app, "r1", RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED, timeout=10
        )
        effects = {e.seq: e for e in await app.list_effects("r1")}
    assert run.status is RunStatus.FAILED
    assert sent == ["ada"]
    assert effects[1].state is EffectState.COMPLETED and effects[1].result == "sent to ada"


async def test_shutdown_waits_for_an_irreversible_thread_in_a_gathered_branch(
    db_url: str,
) -> None:
    sent: list[str] = []
    lock = threading.Lock()

    def build(grace: float) -> App:
        app = App(db_url, poll_interval=POLL, shutdown_grace=grace)

        def find_sent(to: str, *, idempotency_key: str) -> Done | NotDone:
            with lock:
                return Done(f"to {to}") if idempotency_key in sent else NotDone()

        @app.tool(effect=Effect.IRREVERSIBLE, reconcile=find_sent)
        def send(to: str, *, idempotency_key: str) -> str:
            time.sleep(0.6 if to == "slow" else 0.0)
            with lock:
                sent.append(idempotency_key)
            return f"to {to}"

        @app.workflow
        async def flow(ctx: Context) -> list[str]:
            async def later() -> str:
                await ctx.sleep(0.05)
                return await send("fast")

            return list(await asyncio.gather(send("slow"), later()))

        return app

    first = build(grace=0.05)
    await first.open()
    await first.start("flow", run_id="r1")
    await eventually(lambda: first.list_effects("r1"))
    await first.close()
    second = build(grace=5)
    async with second:
        assert await second.handle("r1").result(timeout=10) == ["to slow", "to fast"]
    assert len(sent) == len(set(sent)) == 2  # each call made once
