"""The web UI's pages and actions in process, without a browser: httpx against
``create_app`` over a real SQLite file, with a real worker running real workflows next to
it (the browser tests in tests/browser drive the same pages in Chromium).

Covered here: what a run stores is escaped, odd run ids, every fragment, the actions as
htmx and as plain forms, errors into ``#flash``, roles, the login form and its CSRF check,
redirects that never leave the site, and dev mode.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tether import App, Budget, Context, Decision, Effect, OutcomeUnknown, RunStatus
from tether.agent import Agent, ScriptedModel, ToolCall
from tether.interfaces.http import create_app

BASE = "http://127.0.0.1:8181"
HTMX = {"HX-Request": "true", "Accept": "text/html"}


def build_worker(url: str, made: list[str]) -> App:
    app = App(url)

    @app.tool(effect=Effect.IRREVERSIBLE, approval=Decision.APPROVE, blast_radius="money")
    def wire(to: str, cents: int) -> str:
        made.append(f"wire {to} {cents}")
        return f"wired {cents} to {to}"

    @app.tool(effect=Effect.IRREVERSIBLE)
    def send(to: str) -> str:
        raise OutcomeUnknown(f"no answer from the mail server for {to}")

    @app.tool(effect=Effect.READ)
    def look(name: str) -> str:
        return f"<script>alert('{name}')</script>"

    @app.workflow
    async def pay(ctx: Context, to: str, cents: int) -> str:
        return await wire(to, cents)

    @app.workflow
    async def mail(ctx: Context, to: str) -> str:
        return await send(to)

    @app.workflow
    async def peek(ctx: Context, name: str) -> str:
        return await look(name)

    model = ScriptedModel(
        [ToolCall(id="1", name="look", arguments={"name": "a"}), "done"], price_per_token=1e-6
    )
    agent: Agent[str] = Agent(model, [look], "Look things up.", budget=Budget(tokens=10))

    @app.workflow
    async def frugal(ctx: Context) -> str:
        return (await agent.run(ctx, "look a up")).output

    return app


@dataclass
class World:
    worker: App
    control: App
    client: httpx.AsyncClient
    made: list[str]
    secrets: dict[str, str]

    def auth(self, role: str = "approver") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secrets[role]}", "Accept": "text/html"}

    async def page(self, path: str, role: str = "approver") -> httpx.Response:
        return await self.client.get(path, headers=self.auth(role))

    async def post(
        self, path: str, data: dict[str, str], role: str = "approver", htmx: bool = True
    ) -> httpx.Response:
        headers = self.auth(role) | ({"HX-Request": "true"} if htmx else {})
        return await self.client.post(path, data=data, headers=headers)

    async def status(self, run_id: str) -> RunStatus:
        return (await self.control.get_run(run_id)).status


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = await check()
        if found:
            return found
        await asyncio.sleep(0.02)
    raise AssertionError("condition never became true")


async def until(w: World, run_id: str, status: RunStatus) -> None:
    async def check() -> bool:
        return await w.status(run_id) is status

    await eventually(check)


def client_for(server: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=server), base_url=BASE)


@pytest.fixture
async def world(sqlite_url: str) -> AsyncIterator[World]:
    made: list[str] = []
    worker = build_worker(sqlite_url, made)
    control = App(sqlite_url)
    async with worker:
        await control.open(worker=False)
        secrets = {}
        for role, name in (("viewer", "vera"), ("approver", "alice")):
            _, secrets[role] = await control.create_token(role, name=name, by="test")
        async with client_for(create_app(control)) as client:
            yield World(worker, control, client, made, secrets)
        await control.close()


async def awaiting(w: World, run_id: str) -> int:
    await w.worker.start("pay", "bob", 100, run_id=run_id)

    async def check() -> int | None:
        for effect in await w.control.list_approvals():
            if effect.run_id == run_id:
                return effect.seq
        return None

    seq: int = await eventually(check)
    await until(w, run_id, RunStatus.WAITING)
    return seq


# -- pages --------------------------------------------------------------------------------
async def test_every_page_and_fragment_answers(world: World) -> None:
    await awaiting(world, "p1")
    for path in ["/", "/runs", "/runs/p1", "/approvals"]:
        page = await world.page(path)
        assert page.status_code == 200, (path, page.text)
        assert page.headers["cache-control"] == "no-store"
        assert '<script src="/static/htmx.min.js"' in page.text
        assert "hx-swap-oob" not in page.text  # the navigation's count is in the page
    for path in [
        "/ui/overview",
        "/ui/runs?status=waiting",
        "/ui/runs/p1/timeline",
        "/ui/approvals",
    ]:
        fragment = await world.page(path)
        assert fragment.status_code == 200, (path, fragment.text)
        assert 'hx-trigger="every 2s"' in fragment.text
        assert '<span id="nav-approvals" hx-swap-oob="true">' in fragment.text
        assert "<html" not in fragment.text
    for asset in ["/static/htmx.min.js", "/static/tether.css", "/static/tether.js"]:
        assert (await world.client.get(asset)).status_code == 200


async def test_what_runs_store_is_escaped_and_odd_run_ids_work(world: World) -> None:
    run_id = "<b>odd</b>/../id?x=1&y#2"
    await world.worker.start("peek", "<img src=x onerror=alert(1)>", run_id=run_id)
    await until(world, run_id, RunStatus.SUCCEEDED)
    page = await world.page("/runs/" + quote(run_id, safe=""))
    assert page.status_code == 200, page.text
    assert "<script>alert" not in page.text and "<img src=x" not in page.text
    assert "&lt;script&gt;alert" in page.text
    assert "&lt;b&gt;odd&lt;/b&gt;/../id?x=1&amp;y#2" in page.text
    listed = await world.page("/runs")
    assert 'href="/runs/%3Cb%3Eodd%3C%2Fb%3E%2F..%2Fid%3Fx%3D1%26y%232"' in listed.text
    fragment = await world.page("/ui/runs/" + quote(run_id, safe="") + "/timeline")
    assert fragment.status_code == 200 and "hx-trigger" not in fragment.text  # finished


async def test_a_missing_run_and_a_bad_filter_say_so(world: World) -> None:
    missing = await world.page("/runs/nope")
    assert missing.status_code == 404 and "no run &#39;nope&#39;" in missing.text
    bad = await world.page("/runs?status=later")
    assert bad.status_code == 200 and "there is no status &#39;later&#39;" in bad.text
    limit = await world.page("/runs?limit=0")
    assert limit.status_code == 422 and "limit" in limit.text
    assert "Traceback" not in missing.text + bad.text + limit.text


async def test_runs_page_pages_and_filters(world: World) -> None:
    for i in range(3):
        await world.worker.start("peek", f"n{i}", run_id=f"peek-{i}")
    for i in range(3):
        await until(world, f"peek-{i}", RunStatus.SUCCEEDED)
    first = await world.page("/runs?limit=2")
    assert re.findall(r'data-run="(peek-\d)"', first.text) == ["peek-2", "peek-1"]
    assert 'href="/runs?limit=2&amp;offset=2"' in first.text
    second = await world.page("/runs?limit=2&offset=2")
    assert re.findall(r'data-run="(peek-\d)"', second.text) == ["peek-0"]
    assert 'aria-disabled="true" tabindex="-1">Older' in second.text
    none = await world.page("/runs?workflow=pay")
    assert "No runs match" in none.text


# -- actions ------------------------------------------------------------------------------
async def test_approve_in_the_inbox_swaps_the_card_and_the_call_is_made_once(
    world: World,
) -> None:
    seq = await awaiting(world, "p2")
    inbox = await world.page("/approvals")
    assert 'data-run="p2"' in inbox.text and "Approve</button>" in inbox.text
    data = {"run_id": "p2", "seq": str(seq), "decision": "approve", "note": "ok by me"}
    answer = await world.post("/ui/approve", data)
    assert answer.status_code == 200, answer.text
    assert "Approved by <strong>alice (token" in answer.text and "ok by me" in answer.text
    assert "data-decided" in answer.text
    await until(world, "p2", RunStatus.SUCCEEDED)
    assert world.made == ["wire bob 100"]
    again = await world.post("/ui/approve", data)
    assert again.status_code == 409
    assert again.headers["hx-retarget"] == "#flash" and "error-box" in again.text


async def test_reject_on_the_run_page_answers_its_live_region_and_a_flash(
    world: World,
) -> None:
    seq = await awaiting(world, "p3")
    data = {"run_id": "p3", "seq": str(seq), "decision": "reject", "source": "run"}
    answer = await world.post("/ui/approve", data)
    assert answer.status_code == 200, answer.text
    assert answer.text.lstrip().startswith('<div id="run-live"')
    assert 'hx-swap-oob="innerHTML:#flash"' in answer.text and "Rejected wire" in answer.text
    await until(world, "p3", RunStatus.FAILED)
    assert world.made == []


async def test_plain_form_posts_redirect_back(world: World) -> None:
    seq = await awaiting(world, "p4")
    data = {"run_id": "p4", "seq": str(seq), "decision": "approve", "source": "run"}
    answer = await world.post("/ui/approve", data, htmx=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/runs/p4"


async def test_resolve_refuses_bad_input_into_the_flash_then_resolves(world: World) -> None:
    await world.worker.start("mail", "ann@example.com", run_id="m1")
    await until(world, "m1", RunStatus.NEEDS_ATTENTION)
    page = await world.page("/runs/m1")
    assert 'class="resolve-form"' in page.text
    base = {"run_id": "m1", "seq": "1", "action": "done"}
    for data, said in [
        (base | {"result": "{nope", "reason": "log"}, "not valid JSON"),
        (base | {"result": '"x"'}, "say how you know"),
        (base | {"action": "retry", "result": '"x"', "reason": "log"}, "goes only with"),
        (base | {"seq": "zero", "reason": "log"}, "seq must be a whole number"),
    ]:
        answer = await world.post("/ui/resolve", data)
        assert answer.status_code == 422, answer.text
        assert answer.headers["hx-retarget"] == "#flash" and said in answer.text
    done = await world.post("/ui/resolve", base | {"result": '"m-1"', "reason": "in the log"})
    assert done.status_code == 200 and "Resolved send (seq 1)" in done.text
    await until(world, "m1", RunStatus.SUCCEEDED)
    assert (await world.control.get_run("m1")).result == "m-1"


async def test_raise_a_budget(world: World) -> None:
    await world.worker.start("frugal", run_id="f1")
    await until(world, "f1", RunStatus.NEEDS_ATTENTION)
    page = await world.page("/runs/f1")
    assert "Raise and resume" in page.text
    bad = await world.post("/ui/budget", {"run_id": "f1", "tokens": "lots"})
    assert bad.status_code == 422 and "tokens must be a whole number" in bad.text
    low = await world.post("/ui/budget", {"run_id": "f1", "tokens": "5"})
    assert low.status_code == 400 and "does not raise the budget" in low.text
    ok = await world.post("/ui/budget", {"run_id": "f1", "tokens": "100000"})
    assert ok.status_code == 200 and "Budget raised to 100,000 tokens" in ok.text
    await until(world, "f1", RunStatus.SUCCEEDED)


async def test_a_viewer_sees_no_actions_and_may_not_act(world: World) -> None:
    seq = await awaiting(world, "p5")
    for path in ["/approvals", "/runs/p5", "/"]:
        page = await world.page(path, "viewer")
        assert page.status_code == 200
        assert '<form method="post" action="/ui/' not in page.text
    data = {"run_id": "p5", "seq": str(seq), "decision": "approve"}
    refused = await world.post("/ui/approve", data, role="viewer")
    assert refused.status_code == 403 and "viewer role" in refused.text
    assert refused.headers["hx-retarget"] == "#flash"
    assert world.made == []


# -- login --------------------------------------------------------------------------------
async def test_login_form_sets_an_httponly_cookie_and_refuses_bad_tokens(world: World) -> None:
    client = world.client
    form = await client.get("/login?next=/runs", headers={"Accept": "text/html"})
    assert form.status_code == 200 and 'name="next" value="/runs"' in form.text
    csrf = client.cookies["tether_csrf"]

    missing = await client.post("/login", data={"token": world.secrets["viewer"]})
    assert missing.status_code == 403 and "CSRF" in missing.text

    bad = await client.post("/login", data={"token": "tt_x_nope", "csrf_token": csrf})
    assert bad.status_code == 401 and "unknown or revoked" in bad.text
    assert "tether_token" not in client.cookies
    empty = await client.post("/login", data={"token": " ", "csrf_token": csrf})
    assert empty.status_code == 400 and "Paste a token first" in empty.text

    good = await client.post(
        "/login",
        data={"token": world.secrets["viewer"], "csrf_token": csrf, "next": "//evil.example/"},
    )
    assert good.status_code == 303 and good.headers["location"] == "/"
    cookie = good.headers["set-cookie"]
    assert cookie.startswith("tether_token=") and "HttpOnly" in cookie
    home = await client.get("/", headers={"Accept": "text/html"})
    assert home.status_code == 200 and "vera" in home.text

    out = await client.post("/logout", data={"csrf_token": csrf})
    assert out.status_code == 303 and out.headers["location"] == "/login"
    assert "tether_token" not in client.cookies
    again = await client.get("/", headers={"Accept": "text/html"})
    assert again.status_code == 303 and again.headers["location"].startswith("/login")


async def test_dev_mode_needs_no_login(world: World) -> None:
    async with client_for(create_app(world.control, dev=True)) as client:
        home = await client.get("/", headers={"Accept": "text/html"})
        assert home.status_code == 200 and "dev mode" in home.text
        login = await client.get("/login?next=/runs", headers={"Accept": "text/html"})
        assert login.status_code == 303 and login.headers["location"] == "/runs"
