"""Review of the control plane (issue 6): defects found in the HTTP interface, each with the
test that failed before its fix, plus the races and refusals the review checked.

In process, like test_http_api: httpx against ``create_app`` over a real SQLite file, with
a real worker next to it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from test_http_api import BASE, World, awaiting_approval, build_worker, client_for

from tether import App
from tether.interfaces.http import create_app
from tether.interfaces.http._auth import CSRF_COOKIE, TOKEN_COOKIE

FORM = "application/x-www-form-urlencoded"
HOST = "127.0.0.1"
MAX_BODY = 4 * 1024 * 1024  # the server's cap, as documented in docs/http-api.md


@pytest.fixture
async def world(sqlite_url: str) -> AsyncIterator[World]:
    """test_http_api's world: a worker App, a server over its own App, a token per role."""
    calls: list[str] = []
    worker = build_worker(sqlite_url, calls)
    control = App(sqlite_url)
    async with worker:
        await control.open(worker=False)
        server = create_app(control)
        secrets = {}
        for role, name in (("viewer", "vera"), ("approver", "alice"), ("admin", "root")):
            _, secrets[role] = await control.create_token(role, name=name, by="test")
        async with client_for(server) as client:
            yield World(worker, control, server, client, calls, secrets)
        await control.close()


async def in_doubt(w: World, run_id: str) -> None:
    await w.worker.start("bill", run_id=run_id)
    await w.until_status(run_id, "needs_attention")


async def effect_state(w: World, run_id: str, seq: int = 1) -> dict[str, Any]:
    found: dict[str, Any] = await w.ok(f"/api/v1/runs/{run_id}/effects/{seq}")
    return found


# -- request bodies -----------------------------------------------------------------------
async def test_a_body_over_the_cap_is_refused_before_it_is_read_whoever_sends_it(
    world: World,
) -> None:
    # FastAPI reads and parses a body before the token check; without a cap anyone could
    # make the server hold any amount in memory (found: 13 MB read for a 401).
    # Each chunk is a whole form field too: Starlette caps one field at 1 MiB, not a form.
    chunk = b"f=" + b"x" * 65533 + b"&"
    read = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal read
        for _ in range(2 * MAX_BODY // len(chunk)):
            read += 1
            yield chunk

    for path, kind in [
        ("/api/v1/runs/r1/signals", "application/json"),
        ("/api/v1/tokens", "application/json"),
        ("/ui/approve", FORM),
        ("/login", FORM),
    ]:
        read = 0
        response = await world.client.post(path, content=body(), headers={"Content-Type": kind})
        assert response.status_code == 413, (path, response.text)
        assert response.json()["error"]["code"] == "too_large"
        assert "4 MiB" in response.json()["error"]["message"]
        assert read * len(chunk) <= MAX_BODY + len(chunk), (path, read)

    # A declared length over the cap is refused without reading a byte.
    declared = await world.client.post(
        "/api/v1/runs/r1/signals",
        content=b"{}",
        headers=world.auth("approver") | {"Content-Length": str(MAX_BODY + 1)},
    )
    assert declared.status_code == 413 and declared.json()["error"]["code"] == "too_large"

    # Under the cap, nothing changes: a large signal value is delivered.
    await world.worker.start("waiter", run_id="w1")
    await world.until_status("w1", "waiting")
    big = {"name": "go", "value": "y" * (MAX_BODY // 2)}
    sent = await world.post("/api/v1/runs/w1/signals", "approver", json=big)
    assert sent.status_code == 200, sent.text[:300]
    run = await world.until_status("w1", "succeeded")
    assert run["result"] == big["value"]


# -- resolve: results a person types ------------------------------------------------------
async def test_a_non_finite_result_is_a_422_not_a_database_outage(world: World) -> None:
    # json.loads takes NaN, Infinity and 1e999; stored in the call's history they failed on
    # SQLite as "the database is unavailable" (503) and on PostgreSQL as a 400.
    await in_doubt(world, "b1")
    for text in ["NaN", "Infinity", "-Infinity", "1e999", '{"amount": [1, NaN]}']:
        body = f'{{"action": "done", "reason": "the processor shows it", "result": {text}}}'
        response = await world.client.post(
            "/api/v1/runs/b1/effects/1/resolve",
            content=body.encode(),
            headers=world.auth("approver") | {"Content-Type": "application/json"},
        )
        assert response.status_code == 422, (text, response.text)
        assert "not a JSON number" in response.json()["error"]["message"]
        form = {
            "run_id": "b1",
            "seq": "1",
            "action": "done",
            "reason": "the processor shows it",
            "result": text,
            "csrf_token": "unused",
        }
        page = await world.client.post(
            "/ui/resolve",
            data=form,
            headers=world.auth("approver") | {"HX-Request": "true", "Accept": "text/html"},
        )
        assert page.status_code == 422, (text, page.text)
        assert page.headers["hx-retarget"] == "#flash"
        assert "the result" in page.text and "database" not in page.text
    assert (await effect_state(world, "b1"))["state"] == "in_doubt"
    assert (await world.run_status("b1")) == "needs_attention"


async def test_a_result_nested_too_deeply_is_a_422_not_a_crash(world: World) -> None:
    # The web form's json.loads raised RecursionError: a 500 from the server.
    await in_doubt(world, "b1")
    deep = "[" * 100_000 + "]" * 100_000
    form = {
        "run_id": "b1",
        "seq": "1",
        "action": "done",
        "reason": "the processor shows it",
        "result": deep[: 2 * 400_000],
    }
    page = await world.client.post(
        "/ui/resolve",
        data=form,
        headers=world.auth("approver") | {"HX-Request": "true", "Accept": "text/html"},
    )
    assert page.status_code == 422, page.text[:300]
    assert "nested too deeply" in page.text
    api = await world.client.post(
        "/api/v1/runs/b1/effects/1/resolve",
        content=b'{"action": "done", "reason": "x", "result": ' + deep.encode() + b"}",
        headers=world.auth("approver") | {"Content-Type": "application/json"},
    )
    assert 400 <= api.status_code < 500, api.text[:300]
    assert (await effect_state(world, "b1"))["state"] == "in_doubt"


# -- the CSRF cookie ----------------------------------------------------------------------
def hx_token(page: httpx.Response) -> str:
    found = re.search(r"hx-headers='\{\"X-CSRF-Token\": \"([^']*)\"\}'", page.text)
    assert found, page.text[:500]
    return found.group(1)


async def test_the_csrf_cookie_survives_a_link_from_another_site(world: World) -> None:
    # SameSite=Strict kept the cookie from a page opened by a link in a chat message: that
    # page made a new token, and every other open tab's actions then failed the check.
    world.client.cookies.set(TOKEN_COOKIE, world.secrets["approver"], domain=HOST)
    page = await world.client.get("/approvals", headers={"Accept": "text/html"})
    cookie = next(
        value for key, value in page.headers.multi_items() if value.startswith(CSRF_COOKIE)
    )
    attributes = [part.strip().lower() for part in cookie.split(";")]
    assert "samesite=lax" in attributes and "httponly" in attributes, cookie


async def test_a_csrf_cookie_we_did_not_make_is_replaced_not_used(world: World) -> None:
    # A page on another port of this host may set cookies for it. A value with a quote went
    # into the pages' hx-headers JSON verbatim, breaking every htmx action on the page.
    await world.worker.start("waiter", run_id="w1")
    await world.until_status("w1", "waiting")
    client = world.client
    client.cookies.set(TOKEN_COOKIE, world.secrets["approver"], domain=HOST)
    foreign = 'abc","X-Other":"1'
    client.cookies.set(CSRF_COOKIE, foreign, domain=HOST)
    page = await client.get("/approvals", headers={"Accept": "text/html"})
    assert page.status_code == 200
    token = hx_token(page)
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token), token
    assert f"{CSRF_COOKIE}={token}" in page.headers["set-cookie"]
    # The foreign value does not pass the check, even when sent back as the token.
    client.cookies.set(CSRF_COOKIE, foreign, domain=HOST)
    refused = await client.post(
        "/api/v1/runs/w1/signals", json={"name": "go"}, headers={"X-CSRF-Token": foreign}
    )
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "csrf"
    assert (await world.run_status("w1")) == "waiting"


# -- logout -------------------------------------------------------------------------------
async def test_a_get_of_logout_logs_nobody_out(world: World) -> None:
    # GET /logout cleared the login cookie: any site could log a browser out with a link.
    client = world.client
    client.cookies.set(TOKEN_COOKIE, world.secrets["viewer"], domain=HOST)
    page = await client.get("/logout", headers={"Accept": "text/html"})
    assert page.status_code == 200, page.text[:300]
    assert TOKEN_COOKIE not in page.headers.get("set-cookie", "")
    assert '<form method="post" action="/logout">' in page.text
    assert client.cookies.get(TOKEN_COOKIE) == world.secrets["viewer"]
    home = await client.get("/", headers={"Accept": "text/html"})
    assert home.status_code == 200
    out = await client.post("/logout", data={"csrf_token": client.cookies[CSRF_COOKIE]})
    assert out.status_code == 303 and out.headers["location"] == "/login"
    assert TOKEN_COOKIE not in client.cookies


# -- approvals: races and refused decisions (checked; these held) -------------------------
async def test_two_concurrent_approvals_of_one_call_one_wins_the_other_is_a_409(
    world: World,
) -> None:
    await awaiting_approval(world, "r1")
    headers = world.auth("approver")
    answers = await asyncio.gather(
        world.client.post("/api/v1/runs/r1/approvals/1", json={"approved": True}, headers=headers),
        world.client.post(
            "/api/v1/runs/r1/approvals/1",
            json={"approved": False, "note": "no"},
            headers=headers,
        ),
        world.client.post(
            "/ui/approve",
            data={"run_id": "r1", "seq": "1", "decision": "approve"},
            headers=headers | {"HX-Request": "true", "Accept": "text/html"},
        ),
    )
    codes = sorted(answer.status_code for answer in answers)
    assert codes == [200, 409, 409], [a.text[:200] for a in answers]
    won = next(answer for answer in answers if answer.status_code == 200)
    approved = (
        won.headers["content-type"].startswith("text/html") or won.json()["resolution"]["approved"]
    )
    run = await world.until_status("r1", "succeeded", "failed")
    history = [e["event"] for e in (await effect_state(world, "r1"))["history"]]
    assert history.count("approval") + history.count("rejection") == 1, history
    if approved:
        assert run["status"] == "succeeded" and len(world.calls) == 1
    else:
        assert world.calls == []


async def test_a_decision_on_a_finished_or_cancelled_run_is_a_409(world: World) -> None:
    await awaiting_approval(world, "r1")
    await awaiting_approval(world, "r2")
    await world.post("/api/v1/runs/r1/cancel")
    await world.until_status("r1", "cancelled")
    ok = await world.post("/api/v1/runs/r2/approvals/1", "approver", json={"approved": True})
    assert ok.status_code == 200
    await world.until_status("r2", "succeeded")
    for run_id in ("r1", "r2"):
        before = await effect_state(world, run_id)
        api = await world.post(
            f"/api/v1/runs/{run_id}/approvals/1", "approver", json={"approved": True}
        )
        assert api.status_code == 409, api.text
        assert api.json()["error"]["code"] == "effect_state"
        web = await world.client.post(
            "/ui/approve",
            data={"run_id": run_id, "seq": "1", "decision": "reject", "note": "late"},
            headers=world.auth("approver") | {"HX-Request": "true", "Accept": "text/html"},
        )
        assert web.status_code == 409 and web.headers["hx-retarget"] == "#flash"
        assert await effect_state(world, run_id) == before
    assert len(world.calls) == 1


async def test_odd_run_ids_and_seqs_are_4xx(world: World) -> None:
    checks = [
        ("/api/v1/runs/a%2Fb", 404),
        ("/api/v1/runs/" + "x" * 501, 422),
        ("/api/v1/runs/%E2%98%83", 404),
        ("/api/v1/runs/%00", 404),
        ("/api/v1/runs/r1/effects/0", 422),
        ("/api/v1/runs/r1/effects/99999999999", 422),
        ("/api/v1/runs/r1/effects/1.5", 422),
    ]
    for path, status in checks:
        response = await world.get(path, "viewer")
        assert response.status_code == status, (path, response.text)
        assert response.json()["error"]["message"]
    for path in ["/runs/", "/runs/%00", "/runs/" + "x" * 5000, "/runs/..%2F..%2Fetc"]:
        page = await world.client.get(path, headers=world.auth("viewer") | {"Accept": "text/html"})
        assert page.status_code == 404, (path, page.status_code)
    assert BASE.startswith("http://127.0.0.1")
