"""The effect log on the command line: ``tether effects``, ``effects export``, ``resolve``,
``approve`` and the tool events of ``tether show``, as the real console script.

State is built in this process with an App on the same database (``cliapp``'s tools: while
``cliapp.mail_outage`` is set here, ``send_email`` raises ``OutcomeUnknown`` and its run
stops in doubt), then the CLI reads and acts on it, and a worker (in this process, or
``tether worker cliapp:app``) carries the decisions out.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cliapp
import pytest
from cliapp import build_app
from test_cli import (
    HERE,
    assert_one_line_error,
    get_run,
    tether,
    with_app,
    worker_process,
)

from tether import App, EffectRecord, RunStatus
from tether.interfaces._views import effect_view, run_summary

NEEDS_ATTENTION = RunStatus.NEEDS_ATTENTION
WAITING = RunStatus.WAITING
SUCCEEDED = RunStatus.SUCCEEDED
FAILED = RunStatus.FAILED

VIEW_KEYS = {
    "run_id", "seq", "tool", "kind", "state", "in_doubt", "idempotency_key", "args", "result",
    "error", "blast_radius", "approval", "decision", "tainted", "attempt", "resolution",
    "history", "created_at", "started_at", "finished_at", "duration_ms", "attempts",
    "deadline", "on_timeout",
}  # fmt: skip
EVENT_EFFECT_KEYS = {
    "kind", "state", "idempotency_key", "attempt", "decision", "resolution", "history",
    "tainted", "blast_radius", "deadline", "on_timeout",
}  # fmt: skip


def cli_env(url: str, **extra: str) -> dict[str, str]:
    return dict(os.environ, TETHER_DATABASE_URL=url, COLUMNS="200", **extra)


def drive(
    url: str,
    until: dict[str, RunStatus],
    *,
    start: tuple[tuple[str, Any, str], ...] = (),
    outage: bool = False,
    timeout: float = 30,
) -> None:
    """Start ``start`` (workflow, argument, run id) and run a worker in this process until
    every run in ``until`` has its status; ``outage``: the mail server times out."""

    async def go() -> None:
        app = build_app(url)
        await app.open()
        try:
            for workflow, arg, run_id in start:
                await app.start(workflow, arg, run_id=run_id)
            deadline = time.monotonic() + timeout
            while True:
                now = {run_id: (await app.get_run(run_id)).status for run_id in until}
                if now == until:
                    return
                assert time.monotonic() < deadline, f"runs are {now}, not {until}"
                await asyncio.sleep(0.02)
        finally:
            await app.close()

    cliapp.mail_outage = outage
    try:
        asyncio.run(go())
    finally:
        cliapp.mail_outage = False


def in_doubt_run(url: str, run_id: str = "n1") -> None:
    """A ``notify`` run stopped on its in-doubt ``send_email`` call (seq 2)."""
    drive(url, {run_id: NEEDS_ATTENTION}, start=(("notify", "ada", run_id),), outage=True)


def effects_of(url: str, run_id: str | None = None) -> list[EffectRecord]:
    async def query(app: App) -> list[EffectRecord]:
        return await app.list_effects(run_id, limit=10_000)

    return with_app(url, query)


def snapshot(url: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Everything stored about runs and effects, as comparable data."""

    async def query(app: App) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        runs = [run_summary(run) for run in await app.list_runs(limit=10_000)]
        effects = [effect_view(e) for e in await app.list_effects(limit=10_000)]
        return runs, effects

    return with_app(url, query)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    return result.stdout


def one_line(text: str) -> str:
    """Rich wraps long lines for the terminal width; join them back."""
    return " ".join(text.split())


def wait_for(url: str, run_id: str, status: RunStatus, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while (run := get_run(url, run_id)).status is not status:
        assert time.monotonic() < deadline, f"{run_id} is {run.status}, not {status}"
        time.sleep(0.05)
    return run


# -- tether effects -------------------------------------------------------------------------
def test_effects_lists_the_log_in_doubt_first(db_url: str) -> None:
    env = cli_env(db_url)
    drive(db_url, {"q1": SUCCEEDED}, start=(("quick", 1, "q1"),))
    assert ok(tether("effects", env=env)).strip() == "no effects"
    assert ok(tether("effects", "--in-doubt", env=env)).strip() == "no effects in doubt"
    in_doubt_run(db_url, "n1")
    drive(db_url, {"p1": WAITING}, start=(("pay", 5, "p1"),))

    listed = json.loads(ok(tether("effects", "--json", env=env)))
    assert [(e["run_id"], e["seq"], e["tool"], e["state"]) for e in listed] == [
        ("n1", 2, "send_email", "in_doubt"),  # in doubt first, then newest first
        ("p1", 1, "wire_money", "awaiting_approval"),
        ("n1", 1, "lookup", "completed"),
    ]
    for view in listed:
        assert set(view) == VIEW_KEYS
    doubt, awaiting, read = listed
    assert (doubt["kind"], doubt["in_doubt"], doubt["approval"], doubt["decision"]) == (
        "irreversible",
        True,
        "auto",
        "auto",
    )
    assert doubt["args"] == {"to": "ada@example.com", "subject": "your order shipped"}
    assert doubt["blast_radius"] == "one customer's inbox"
    assert len(doubt["idempotency_key"]) == 32 and doubt["result"] is None
    assert [h["event"] for h in doubt["history"]] == ["intent", "in_doubt"]
    assert "OutcomeUnknown" in doubt["history"][1]["reason"]
    assert doubt["history"][1]["at"].endswith("+00:00")  # ISO 8601 UTC, as every time
    assert doubt["created_at"].endswith("+00:00") and doubt["finished_at"] is None
    assert doubt["duration_ms"] is None
    assert (awaiting["kind"], awaiting["decision"], awaiting["attempt"]) == (
        "irreversible",
        "approve",
        0,
    )
    assert read["kind"] == "read" and read["result"]["email"] == "ada@example.com"
    assert read["duration_ms"] is not None and read["finished_at"].endswith("+00:00")

    only = json.loads(ok(tether("effects", "--in-doubt", "--json", env=env)))
    assert [(e["run_id"], e["seq"]) for e in only] == [("n1", 2)]
    of_run = json.loads(ok(tether("effects", "n1", "--json", env=env)))
    assert [e["seq"] for e in of_run] == [2, 1]
    assert json.loads(ok(tether("effects", "q1", "--json", env=env))) == []
    assert ok(tether("effects", "q1", env=env)).strip() == "run 'q1' has no effects"
    assert ok(tether("effects", "p1", "--in-doubt", env=env)).strip() == (
        "run 'p1' has no effects in doubt"
    )
    assert len(json.loads(ok(tether("effects", "-n", "1", "--json", env=env)))) == 1

    table = ok(tether("effects", env=env))
    rows = [line.split() for line in table.splitlines() if line.split()[:1] in (["n1"], ["p1"])]
    assert [row[:5] for row in rows] == [
        ["n1", "2", "send_email", "irreversible", "in_doubt"],
        ["p1", "1", "wire_money", "irreversible", "awaiting_approval"],
        ["n1", "1", "lookup", "read", "completed"],
    ]
    assert doubt["idempotency_key"][:11] in table and doubt["idempotency_key"] not in table
    assert "may or may not have happened" in table
    assert "awaiting approval of" in table and '"customer": "ada"' in table
    assert "in doubt: find out whether each call happened" in one_line(table)
    assert "tether approve RUN_ID [SEQ]" in one_line(table)


def test_effects_highlights_in_doubt_and_pages(sqlite_url: str) -> None:
    in_doubt_run(sqlite_url)
    colored = ok(tether("effects", env=cli_env(sqlite_url, FORCE_COLOR="1")))
    assert "\x1b[1;31min_doubt" in colored  # bold red
    first = ok(tether("effects", "--limit", "1", env=cli_env(sqlite_url)))
    assert "send_email" in first and "lookup" not in first
    assert "the first 1 shown; see more with --limit" in first
    narrow = ok(tether("effects", env=dict(cli_env(sqlite_url), COLUMNS="80")))
    assert "in_doubt" in narrow and "KEY" not in narrow  # the key is in --json and show


def test_export_writes_json_lines_in_seq_order(sqlite_url: str, tmp_path: Path) -> None:
    env = cli_env(sqlite_url)
    in_doubt_run(sqlite_url)
    drive(sqlite_url, {"q1": SUCCEEDED}, start=(("quick", 1, "q1"),))

    text = ok(tether("effects", "export", "n1", env=env))
    lines = text.splitlines()
    assert len(lines) == 2 and text.endswith("\n")
    views = [json.loads(line) for line in lines]
    assert [(v["seq"], v["tool"], v["state"]) for v in views] == [
        (1, "lookup", "completed"),
        (2, "send_email", "in_doubt"),
    ]
    assert all(set(v) == VIEW_KEYS for v in views)
    assert views == [effect_view(e) for e in sorted(effects_of(sqlite_url, "n1"), key=seq)]

    target = tmp_path / "audit" / "n1.jsonl"
    target.parent.mkdir()
    said = ok(tether("effects", "export", "n1", "-o", str(target), env=env))
    assert said.strip() == f"wrote 2 tool calls of run 'n1' to {target}"
    assert target.read_text() == text
    assert ok(tether("effects", "export", "q1", env=env)) == ""

    missing = tmp_path / "nope.jsonl"
    result = tether("effects", "export", "nope", "--output", str(missing), env=env)
    assert_one_line_error(result, 1, "no run 'nope'")
    assert not missing.exists()
    unwritable = tmp_path / "no-such-dir" / "x.jsonl"
    result = tether("effects", "export", "n1", "-o", str(unwritable), env=env)
    assert_one_line_error(result, 1, f"cannot write {unwritable}")


def seq(effect: EffectRecord) -> int:
    return effect.seq


# -- tether resolve ---------------------------------------------------------------------------
def test_resolve_done_then_a_worker_finishes_the_run(db_url: str) -> None:
    env = cli_env(db_url)
    in_doubt_run(db_url)
    receipt = {"sent_to": "ada@example.com", "message_id": "m-from-the-mail-log"}

    said = tether(
        "resolve", "n1", "2", "--done", json.dumps(receipt),
        "--reason", "the mail server log shows it was sent", "--by", "alice",
        env=env,
    )  # fmt: skip
    assert one_line(ok(said)) == (
        "resolved seq 2 of run 'n1' (send_email) as done by alice: the call happened, with "
        "the result given; the run resumes on the next worker"
    )
    assert get_run(db_url, "n1").status is RunStatus.PENDING
    (effect,) = [e for e in effects_of(db_url, "n1") if e.seq == 2]
    assert effect.state.value == "resolved"
    assert effect.resolution is not None and effect.resolution["result"] == receipt
    again = tether("resolve", "n1", "2", "--retry", "--reason", "twice", env=env)
    assert_one_line_error(again, 1, "the 'send_email' call at seq 2 of run 'n1' is resolved")

    with worker_process(env):
        run = wait_for(db_url, "n1", SUCCEEDED)
    assert run.result == {"email": "ada@example.com", "receipt": receipt}

    shown = json.loads(ok(tether("show", "n1", "--json", env=env)))
    event = shown["events"][1]
    assert (event["kind"], event["name"], event["status"]) == ("tool", "send_email", "completed")
    assert event["effect"]["state"] == "completed"
    history = event["effect"]["history"]
    assert [h["event"] for h in history] == ["intent", "in_doubt", "resolved", "done"]
    resolved = history[2]
    assert (resolved["action"], resolved["by"], resolved["result"]) == ("done", "alice", receipt)
    assert resolved["reason"] == "the mail server log shows it was sent"


def test_resolve_retry_makes_the_call_again_with_the_same_key(sqlite_url: str) -> None:
    env = cli_env(sqlite_url)
    in_doubt_run(sqlite_url)
    key = next(e for e in effects_of(sqlite_url, "n1") if e.seq == 2).idempotency_key

    said = tether("resolve", "n1", "2", "--retry", "-r", "not in the mail log", env=env)
    assert "as retry by " in ok(said)
    assert "the call is made again, with the same idempotency key" in one_line(said.stdout)
    drive(sqlite_url, {"n1": SUCCEEDED})
    assert get_run(sqlite_url, "n1").result["receipt"] == {
        "sent_to": "ada@example.com",
        "message_id": f"m-{key[:8]}",
    }
    (effect,) = [e for e in effects_of(sqlite_url, "n1") if e.seq == 2]
    assert (effect.state.value, effect.attempt, effect.idempotency_key) == ("completed", 2, key)
    assert [h["event"] for h in effect.history] == ["intent", "in_doubt", "resolved", "retry"]


def test_resolve_abort_fails_the_call_in_the_run(sqlite_url: str) -> None:
    env = cli_env(sqlite_url)
    in_doubt_run(sqlite_url)
    said = tether("resolve", "n1", "2", "--abort", "--reason", "customer cancelled", env=env)
    assert "as abort by " in ok(said)
    drive(sqlite_url, {"n1": FAILED})
    run = get_run(sqlite_url, "n1")
    assert run.error is not None and run.error["type"] == "EffectAbortedError"
    assert "customer cancelled" in run.error["message"]
    (effect,) = [e for e in effects_of(sqlite_url, "n1") if e.seq == 2]
    assert effect.state.value == "failed" and effect.error is not None
    assert effect.error["type"] == "EffectAbortedError"


def test_a_done_result_that_does_not_fit_stops_the_run_again(sqlite_url: str) -> None:
    env = cli_env(sqlite_url)
    in_doubt_run(sqlite_url)
    ok(tether("resolve", "n1", "2", "--done", '"sent"', "--reason", "it went", env=env))
    drive(sqlite_url, {"n1": NEEDS_ATTENTION})
    (listed,) = json.loads(ok(tether("effects", "--in-doubt", "--json", env=env)))
    assert (listed["seq"], listed["state"]) == (2, "in_doubt")
    assert "does not fit the tool's return type" in listed["history"][-1]["reason"]


def test_an_in_doubt_call_of_a_cancelled_run_cannot_be_resolved(sqlite_url: str) -> None:
    env = cli_env(sqlite_url)
    in_doubt_run(sqlite_url)
    ok(tether("cancel", "n1", env=env))
    result = tether("resolve", "n1", "2", "--retry", "--reason", "too late", env=env)
    assert_one_line_error(result, 1, "run 'n1' ended before its 'send_email' call at seq 2")
    table = one_line(ok(tether("effects", env=env)))
    assert "abandoned" in table
    assert "never completed: the run ended first; whether it happened is unknown" in table
    assert "find out whether each call happened" not in table  # nothing to do now
    assert "to do" not in ok(tether("show", "n1", env=env))


# -- tether approve ---------------------------------------------------------------------------
def test_approve_and_reject(db_url: str) -> None:
    env = cli_env(db_url)
    drive(
        db_url,
        {"p1": WAITING, "p2": WAITING, "pp": WAITING},
        start=(("pay", 5, "p1"), ("pay", 7, "p2"), ("pay_twice", 1, "pp")),
    )

    said = ok(tether("approve", "p1", "--by", "bob", "--note", "invoice 42", env=env))
    assert one_line(said) == (
        "approved seq 1 of run 'p1' (wire_money {\"amount\": 5}) by bob: the run makes this "
        "one call when a worker resumes it"
    )
    twice = tether("approve", "p1", "1", env=env)
    assert_one_line_error(twice, 1, "is resolved, not awaiting approval")
    said = ok(tether("approve", "p2", "--reject", "--note", "not this supplier", env=env))
    assert one_line(said).startswith("rejected seq 1 of run 'p2' (wire_money {\"amount\": 7}) by ")
    several = tether("approve", "pp", env=env)
    assert_one_line_error(
        several, 1, "run 'pp' has 2 tool calls awaiting approval: seq 1", "'tether approve pp SEQ'"
    )
    ok(tether("approve", "pp", "2", env=env))
    ok(tether("approve", "pp", "1", env=env))

    drive(db_url, {"p1": SUCCEEDED, "p2": SUCCEEDED, "pp": SUCCEEDED})
    assert get_run(db_url, "p1").result == {"wired": 5}
    rejected = get_run(db_url, "p2").result
    assert rejected["wired"] == 0 and "not this supplier" in rejected["rejected"]
    assert get_run(db_url, "pp").result == [{"wired": 1}, {"wired": 2}]
    (approved,) = effects_of(db_url, "p1")
    assert [h["event"] for h in approved.history] == [
        "approval_requested",
        "approval",
        "approved",
    ]
    assert approved.history[1]["by"] == "bob" and approved.history[1]["note"] == "invoice 42"


# -- tether show ------------------------------------------------------------------------------
def test_show_carries_the_effects_and_what_to_run(sqlite_url: str) -> None:
    env = cli_env(sqlite_url)
    in_doubt_run(sqlite_url)
    drive(sqlite_url, {"p1": WAITING}, start=(("pay", 5, "p1"),))

    detail = json.loads(ok(tether("show", "n1", "--json", env=env)))
    assert {"run_id", "workflow", "status", "result", "error", "events"} <= detail.keys()
    assert (detail["status"], detail["error"]["type"]) == ("needs_attention", "EffectInDoubtError")
    events = detail["events"]
    assert [(e["seq"], e["kind"], e["name"], e["status"]) for e in events] == [
        (1, "tool", "lookup", "completed"),
        (2, "tool", "send_email", "intent"),
    ]
    assert all(set(e["effect"]) == EVENT_EFFECT_KEYS for e in events)
    assert (events[0]["effect"]["kind"], events[0]["effect"]["state"]) == ("read", "completed")
    doubt = events[1]["effect"]
    assert (doubt["kind"], doubt["state"], doubt["attempt"]) == ("irreversible", "in_doubt", 1)
    assert doubt["blast_radius"] == "one customer's inbox" and doubt["tainted"] is False
    (listed,) = [e for e in effects_of(sqlite_url, "n1") if e.seq == 2]
    assert doubt["idempotency_key"] == listed.idempotency_key

    report = ok(tether("show", "n1", env=env))
    assert "tool (irreversible)" in report and "tool (read)" in report
    assert "in_doubt" in report and "is in doubt" in report
    for command in (
        "tether resolve n1 2 --done '<JSON result>' --reason '<how you know>'",
        "tether resolve n1 2 --retry --reason '<how you know>'",
        "tether resolve n1 2 --abort --reason '<how you know>'",
    ):
        assert f"\n  {command}\n" in report + "\n", report
    assert "\x1b[1;31min_doubt" in ok(
        tether("show", "n1", env=cli_env(sqlite_url, FORCE_COLOR="1"))
    )

    waiting = ok(tether("show", "p1", env=env))
    assert "awaiting_approval" in waiting and "awaits approval" in waiting
    assert "\n  tether approve p1\n" in waiting
    assert "\n  tether approve p1 --reject --note '<why>'\n" in waiting + "\n"

    drive(sqlite_url, {"q1": SUCCEEDED}, start=(("quick", 2, "q1"),))
    plain = json.loads(ok(tether("show", "q1", "--json", env=env)))
    assert all("effect" not in e for e in plain["events"])  # steps carry no effect
    assert "to do" not in ok(tether("show", "q1", env=env))


# -- mistakes ---------------------------------------------------------------------------------
MISTAKES = [
    (["effects", "nope"], 1, "no run 'nope'; list runs with 'tether runs'"),
    (["effects", "nope", "--json"], 1, "no run 'nope'"),
    (["effects", "export", "nope"], 1, "no run 'nope'"),
    (["effects", "export"], 2, "effects export needs a RUN_ID"),
    (["effects", "export", "n1", "p1"], 2, "takes one RUN_ID, not 2"),
    (["effects", "n1", "p1"], 2, "unexpected arguments 'n1 p1'"),
    (["effects", "n1", "-o", "x.jsonl"], 2, "--output goes with export"),
    (["effects", "export", "n1", "--in-doubt"], 2, "--in-doubt does not apply"),
    (["effects", "export", "n1", "--limit", "0"], 2, "--limit does not apply"),
    (["effects", "--limit", "0"], 2, "--limit must be at least 1"),
    (["resolve", "nope", "2", "--retry", "--reason", "r"], 1, "no run 'nope'"),
    (["resolve", "n1", "two", "--retry", "--reason", "r"], 2, "SEQ must be a positive"),
    (["resolve", "n1", "0", "--retry", "--reason", "r"], 2, "not '0'"),
    (["resolve", "n1", "9", "--retry", "--reason", "r"], 1, "run 'n1' has no tool call at seq 9"),
    (["resolve", "n1", "2", "--done", "{bad", "--reason", "r"], 2, "malformed JSON value '{bad'"),
    (["resolve", "n1", "2", "--done", "sent", "--reason", "r"], 2, "for --done"),
    (["resolve", "n1", "2", "--reason", "r"], 2, "say what happened: --done JSON"),
    (["resolve", "n1", "2", "--retry", "--abort", "--reason", "r"], 2, "one of --retry, --abort"),
    (["resolve", "n1", "2", "--done", "1", "--retry", "-r", "r"], 2, "one of --done, --retry"),
    (["resolve", "n1", "2", "--retry"], 2, "--reason is required"),
    (["resolve", "n1", "2", "--retry", "--reason", "  "], 2, "--reason is required"),
    (["resolve", "n1", "1", "--retry", "--reason", "r"], 1, "is completed, not in doubt"),
    (["resolve", "p1", "1", "--abort", "--reason", "r"], 1, "is awaiting_approval, not in doubt"),
    (["approve", "nope"], 1, "no run 'nope'"),
    (["approve", "nope", "1"], 1, "no run 'nope'"),
    (["approve", "n1"], 1, "run 'n1' has no tool call awaiting approval"),
    (["approve", "n1", "2"], 1, "is in_doubt, not awaiting approval"),
    (["approve", "p1", "first"], 2, "SEQ must be a positive"),
    (["approve", "p1", "5"], 1, "run 'p1' has no tool call at seq 5"),
    (["approve", "p1", "--note", ""], 2, "--note is empty"),
]


def test_mistakes_are_one_line_and_change_nothing(sqlite_url: str) -> None:
    env = cli_env(sqlite_url)
    in_doubt_run(sqlite_url)
    drive(sqlite_url, {"p1": WAITING}, start=(("pay", 5, "p1"),))
    before = snapshot(sqlite_url)
    with ThreadPoolExecutor(max_workers=8) as pool:  # each is a process start: in parallel
        results = list(pool.map(lambda m: tether(*m[0], env=env, cwd=HERE), MISTAKES))
    for (args, code, fragment), result in zip(MISTAKES, results, strict=True):
        try:
            assert_one_line_error(result, code, fragment)
        except AssertionError as exc:
            raise AssertionError(f"tether {' '.join(args)}: {exc}") from None
        assert result.stdout == "", args
    assert snapshot(sqlite_url) == before
    assert not (HERE / "x.jsonl").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["effects"],
        ["effects", "r1"],
        ["effects", "export", "r1"],
        ["resolve", "r1", "1", "--retry", "--reason", "r"],
        ["approve", "r1"],
    ],
)
def test_a_missing_database_is_one_line_and_is_not_created(
    args: list[str], sqlite_url: str, db_path: Path
) -> None:
    assert_one_line_error(tether(*args, env=cli_env(sqlite_url)), 1, "no database at")
    assert not db_path.exists()
