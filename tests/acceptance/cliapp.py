"""The App the CLI acceptance tests run with ``tether worker cliapp:app``.

``app`` is built with no URL, so it reads ``TETHER_DATABASE_URL`` when the worker imports
it; the tests build their own App on the same file with ``build_app(url)`` to start runs
from another process.

The tools stand in for the outside world. While ``mail_outage`` is true (the tests set it
in their own process, never in a worker subprocess), ``send_email`` times out after its
request went out: it raises ``OutcomeUnknown``, so the irreversible call is in doubt and
its run stops for a person. A fresh worker process sees a healthy mail server.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tether import (
    Agent,
    App,
    ApprovalRejectedError,
    Budget,
    Context,
    Decision,
    Effect,
    OutcomeUnknown,
)
from tether.agent import ModelRequest, ScriptedModel, ToolCall

mail_outage = False


def build_app(database_url: str | None = None) -> App:
    app = App(database_url)

    @app.step
    async def greet(name: str) -> str:
        return f"hello {name}"

    @app.step
    def double(n: int) -> int:
        return 2 * n

    @app.workflow
    async def quick(ctx: Context, n: int) -> int:
        return await double(await double(n))

    @app.workflow
    async def waits_for_go(ctx: Context, name: str) -> dict[str, object]:
        greeting = await greet(name)
        value = await ctx.wait_signal("go")
        return {"greeting": greeting, "go": value}

    # -- tools: the effect log --------------------------------------------------------------
    @app.tool(effect=Effect.READ)
    def lookup(customer: str) -> dict[str, str]:
        """Find a customer's email address."""
        return {"customer": customer, "email": f"{customer}@example.com"}

    @app.tool(effect=Effect.IRREVERSIBLE, blast_radius="one customer's inbox")
    def send_email(to: str, subject: str, *, idempotency_key: str) -> dict[str, Any]:
        """Send an email; the mail server may time out after accepting it."""
        if mail_outage:
            raise OutcomeUnknown(f"the mail server timed out after the request to {to}")
        return {"sent_to": to, "message_id": f"m-{idempotency_key[:8]}"}

    @app.tool(effect=Effect.IRREVERSIBLE, approval=Decision.APPROVE, blast_radius="money")
    def wire_money(amount: int) -> dict[str, Any]:
        """Wire money to the supplier; a person approves each transfer."""
        return {"wired": amount}

    @app.workflow
    async def notify(ctx: Context, customer: str) -> dict[str, Any]:
        contact = await lookup(customer)
        receipt = await send_email(contact["email"], "your order shipped")
        return {"email": contact["email"], "receipt": receipt}

    @app.workflow
    async def pay(ctx: Context, amount: int) -> dict[str, Any]:
        try:
            return await wire_money(amount)
        except ApprovalRejectedError as exc:
            return {"wired": 0, "rejected": str(exc)}

    # Waits at most two seconds for a person, then is rejected by default.
    @app.tool(effect=Effect.IRREVERSIBLE, approval=Decision.APPROVE, approval_timeout=2.0)
    def wire_soon(amount: int) -> dict[str, Any]:
        """Wire money; unless a person approves within two seconds, it is not wired."""
        return {"wired": amount}

    @app.workflow
    async def pay_soon(ctx: Context, amount: int) -> dict[str, Any]:
        try:
            return await wire_soon(amount)
        except ApprovalRejectedError as exc:
            return {"wired": 0, "rejected": str(exc)}

    @app.workflow
    async def pay_twice(ctx: Context, amount: int) -> list[dict[str, Any]]:
        return list(await asyncio.gather(wire_money(amount), wire_money(amount + 1)))

    # An agent on a budget of one token: it stops for a person after its first turn.
    model = ScriptedModel(
        [
            ToolCall(id="c1", name="lookup", arguments={"customer": "ada"}),
            ToolCall(id="c2", name="lookup", arguments={"customer": "bob"}),
            "ada and bob are both customers",
        ],
        price_per_token=0.00001,
    )
    agent: Agent[str] = Agent(model, [lookup], "You look customers up.", budget=Budget(tokens=1))

    @app.workflow
    async def frugal(ctx: Context, prompt: str) -> str:
        return (await agent.run(ctx, prompt)).output

    # -- forks: an agent that prices a trip and forgets the taxi at turn 6 -------------------
    prices = {"train": 120, "hotel": 380, "museum": 25, "dinner": 90, "taxi": 40}

    @app.tool(effect=Effect.READ)
    def price(item: str) -> int:
        """What one item of the trip costs, in euros."""
        return prices[item]

    @app.tool(effect=Effect.READ)
    def add_up(amounts: list[int]) -> int:
        """The sum of some amounts."""
        return sum(amounts)

    def conclude(request: ModelRequest) -> str:
        return f"The trip costs {request.messages[-1].content} euros."

    pricing = ScriptedModel(
        [
            *(
                ToolCall(id=f"p{i}", name="price", arguments={"item": k})
                for i, k in enumerate(prices)
            ),
            ToolCall(id="sum", name="add_up", arguments={"amounts": [120, 380, 25, 90]}),
            conclude,
        ]
    )
    planner: Agent[str] = Agent(pricing, [price, add_up], "You price trips.", max_turns=10)

    @app.workflow
    async def trip(ctx: Context, request: str) -> str:
        return (await planner.run(ctx, request)).output

    # -- retry in place: fails at its second step until the file it checks exists -------------
    @app.step
    def note_once(path: str) -> int:
        log = Path(path + ".log")
        with log.open("a") as file:
            file.write("ran\n")
        return len(log.read_text().splitlines())

    @app.step
    def check_fixed(path: str) -> str:
        if not Path(path).exists():
            raise RuntimeError(f"not fixed yet: {path} is missing")
        return "fixed"

    @app.workflow
    async def fragile(ctx: Context, path: str) -> dict[str, Any]:
        first = await note_once(path)
        return {"note_once_ran": first, "check": await check_fixed(path)}

    return app


app = build_app()
not_an_app = build_app  # for the test of a MODULE:APP that names something else
