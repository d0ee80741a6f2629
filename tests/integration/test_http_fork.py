"""Forks, branch trees, diffs and retries in place over HTTP: the JSON API routes and the
web UI's actions and pages, in process (httpx against ``create_app``) on both backends,
with a real worker running real workflows next to the server's own App.

Covered: every route (fork, tree, diff, retry, restarts) and its errors (404, 409, 422,
never a 500), roles (a viewer may look but not fork or retry), CSRF on the web forms, and
that bad input changes nothing: no fork made, no restart recorded, no call made again.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tether import App, Context, Effect, RunStatus
from tether.agent import Agent, ScriptedModel, ToolCall
from tether.interfaces.http import create_app
from tether.interfaces.http._auth import CSRF_COOKIE, TOKEN_COOKIE

BASE = "http://127.0.0.1:8181"
HTMX = {"HX-Request": "true", "Accept": "text/html"}
ANSWER = "Refunded order o-1 in full."


@dataclass
class Ledger:
    """What the outside world saw: each refund and charge made, and the broken step."""

    refunds: list[str] = field(default_factory=list)
    charges: list[int] = field(default_factory=list)
    broken: bool = True


def build_worker(url: str, ledger: Ledger) -> App:
    app = App(url, poll_interval=0.05)

    @app.tool(effect=Effect.READ)
    async def lookup(order: str) -> dict[str, Any]:
        """Look an order up."""
        return {"order": order, "total": 4200}

    @app.tool(effect=Effect.IRREVERSIBLE)
    async def refund(order: str, *, idempotency_key: str) -> str:
        """Refund an order in full."""
        ledger.refunds.append(order)
        return f"refunded {order}"

    @app.tool(effect=Effect.IRREVERSIBLE)
    async def charge(cents: int, *, idempotency_key: str) -> str:
        ledger.charges.append(cents)
        return f"charged {cents}"

    @app.step
    async def price(cents: int) -> int:
        if ledger.broken:
            raise ValueError("the price table is missing")
        return cents + 2

    @app.step
    async def plan(n: int) -> dict[str, int]:
        return {"n": n, "total": n * 10}

    model = ScriptedModel(
        [
            ToolCall(id="c1", name="lookup", arguments={"order": "o-1"}),
            ToolCall(id="c2", name="refund", arguments={"order": "o-1"}),
            ANSWER,
        ],
        name="support-model",
    )
    agent: Agent[str] = Agent(model, [lookup, refund], "You handle refunds.")

    @app.workflow
    async def support(ctx: Context, ticket: str) -> str:
        return (await agent.run(ctx, ticket)).output

    @app.workflow
    async def checkout(ctx: Context, order: str) -> str:
        found = await lookup(order)
        return await charge(await price(found["total"]))

    @app.workflow
    async def charged_then_broken(ctx: Context) -> int:
        await charge(10)
        return await price(1)

    @app.step
    async def report(n: int) -> str:
        return "x" * n

    @app.workflow
    async def reporter(ctx: Context, n: int) -> int:
        return len(await report(n))

    @app.workflow
    async def planner(ctx: Context, n: int) -> int:
        planned = await plan(n)
        return planned["total"] + 1

    return app


@dataclass
class World:
    worker: App
    control: App
    client: httpx.AsyncClient
    ledger: Ledger
    secrets: dict[str, str]

    def auth(self, role: str = "approver") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secrets[role]}"}

    async def api(self, method: str, path: str, role: str = "approver", **kw: Any) -> Any:
        return await self.client.request(method, path, headers=self.auth(role), **kw)

    async def ok(self, path: str, role: str = "viewer", **kw: Any) -> Any:
        answer = await self.api("GET", path, role, **kw)
        assert answer.status_code == 200, answer.text
        return answer.json()

    async def page(self, path: str, role: str = "approver") -> httpx.Response:
        return await self.client.get(path, headers=self.auth(role) | {"Accept": "text/html"})

    async def form(
        self, path: str, data: dict[str, str], role: str = "approver", htmx: bool = True
    ) -> httpx.Response:
        headers = self.auth(role) | (HTMX if htmx else {"Accept": "text/html"})
        return await self.client.post(path, data=data, headers=headers)

    async def forks(self, run_id: str) -> list[str]:
        return [run.run_id for run in await self.control.list_runs(forked_from=run_id)]


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.02)
    raise AssertionError(f"condition never became true (last: {last!r})")


async def until(w: World, run_id: str, *statuses: RunStatus) -> RunStatus:
    async def check() -> RunStatus | None:
        status = (await w.control.get_run(run_id)).status
        return status if status in statuses else None

    found: RunStatus = await eventually(check)
    return found


@pytest.fixture
async def world(db_url: str) -> AsyncIterator[World]:
    ledger = Ledger()
    worker = build_worker(db_url, ledger)
    control = App(db_url)
    async with worker:
        await control.open(worker=False)
        secrets = {}
        for role, name in (("viewer", "vera"), ("approver", "alice"), ("admin", "root")):
            _, secrets[role] = await control.create_token(role, name=name, by="test")
        transport = httpx.ASGITransport(app=create_app(control))
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            yield World(worker, control, client, ledger, secrets)
        await control.close()


async def finished_agent(w: World, run_id: str = "s1") -> list[dict[str, Any]]:
    """The support agent's run, finished: its events (model, tool, model, tool, model)."""
    await w.worker.start("support", "refund o-1", run_id=run_id)
    await until(w, run_id, RunStatus.SUCCEEDED)
    events: list[dict[str, Any]] = (await w.ok(f"/api/v1/runs/{run_id}"))["events"]
    assert [e["kind"] for e in events] == ["model", "tool", "model", "tool", "model"]
    return events


async def failed_checkout(w: World, run_id: str = "c1") -> None:
    await w.worker.start("checkout", "o-9", run_id=run_id)
    await until(w, run_id, RunStatus.FAILED)


def error(answer: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = answer.json()["error"]
    return body


# -- the API: forks -----------------------------------------------------------------------
async def test_fork_with_an_edited_model_answer_then_tree_and_diff(world: World) -> None:
    await finished_agent(world)
    body = {"at_seq": 3, "replace": "No refund: the order already shipped.", "run_id": "s1-no"}
    made = await world.api("POST", "/api/v1/runs/s1/fork", json=body)
    assert made.status_code == 201, made.text
    fork = made.json()
    assert (fork["run_id"], fork["forked_from"], fork["fork_seq"]) == ("s1-no", "s1", 3)
    assert fork["workflow"] == "support" and fork["status"] in ("pending", "running")
    # The same fork again: the run it made, 200; nothing new.
    again = await world.api("POST", "/api/v1/runs/s1/fork", json=body)
    assert again.status_code == 200 and again.json()["run_id"] == "s1-no"
    await until(world, "s1-no", RunStatus.SUCCEEDED)
    assert (await world.control.get_run("s1-no")).result == body["replace"]
    assert world.ledger.refunds == ["o-1"]  # the edited answer calls no tool
    assert await world.forks("s1") == ["s1-no"]

    # A fork without a replacement runs the entry again, afresh; a fork of the fork.
    rerun = await world.api("POST", "/api/v1/runs/s1/fork", json={"at_seq": 5})
    assert rerun.status_code == 201 and rerun.json()["run_id"].startswith("s1-fork-")
    still = {"at_seq": 3, "replace": "Still no.", "run_id": "g"}
    deeper = await world.api("POST", "/api/v1/runs/s1-no/fork", json=still)
    assert deeper.status_code == 201 and deeper.json()["forked_from"] == "s1-no"
    listed = await world.ok("/api/v1/runs", params={"limit": 500})
    summary = next(run for run in listed["runs"] if run["run_id"] == "s1-no")
    assert (summary["forked_from"], summary["fork_seq"]) == ("s1", 3)

    tree = await world.ok("/api/v1/runs/g/tree")
    assert tree["run_id"] == "g" and tree["root_run_id"] == "s1" and not tree["truncated"]
    shape = [(run["run_id"], run["depth"], run["current"]) for run in tree["runs"]]
    assert shape[0] == ("s1", 0, False)
    assert ("s1-no", 1, False) in shape and ("g", 2, True) in shape
    assert shape.index(("g", 2, True)) == shape.index(("s1-no", 1, False)) + 1
    assert next(run for run in tree["runs"] if run["run_id"] == "s1-no")["forks"] == ["g"]

    diff = await world.ok("/api/v1/diff", params={"a": "s1", "b": "s1-no"})
    assert diff["a"]["run_id"] == "s1" and diff["b"]["run_id"] == "s1-no"
    assert diff["shared_entries"] == 2 and diff["first_divergent_seq"] == 3
    first = diff["changes"][0]
    assert first["seq"] == 3 and first["what"] == "model"
    assert {"text", "tool_calls"} <= set(first["differs"])
    assert first["a"]["model"]["tool_calls"][0]["name"] == "refund"
    assert first["b"]["model"]["text"] == body["replace"] and first["b"]["model"]["replaced"]
    after = {change["seq"]: change for change in diff["changes"][1:]}
    assert after[4]["a"]["name"] == "refund" and after[4]["b"] is None
    assert after[4]["a"]["effect"]["state"] == "completed"
    assert diff["outcome"]["differs"] == ["result"]
    same = await world.ok("/api/v1/diff", params={"a": "s1", "b": "s1"})
    assert same["same"] is True and same["changes"] == []


async def test_a_replacement_must_fit_the_entry_and_a_refused_fork_makes_nothing(
    world: World,
) -> None:
    await finished_agent(world)
    await world.worker.start("planner", 4, run_id="p1")
    await until(world, "p1", RunStatus.SUCCEEDED)
    cases: list[tuple[str, dict[str, Any], int, str, list[str]]] = [
        ("s1", {"at_seq": 3, "replace": {"role": "user", "content": "hi"}}, 422, "fork",
         ["replacement", "user message"]),
        ("s1", {"at_seq": 3, "replace": {"role": "assistant"}}, 422, "fork",
         ["says nothing and calls no tool"]),
        ("p1", {"at_seq": 1, "replace": {"n": "four"}}, 422, "fork",
         ["the replacement for the step 'plan' at seq 1", "lacks the keys ['total']"]),
        ("p1", {"at_seq": 1, "replace": [4, 40]}, 422, "fork",
         ["is a JSON array, but it returned a JSON object"]),
        ("s1", {"at_seq": 9}, 409, "fork", ["has 5 journal entries", "from 1 to 6"]),
        ("s1", {"at_seq": 7, "replace": "x"}, 409, "fork", ["no entry at seq 7"]),
        ("nope", {"at_seq": 1}, 404, "run_not_found", ["no run 'nope'"]),
        ("s1", {"at_seq": 0}, 422, "invalid_request", ["at_seq", "greater than or equal to 1"]),
        ("s1", {"at_seq": "3"}, 422, "invalid_request", ["at_seq", "whole number, not '3'"]),
        ("s1", {"at_seq": 3.5}, 422, "invalid_request", ["at_seq", "fractional part"]),
        ("s1", {"at_seq": True}, 422, "invalid_request", ["at_seq", "whole number, not True"]),
        ("s1", {"at": 3}, 422, "invalid_request", ["at_seq", "Field required"]),
        ("s1", {"at_seq": 3, "replace": 1, "runid": "x"}, 422, "invalid_request", ["runid"]),
        ("s1", {"at_seq": 3, "run_id": ""}, 422, "invalid_request", ["run_id"]),
    ]  # fmt: skip
    for run_id, body, status, code, words in cases:
        answer = await world.api("POST", f"/api/v1/runs/{run_id}/fork", json=body)
        assert answer.status_code == status, (body, answer.text)
        assert error(answer)["code"] == code, (body, answer.text)
        for word in words:
            assert word in error(answer)["message"], (word, answer.text)
    non_finite = await world.client.post(
        "/api/v1/runs/s1/fork",
        content=b'{"at_seq": 3, "replace": {"x": NaN}}',
        headers=world.auth() | {"Content-Type": "application/json"},
    )
    assert non_finite.status_code == 422 and "finite" in error(non_finite)["message"]
    assert await world.forks("s1") == [] and await world.forks("p1") == []
    # A run_id taken by another run (or by another fork) is a conflict, not that run.
    taken = await world.api("POST", "/api/v1/runs/s1/fork", json={"at_seq": 5, "run_id": "p1"})
    assert taken.status_code == 409 and error(taken)["code"] == "run_id_conflict"
    made = await world.api("POST", "/api/v1/runs/s1/fork", json={"at_seq": 5, "run_id": "f2"})
    assert made.status_code == 201
    other = await world.api("POST", "/api/v1/runs/s1/fork", json={"at_seq": 4, "run_id": "f2"})
    assert other.status_code == 409 and "taken" in error(other)["message"]
    assert await world.forks("s1") == ["f2"]
    assert world.ledger.refunds == ["o-1"]


async def test_tree_and_diff_of_unknown_runs_and_bad_queries(world: World) -> None:
    await world.worker.start("planner", 1, run_id="p1")
    await until(world, "p1", RunStatus.SUCCEEDED)
    missing = await world.api("GET", "/api/v1/runs/nope/tree", "viewer")
    assert missing.status_code == 404 and error(missing)["code"] == "run_not_found"
    for params in ({"a": "p1", "b": "nope"}, {"a": "nope", "b": "p1"}):
        answer = await world.api("GET", "/api/v1/diff", "viewer", params=params)
        assert answer.status_code == 404 and "nope" in error(answer)["message"]
    for params, word in [
        ({"a": "p1"}, "'b'"),
        ({"a": "p1", "b": ""}, "'b'"),
        ({"a": "p1", "b": "p1", "c": "x"}, "unknown query parameter 'c'"),
    ]:
        answer = await world.api("GET", "/api/v1/diff", "viewer", params=params)
        assert answer.status_code == 422 and word in error(answer)["message"], answer.text
    tree = await world.ok("/api/v1/runs/p1/tree")
    assert [run["run_id"] for run in tree["runs"]] == ["p1"] and tree["runs"][0]["forks"] == []


# -- the API: retries ---------------------------------------------------------------------
async def test_retry_in_place_and_its_restarts(world: World) -> None:
    await failed_checkout(world)
    assert (await world.ok("/api/v1/runs/c1/restarts")) == {"run_id": "c1", "restarts": []}
    world.ledger.broken = False  # the code fix
    body = {"from_seq": 2, "reason": "price table restored"}
    answer = await world.api("POST", "/api/v1/runs/c1/retry", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] in ("pending", "running") and answer.json()["error"] is None
    await until(world, "c1", RunStatus.SUCCEEDED)
    assert world.ledger.charges == [4202]
    restarts = (await world.ok("/api/v1/runs/c1/restarts"))["restarts"]
    assert len(restarts) == 1
    restart = restarts[0]
    assert (restart["restart"], restart["from_seq"], restart["status"]) == (1, 2, "failed")
    assert restart["by"].startswith("alice (token ") and restart["reason"] == body["reason"]
    assert restart["at"].endswith("+00:00")  # ISO 8601 in UTC, as every time of the API
    assert "price table is missing" in restart["error"]["message"]
    assert restart["discarded"] == [{"seq": 2, "kind": "step", "name": "price", "status": "failed"}]


async def test_a_refused_retry_changes_nothing(world: World) -> None:
    await world.worker.start("charged_then_broken", run_id="cb")
    await until(world, "cb", RunStatus.FAILED)
    await world.worker.start("planner", 2, run_id="p1")
    await until(world, "p1", RunStatus.SUCCEEDED)
    before = await world.control.get_run("cb")
    cases: list[tuple[str, dict[str, Any], int, str, list[str]]] = [
        ("cb", {"from_seq": 1}, 409, "fork", ["seq 1 (charge, completed)", "retry from seq 2"]),
        ("cb", {"from_seq": 9}, 409, "fork", ["retry from a seq from 1 to 3"]),
        ("p1", {"from_seq": 1}, 409, "run_state", ["succeeded", "fork it"]),
        ("nope", {"from_seq": 1}, 404, "run_not_found", ["nope"]),
        ("cb", {"from_seq": 0}, 422, "invalid_request", ["from_seq"]),
        ("cb", {"from_seq": True}, 422, "invalid_request", ["from_seq"]),
        ("cb", {}, 422, "invalid_request", ["from_seq", "Field required"]),
        ("cb", {"from_seq": 2, "reason": ""}, 422, "invalid_request", ["reason"]),
        ("cb", {"from_seq": 2, "because": "x"}, 422, "invalid_request", ["because"]),
    ]
    for run_id, body, status, code, words in cases:
        answer = await world.api("POST", f"/api/v1/runs/{run_id}/retry", json=body)
        assert answer.status_code == status, (body, answer.text)
        assert error(answer)["code"] == code, (body, answer.text)
        for word in words:
            assert word in error(answer)["message"], (word, answer.text)
    nul = await world.api("POST", "/api/v1/runs/cb/retry", json={"from_seq": 2, "reason": "a\0b"})
    assert 400 <= nul.status_code < 500, nul.text
    assert await world.control.get_run("cb") == before
    assert await world.control.list_restarts("cb") == []
    assert world.ledger.charges == [10]
    missing = await world.api("GET", "/api/v1/runs/nope/restarts", "viewer")
    assert missing.status_code == 404


# -- roles --------------------------------------------------------------------------------
async def test_a_viewer_may_look_but_not_fork_or_retry(world: World) -> None:
    await finished_agent(world)
    await failed_checkout(world)
    for path, body in [
        ("/api/v1/runs/s1/fork", {"at_seq": 3, "replace": "no"}),
        ("/api/v1/runs/c1/retry", {"from_seq": 2}),
    ]:
        answer = await world.api("POST", path, "viewer", json=body)
        assert answer.status_code == 403, answer.text
        assert error(answer)["code"] == "forbidden" and "viewer" in error(answer)["message"]
        unauthenticated = await world.client.post(path, json=body)
        assert unauthenticated.status_code == 401
    for path in ["/api/v1/runs/s1/tree", "/api/v1/runs/c1/restarts"]:
        await world.ok(path, "viewer")
    await world.ok("/api/v1/diff", "viewer", params={"a": "s1", "b": "c1"})
    assert await world.forks("s1") == []
    assert await world.control.list_restarts("c1") == []
    assert (await world.control.get_run("c1")).status is RunStatus.FAILED
    # On the pages: no fork or retry form for a viewer, and a hand-made post is refused.
    for path in ["/runs/s1", "/runs/c1"]:
        page = await world.page(path, "viewer")
        assert page.status_code == 200
        assert "Fork from here" not in page.text and "Retry from here" not in page.text
    approver = await world.page("/runs/c1")
    assert "Fork from here" in approver.text and "Retry from here" in approver.text
    data = {"run_id": "s1", "seq": "3", "mode": "replace", "answer": "no"}
    refused = await world.form("/ui/fork", data, role="viewer")
    assert refused.status_code == 403 and "viewer role" in refused.text
    refused = await world.form("/ui/retry", {"run_id": "c1", "seq": "2"}, role="viewer")
    assert refused.status_code == 403 and "viewer role" in refused.text
    assert await world.forks("s1") == []
    assert await world.control.list_restarts("c1") == []


# -- the web UI -----------------------------------------------------------------------------
async def test_fork_from_the_run_page_goes_to_the_new_runs_page(world: World) -> None:
    events = await finished_agent(world)
    page = await world.page("/runs/s1")
    assert page.status_code == 200
    # Each finished entry has the action; a model entry's form holds the answer's text,
    # another entry's its recorded output as JSON.
    assert page.text.count("Fork from here") == 5
    assert 'name="answer"' in page.text and f">{ANSWER}</textarea>" in page.text
    assert re.search(r'name="replace"[^>]*>\{\s*&#34;order&#34;: &#34;o-1&#34;', page.text)
    assert "calls no tool" in page.text  # a model entry that called a tool says so
    assert events[2]["output"]["message"]["tool_calls"][0]["name"] == "refund"

    edited = "I cannot refund o-1: it shipped 40 days ago.\r\nAsk a manager."
    data = {"run_id": "s1", "seq": "3", "mode": "replace", "answer": edited}
    answer = await world.form("/ui/fork", data)
    assert answer.status_code == 200, answer.text
    (fork_id,) = await world.forks("s1")
    assert answer.headers["hx-redirect"] == "/runs/" + quote(fork_id, safe="")
    await until(world, fork_id, RunStatus.SUCCEEDED)
    assert (await world.control.get_run(fork_id)).result == edited.replace("\r\n", "\n")
    assert world.ledger.refunds == ["o-1"]

    # The fork's page: its lineage, the shared entries, the replaced one, the fork point.
    forked = (await world.page(f"/runs/{fork_id}")).text
    assert "Forked from" in forked and 'href="/runs/s1"' in forked
    assert forked.count('data-shared="s1"') == 2
    assert 'id="seq-3"' in forked and "data-replaced" in forked and ">replaced</span>" in forked
    assert 'class="tl-fork"' in forked
    assert f'href="/diff?a=s1&amp;b={fork_id}"' in forked
    assert f'href="/tree/{fork_id}"' in forked
    origin = (await world.page("/runs/s1")).text
    assert "Branches" in origin and f'href="/runs/{fork_id}"' in origin

    # A plain form post (no JavaScript) forks too: 303 to the new run.
    plain = await world.form("/ui/fork", {"run_id": "s1", "seq": "5", "mode": "rerun"}, htmx=False)
    assert plain.status_code == 303 and plain.headers["location"].startswith("/runs/s1-fork-")
    assert len(await world.forks("s1")) == 2


async def test_a_refused_fork_is_shown_by_its_form_and_makes_nothing(world: World) -> None:
    await world.worker.start("planner", 3, run_id="p1")
    await until(world, "p1", RunStatus.SUCCEEDED)
    cases = [
        ({"mode": "replace", "replace": "{oops"}, 422, "the replacement is not valid JSON"),
        ({"mode": "replace", "replace": '{"n": "x"}'}, 422, "lacks the keys ['total']"),
        ({"mode": "replace", "replace": "null"}, 422, "null is no replacement"),
        ({"mode": "replace", "replace": "  "}, 422, "the replacement is empty"),
        ({"mode": "replace", "replace": '{"n": NaN}'}, 422, "not a JSON number"),
        ({"mode": "replace", "answer": " \r\n "}, 422, "the answer is empty"),
        ({"mode": "sideways"}, 422, "mode must be replace or rerun"),
    ]
    for extra, status, words in cases:
        data = {"run_id": "p1", "seq": "1"} | extra
        answer = await world.form("/ui/fork", data)
        assert answer.status_code == status, (extra, answer.text)
        assert words in answer.text.replace("&#39;", "'"), (extra, answer.text)
        assert 'class="error-box refusal"' in answer.text
        assert "hx-retarget" not in answer.headers  # into the form's own slot
    past = await world.form("/ui/fork", {"run_id": "p1", "seq": "9", "mode": "rerun"})
    assert past.status_code == 409 and "has 1 journal entries" in past.text
    for seq in ("0", "x"):
        bad = await world.form("/ui/fork", {"run_id": "p1", "seq": seq, "mode": "rerun"})
        assert bad.status_code == 422 and "seq must be a whole number" in bad.text
    missing = await world.form("/ui/fork", {"run_id": "nope", "seq": "1", "mode": "rerun"})
    assert missing.status_code == 404 and missing.headers["hx-retarget"] == "#flash"
    # Without JavaScript: the run page again, the form open, what was typed kept.
    typed = '[\n  "three",\n  30\n]'
    data = {"run_id": "p1", "seq": "1", "mode": "replace", "replace": typed}
    plain = await world.form("/ui/fork", data, htmx=False)
    assert plain.status_code == 422 and "<html" in plain.text
    assert '<details class="act" id="d-fork-1" open>' in plain.text
    assert "Not forked." in plain.text and "is a JSON array" in plain.text
    assert ">[\n  &#34;three&#34;,\n  30\n]</textarea>" in plain.text
    assert await world.forks("p1") == []
    # A good one after all that: the replaced output is what the run goes on from.
    data["replace"] = '{"n": 3, "total": 99}'
    answer = await world.form("/ui/fork", data)
    (fork_id,) = await world.forks("p1")
    assert answer.headers["hx-redirect"] == f"/runs/{fork_id}"
    await until(world, fork_id, RunStatus.SUCCEEDED)
    assert (await world.control.get_run(fork_id)).result == 100
    page = (await world.page(f"/runs/{fork_id}")).text
    assert "data-replaced" in page and 'class="tl-fork"' in page


async def test_an_output_too_large_to_edit_is_not_put_in_the_form(world: World) -> None:
    await world.worker.start("reporter", 60_000, run_id="big")
    await until(world, "big", RunStatus.SUCCEEDED)
    page = (await world.page("/runs/big")).text
    assert "Fork from here" in page and "Fork and run it again" in page
    assert "too large to edit here (60,002 characters)" in page
    assert 'name="replace"' not in page and "Fork with this output" not in page
    # The API takes any size the server takes.
    body = {"at_seq": 1, "replace": "y" * 60_000}
    made = await world.api("POST", "/api/v1/runs/big/fork", json=body)
    assert made.status_code == 201, made.text


async def test_retry_from_the_run_page_and_a_refusal_in_its_form(world: World) -> None:
    await world.worker.start("charged_then_broken", run_id="cb")
    await until(world, "cb", RunStatus.FAILED)
    page = (await world.page("/runs/cb")).text
    assert "Retry from here" in page and "the failing entry" in page
    refused = await world.form("/ui/retry", {"run_id": "cb", "seq": "1", "reason": "fixed"})
    assert refused.status_code == 409
    assert "Not retried." in refused.text and "retry from seq 2" in refused.text
    data = {"run_id": "cb", "seq": "1", "reason": "fixed"}
    plain = await world.form("/ui/retry", data, htmx=False)
    assert plain.status_code == 409 and '<details class="act" id="d-retry-1" open>' in plain.text
    assert 'value="fixed"' in plain.text
    assert await world.control.list_restarts("cb") == []
    assert world.ledger.charges == [10]

    world.ledger.broken = False
    done = await world.form("/ui/retry", {"run_id": "cb", "seq": "2", "reason": "fixed the table"})
    assert done.status_code == 200, done.text
    assert done.headers["hx-retarget"] == "#run-live" and done.headers["hx-reswap"] == "outerHTML"
    assert 'id="run-live"' in done.text and "Retrying from seq 2" in done.text
    await until(world, "cb", RunStatus.SUCCEEDED)
    page = (await world.page("/runs/cb")).text
    assert "Retried in place" in page and "fixed the table" in page
    assert "Restart 1" in page and "seq 2 step price" in page
    assert "Retry from here" not in page  # it succeeded
    assert world.ledger.charges == [10]
    again = await world.form("/ui/retry", {"run_id": "cb", "seq": "2"})
    assert again.status_code == 409 and "succeeded" in again.text


async def test_branch_view_and_diff_pages(world: World) -> None:
    await finished_agent(world)
    await world.control.fork("s1", 3, "No refund.", run_id="s1-no")
    await world.control.fork("s1", 5, "Refunded; anything else?", run_id="s1-polite")
    await world.control.fork("s1-no", 3, "No refund, sorry.", run_id="s1-no-sorry")
    for run_id in ("s1-no", "s1-polite", "s1-no-sorry"):
        await until(world, run_id, RunStatus.SUCCEEDED)
    tree = await world.page("/tree/s1-no")
    assert tree.status_code == 200, tree.text
    rows = re.findall(r'class="tree-row[^"]*"[^>]*data-run="([^"]+)" data-depth="(\d)"', tree.text)
    assert rows == [("s1", "0"), ("s1-no", "1"), ("s1-no-sorry", "2"), ("s1-polite", "1")]
    assert 'class="tree-row current fork"' in tree.text
    assert 'href="/diff?a=s1&amp;b=s1-no"' in tree.text
    assert 'href="/diff?a=s1-no&amp;b=s1-no-sorry"' in tree.text
    assert "hx-trigger" not in tree.text  # every run finished: nothing to poll
    fragment = await world.page("/ui/tree/s1")
    assert fragment.status_code == 200 and "<html" not in fragment.text

    diff = await world.page("/diff?a=s1&b=s1-no")
    assert diff.status_code == 200, diff.text
    assert "They share <strong>2</strong> entries by reference" in diff.text
    assert "First divergent entry: seq 3" in diff.text
    first = diff.text.split('id="first"')[1].split("</section>")[0]
    assert "refund(" in first and "No refund." in first and ">replaced</span>" in first
    assert "What differs after it" in diff.text and 'data-seq="4"' in diff.text
    assert "How they ended" in diff.text and "Swap sides" in diff.text
    fragment = await world.page("/ui/diff?a=s1&b=s1-no")
    assert fragment.status_code == 200 and "First divergent entry" in fragment.text
    same = await world.page("/diff?a=s1&b=s1")
    assert same.status_code == 200 and "The same." in same.text
    for path in ("/diff?a=s1&b=nope", "/tree/nope"):
        missing = await world.page(path)
        assert missing.status_code == 404 and "nope" in missing.text
    bad = await world.page("/diff?a=s1")
    assert bad.status_code == 422
    assert "Traceback" not in bad.text


async def test_odd_run_ids_in_lineage_links(world: World) -> None:
    await world.worker.start("planner", 5, run_id="p/1?x=1&y#2")
    await until(world, "p/1?x=1&y#2", RunStatus.SUCCEEDED)
    fork = await world.control.fork("p/1?x=1&y#2", 1, {"n": 5, "total": 7}, run_id="<b>f</b>")
    await until(world, fork.run_id, RunStatus.SUCCEEDED)
    page = await world.page("/runs/" + quote("<b>f</b>", safe=""))
    assert page.status_code == 200 and "<b>f</b>" not in page.text
    assert 'href="/diff?a=p/1%3Fx%3D1%26y%232&amp;b=%3Cb%3Ef%3C/b%3E"' in page.text
    tree = await world.page("/tree/" + quote("<b>f</b>", safe=""))
    assert tree.status_code == 200 and "&lt;b&gt;f&lt;/b&gt;" in tree.text
    diff = await world.page("/diff?a=p/1%3Fx%3D1%26y%232&b=%3Cb%3Ef%3C/b%3E")
    assert diff.status_code == 200 and "First divergent entry: seq 1" in diff.text


# -- CSRF on the forms ----------------------------------------------------------------------
async def test_the_fork_and_retry_forms_need_the_csrf_token(world: World) -> None:
    await finished_agent(world)
    await failed_checkout(world)
    client = world.client
    client.cookies.set(TOKEN_COOKIE, world.secrets["approver"])
    try:
        page = await client.get("/runs/s1", headers={"Accept": "text/html"})
        assert page.status_code == 200
        token = client.cookies[CSRF_COOKIE]
        assert f'name="csrf_token" value="{token}"' in page.text
        forms = [
            ("/ui/fork", {"run_id": "s1", "seq": "3", "mode": "replace", "answer": "no"}),
            ("/ui/retry", {"run_id": "c1", "seq": "2"}),
        ]
        for path, data in forms:
            for headers, extra in [
                ({}, {}),
                ({}, {"csrf_token": "x" * 43}),
                ({"Origin": "https://evil.example"}, {"csrf_token": token}),
                ({"Sec-Fetch-Site": "cross-site"}, {"csrf_token": token}),
            ]:
                answer = await client.post(
                    path, data=data | extra, headers={"Accept": "text/html"} | headers
                )
                assert answer.status_code == 403, (path, headers, extra, answer.text)
                assert re.search("CSRF|cross-site|another origin", answer.text), answer.text
        assert await world.forks("s1") == []
        assert await world.control.list_restarts("c1") == []
        # With the token (the form field, or htmx's header), the same posts work.
        fork = await client.post(
            "/ui/fork", data=forms[0][1] | {"csrf_token": token}, headers={"Accept": "text/html"}
        )
        assert fork.status_code == 303 and fork.headers["location"].startswith("/runs/s1-fork-")
        world.ledger.broken = False
        retry = await client.post(
            "/ui/retry", data=forms[1][1], headers=HTMX | {"X-CSRF-Token": token}
        )
        assert retry.status_code == 200 and "Retrying from seq 2" in retry.text
    finally:
        client.cookies.clear()
    await until(world, "c1", RunStatus.SUCCEEDED)
    assert len(await world.forks("s1")) == 1
