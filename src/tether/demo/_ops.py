"""The operations agent: its App, its tools, and the script its model follows.

``support_shift`` runs one ``Agent`` over the open support queue. The model is a
``ScriptedModel`` (no network, no keys) whose turns are functions of the conversation, so
each answer uses what the tools returned, as a real model's would:

1. list the open tickets;
2. look up the three customers, in parallel;
3. act, in parallel: refund a duplicate charge (irreversible), check a shipment (read),
   create a password reset link (idempotent);
4. draft one reply per ticket and send the three emails (irreversible), in parallel;
5. summarize the shift.

Every tool body and every model turn appends to the ledger (see ``_world``), so that the
demo can count from outside the engine how often each thing really happened.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._records import Effect
from ..agent import Agent, ModelRequest, ScriptedModel, ToolCall
from ..engine import App, Context, Done, NotDone, Tool
from ._world import CUSTOMERS, SHIPMENTS, TICKETS, append, read_ledger

__all__ = ["KILL_TURN", "MODEL", "build_app"]

MODEL = "scripted"  # the model's name: the name of its journal entries
# The model turn the demo kills the worker in: drafting the replies, after the refund and
# before any email. The turns before it are recorded; this one is in flight.
KILL_TURN = 4
THINK = {1: 0.5, 2: 0.5, 3: 0.7, 4: 1.5, 5: 0.6}  # seconds each turn "thinks"
PRICE_PER_TOKEN = 3e-6  # USD, to show a cost

INSTRUCTIONS = (
    "You are Brightdesk's support operations agent. Work through the open support queue: "
    "look up each customer, fix what you can (refund duplicate charges, send password "
    "reset links, check shipments), answer every ticket by email, then summarize."
)

Answer = str | ToolCall | list[ToolCall]


def build_app(database_url: str, ledger: Path) -> App:
    """The demo's App: the tools, the agent and the ``support_shift`` workflow. Tool
    bodies and model turns append what they do to ``ledger``."""
    # A short lease only bounds the worst case: a dead local worker is taken over at once.
    app = App(database_url, lease_seconds=5.0, shutdown_grace=5.0)

    def record(tool: str, args: dict[str, Any], result: Any, key: str | None = None) -> None:
        append(ledger, call="tool", tool=tool, key=key, args=args, result=result)

    def made(tool: str, key: str) -> Done | NotDone:
        """Reconcile: did the other side record a call with this key? (Only asked if a
        crash lands between a call's intent and its completion.)"""
        for line in read_ledger(ledger):
            if line.get("tool") == tool and line.get("key") == key:
                return Done(line["result"])
        return NotDone()

    # Sync bodies, as with a blocking HTTP client: the engine runs them on its thread pool.
    @app.tool(effect=Effect.READ)
    def list_tickets(queue: str, status: str = "open") -> list[dict[str, Any]]:
        """List the tickets of a helpdesk queue."""
        time.sleep(0.3)
        tickets = [dict(ticket) for ticket in TICKETS] if status == "open" else []
        record("list_tickets", {"queue": queue, "status": status}, len(tickets))
        return tickets

    @app.tool(effect=Effect.READ)
    def lookup_customer(email: str) -> dict[str, Any]:
        """Find a customer in the CRM by email: plan, charges, orders."""
        time.sleep(0.3)
        customer = dict(CUSTOMERS[email])
        record("lookup_customer", {"email": email}, customer["customer_id"])
        return customer

    @app.tool(effect=Effect.READ)
    def track_shipment(carrier: str, tracking_number: str) -> dict[str, Any]:
        """Ask the carrier where a parcel is."""
        time.sleep(0.25)
        status = {"carrier": carrier, "tracking_number": tracking_number}
        status.update(SHIPMENTS[tracking_number])
        record("track_shipment", {"tracking_number": tracking_number}, status["status"])
        return status

    def refund_made(*_: Any, idempotency_key: str, **__: Any) -> Done | NotDone:
        return made("issue_refund", idempotency_key)

    @app.tool(
        effect=Effect.IRREVERSIBLE, blast_radius="one customer's money", reconcile=refund_made
    )
    def issue_refund(
        customer_id: str, charge_id: str, amount_cents: int, reason: str, *, idempotency_key: str
    ) -> dict[str, Any]:
        """Refund a charge to the customer's card. Money sent cannot be taken back."""
        time.sleep(0.4)  # the payment provider's API
        refund = {
            "refund_id": f"re_{idempotency_key[:14]}",
            "charge_id": charge_id,
            "amount_cents": amount_cents,
            "status": "succeeded",
        }
        args = {"customer_id": customer_id, "charge_id": charge_id, "amount_cents": amount_cents}
        record("issue_refund", args, refund, idempotency_key)
        return refund

    @app.tool(effect=Effect.IDEMPOTENT)
    def create_reset_link(customer_id: str, *, idempotency_key: str) -> dict[str, Any]:
        """Create a one-time password reset link. The identity service keeps one link per
        idempotency key: asking again with the same key returns the same link."""
        time.sleep(0.3)
        link = {"url": f"https://app.brightdesk.example/reset/{idempotency_key[:20]}"}
        link["expires_in"] = "24 hours"
        record("create_reset_link", {"customer_id": customer_id}, link, idempotency_key)
        return link

    def email_sent(*_: Any, idempotency_key: str, **__: Any) -> Done | NotDone:
        return made("send_email", idempotency_key)

    @app.tool(effect=Effect.IRREVERSIBLE, blast_radius="one customer", reconcile=email_sent)
    def send_email(to: str, subject: str, body: str, *, idempotency_key: str) -> str:
        """Send an email to a customer. It cannot be unsent."""
        time.sleep(0.35)  # the mail server
        message_id = f"msg_{idempotency_key[:12]}"
        record("send_email", {"to": to, "subject": subject}, message_id, idempotency_key)
        return message_id

    tools: list[Tool[Any, Any]] = [
        list_tickets,
        lookup_customer,
        track_shipment,
        issue_refund,
        create_reset_link,
        send_email,
    ]
    model = ScriptedModel(_script(ledger), name=MODEL, price_per_token=PRICE_PER_TOKEN)
    agent: Agent[str] = Agent(model, tools, INSTRUCTIONS, max_turns=8)

    @app.workflow
    async def support_shift(ctx: Context, queue: str) -> dict[str, Any]:
        result = await agent.run(ctx, f"Work through the open tickets in the {queue!r} queue.")
        return {
            "summary": result.output,
            "model_calls": result.turns,
            "tokens": result.usage.total_tokens,
            "cost_usd": round(result.cost_usd, 4),
        }

    return app


# -- the model's script --------------------------------------------------------------------
def _script(ledger: Path) -> list[Callable[[ModelRequest], Any]]:
    def turn(number: int, answer: Callable[[dict[str, Any]], Answer]) -> Any:
        async def respond(request: ModelRequest) -> Answer:
            # One line when asked and one when answered: a turn cut off by a crash shows.
            append(ledger, call="model", turn=number, phase="asked")
            await asyncio.sleep(THINK[number])
            reply = answer(_tool_results(request))
            append(ledger, call="model", turn=number, phase="answered")
            return reply

        return respond

    return [
        turn(1, _read_queue),
        turn(2, _look_up_customers),
        turn(3, _act),
        turn(4, _reply),
        turn(5, _summarize),
    ]


def _tool_results(request: ModelRequest) -> dict[str, Any]:
    """What the tools returned so far, by call id (tool messages hold JSON)."""
    return {
        message.tool_call_id: json.loads(message.content)
        for message in request.messages
        if message.role == "tool" and message.tool_call_id and not message.is_error
        if message.content
    }


# Each turn answers from what the tools returned, by call id; the call ids name the
# ticket a call is for, so that later turns find their results.
def _read_queue(results: dict[str, Any]) -> Answer:
    return ToolCall(id="queue", name="list_tickets", arguments={"queue": "support"})


def _look_up_customers(results: dict[str, Any]) -> Answer:
    return [
        ToolCall(
            id=f"customer-{ticket['ticket_id']}",
            name="lookup_customer",
            arguments={"email": ticket["from"]},
        )
        for ticket in results["queue"]
    ]


def _act(results: dict[str, Any]) -> Answer:
    calls = []
    for ticket in results["queue"]:
        tid = ticket["ticket_id"]
        customer = results[f"customer-{tid}"]
        charge = _duplicate(customer.get("charges", []))
        if "billing" in ticket["tags"] and charge is not None:
            arguments = {
                "customer_id": customer["customer_id"],
                "charge_id": charge["charge_id"],
                "amount_cents": charge["amount_cents"],
                "reason": f"duplicate charge on {charge['date']} ({tid})",
            }
            calls.append(ToolCall(id=f"act-{tid}", name="issue_refund", arguments=arguments))
        elif "shipping" in ticket["tags"]:
            order = customer["orders"][0]
            arguments = {"carrier": order["carrier"], "tracking_number": order["tracking_number"]}
            calls.append(ToolCall(id=f"act-{tid}", name="track_shipment", arguments=arguments))
        elif "account" in ticket["tags"]:
            arguments = {"customer_id": customer["customer_id"]}
            calls.append(ToolCall(id=f"act-{tid}", name="create_reset_link", arguments=arguments))
    return calls


def _duplicate(charges: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The second charge of the same day and amount, if any."""
    seen: set[tuple[str, int]] = set()
    for charge in charges:
        same = (charge["date"], charge["amount_cents"])
        if same in seen:
            return charge
        seen.add(same)
    return None


def _reply(results: dict[str, Any]) -> Answer:
    calls = []
    for ticket in results["queue"]:
        tid = ticket["ticket_id"]
        customer, done = results[f"customer-{tid}"], results[f"act-{tid}"]
        first = customer["name"].split()[0]
        if "billing" in ticket["tags"]:
            text = (
                f"You were right: the Pro plan was charged twice on June 1. I refunded the "
                f"duplicate charge of ${done['amount_cents'] / 100:.2f} (refund "
                f"{done['refund_id']}); your bank shows it within 5-10 business days."
            )
        elif "shipping" in ticket["tags"]:
            order = customer["orders"][0]
            text = (
                f"Your order {order['order_id']} ({order['items']}) is {done['status']} with "
                f"{done['carrier']}, tracking {done['tracking_number']}: last scanned at "
                f"{done['last_scan']}, expected {done['estimated_delivery']}."
            )
        else:
            text = (
                f"Here is a link to set a new password: {done['url']} (valid for "
                f"{done['expires_in']}). Then add your new phone under Settings > Security."
            )
        body = f"Hi {first},\n\n{text}\n\nBest,\nBrightdesk Support"
        arguments = {"to": ticket["from"], "subject": f"Re: {ticket['subject']} [{tid}]"}
        arguments["body"] = body
        calls.append(ToolCall(id=f"reply-{tid}", name="send_email", arguments=arguments))
    return calls


def _summarize(results: dict[str, Any]) -> Answer:
    notes = []
    for ticket in results["queue"]:
        tid = ticket["ticket_id"]
        done = results[f"act-{tid}"]
        if "billing" in ticket["tags"]:
            notes.append(f"{tid}: refunded ${done['amount_cents'] / 100:.2f} ({done['refund_id']})")
        elif "shipping" in ticket["tags"]:
            notes.append(f"{tid}: shipment {done['status']}, due {done['estimated_delivery']}")
        else:
            notes.append(f"{tid}: password reset link sent")
    sent = sum(1 for key in results if key.startswith("reply-"))
    return f"Closed {len(notes)} tickets, {sent} replies sent. " + "; ".join(notes) + "."
