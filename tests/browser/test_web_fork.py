"""Forks in the web UI, in headless Chromium, against real processes on one SQLite file:
``tether serve`` (tokens) and ``tether worker webapp:app``, as in test_web_ui.py (whose
helpers and browser fixtures this module uses), on a database of its own.

The story: an agent refunded an order after a person approved it. Someone asks "what if
the model had refused?": on the finished run's page they fork it from the model call that
chose the refund, with an edited answer, and land on the fork's page, which finishes
without a refund. The branch view shows the tree of forks; its compare link opens the
diff: the first divergent entry (the edited answer) and what differs after it (no refund
call, another result). The payment provider's ledger still holds one refund.

Screenshots at 1280 px and phone width go to ``test-artifacts/screenshots/`` and, with
``TETHER_SCREENSHOTS_TO_DOCS=1``, to ``docs/img/control-plane/`` (fork-run.png,
fork-tree.png, fork-diff.png and their -phone versions, and fork-form.png: the form).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from test_web_ui import (  # the helpers and fixtures of the control plane's browser tests
    DOCS_SHOTS,
    EXPECT_MS,
    HERE,
    PHONE,
    SHOTS,
    TETHER,
    Plane,
    _healthy,
    awaiting_seq,
    browser,  # noqa: F401  (a fixture)
    call,
    chromium,  # noqa: F401  (a fixture)
    free_port,
    make_token,
    process,
    session,
    shot,
    wait_status,
    wait_until,
)
from webapp import read_ledger

from tether import App, RunStatus

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.browser

ORIGIN = "refund-a1001"
EDITED = (
    "I can't refund order A-1001: it was delivered 45 days ago, past the 30-day window. "
    "I have passed your request to a manager, who will reply within a day."
)


def seed(url: str) -> None:
    """A refund agent's run, approved and finished; a fork of it with a warmer last
    answer; a checkout that failed."""

    async def start(app: App) -> None:
        await app.start("refund_agent", "A-1001", run_id=ORIGIN, tags=("support",))
        await app.start("checkout", "A-1002", run_id="checkout-a1002", tags=("shop",))

    call(url, start)
    seq = awaiting_seq(url, ORIGIN)

    async def approve(app: App) -> None:
        await app.approve(ORIGIN, seq, approved=True, by="alice", note="customer called")

    call(url, approve)
    wait_status(url, ORIGIN, RunStatus.SUCCEEDED)
    wait_status(url, "checkout-a1002", RunStatus.FAILED)

    async def warmer(app: App) -> None:
        answer = "Done! Order A-1001 is refunded in full; it shows on your card in 5-10 days."
        await app.fork(ORIGIN, 5, answer, run_id=f"{ORIGIN}-warmer")

    call(url, warmer)
    wait_status(url, f"{ORIGIN}-warmer", RunStatus.SUCCEEDED)


@pytest.fixture(scope="module")
def plane(chromium: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:  # noqa: F811
    tmp = tmp_path_factory.mktemp("fork-plane")
    url = f"sqlite:///{tmp / 'tether.db'}"
    ledger = tmp / "ledger.jsonl"
    env = dict(os.environ, TETHER_DATABASE_URL=url, TETHER_WEB_LEDGER=str(ledger))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with process([str(TETHER), "worker", "webapp:app"], env, tmp / "worker.log", " started: "):
        approver = make_token(env, "approver", "alice")
        viewer = make_token(env, "viewer", "victor")
        serve = [str(TETHER), "serve", "--port", str(port)]
        with process(serve, env, tmp / "serve.log", "tether serve: listening on"):
            wait_until(lambda: _healthy(base), "the server to answer /healthz")
            seed(url)
            yield Plane(base, url, ledger, approver, viewer)


def shot_of(page: Page, element: Any, name: str) -> None:
    """A screenshot of one element of the page (a form), like :func:`shot`."""
    page.mouse.move(0, 0)
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    element.screenshot(path=str(path))
    if os.environ.get("TETHER_SCREENSHOTS_TO_DOCS") == "1":
        DOCS_SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOCS_SHOTS / path.name)


def entry(page: Page, seq: int) -> Any:
    return page.locator(f'.tl-item[data-seq="{seq}"]')


# The elements that stick out past the right edge of the screen, for the message.
WIDE_ELEMENTS = """() => Array.from(document.querySelectorAll("body *"))
  .filter(e => e.getBoundingClientRect().right > 391)
  .slice(-5)
  .map(e => `${e.tagName.toLowerCase()}.${e.className}: ${(e.textContent || "").slice(0, 40)}`)"""


def fits_a_phone(page: Page) -> None:
    widths = page.evaluate("[document.documentElement.scrollWidth, document.body.scrollWidth]")
    if max(widths) > PHONE["width"]:
        wide = page.evaluate(WIDE_ELEMENTS)
        raise AssertionError(f"{page.url} is {widths} px wide on a phone: {wide}")


# -- the story ----------------------------------------------------------------------------
def test_fork_a_finished_agent_run_with_an_edited_answer_then_compare(
    plane: Plane,
    browser: Browser,  # noqa: F811
) -> None:
    from playwright.sync_api import expect

    with session(browser, plane, plane.approver) as context:
        page = context.new_page()
        page.goto(f"{plane.base}/runs/{ORIGIN}")
        expect(page.locator("#run-live")).to_have_attribute("data-status", "succeeded")
        kinds = page.locator(".tl-item").evaluate_all("items => items.map(i => i.dataset.kind)")
        assert kinds == ["model", "tool", "model", "tool", "model"]
        # The model call that chose the refund.
        chose = entry(page, 3)
        expect(chose).to_contain_text("issue_refund")

        # A refusal first: a tool's output that is not JSON. It shows by the form, which
        # keeps what was typed; no fork is made.
        lookup = entry(page, 2)
        lookup.get_by_text("Fork from here").click()
        output = lookup.locator('textarea[name="replace"]')
        expect(output).to_have_value(re.compile(r'"order_id": "A-1001"'))
        output.fill('{"order_id": "A-1001", "total_cents": 42')
        lookup.get_by_role("button", name="Fork with this output").click()
        refusal = lookup.locator(".form-msg .refusal")
        expect(refusal).to_contain_text("Not forked.")
        expect(refusal).to_contain_text("the replacement is not valid JSON")
        expect(output).to_have_value('{"order_id": "A-1001", "total_cents": 42')
        lookup.get_by_text("Fork from here").click()  # closes it

        # The fork: the model's answer, edited; the form starts from what it answered.
        chose.get_by_text("Fork from here").click()
        answer = chose.locator('textarea[name="answer"]')
        expect(answer).to_be_visible()
        expect(chose.locator(".fork-form")).to_contain_text("calls no tool")
        answer.fill(EDITED)
        shot_of(page, chose, "fork-form")
        chose.get_by_role("button", name="Fork with this answer").click()

        # The new run's page: it goes on from the edited answer and finishes.
        expect(page).to_have_url(re.compile(rf"/runs/{ORIGIN}-fork-[0-9a-f]{{6}}$"))
        fork_id = page.url.rsplit("/", 1)[1]
        live = page.locator("#run-live")
        expect(live).to_have_attribute("data-status", "succeeded", timeout=EXPECT_MS)
        expect(page.locator("#lineage")).to_contain_text(f"{ORIGIN}")
        expect(page.locator("#lineage")).to_contain_text("seq 3")
        expect(page.locator(".tl-item.shared")).to_have_count(2)
        expect(entry(page, 3)).to_have_class(re.compile(r"\breplaced\b"))
        expect(entry(page, 3).locator(".said")).to_contain_text("past the 30-day window")
        expect(page.locator(".tl-fork")).to_contain_text(f"Forked from {ORIGIN} at seq 3")
        expect(page.locator(".tl-item")).to_have_count(3)  # no refund call, no last turn
        expect(page.locator(".facts")).to_contain_text("past the 30-day window")
        shot(page, "fork-run")

        # A fork of the fork, made from a script: the tree has a branch two deep.
        async def deeper(app: App) -> None:
            text = "Order A-1001 is past the 30-day window; a manager will decide by Friday."
            await app.fork(fork_id, 3, text, run_id=f"{fork_id}-manager")

        call(plane.url, deeper)
        wait_status(plane.url, f"{fork_id}-manager", RunStatus.SUCCEEDED)

        # The branch view.
        page.get_by_role("link", name="Branches").first.click()
        expect(page).to_have_url(f"{plane.base}/tree/{fork_id}")
        rows = page.locator(".tree-row")
        expect(rows).to_have_count(4)
        ids = rows.evaluate_all("rows => rows.map(r => [r.dataset.run, r.dataset.depth])")
        assert ids == [
            [ORIGIN, "0"],
            [fork_id, "1"],
            [f"{fork_id}-manager", "2"],
            [f"{ORIGIN}-warmer", "1"],
        ]
        current = page.locator(".tree-row.current")
        expect(current).to_have_attribute("data-run", fork_id)
        expect(current).to_contain_text(f"forked from {ORIGIN} at seq 3")
        shot(page, "fork-tree")

        # Compare the fork with its origin.
        current.get_by_role("link", name=f"Compare with {ORIGIN}").click()
        expect(page).to_have_url(re.compile(r"/diff\?a=refund-a1001&b=refund-a1001-fork-"))
        expect(page.locator(".diff-verdict")).to_contain_text("They share 2 entries")
        expect(page.locator("#first-h")).to_have_text("First divergent entry: seq 3")
        first = page.locator(".diff-pair.first")
        expect(first.locator('.diff-side[data-side="a"]')).to_contain_text("issue_refund")
        expect(first.locator('.diff-side[data-side="b"]')).to_contain_text("30-day window")
        expect(first.locator('.diff-side[data-side="b"] .chip.replaced')).to_be_visible()
        after = page.locator(".diff-change")
        expect(after).to_have_count(2)  # the refund call and the last answer: a's only
        expect(after.first).to_contain_text("issue_refund")
        expect(page.locator("#end-h")).to_be_visible()
        shot(page, "fork-diff")

    # On a phone: the same pages, nothing wider than the screen, the diff stacked.
    with session(browser, plane, plane.approver, phone=True) as context:
        page = context.new_page()
        for name, path in [
            ("fork-run-phone", f"/runs/{fork_id}"),
            ("fork-tree-phone", f"/tree/{fork_id}"),
            ("fork-diff-phone", f"/diff?a={ORIGIN}&b={fork_id}"),
        ]:
            page.goto(plane.base + path)
            expect(page.locator("main h1").first).to_be_visible()
            fits_a_phone(page)
            shot(page, name)
        sides = page.locator(".diff-pair.first .diff-side")
        a_box, b_box = sides.nth(0).bounding_box(), sides.nth(1).bounding_box()
        assert a_box is not None and b_box is not None
        assert b_box["y"] >= a_box["y"] + a_box["height"]  # stacked, b under a

    # The payment provider's ledger: the fork made no refund; the origin's one is all.
    assert len(read_ledger(plane.ledger)) == 1


def test_retry_a_failed_run_from_an_entry(plane: Plane, browser: Browser) -> None:  # noqa: F811
    from playwright.sync_api import expect

    with session(browser, plane, plane.approver) as context:
        page = context.new_page()
        page.goto(f"{plane.base}/runs/checkout-a1002")
        expect(page.locator("#run-live")).to_have_attribute("data-status", "failed")
        failing = entry(page, 1)
        failing.get_by_text("Retry from here").click()
        failing.locator('input[name="reason"]').fill("card processor fixed (deploy 412)")
        failing.get_by_role("button", name="Retry from seq 1").click()
        expect(page.locator("#flash .ok-box")).to_contain_text("Retrying from seq 1")
        # The step still fails (the card is declined): the run fails again, and the
        # restart is on the record with who, why, and what it set aside.
        restarts = page.locator("#restarts")
        expect(restarts).to_contain_text("Restart 1 from seq 1 by alice", timeout=EXPECT_MS)
        expect(restarts).to_contain_text("card processor fixed (deploy 412)")
        expect(restarts).to_contain_text("seq 1 step charge_card")
        expect(page.locator("#run-live")).to_have_attribute(
            "data-status", "failed", timeout=EXPECT_MS
        )

    # A viewer sees neither action.
    with session(browser, plane, plane.viewer) as context:
        page = context.new_page()
        page.goto(f"{plane.base}/runs/checkout-a1002")
        expect(page.locator("#restarts")).to_be_visible()
        expect(page.get_by_text("Retry from here")).to_have_count(0)
        expect(page.get_by_text("Fork from here")).to_have_count(0)
