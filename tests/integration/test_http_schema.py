"""The HTTP API against its own OpenAPI document: schemathesis generates requests for every
operation (valid and invalid parameters and bodies) with an admin token, and no answer may
be a server error; answers must match the documented status codes, content types and
schemas.

The database is seeded first with runs in every interesting state (succeeded, waiting on
a signal, awaiting approval, in doubt, failed and retried in place, forked), so that the
reads have something to return.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from tether import App, Context, Decision, Effect, OutcomeUnknown, Role, RunStatus
from tether.interfaces.http import create_app

AUTH: dict[str, str] = {}


def build_worker(url: str) -> App:
    app = App(url, poll_interval=0.05)

    @app.tool(effect=Effect.IRREVERSIBLE, approval=Decision.APPROVE)
    async def transfer(to: str, cents: int, *, idempotency_key: str) -> str:
        return f"sent {cents} to {to}"

    @app.tool(effect=Effect.IRREVERSIBLE)
    async def charge(cents: int, *, idempotency_key: str) -> str:
        raise OutcomeUnknown("the card network timed out")

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

    @app.step
    async def crash(x: int) -> int:
        raise ValueError("always broken")

    @app.workflow
    async def crasher(ctx: Context, x: int) -> int:
        return await crash(x)

    return app


async def seed(url: str) -> str:
    """Runs in several states, and an admin token (its secret)."""
    worker = build_worker(url)
    async with worker:
        await worker.start("compute", 1, run_id="c1", tags=["batch"])
        await worker.start("pay", "bob", 100, run_id="p1")
        await worker.start("waiter", run_id="w1")
        await worker.start("bill", run_id="b1")
        await worker.start("crasher", 1, run_id="x1")
        wanted = {
            "c1": RunStatus.SUCCEEDED,
            "p1": RunStatus.WAITING,
            "w1": RunStatus.WAITING,
            "b1": RunStatus.NEEDS_ATTENTION,
            "x1": RunStatus.FAILED,
        }
        await settle(worker, wanted)
        # A fork (with a replaced output) and a fork of it; a failed run retried in place.
        await worker.fork("c1", 1, 5, run_id="c1-f")
        await settle(worker, {"c1-f": RunStatus.SUCCEEDED})
        await worker.fork("c1-f", 2, run_id="c1-f-f")
        await worker.retry("x1", 1, by="seed", reason="once more")
        await settle(worker, {"c1-f-f": RunStatus.SUCCEEDED})

        async def restarted() -> bool:
            return (await worker.get_run("x1")).status is RunStatus.FAILED and bool(
                await worker.list_restarts("x1")
            )

        deadline = time.monotonic() + 10
        while not await restarted():
            assert time.monotonic() < deadline, "the retried run did not fail again"
            await asyncio.sleep(0.02)
        _, secret = await worker.create_token(Role.ADMIN, name="schemathesis")
    return secret


async def settle(worker: App, wanted: dict[str, RunStatus]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        runs = {run_id: (await worker.get_run(run_id)).status for run_id in wanted}
        if runs == wanted:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"seeding did not settle: {runs}")


# The server is made at import, for its OpenAPI document; its database is made and seeded
# by the fixture before the first request. (schemathesis.pytest.from_fixture, the lazy
# loader, does not work with pytest 9.)
DB_DIR = Path(tempfile.gettempdir()) / f"tether-http-schema-{os.getpid()}"
URL = f"sqlite:///{DB_DIR / 'tether.db'}"
SERVER = create_app(App(URL))
schema = schemathesis.openapi.from_dict(SERVER.openapi())
schema.app = SERVER


@schema.auth(refresh_interval=None)
class AdminToken:
    """The seeded admin token, on every request but those that test leaving it out. (Not
    cached: schemathesis asks once at collection, before the fixture made the token.)"""

    def get(self, case: Any, ctx: Any) -> str:
        return AUTH.get("Authorization", "Bearer not-made-yet")

    def set(self, case: Any, data: str, ctx: Any) -> None:
        case.headers = {**(case.headers or {}), "Authorization": data}


@pytest.fixture(scope="module", autouse=True)
def seeded() -> Iterator[None]:
    """The seeded database; an admin token in AUTH. The server's lifespan (its App's
    connection) starts on the first request and is shut down here."""
    shutil.rmtree(DB_DIR, ignore_errors=True)
    DB_DIR.mkdir()
    try:
        AUTH["Authorization"] = f"Bearer {asyncio.run(seed(URL))}"
        yield
    finally:
        asgi.shutdown_lifespans()
        shutil.rmtree(DB_DIR, ignore_errors=True)


@schema.parametrize()
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_no_request_is_a_server_error_and_answers_match_the_schema(case: Any) -> None:
    case.call_and_validate(
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_headers_conformance,
            response_schema_conformance,
            negative_data_rejection,
            positive_data_acceptance,
            unsupported_method,
            allow_header_conformance,
            ignored_auth,
        ],
    )
