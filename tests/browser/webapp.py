"""The App the browser tests run with ``tether worker webapp:app``.

``app`` is built with no URL, so it reads ``TETHER_DATABASE_URL`` when the worker imports
it; the tests build their own App on the same file with ``build_app(url)`` to start runs
and make tokens from another process.

``refund_agent`` is the scenario of the tests: an agent (a ``ScriptedModel``: no network,
no keys) looks an order up and refunds it. The refund is irreversible and needs a person's
approval; its body appends one line to the ledger file named by ``TETHER_WEB_LEDGER``, the
payment provider's own record, which the tests count to prove the refund happened once.

The other workflows give the pages something to show: a run asleep, one waiting for a
signal with a child run, an agent stopped on its budget, a failed run, an email whose
outcome is unknown (in doubt) and a long import that keeps its worker busy.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

from tether import Agent, App, Budget, Context, Decision, Effect, OutcomeUnknown
from tether.agent import ScriptedModel, ToolCall

ORDERS = {
    "A-1001": {"order_id": "A-1001", "customer": "ada@example.com", "total_cents": 4200},
    "A-1002": {"order_id": "A-1002", "customer": "bob@example.com", "total_cents": 1999},
    "A-1003": {"order_id": "A-1003", "customer": "cy@example.com", "total_cents": 5600},
}


def ledger_path() -> Path:
    return Path(os.environ.get("TETHER_WEB_LEDGER", "webapp-ledger.jsonl"))


def read_ledger(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def build_app(database_url: str | None = None) -> App:
    app = App(database_url)

    @app.tool(effect=Effect.READ)
    def lookup_order(order_id: str) -> dict[str, Any]:
        """Find an order: customer and total."""
        return dict(ORDERS[order_id])

    @app.tool(
        effect=Effect.IRREVERSIBLE,
        approval=Decision.APPROVE,
        blast_radius="one customer's money",
        approval_timeout=4 * 3600,  # then rejected: nobody's money moves by default
    )
    def issue_refund(order_id: str, amount_cents: int, *, idempotency_key: str) -> dict[str, Any]:
        """Refund an order to the customer's card; a person approves each refund."""
        refund = {"refund_id": f"re_{idempotency_key[:10]}", "amount_cents": amount_cents}
        line = {"tool": "issue_refund", "key": idempotency_key, "order_id": order_id} | refund
        with ledger_path().open("a") as ledger:
            ledger.write(json.dumps(line) + "\n")
        return refund

    @app.tool(effect=Effect.IRREVERSIBLE, blast_radius="one customer's inbox")
    def send_email(to: str, subject: str, *, idempotency_key: str) -> str:
        """Send an email. The mail server of example.net times out after accepting it."""
        if to.endswith("@example.net"):
            raise OutcomeUnknown(f"the mail server timed out after the request to {to}")
        return f"msg_{idempotency_key[:10]}"

    @app.step
    def build_report(day: str) -> dict[str, Any]:
        return {"day": day, "orders": 182, "refunds": 3}

    @app.step
    async def load_catalog(source: str) -> int:
        await asyncio.sleep(3600)  # holds its worker's lease for the whole test session
        return 0

    @app.step
    def charge_card(order_id: str) -> str:
        raise RuntimeError(f"card declined for order {order_id} (insufficient funds)")

    model = ScriptedModel(
        [
            lambda request: ToolCall(
                id="order", name="lookup_order", arguments={"order_id": _order_of(request)}
            ),
            lambda request: ToolCall(
                id="refund",
                name="issue_refund",
                arguments={
                    "order_id": _order_of(request),
                    "amount_cents": ORDERS[_order_of(request)]["total_cents"],
                },
            ),
            "Refunded order in full; the customer will see it in 5-10 days.",
        ],
        name="support-model",
        price_per_token=0.000003,
    )
    agent: Agent[str] = Agent(
        model, [lookup_order, issue_refund], "You handle refund requests for the shop."
    )

    @app.workflow
    async def refund_agent(ctx: Context, order_id: str) -> dict[str, Any]:
        result = await agent.run(ctx, f"The customer asks for a refund of order {order_id}.")
        return {"answer": result.output, "tokens": result.usage.total_tokens}

    @app.workflow
    async def nightly_report(ctx: Context, day: str) -> dict[str, Any]:
        report = await build_report(day)
        await ctx.sleep(6 * 3600)
        return report

    @app.workflow
    async def verify_identity(ctx: Context, customer: str) -> bool:
        documents = await ctx.wait_signal("documents", timeout=86400)
        return bool(documents)

    @app.workflow
    async def onboarding(ctx: Context, customer: str) -> dict[str, Any]:
        verified = await ctx.child(verify_identity, customer)
        return {"customer": customer, "verified": verified}

    frugal_model = ScriptedModel(
        [
            ToolCall(id="o1", name="lookup_order", arguments={"order_id": "A-1001"}),
            ToolCall(id="o2", name="lookup_order", arguments={"order_id": "A-1002"}),
            "both orders found",
        ],
        name="support-model",
        price_per_token=0.000003,
    )
    frugal_agent: Agent[str] = Agent(
        frugal_model, [lookup_order], "You compare orders.", budget=Budget(tokens=40)
    )

    @app.workflow
    async def compare_orders(ctx: Context) -> str:
        return (await frugal_agent.run(ctx, "Compare orders A-1001 and A-1002.")).output

    @app.workflow
    async def checkout(ctx: Context, order_id: str) -> str:
        return await charge_card(order_id)

    @app.workflow
    async def import_catalog(ctx: Context, source: str) -> int:
        return await load_catalog(source)

    @app.workflow
    async def notify(ctx: Context, to: str) -> str:
        return await send_email(to, "Your refund is on its way")

    return app


def _order_of(request: Any) -> str:
    """The order id the customer named in the first user message."""
    for message in request.messages:
        if message.role == "user" and message.content:
            return str(message.content).rstrip(".").split()[-1]
    return "A-1001"


app = build_app()
