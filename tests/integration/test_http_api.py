"""The HTTP API (``/api/v1``) in process: httpx against ``create_app`` over a real database,
with a real worker running real workflows next to it.

The server gets its own control-plane App (``worker=False``), as ``tether serve`` does in
its own process: it reaches the worker's runs only through the database. Covered: every
route, paging and filters, bad input (never a 500), roles, CSRF, dev mode, a database
outage, and an approval given through the API that makes the tool call exactly once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Form, Request

from tether import (
    App,
    Budget,
    Context,
    Decision,
    Effect,
    OutcomeUnknown,
    Role,
)
from tether.agent import Agent, ScriptedModel, ToolCall
from tether.engine._tools import idempotency_key
from tether.interfaces._views import run_detail
from tether.interfaces.http import create_app
from tether.interfaces.http._auth import (
    CSRF_COOKIE,
    TOKEN_COOKIE,
    Principal,
    csrf_token,
    require,
)

POLL = 0.05
BASE = "http://127.0.0.1:8181"


# -- the world: a worker App, a server over its own App, tokens ---------------------------
def build_worker(url: str, calls: list[str]) -> App:
    app = App(url, poll_interval=POLL)

    @app.tool(effect=Effect.IRREVERSIBLE, approval=Decision.APPROVE, blast_radius="one account")
    async def transfer(to: str, cents: int, *, idempotency_key: str) -> str:
        calls.append(idempotency_key)
        return f"sent {cents} to {to}"

    @app.tool(effect=Effect.IRREVERSIBLE)
    async def charge(cents: int, *, idempotency_key: str) -> str:
        raise OutcomeUnknown("the card network timed out")

    @app.tool(effect=Effect.IRREVERSIBLE)
    async def ping(i: int, *, idempotency_key: str) -> str:
        """Ping once."""
        return f"pong {i}"

    @app.step
    async def double(x: int) -> int:
        return 2 * x

    @app.workflow
    async def pay(ctx: Context, to: str, cents: int) -> str:
        return await transfer(to, cents)

    @app.workflow
    async def compute(ctx: Context, x: int) -> int:
        return await double(x)

    @app.workflow
    async def waiter(ctx: Context) -> Any:
        return await ctx.wait_signal("go")

    @app.workflow
    async def bill(ctx: Context) -> str:
        return await charge(100)

    script: list[Any] = [ToolCall(id="c1", name="ping", arguments={"i": 1}), "finished"]
    agent: Agent[str] = Agent(ScriptedModel(script), [ping], "You ping.", budget=Budget(tokens=1))

    @app.workflow
    async def pinger(ctx: Context) -> str:
        return (await agent.run(ctx, "ping away")).output

    return app


@dataclass
class World:
    worker: App
    control: App
    server: FastAPI
    client: httpx.AsyncClient
    calls: list[str]
    secrets: dict[str, str] = field(default_factory=dict)

    def auth(self, role: str = "admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secrets[role]}"}

    async def get(self, path: str, role: str = "admin", **kwargs: Any) -> httpx.Response:
        return await self.client.get(path, headers=self.auth(role), **kwargs)

    async def post(self, path: str, role: str = "admin", **kwargs: Any) -> httpx.Response:
        return await self.client.post(path, headers=self.auth(role), **kwargs)

    async def ok(self, path: str, role: str = "admin", **kwargs: Any) -> Any:
        response = await self.get(path, role, **kwargs)
        assert response.status_code == 200, response.text
        return response.json()

    async def run_status(self, run_id: str) -> str:
        status: str = (await self.ok(f"/api/v1/runs/{run_id}"))["status"]
        return status

    async def until_status(self, run_id: str, *statuses: str) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            run: dict[str, Any] = await self.ok(f"/api/v1/runs/{run_id}")
            return run if run["status"] in statuses else None

        found: dict[str, Any] = await eventually(check)
        return found


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 10.0) -> Any:
    """Poll ``check`` until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.02)
    raise AssertionError(f"condition never became true (last: {last!r})")


def client_for(server: FastAPI, base_url: str = BASE) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=server), base_url=base_url)


@pytest.fixture
def url(sqlite_url: str) -> str:
    return sqlite_url


@pytest.fixture
async def world(url: str) -> AsyncIterator[World]:
    calls: list[str] = []
    worker = build_worker(url, calls)
    control = App(url)
    async with worker:
        await control.open(worker=False)
        server = create_app(control)
        secrets = {}
        for role, name in (("viewer", "vera"), ("approver", "alice"), ("admin", "root")):
            _, secrets[role] = await control.create_token(role, name=name, by="test")
        async with client_for(server) as client:
            yield World(worker, control, server, client, calls, secrets)
        await control.close()


async def awaiting_approval(w: World, run_id: str) -> dict[str, Any]:
    """Start ``pay`` as ``run_id`` and wait for its call to await approval."""
    await w.worker.start("pay", "bob", 100, run_id=run_id)

    async def check() -> dict[str, Any] | None:
        page = await w.ok("/api/v1/approvals", "viewer")
        found = [a for a in page["approvals"] if a["run_id"] == run_id]
        return found[0] if found else None

    approval: dict[str, Any] = await eventually(check)
    await w.until_status(run_id, "waiting")
    return approval


# -- health, tokens, roles ----------------------------------------------------------------
async def test_healthz_needs_no_token(world: World) -> None:
    response = await world.client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


ROUTES = [
    ("GET", "/api/v1/whoami"),
    ("GET", "/api/v1/overview"),
    ("GET", "/api/v1/runs"),
    ("GET", "/api/v1/runs/r1"),
    ("GET", "/api/v1/runs/r1/effects"),
    ("GET", "/api/v1/runs/r1/effects/1"),
    ("GET", "/api/v1/effects"),
    ("GET", "/api/v1/approvals"),
    ("POST", "/api/v1/runs/r1/approvals/1"),
    ("POST", "/api/v1/runs/r1/signals"),
    ("POST", "/api/v1/runs/r1/effects/1/resolve"),
    ("POST", "/api/v1/runs/r1/budget"),
    ("POST", "/api/v1/runs/r1/cancel"),
    ("GET", "/api/v1/tokens"),
    ("POST", "/api/v1/tokens"),
    ("DELETE", "/api/v1/tokens/abc"),
    ("GET", "/openapi.json"),
]


async def test_nothing_is_served_without_a_valid_token(world: World) -> None:
    revoked, revoked_secret = await world.control.create_token("admin", name="gone")
    await world.control.revoke_token(revoked.token_id)
    cases = [
        ({}, "unauthenticated"),
        ({"Authorization": "Bearer tt_00000000_" + "x" * 43}, "invalid_token"),
        ({"Authorization": "Bearer nonsense"}, "invalid_token"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "unauthenticated"),
        ({"Authorization": f"Bearer {revoked_secret}"}, "invalid_token"),
        ({"Cookie": f"{TOKEN_COOKIE}=tt_bogus"}, "invalid_token"),
    ]
    for method, path in ROUTES:
        for headers, code in cases:
            response = await world.client.request(method, path, headers=headers, json={})
            assert response.status_code == 401, (method, path, headers, response.text)
            assert response.json()["error"]["code"] == code
            assert "tether token create" in response.json()["error"]["message"]
            assert response.headers["www-authenticate"] == "Bearer"


async def test_whoami_names_the_token_and_its_role(world: World) -> None:
    me = await world.ok("/api/v1/whoami", "approver")
    token_id = me["token_id"]
    assert me == {
        "name": f"alice (token {token_id})",
        "role": "approver",
        "token_id": token_id,
        "dev": False,
    }


async def test_roles_are_checked_per_route(world: World) -> None:
    await awaiting_approval(world, "r1")
    body = {"approved": True}
    refused = [
        ("viewer", "POST", "/api/v1/runs/r1/approvals/1", body),
        ("viewer", "POST", "/api/v1/runs/r1/signals", {"name": "go"}),
        ("viewer", "POST", "/api/v1/runs/r1/effects/1/resolve", {"action": "abort", "reason": "x"}),
        ("viewer", "POST", "/api/v1/runs/r1/budget", {"tokens": 5}),
        ("viewer", "POST", "/api/v1/runs/r1/cancel", {}),
        ("approver", "POST", "/api/v1/runs/r1/cancel", {}),
        ("approver", "GET", "/api/v1/tokens", None),
        ("approver", "POST", "/api/v1/tokens", {"role": "admin"}),
        ("approver", "DELETE", "/api/v1/tokens/abc", None),
    ]
    for role, method, path, json in refused:
        response = await world.client.request(method, path, headers=world.auth(role), json=json)
        assert response.status_code == 403, (role, path, response.text)
        error = response.json()["error"]
        assert error["code"] == "forbidden"
        assert role in error["message"]
    # Nothing was decided: the call still waits.
    assert world.calls == []
    assert await world.run_status("r1") == "waiting"
    # Reads are for everyone with a token.
    for path in ("/api/v1/runs", "/api/v1/runs/r1", "/api/v1/approvals", "/api/v1/overview"):
        await world.ok(path, "viewer")


# -- runs ---------------------------------------------------------------------------------
async def test_runs_page_and_filter(world: World) -> None:
    for i in range(5):
        tags = ["even"] if i % 2 == 0 else ["odd"]
        await world.worker.start("compute", i, run_id=f"c{i}", tags=[*tags, "batch"])
    for i in range(5):
        await world.until_status(f"c{i}", "succeeded")
    await awaiting_approval(world, "p1")

    seen: list[str] = []
    offset: int | None = 0
    pages = 0
    while offset is not None:
        page = await world.ok("/api/v1/runs", "viewer", params={"limit": 2, "offset": offset})
        assert page["limit"] == 2 and page["offset"] == offset
        assert len(page["runs"]) <= 2
        seen += [run["run_id"] for run in page["runs"]]
        offset = page["next_offset"]
        pages += 1
    assert pages == 3 and sorted(seen) == ["c0", "c1", "c2", "c3", "c4", "p1"]
    everything = await world.ok("/api/v1/runs")
    assert [run["run_id"] for run in everything["runs"]] == seen  # newest first, stable
    assert everything["next_offset"] is None and everything["limit"] == 50

    def ids(page: dict[str, Any]) -> list[str]:
        return sorted(run["run_id"] for run in page["runs"])

    assert ids(await world.ok("/api/v1/runs", params={"status": "waiting"})) == ["p1"]
    assert ids(await world.ok("/api/v1/runs", params={"status": "succeeded", "limit": 500})) == [
        "c0",
        "c1",
        "c2",
        "c3",
        "c4",
    ]
    assert ids(await world.ok("/api/v1/runs", params={"workflow": "pay"})) == ["p1"]
    assert ids(await world.ok("/api/v1/runs", params={"tag": "odd"})) == ["c1", "c3"]
    assert ids(await world.ok("/api/v1/runs", params={"tag": "batch", "status": "failed"})) == []
    assert ids(await world.ok("/api/v1/runs", params={"workflow": "nope"})) == []
    summary = (await world.ok("/api/v1/runs", params={"tag": "even", "limit": 1}))["runs"][0]
    assert summary["tags"] == ["even", "batch"] and summary["workflow"] == "compute"
    assert set(summary) >= {"run_id", "workflow", "status", "result", "error", "created_at"}


async def test_bad_query_parameters_are_422_naming_what_is_allowed(world: World) -> None:
    cases = [
        ({"status": "bogus"}, ["status", "'succeeded'", "'needs_attention'", "bogus"]),
        ({"offset": -1}, ["offset", "greater than or equal to 0"]),
        ({"limit": 0}, ["limit", "greater than or equal to 1"]),
        ({"limit": 501}, ["limit", "less than or equal to 500"]),
        ({"limit": "ten"}, ["limit", "valid integer"]),
        ({"stauts": "waiting"}, ["unknown query parameter 'stauts'", "status, tag, workflow"]),
        ({"status": ["waiting", "failed"]}, ["'status' is given more than once"]),
    ]
    for params, words in cases:
        response = await world.get("/api/v1/runs", params=params)
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] == "invalid_request"
        for word in words:
            assert word in error["message"], (word, error["message"])
    response = await world.get("/api/v1/effects", params={"in_doubt": "maybe"})
    assert response.status_code == 422 and "in_doubt" in response.json()["error"]["message"]


async def test_a_run_in_detail_is_the_shape_of_tether_show_json(world: World) -> None:
    await world.worker.start("compute", 21, run_id="c1")
    await world.until_status("c1", "succeeded")
    await awaiting_approval(world, "p1")
    for run_id in ("c1", "p1"):
        detail = await world.ok(f"/api/v1/runs/{run_id}", "viewer")
        expected = run_detail(
            await world.control.get_run(run_id),
            await world.control.get_journal(run_id),
            await world.control.list_effects(run_id),
        )
        assert detail == expected
    compute = await world.ok("/api/v1/runs/c1")
    assert compute["result"] == 42 and compute["args"] is not None
    assert [(e["seq"], e["kind"], e["name"], e["status"]) for e in compute["events"]] == [
        (1, "step", "double", "completed")
    ]
    assert "effect" not in compute["events"][0]  # only tool events carry one
    pay = await world.ok("/api/v1/runs/p1")
    assert pay["events"][0]["effect"]["state"] == "awaiting_approval"

    missing = await world.get("/api/v1/runs/nope")
    assert missing.status_code == 404
    assert missing.json() == {
        "error": {"code": "run_not_found", "message": "no run 'nope'; list runs at /api/v1/runs"}
    }
    for path in ("/api/v1/runs/nope/effects", "/api/v1/runs/nope/effects/1"):
        response = await world.get(path)
        assert response.status_code == 404 and response.json()["error"]["code"] == "run_not_found"


# -- approvals ----------------------------------------------------------------------------
async def test_an_approval_through_the_api_makes_the_call_exactly_once(world: World) -> None:
    approval = await awaiting_approval(world, "p1")
    assert approval["tool"] == "transfer" and approval["seq"] == 1
    assert approval["args"] == {"to": "bob", "cents": 100}
    assert approval["state"] == "awaiting_approval" and approval["blast_radius"] == "one account"
    assert world.calls == []

    response = await world.post(
        "/api/v1/runs/p1/approvals/1", "approver", json={"approved": True, "note": "looks fine"}
    )
    assert response.status_code == 200, response.text
    decided = response.json()
    assert decided["run_id"] == "p1" and decided["seq"] == 1
    me = await world.ok("/api/v1/whoami", "approver")
    run = await world.until_status("p1", "succeeded")
    assert run["result"] == "sent 100 to bob"
    assert world.calls == [idempotency_key("p1", 1)]

    again = await world.post("/api/v1/runs/p1/approvals/1", "approver", json={"approved": True})
    assert again.status_code == 409 and again.json()["error"]["code"] == "effect_state"
    effect = await world.ok("/api/v1/runs/p1/effects/1")
    assert effect["state"] == "completed"
    decisions = [e for e in effect["history"] if e["event"] == "approval"]
    assert len(decisions) == 1
    assert decisions[0]["by"] == me["name"] and decisions[0]["note"] == "looks fine"
    assert (await world.ok("/api/v1/approvals"))["approvals"] == []
    assert world.calls == [idempotency_key("p1", 1)]


async def test_a_rejection_through_the_api_means_the_call_is_never_made(world: World) -> None:
    await awaiting_approval(world, "p1")
    response = await world.post(
        "/api/v1/runs/p1/approvals/1", "admin", json={"approved": False, "note": "too much"}
    )
    assert response.status_code == 200, response.text
    run = await world.until_status("p1", "failed")
    assert "too much" in str(run["error"])
    assert world.calls == []


async def test_approvals_page_and_bad_approvals_are_refused(world: World) -> None:
    for i in range(3):
        await awaiting_approval(world, f"p{i}")
    page = await world.ok("/api/v1/approvals", params={"limit": 2})
    assert len(page["approvals"]) == 2 and page["next_offset"] == 2
    rest = await world.ok("/api/v1/approvals", params={"limit": 2, "offset": 2})
    assert len(rest["approvals"]) == 1 and rest["next_offset"] is None
    assert {a["run_id"] for a in page["approvals"] + rest["approvals"]} == {"p0", "p1", "p2"}

    cases: list[tuple[str, Any, int, str]] = [
        ("/api/v1/runs/p0/approvals/1", {"approved": "yes"}, 422, "approved"),
        ("/api/v1/runs/p0/approvals/1", {}, 422, "approved"),
        ("/api/v1/runs/p0/approvals/1", {"approved": True, "note": ""}, 422, "note"),
        ("/api/v1/runs/p0/approvals/1", {"approved": True, "by": "x"}, 422, "by"),
        ("/api/v1/runs/p0/approvals/0", {"approved": True}, 422, "seq"),
        ("/api/v1/runs/p0/approvals/one", {"approved": True}, 422, "seq"),
        ("/api/v1/runs/p0/approvals/7", {"approved": True}, 404, "seq 7"),
        ("/api/v1/runs/nope/approvals/1", {"approved": True}, 404, "nope"),
    ]
    for path, body, status, word in cases:
        response = await world.post(path, json=body)
        assert response.status_code == status, (path, body, response.text)
        assert word in response.json()["error"]["message"], response.text
    for raw in (b"{not json", b"", b"[]", b"null"):
        response = await world.client.post(
            "/api/v1/runs/p0/approvals/1",
            headers=world.auth() | {"Content-Type": "application/json"},
            content=raw,
        )
        assert response.status_code == 422, (raw, response.text)
        assert response.json()["error"]["code"] == "invalid_request"
    bad = await world.client.post(
        "/api/v1/runs/p0/approvals/1",
        headers=world.auth() | {"Content-Type": "application/json"},
        content=b"{not json",
    )
    assert "not valid JSON" in bad.json()["error"]["message"]
    assert world.calls == []


# -- effects, resolve ---------------------------------------------------------------------
async def test_an_in_doubt_call_is_listed_and_resolved_through_the_api(world: World) -> None:
    await world.worker.start("bill", run_id="b1")
    await world.worker.start("compute", 1, run_id="c1")
    await world.until_status("b1", "needs_attention")
    await world.until_status("c1", "succeeded")

    doubtful = await world.ok("/api/v1/effects", "viewer", params={"in_doubt": True})
    assert [(e["run_id"], e["seq"], e["in_doubt"]) for e in doubtful["effects"]] == [
        ("b1", 1, True)
    ]
    assert doubtful["next_offset"] is None
    of_run = await world.ok("/api/v1/runs/b1/effects")
    assert [e["tool"] for e in of_run["effects"]] == ["charge"]
    assert (await world.ok("/api/v1/runs/c1/effects"))["effects"] == []
    assert (await world.ok("/api/v1/runs/b1/effects/1"))["state"] == "in_doubt"
    missing = await world.get("/api/v1/runs/b1/effects/2")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "effect_not_found"

    bad = [
        ({"action": "maybe", "reason": "x"}, 422, "'done', 'retry' or 'abort'"),
        ({"action": "done"}, 422, "reason"),
        ({"action": "done", "reason": ""}, 422, "reason"),
        ({"action": "retry", "reason": "x", "result": 1}, 400, "only with 'done'"),
    ]
    for body, status, words in bad:
        response = await world.post("/api/v1/runs/b1/effects/1/resolve", "approver", json=body)
        assert response.status_code == status, (body, response.text)
        assert words in response.json()["error"]["message"]

    response = await world.post(
        "/api/v1/runs/b1/effects/1/resolve",
        "approver",
        json={"action": "done", "result": "charged", "reason": "the processor shows it"},
    )
    assert response.status_code == 200, response.text
    resolution = response.json()["resolution"]
    assert resolution["action"] == "done" and resolution["reason"] == "the processor shows it"
    assert resolution["by"].startswith("alice (token ")
    run = await world.until_status("b1", "succeeded")
    assert run["result"] == "charged"
    again = await world.post(
        "/api/v1/runs/b1/effects/1/resolve", json={"action": "abort", "reason": "late"}
    )
    assert again.status_code == 409 and again.json()["error"]["code"] == "effect_state"
    assert (await world.ok("/api/v1/effects", params={"in_doubt": True}))["effects"] == []


async def test_the_effect_log_pages(world: World) -> None:
    for i in range(3):
        await world.worker.start("bill", run_id=f"b{i}")
    for i in range(3):
        await world.until_status(f"b{i}", "needs_attention")
    first = await world.ok("/api/v1/effects", params={"limit": 2})
    assert len(first["effects"]) == 2 and first["next_offset"] == 2
    second = await world.ok("/api/v1/effects", params={"limit": 2, "offset": 2})
    assert len(second["effects"]) == 1 and second["next_offset"] is None
    runs = {e["run_id"] for e in first["effects"] + second["effects"]}
    assert runs == {"b0", "b1", "b2"}
    run_page = await world.ok("/api/v1/runs/b1/effects", params={"limit": 1})
    assert run_page["next_offset"] is None and len(run_page["effects"]) == 1
    beyond = await world.ok("/api/v1/effects", params={"offset": 100})
    assert beyond["effects"] == [] and beyond["next_offset"] is None


# -- signals, budget, cancel --------------------------------------------------------------
async def test_a_signal_through_the_api_wakes_the_run(world: World) -> None:
    await world.worker.start("waiter", run_id="w1")
    await world.until_status("w1", "waiting")
    bad: list[tuple[str, Any, int, str]] = [
        ("/api/v1/runs/w1/signals", {}, 422, "name"),
        ("/api/v1/runs/w1/signals", {"name": ""}, 422, "name"),
        ("/api/v1/runs/w1/signals", {"name": "tether:approval:1"}, 400, "reserved"),
        ("/api/v1/runs/nope/signals", {"name": "go"}, 404, "nope"),
    ]
    for path, body, status, word in bad:
        response = await world.post(path, "approver", json=body)
        assert response.status_code == status, (body, response.text)
        assert word in response.json()["error"]["message"]
    response = await world.post(
        "/api/v1/runs/w1/signals", "approver", json={"name": "go", "value": {"ok": [1, 2]}}
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"run_id": "w1", "name": "go", "run_status": "waiting"}
    run = await world.until_status("w1", "succeeded")
    assert run["result"] == {"ok": [1, 2]}
    late = await world.post("/api/v1/runs/w1/signals", json={"name": "go"})
    assert late.status_code == 409
    assert late.json()["error"] == {
        "code": "run_state",
        "message": "run 'w1' already succeeded; it takes no signals",
    }


async def test_a_budget_raised_through_the_api_resumes_the_run(world: World) -> None:
    await world.worker.start("pinger", run_id="a1")
    stopped = await world.until_status("a1", "needs_attention")
    assert stopped["error"]["code"] == "budget_exceeded"
    bad: list[tuple[Any, int, str]] = [
        ({}, 422, "tokens, cost_usd or both"),
        ({"tokens": -5}, 422, "tokens"),
        ({"tokens": "many"}, 422, "tokens"),
        ({"tokens": True}, 422, "tokens"),
        ({"cost_usd": 0}, 422, "cost_usd"),
        ({"tokens": 1}, 400, "does not raise the budget"),
    ]
    for body, status, words in bad:
        response = await world.post("/api/v1/runs/a1/budget", "approver", json=body)
        assert response.status_code == status, (body, response.text)
        assert words in response.json()["error"]["message"]
    response = await world.post("/api/v1/runs/a1/budget", "approver", json={"tokens": 1_000_000})
    assert response.status_code == 200, response.text
    assert response.json()["run_id"] == "a1"
    run = await world.until_status("a1", "succeeded")
    assert run["result"] == "finished"
    budget = [e for e in run["events"] if e["kind"] == "budget"]
    assert budget[0]["output"]["by"].startswith("alice (token ")
    again = await world.post("/api/v1/runs/a1/budget", json={"tokens": 2_000_000})
    assert again.status_code == 409 and again.json()["error"]["code"] == "run_state"
    missing = await world.post("/api/v1/runs/nope/budget", json={"tokens": 5})
    assert missing.status_code == 404


async def test_cancel_through_the_api(world: World) -> None:
    await world.worker.start("waiter", run_id="w1")
    await world.worker.start("waiter", run_id="w2")
    await world.worker.start("compute", 1, run_id="c1")
    await world.until_status("w1", "waiting")
    await world.until_status("w2", "waiting")
    await world.until_status("c1", "succeeded")
    response = await world.post("/api/v1/runs/w1/cancel", json={"reason": "no longer needed"})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    run = await world.until_status("w1", "cancelled")
    assert "no longer needed" in str(run["error"]) and "root (token " in str(run["error"])
    no_body = await world.client.post("/api/v1/runs/w2/cancel", headers=world.auth())
    assert no_body.status_code == 200 and no_body.json()["status"] == "cancelled"
    again = await world.post("/api/v1/runs/w1/cancel")
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
    done = await world.post("/api/v1/runs/c1/cancel", json={})
    assert done.status_code == 409
    assert done.json()["error"]["message"] == "run 'c1' already succeeded; nothing to cancel"
    assert (await world.post("/api/v1/runs/nope/cancel")).status_code == 404
    empty = await world.post("/api/v1/runs/c1/cancel", json={"reason": ""})
    assert empty.status_code == 422


# -- the roll-up --------------------------------------------------------------------------
async def test_the_overview_counts_runs_and_lists_what_needs_a_person(world: World) -> None:
    await awaiting_approval(world, "p1")
    await world.worker.start("bill", run_id="b1")
    await world.worker.start("compute", 1, run_id="c1")
    await world.until_status("b1", "needs_attention")
    await world.until_status("c1", "succeeded")
    overview = await world.ok("/api/v1/overview", "viewer")
    assert overview["counts"]["waiting"] == 1 and overview["counts"]["succeeded"] == 1
    assert overview["counts"]["needs_attention"] == 1
    kinds = {(item["kind"], item["run_id"]) for item in overview["attention"]}
    assert {("approval", "p1"), ("in_doubt", "b1")} <= kinds
    ranks = [item["rank"] for item in overview["attention"]]
    assert ranks == sorted(ranks)
    assert len(overview["workers"]) == 1
    assert overview["workers"][0]["worker_id"] == world.worker.worker.worker_id  # type: ignore[union-attr]
    assert isinstance(overview["at"], str)
    one = await world.ok("/api/v1/overview", params={"limit": 1})
    assert len(one["attention"]) == 1
    assert (await world.get("/api/v1/overview", params={"limit": 0})).status_code == 422


# -- tokens -------------------------------------------------------------------------------
async def test_tokens_are_made_listed_and_revoked_through_the_api(world: World) -> None:
    made = await world.post("/api/v1/tokens", json={"role": "viewer", "name": "dashboard"})
    assert made.status_code == 201, made.text
    token, secret = made.json()["token"], made.json()["secret"]
    assert secret.startswith("tt_") and token["role"] == "viewer" and token["active"]
    assert token["created_by"].startswith("root (token ")
    headers = {"Authorization": f"Bearer {secret}"}
    me = await world.client.get("/api/v1/whoami", headers=headers)
    assert me.status_code == 200 and me.json()["name"] == f"dashboard (token {token['token_id']})"

    listed = (await world.ok("/api/v1/tokens"))["tokens"]
    assert {t["name"] for t in listed} == {"vera", "alice", "root", "dashboard"}
    assert all("secret" not in t and secret not in str(t) for t in listed)

    gone = await world.client.delete(f"/api/v1/tokens/{token['token_id']}", headers=world.auth())
    assert gone.status_code == 200 and gone.json()["active"] is False
    assert gone.json()["revoked_at"] is not None
    refused = await world.client.get("/api/v1/whoami", headers=headers)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_token"

    missing = await world.client.delete("/api/v1/tokens/nope", headers=world.auth())
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "token_not_found"
    for body in ({"role": "superuser"}, {}, {"role": "admin", "name": ""}):
        response = await world.post("/api/v1/tokens", json=body)
        assert response.status_code == 422, (body, response.text)
    wrong = await world.post("/api/v1/tokens", json={"role": "god"})
    assert "'viewer', 'approver' or 'admin'" in wrong.json()["error"]["message"]
    unnamed = await world.post("/api/v1/tokens", json={"role": "approver"})
    assert unnamed.status_code == 201 and unnamed.json()["token"]["name"]


# -- errors -------------------------------------------------------------------------------
async def test_unknown_routes_and_methods_answer_json(world: World) -> None:
    response = await world.get("/api/v1/nope")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    response = await world.client.put("/api/v1/runs", headers=world.auth())
    assert response.status_code == 405
    assert response.json()["error"] == {
        "code": "method_not_allowed",
        "message": "PUT is not allowed on /api/v1/runs; use GET",
    }
    response = await world.client.delete("/api/v1/tokens", headers=world.auth())
    assert response.status_code == 405 and response.headers["allow"] == "GET, POST"
    assert (await world.client.get("/docs")).status_code in (303, 401, 404)
    assert (await world.get("/docs")).status_code == 404
    assert (await world.get("/redoc")).status_code == 404


async def test_a_database_outage_is_a_503(world: World, tmp_path: Path) -> None:
    # A control plane whose database is a directory: the store cannot open it.
    broken = App(f"sqlite:///{tmp_path}")
    server = create_app(broken)
    async with client_for(server) as client:
        health = await client.get("/healthz")
        assert health.status_code == 503 and health.json()["status"] == "unavailable"
        assert str(tmp_path) not in health.text  # no token: not where the database is
        response = await client.get("/api/v1/runs", headers=world.auth())
        assert response.status_code == 503
        error = response.json()["error"]
        assert error["code"] == "storage"
        assert error["message"].startswith("the database is unavailable: ")
    await broken.close()


async def test_openapi_documents_every_route_for_a_token(world: World) -> None:
    assert (await world.client.get("/openapi.json")).status_code == 401
    schema = await world.ok("/openapi.json", "viewer")
    paths = schema["paths"]
    for method, path in ROUTES:
        if path == "/openapi.json":
            continue
        template = (
            path.replace("/r1", "/{run_id}")
            .replace("/effects/1", "/effects/{seq}")
            .replace("/approvals/1", "/approvals/{seq}")
            .replace("/tokens/abc", "/tokens/{token_id}")
        )
        assert method.lower() in paths[template], template
    components = schema["components"]["schemas"]
    assert {"RunSummary", "RunDetail", "EffectView", "ApprovalBody", "ErrorBody"} <= set(components)
    assert "tags" in components["RunSummary"]["properties"]


# -- CSRF and cookies ---------------------------------------------------------------------
def add_probe_routes(server: FastAPI) -> None:
    """A page that hands out the CSRF token, and a form post behind the approver role."""

    @server.get("/probe")
    async def probe(request: Request, _: Annotated[Principal, Depends(principal_dep)]) -> Any:
        return {"csrf": csrf_token(request)}

    @server.post("/probe")
    async def probe_post(
        who: Annotated[Principal, Depends(require(Role.APPROVER))],
        note: Annotated[str, Form()],
    ) -> Any:
        return {"by": who.name, "note": note}


async def principal_dep(request: Request) -> Principal:
    from tether.interfaces.http._auth import principal

    return await principal(request)


async def test_cookie_requests_need_the_csrf_token_and_header_requests_do_not(
    world: World,
) -> None:
    add_probe_routes(world.server)
    await world.worker.start("waiter", run_id="w1")
    await world.until_status("w1", "waiting")
    client = world.client
    cookie = {TOKEN_COOKIE: world.secrets["admin"]}
    client.cookies.update(cookie)
    # Reads with the cookie alone are fine, and a page hands out the CSRF cookie.
    page = await client.get("/probe")
    assert page.status_code == 200, page.text
    token = page.json()["csrf"]
    assert page.cookies.get(CSRF_COOKIE) == token
    assert "httponly" in page.headers["set-cookie"].lower()
    assert (await client.get("/api/v1/runs")).status_code == 200
    # The same token on the next page; no new cookie.
    again = await client.get("/probe")
    assert again.json()["csrf"] == token and CSRF_COOKIE not in again.cookies

    # A cookie-authenticated form post without the token is refused, with it accepted.
    refused = await client.post("/probe", data={"note": "hi"})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "csrf"
    wrong = await client.post("/probe", data={"note": "hi", "csrf_token": "x" * 43})
    assert wrong.status_code == 403 and "does not match" in wrong.json()["error"]["message"]
    accepted = await client.post("/probe", data={"note": "hi", "csrf_token": token})
    assert accepted.status_code == 200, accepted.text
    assert accepted.json() == {"by": f"root (token {world.secrets['admin'][3:11]})", "note": "hi"}

    # API posts with the cookie: the header carries the token.
    signal = {"name": "x", "value": 1}
    refused = await client.post("/api/v1/runs/w1/signals", json=signal)
    assert refused.status_code == 403 and "missing CSRF token" in refused.json()["error"]["message"]
    ok = await client.post("/api/v1/runs/w1/signals", json=signal, headers={"X-CSRF-Token": token})
    assert ok.status_code == 200, ok.text
    # ... and the role still counts.
    client.cookies.set(TOKEN_COOKIE, world.secrets["viewer"])
    viewer = await client.post(
        "/api/v1/runs/w1/signals", json=signal, headers={"X-CSRF-Token": token}
    )
    assert viewer.status_code == 403 and viewer.json()["error"]["code"] == "forbidden"
    client.cookies.set(TOKEN_COOKIE, world.secrets["admin"])

    # Another site's request is refused even with the token.
    for headers in (
        {"Sec-Fetch-Site": "cross-site"},
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://127.0.0.1:9999"},
    ):
        response = await client.post(
            "/api/v1/runs/w1/signals", json=signal, headers={"X-CSRF-Token": token} | headers
        )
        assert response.status_code == 403, headers
        assert response.json()["error"]["code"] == "csrf"
    same = await client.post(
        "/api/v1/runs/w1/signals",
        json=signal,
        headers={"X-CSRF-Token": token, "Origin": BASE, "Sec-Fetch-Site": "same-origin"},
    )
    assert same.status_code == 200, same.text

    # An Authorization header is exempt: browsers never add one by themselves.
    client.cookies.clear()
    bearer = await client.post(
        "/api/v1/runs/w1/signals",
        json=signal,
        headers=world.auth("approver") | {"Sec-Fetch-Site": "cross-site"},
    )
    assert bearer.status_code == 200, bearer.text


async def test_a_page_without_a_login_redirects_to_it(world: World) -> None:
    add_probe_routes(world.server)
    page = await world.client.get("/probe?x=1", headers={"Accept": "text/html"})
    assert page.status_code == 303 and page.headers["location"] == "/login?next=/probe%3Fx%3D1"
    htmx = await world.client.get("/probe", headers={"HX-Request": "true"})
    assert htmx.status_code == 401 and htmx.headers["hx-redirect"] == "/login"
    api = await world.client.get("/api/v1/runs", headers={"Accept": "text/html"})
    assert api.status_code == 401 and api.json()["error"]["code"] == "unauthenticated"


async def test_responses_carry_protective_headers(world: World) -> None:
    response = await world.get("/api/v1/runs")
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-store"


# -- dev mode -----------------------------------------------------------------------------
async def test_dev_mode_needs_no_token_but_keeps_csrf_and_loopback(world: World) -> None:
    server = create_app(world.control, dev=True)
    add_probe_routes(server)
    await world.worker.start("waiter", run_id="w1")
    await world.until_status("w1", "waiting")
    async with client_for(server, "http://localhost:8181") as client:
        me = await client.get("/api/v1/whoami")
        assert me.json() == {"name": "dev", "role": "admin", "token_id": None, "dev": True}
        assert (await client.get("/api/v1/tokens")).status_code == 200
        # A browser page in dev mode still needs the CSRF token to change anything.
        refused = await client.post("/api/v1/runs/w1/signals", json={"name": "go"})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "csrf"
        token = (await client.get("/probe")).json()["csrf"]
        ok = await client.post(
            "/api/v1/runs/w1/signals", json={"name": "go"}, headers={"X-CSRF-Token": token}
        )
        assert ok.status_code == 200, ok.text
        # A script sends an Authorization header (any value) instead.
        client.cookies.clear()
        scripted = await client.post(
            "/api/v1/runs/w1/cancel", headers={"Authorization": "Bearer dev"}
        )
        assert scripted.status_code in (200, 409), scripted.text
    # Only for this machine: a request to another host name (DNS rebinding) is refused.
    async with client_for(server, "http://evil.example:8181") as client:
        response = await client.get("/api/v1/whoami")
        assert response.status_code == 403 and "--dev" in response.json()["error"]["message"]
    transport = httpx.ASGITransport(app=server, client=("10.1.2.3", 5555))
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        assert (await client.get("/api/v1/whoami")).status_code == 403


# -- PostgreSQL ---------------------------------------------------------------------------
@pytest.mark.postgres
class TestOnPostgres:
    @pytest.fixture
    def url(self, postgres_url: str) -> str:
        return postgres_url

    async def test_an_approval_through_the_api_makes_the_call_exactly_once(
        self, world: World
    ) -> None:
        await test_an_approval_through_the_api_makes_the_call_exactly_once(world)

    async def test_runs_page_and_filter(self, world: World) -> None:
        await test_runs_page_and_filter(world)

    async def test_an_in_doubt_call_is_resolved(self, world: World) -> None:
        await test_an_in_doubt_call_is_listed_and_resolved_through_the_api(world)

    async def test_tokens(self, world: World) -> None:
        await test_tokens_are_made_listed_and_revoked_through_the_api(world)

    async def test_roles(self, world: World) -> None:
        await test_roles_are_checked_per_route(world)
