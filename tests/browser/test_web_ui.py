"""The web UI in headless Chromium, against real processes on one SQLite file:
``tether serve`` (tokens, not dev mode) and ``tether worker webapp:app``.

The story: an agent wants to refund an order; the refund is irreversible and waits for a
person. Someone logs in with an approver token, sees it on the Overview, approves it with a
note in the Approvals inbox, and watches the run page turn ``succeeded`` without a reload.
The payment provider's own ledger (a file the tool appends to) shows one refund.

Chromium is Debian's (``/usr/bin/chromium``), never one Playwright downloads. Without it
the tests skip, unless ``TETHER_REQUIRE_BROWSER=1`` (CI), where they fail. Screenshots of
every page at 1280 px and at phone width go to ``test-artifacts/screenshots/``, and with
``TETHER_SCREENSHOTS_TO_DOCS=1`` also to ``docs/img/control-plane/`` (the docs' pictures).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
from webapp import build_app, read_ledger

from tether import App, EffectState, RunStatus

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

pytestmark = pytest.mark.browser

T = TypeVar("T")

CHROMIUM = Path("/usr/bin/chromium")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
TETHER = Path(sys.executable).parent / "tether"
SHOTS = ROOT / "test-artifacts" / "screenshots"
DOCS_SHOTS = ROOT / "docs" / "img" / "control-plane"
WIDE = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
WAIT = 30.0  # seconds a process or a run may take to get somewhere; never asserted on
EXPECT_MS = 20_000  # how long a page may take to show something
# The browser and htmx log each 4xx answer; the tests make some on purpose.
EXPECTED_4XX = re.compile(r"status of 4\d\d|Response Status Error Code 4\d\d")


# -- processes and the database ---------------------------------------------------------
def call(url: str, fn: Callable[[App], Awaitable[T]]) -> T:
    """``fn`` with an App on the test database, opened in this process, no worker. On a
    thread of its own: Playwright's sync API keeps an event loop running on this one."""

    async def go() -> T:
        app = build_app(url)
        await app.open(worker=False)
        try:
            return await fn(app)
        finally:
            await app.close()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, go()).result()


def wait_until(check: Callable[[], T | None], what: str, timeout: float = WAIT) -> T:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def wait_status(url: str, run_id: str, status: RunStatus) -> None:
    async def get(app: App) -> Any:
        return await app.get_run(run_id)

    wait_until(lambda: call(url, get).status is status, f"run {run_id} to be {status}")


def awaiting_seq(url: str, run_id: str) -> int:
    """The seq of the run's tool call awaiting approval, once there is one."""

    async def find(app: App) -> int | None:
        for effect in await app.list_effects(run_id):
            if effect.state is EffectState.AWAITING_APPROVAL:
                return effect.seq
        return None

    return wait_until(lambda: call(url, find), f"a call of {run_id} awaiting approval")


def make_token(env: dict[str, str], role: str, name: str) -> str:
    """A token made the way an admin makes one: ``tether token create``."""
    made = subprocess.run(
        [str(TETHER), "token", "create", "--role", role, "--name", name],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    secrets = re.findall(r"\btt_\S+", made.stdout)
    assert len(secrets) == 1, made.stdout
    return secrets[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def process(args: list[str], env: dict[str, str], log: Path, ready: str) -> Iterator[None]:
    """A ``tether`` subprocess (output to ``log``, so that it never blocks on a full
    pipe), until the block ends; it is ready when ``ready`` appears in its output."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            args,
            cwd=HERE,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(
            lambda: ready in log.read_text() or proc.poll() is not None,
            f"{args[1]} to start",
        )
        assert proc.poll() is None, f"{args[1]} exited:\n{log.read_text()}"
        yield
    finally:
        proc.kill()  # runs are durable; nothing here needs a graceful stop
        proc.wait(timeout=30)


@dataclass(frozen=True)
class Plane:
    """The running control plane: where it is, its database, its tokens."""

    base: str
    url: str
    ledger: Path
    approver: str
    viewer: str


def seed(url: str) -> None:
    """Runs in every state a person meets, started from another process."""

    async def start(app: App) -> None:
        await app.start("refund_agent", "A-1001", run_id="refund-a1001", tags=("support",))
        await app.start("nightly_report", "2025-06-01", run_id="report-0601", tags=("ops",))
        await app.start("onboarding", "ada", run_id="onboard-ada", tags=("kyc",))
        await app.start("compare_orders", run_id="compare-1", tags=("support",))
        await app.start("checkout", "A-1002", run_id="checkout-a1002", tags=("shop",))
        await app.start("notify", "bob@example.net", run_id="notify-bob", tags=("support",))
        await app.start("import_catalog", "s3://catalog/2025-06", run_id="import-catalog")

    call(url, start)
    awaiting_seq(url, "refund-a1001")
    for run_id, status in [
        ("report-0601", RunStatus.WAITING),
        ("onboard-ada:1", RunStatus.WAITING),
        ("compare-1", RunStatus.NEEDS_ATTENTION),
        ("checkout-a1002", RunStatus.FAILED),
        ("notify-bob", RunStatus.NEEDS_ATTENTION),
        ("import-catalog", RunStatus.RUNNING),
    ]:
        wait_status(url, run_id, status)


def _browser_missing() -> str | None:
    if not CHROMIUM.exists():
        return f"there is no Chromium at {CHROMIUM}"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        return f"the playwright package is missing ({exc})"
    return None


@pytest.fixture(scope="module")
def chromium() -> Path:
    missing = _browser_missing()
    if missing:
        if os.environ.get("TETHER_REQUIRE_BROWSER") == "1":
            pytest.fail(
                f"the browser tests are required (TETHER_REQUIRE_BROWSER=1) but {missing}; "
                "install it with 'apt-get install -y chromium' (never 'playwright install')"
            )
        pytest.skip(f"{missing}; install it with 'apt-get install -y chromium'")
    return CHROMIUM


@pytest.fixture(scope="module")
def plane(chromium: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    tmp = tmp_path_factory.mktemp("plane")
    url = f"sqlite:///{tmp / 'tether.db'}"
    ledger = tmp / "ledger.jsonl"
    env = dict(os.environ, TETHER_DATABASE_URL=url, TETHER_WEB_LEDGER=str(ledger))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    serve = [str(TETHER), "serve", "--port", str(port)]
    work = [str(TETHER), "worker", "webapp:app"]
    # The worker creates the database; the admin makes tokens; then the server starts.
    with process(work, env, tmp / "worker.log", " started: webapp:app on "):
        approver = make_token(env, "approver", "alice")
        viewer = make_token(env, "viewer", "victor")
        with process(serve, env, tmp / "serve.log", "tether serve: listening on"):
            wait_until(lambda: _healthy(base), "the server to answer /healthz")
            seed(url)
            yield Plane(base, url, ledger, approver, viewer)


def _healthy(base: str) -> bool:
    try:
        with urllib.request.urlopen(base + "/healthz", timeout=2) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture(scope="module")
def browser(chromium: Path) -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(chromium))
        yield launched
        launched.close()


# -- pages --------------------------------------------------------------------------------
@contextlib.contextmanager
def session(
    browser: Browser, plane: Plane, secret: str | None, *, phone: bool = False
) -> Iterator[BrowserContext]:
    """A browser context (its own cookies), logged in with ``secret`` unless None. Fails
    the test on any JavaScript error or failed script or style load."""
    if phone:
        context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    else:
        context = browser.new_context(viewport=WIDE)
    problems: list[str] = []

    def on_page(page: Page) -> None:
        page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
        page.on(
            "console",
            lambda message: (
                problems.append(f"console: {message.text}")
                if message.type == "error" and not EXPECTED_4XX.search(message.text)
                else None
            ),
        )

        page.on(
            "response",
            lambda answer: (
                problems.append(f"{answer.status} for {answer.url}")
                if "/static/" in answer.url and answer.status >= 400
                else None
            ),
        )

    context.on("page", on_page)
    try:
        if secret is not None:
            login(context.new_page(), plane, secret)
        yield context
        assert problems == []
    finally:
        context.close()


def login(page: Page, plane: Plane, secret: str, next_path: str = "/") -> None:
    from playwright.sync_api import expect

    page.goto(f"{plane.base}/login?next={next_path}")
    page.fill("#token", secret)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(plane.base + next_path)


def shot(page: Page, name: str) -> None:
    """A screenshot of the whole page, for people (and the docs, when asked)."""
    page.mouse.move(0, 0)
    page.evaluate("document.activeElement && document.activeElement.blur()")
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("TETHER_SCREENSHOTS_TO_DOCS") == "1":
        DOCS_SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOCS_SHOTS / path.name)


def approval_card(page: Page, run_id: str) -> Any:
    return page.locator(f'article.approval[data-run="{run_id}"]')


# -- the story ----------------------------------------------------------------------------
def test_approve_a_refund_in_the_inbox_and_watch_its_run_finish(
    plane: Plane, browser: Browser
) -> None:
    from playwright.sync_api import expect

    with session(browser, plane, None) as context:
        page = context.new_page()
        page.goto(plane.base + "/approvals")
        expect(page).to_have_url(re.compile(r"/login\?next=/approvals$"))
        page.fill("#token", plane.approver)
        page.get_by_role("button", name="Log in").click()
        expect(page).to_have_url(plane.base + "/approvals")

        # The Overview says what needs a person, the waiting refund among them.
        page.goto(plane.base + "/")
        item = page.locator('li[data-kind="approval"][data-run="refund-a1001"]')
        expect(item).to_contain_text("issue_refund")
        expect(item).to_contain_text("awaits approval")
        for kind in ("in_doubt", "budget", "failed"):
            expect(page.locator(f'.attention li[data-kind="{kind}"]').first).to_be_visible()
        expect(page.locator('.count-card[data-status="needs_attention"] .n')).to_have_text("2")
        expect(page.locator(".worker")).to_contain_text("import-catalog")
        shot(page, "overview")

        # The run page, open in its own tab before anyone decides.
        run_page = context.new_page()
        run_page.goto(plane.base + "/runs/refund-a1001")
        live = run_page.locator("#run-live")
        expect(live).to_have_attribute("data-status", "waiting")
        expect(run_page.locator('.tl-item[data-state="awaiting_approval"]')).to_contain_text(
            "issue_refund"
        )
        run_page.evaluate("window.notReloaded = true")

        # The inbox: the call, its arguments, why it waits, its deadline; approve it.
        page.bring_to_front()
        page.goto(plane.base + "/approvals")
        card = approval_card(page, "refund-a1001")
        expect(card).to_contain_text('"amount_cents": 4200')
        expect(card).to_contain_text("rejected automatically")
        expect(card).to_contain_text("the tool's declaration")
        shot(page, "approvals")
        card.locator('input[name="note"]').fill("Duplicate charge, confirmed with the customer")
        card.get_by_role("button", name="Approve").click()
        decided = page.locator("article.approval.decided")
        expect(decided).to_contain_text("Approved by alice (token")
        expect(decided).to_contain_text("Duplicate charge, confirmed with the customer")

        # The run page updates itself: the refund is made and the run succeeds.
        run_page.bring_to_front()
        expect(live).to_have_attribute("data-status", "succeeded", timeout=EXPECT_MS)
        assert run_page.evaluate("window.notReloaded") is True
        refund = run_page.locator('.tl-item[data-kind="tool"]', has_text="issue_refund")
        expect(refund).to_have_attribute("data-state", "completed")
        expect(refund.locator(".history")).to_contain_text("approved")
        expect(refund.locator(".history")).to_contain_text("by alice (token")
        expect(refund.locator(".history")).to_contain_text("Duplicate charge")
        expect(run_page.locator('.tl-item[data-kind="model"]').last).to_contain_text("Refunded")
        expect(run_page.locator(".live-note")).to_have_count(0)  # a finished run stops polling
        shot(run_page, "run")

    # The payment provider's ledger: one refund, for this order, with the call's key.
    refunds = [line for line in read_ledger(plane.ledger) if line["order_id"] == "A-1001"]
    assert len(refunds) == 1, refunds

    async def effect(app: App) -> Any:
        seq = next(
            e.seq for e in await app.list_effects("refund-a1001") if e.tool == "issue_refund"
        )
        return await app.get_effect("refund-a1001", seq)

    made = call(plane.url, effect)
    assert made.state is EffectState.COMPLETED and made.attempt == 1
    assert refunds[0]["key"] == made.idempotency_key


def test_a_viewer_sees_no_action_buttons_and_may_not_post(plane: Plane, browser: Browser) -> None:
    from playwright.sync_api import expect

    async def start(app: App) -> None:
        await app.start("refund_agent", "A-1002", run_id="refund-a1002")

    call(plane.url, start)
    seq = awaiting_seq(plane.url, "refund-a1002")
    with session(browser, plane, plane.viewer) as context:
        page = context.new_page()
        page.goto(plane.base + "/approvals")
        card = approval_card(page, "refund-a1002")
        expect(card).to_contain_text("issue_refund")
        expect(page.get_by_role("button", name="Approve")).to_have_count(0)
        expect(page.get_by_role("button", name="Reject")).to_have_count(0)
        expect(page.locator(".who")).to_contain_text("victor")

        page.goto(plane.base + "/runs/refund-a1002")
        expect(page.locator("#todo")).to_contain_text("An approver decides these")
        expect(page.locator("form")).to_have_count(1)  # only the logout button's form
        page.goto(plane.base + "/runs/notify-bob")
        expect(page.locator(".resolve-form")).to_have_count(0)
        page.goto(plane.base + "/runs/compare-1")
        expect(page.locator("#todo")).to_contain_text("reached its budget")
        expect(page.get_by_role("button", name="Raise and resume")).to_have_count(0)

        # A hand-made post with a valid CSRF token is refused for the role.
        csrf = next(c["value"] for c in context.cookies() if c["name"] == "tether_csrf")
        answer = page.request.post(
            plane.base + "/ui/approve",
            form={"run_id": "refund-a1002", "seq": str(seq), "decision": "approve"},
            headers={"X-CSRF-Token": csrf, "Origin": plane.base, "Accept": "text/html"},
        )
        assert answer.status == 403
        assert "viewer" in answer.text()

    async def state(app: App) -> EffectState:
        return (await app.get_effect("refund-a1002", seq)).state

    assert call(plane.url, state) is EffectState.AWAITING_APPROVAL
    assert not [line for line in read_ledger(plane.ledger) if line["order_id"] == "A-1002"]


def test_resolve_an_in_doubt_email_on_its_run_page(plane: Plane, browser: Browser) -> None:
    from playwright.sync_api import expect

    with session(browser, plane, plane.approver) as context:
        page = context.new_page()
        page.goto(plane.base + "/runs/notify-bob")
        item = page.locator('.tl-item[data-state="in_doubt"]')
        expect(item).to_contain_text("send_email")
        expect(item.locator(".history")).to_contain_text("timed out")
        shot(page, "run-in-doubt")

        # A result that is not JSON: the message says so and the form keeps what was typed.
        form = item.locator(".resolve-form")
        form.locator('input[name="result"]').fill("{msg_7")
        form.locator('input[name="reason"]').fill("the mail server's log shows it was sent")
        form.get_by_role("button", name="Resolve").click()
        expect(page.locator("#flash .error-box")).to_contain_text("not valid JSON")
        expect(form.locator('input[name="reason"]')).to_have_value(
            "the mail server's log shows it was sent"
        )

        form.locator('input[name="result"]').fill('"msg_7"')
        form.get_by_role("button", name="Resolve").click()
        expect(page.locator("#flash .ok-box")).to_contain_text("Resolved send_email")
        expect(page.locator("#run-live")).to_have_attribute(
            "data-status", "succeeded", timeout=EXPECT_MS
        )
        history = page.locator('.tl-item[data-kind="tool"] .history')
        expect(history).to_contain_text("resolved: done")
        expect(history).to_contain_text("the mail server's log shows it was sent")

    async def result(app: App) -> Any:
        return (await app.get_run("notify-bob")).result

    assert call(plane.url, result) == "msg_7"


def test_raise_a_budget_on_the_run_page(plane: Plane, browser: Browser) -> None:
    from playwright.sync_api import expect

    with session(browser, plane, plane.approver) as context:
        page = context.new_page()
        page.goto(plane.base + "/runs/compare-1")
        todo = page.locator("#todo")
        expect(todo).to_contain_text("reached its budget after 1 model call,")
        shot(page, "run-budget")
        todo.locator('input[name="tokens"]').fill("100000")
        todo.get_by_role("button", name="Raise and resume").click()
        expect(page.locator("#flash .ok-box")).to_contain_text("100,000 tokens")
        expect(page.locator("#run-live")).to_have_attribute(
            "data-status", "succeeded", timeout=EXPECT_MS
        )
        expect(page.locator('.tl-item[data-kind="budget"]')).to_contain_text("by alice")

    async def result(app: App) -> Any:
        return (await app.get_run("compare-1")).result

    assert call(plane.url, result) == "both orders found"


def test_runs_page_filters_by_status_and_tag_and_pages(plane: Plane, browser: Browser) -> None:
    from playwright.sync_api import expect

    with session(browser, plane, plane.approver) as context:
        page = context.new_page()
        page.goto(plane.base + "/runs")
        expect(page.locator('tr[data-run="checkout-a1002"]')).to_contain_text("failed")
        shot(page, "runs")

        page.select_option("#f-status", "failed")
        page.get_by_role("button", name="Filter").click()
        expect(page).to_have_url(re.compile(r"status=failed"))
        expect(page.locator("tbody tr")).to_have_count(1)
        expect(page.locator("tbody tr")).to_contain_text("card declined")

        page.goto(plane.base + "/runs?tag=kyc")
        rows = page.locator("tbody tr")
        expect(rows).to_have_count(2)  # the onboarding run and its child, which inherits
        expect(page.locator('tr[data-run="onboard-ada:1"]')).to_be_visible()

        page.goto(plane.base + "/runs?limit=3")
        expect(rows).to_have_count(3)
        newest = rows.first.get_attribute("data-run")
        page.get_by_role("link", name="Older →").click()
        expect(page).to_have_url(re.compile(r"offset=3"))
        expect(rows).to_have_count(3)
        assert rows.first.get_attribute("data-run") != newest

        page.goto(plane.base + "/runs?status=bogus")
        expect(page.locator("#runs .error-box")).to_contain_text("there is no status 'bogus'")
        page.goto(plane.base + "/runs/no-such-run")
        expect(page.locator("main")).to_contain_text("no run 'no-such-run'")


def test_login_refuses_a_bad_token_and_logout_ends_the_session(
    plane: Plane, browser: Browser
) -> None:
    from playwright.sync_api import expect

    with session(browser, plane, None) as context:
        page = context.new_page()
        page.goto(plane.base + "/runs")
        expect(page).to_have_url(re.compile(r"/login\?next=/runs$"))
        shot(page, "login")
        page.fill("#token", "tt_nope_not-a-token")
        page.get_by_role("button", name="Log in").click()
        expect(page.locator(".login .error-box")).to_contain_text("unknown or revoked")
        expect(page.locator("#token")).to_be_visible()
        assert not [c for c in context.cookies() if c["name"] == "tether_token"]

        page.fill("#token", plane.approver)
        page.get_by_role("button", name="Log in").click()
        expect(page).to_have_url(plane.base + "/runs")
        token = next(c for c in context.cookies() if c["name"] == "tether_token")
        assert token["httpOnly"] is True

        page.get_by_role("button", name="Log out").click()
        expect(page).to_have_url(re.compile(r"/login$"))
        assert not [c for c in context.cookies() if c["name"] == "tether_token"]
        page.goto(plane.base + "/")
        expect(page).to_have_url(re.compile(r"/login\?next=/$"))


def test_every_page_fits_a_phone(plane: Plane, browser: Browser) -> None:
    from playwright.sync_api import expect

    async def start(app: App) -> None:
        await app.start("refund_agent", "A-1003", run_id="refund-a1003", tags=("support",))

    call(plane.url, start)
    awaiting_seq(plane.url, "refund-a1003")
    pages = {
        "overview-phone": "/",
        "runs-phone": "/runs",
        "run-phone": "/runs/refund-a1001",
        "approvals-phone": "/approvals",
        "": "/runs/refund-a1003",  # a run awaiting approval: checked, not pictured
    }
    with session(browser, plane, plane.approver, phone=True) as context:
        page = context.new_page()
        for name, path in pages.items():
            page.goto(plane.base + path)
            expect(page.locator("main h1").first).to_be_visible()
            widths = page.evaluate(
                "[document.documentElement.scrollWidth, document.body.scrollWidth]"
            )
            assert max(widths) <= PHONE["width"], f"{path} is {widths} px wide on a phone"
            if name:
                shot(page, name)
    with session(browser, plane, None, phone=True) as context:
        page = context.new_page()
        page.goto(plane.base + "/login")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"/login is {width} px wide on a phone"
