"""The control plane on the command line: ``tether approvals``, ``tether overview``,
``tether token ...`` and ``tether policy explain``, against a real worker process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_cli import (
    assert_one_line_error,
    get_run,
    start,
    tether,
    wait_status,
    with_app,
    worker_process,
)

from tether import App, RunStatus

HERE = Path(__file__).parent


@pytest.fixture
def env(db_url: str) -> dict[str, str]:
    return dict(os.environ, TETHER_DATABASE_URL=db_url, COLUMNS="200")


@pytest.fixture
def worker(env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    with worker_process(env) as proc:
        yield proc


def test_the_inbox_and_the_roll_up_list_waiting_calls_until_approved(
    db_url: str, env: dict[str, str], worker: subprocess.Popen[str]
) -> None:
    assert tether("approvals", env=env).stdout.strip() == "no tool call awaits approval"
    start(db_url, "pay", 120, "p1")
    wait_status(db_url, "p1", RunStatus.WAITING)
    listed = tether("approvals", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "wire_money" in listed.stdout and '"amount": 120' in listed.stdout
    assert "tether approve p1 1" in listed.stdout
    rows = json.loads(tether("approvals", "--json", env=env).stdout)
    assert [(r["run_id"], r["seq"], r["tool"], r["state"]) for r in rows] == [
        ("p1", 1, "wire_money", "awaiting_approval")
    ]
    assert rows[0]["args"] == {"amount": 120} and rows[0]["deadline"] is None

    roll_up = tether("overview", env=env)
    assert roll_up.returncode == 0, roll_up.stderr
    assert "needs a person" in roll_up.stdout and "awaits approval" in roll_up.stdout
    as_json = json.loads(tether("overview", "--json", env=env).stdout)
    assert as_json["counts"] == {"waiting": 1}
    assert [(i["kind"], i["run_id"], i["seq"]) for i in as_json["attention"]] == [
        ("approval", "p1", 1)
    ]
    assert len(as_json["workers"]) == 1

    approved = tether("approve", "p1", "1", "--note", "invoice checked", "--by", "ops", env=env)
    assert approved.returncode == 0, approved.stderr
    assert wait_status(db_url, "p1", RunStatus.SUCCEEDED).result == {"wired": 120}
    assert tether("approvals", "--json", env=env).stdout.strip() == "[]"
    assert json.loads(tether("overview", "--json", env=env).stdout)["attention"] == []


def test_a_deadline_passed_while_the_worker_was_killed_is_applied_once_on_resume(
    db_url: str, env: dict[str, str]
) -> None:
    with worker_process(env) as first:
        start(db_url, "pay_soon", 50, "s1")
        wait_status(db_url, "s1", RunStatus.WAITING)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    time.sleep(2.5)  # the deadline passes with no worker alive
    listed = json.loads(tether("approvals", "--json", env=env).stdout)
    assert [(r["run_id"], r["state"]) for r in listed] == [("s1", "awaiting_approval")]
    with worker_process(env):
        done = wait_status(db_url, "s1", RunStatus.SUCCEEDED)
    assert done.result["wired"] == 0
    assert "tether (deadline) rejected" in done.result["rejected"]
    effect = json.loads(tether("effects", "s1", "--json", env=env).stdout)[0]
    assert [e["event"] for e in effect["history"]] == [
        "approval_requested",
        "rejection",
        "rejected",
    ]
    assert effect["attempt"] == 0 and effect["state"] == "failed"  # never authorized
    refused = tether("approve", "s1", "1", env=env)  # too late: the default was taken
    assert_one_line_error(refused, 1, "not awaiting approval")


def test_runs_filter_on_tags(db_url: str, env: dict[str, str]) -> None:
    async def go(app: App) -> None:
        await app.start("quick", 1, run_id="a", tags=["prod"])
        await app.start("quick", 2, run_id="b", tags=["dev"])

    with_app(db_url, go)
    rows = json.loads(tether("runs", "--tag", "prod", "--json", env=env).stdout)
    assert [(r["run_id"], r["tags"]) for r in rows] == [("a", ["prod"])]
    assert tether("runs", "--tag", "nope", env=env).stdout.strip() == "no runs with tag 'nope'"


def test_tokens_are_made_listed_and_revoked(db_url: str, env: dict[str, str]) -> None:
    start(db_url, "quick", 1, "makes-the-database")
    made = tether("token", "create", "--role", "approver", "--name", "alice", "--json", env=env)
    assert made.returncode == 0, made.stderr
    token = json.loads(made.stdout)
    assert token["role"] == "approver" and token["name"] == "alice" and token["active"]
    secret = token["secret"]

    async def check(app: App) -> str | None:
        found = await app.check_token(secret)
        return None if found is None else found.name

    assert with_app(db_url, check) == "alice"
    plain = tether("token", "create", "--role", "viewer", env=env)
    assert plain.returncode == 0 and "not shown again" in plain.stdout
    listed = json.loads(tether("token", "list", "--json", env=env).stdout)
    assert [t["role"] for t in listed] == ["approver", "viewer"]
    assert all("secret" not in t for t in listed)
    assert secret not in tether("token", "list", env=env).stdout
    revoked = tether("token", "revoke", token["token_id"], env=env)
    assert revoked.returncode == 0 and "revoked token" in revoked.stdout
    assert with_app(db_url, check) is None
    assert_one_line_error(tether("token", "create", "--role", "root", env=env), 2, "unknown role")
    assert_one_line_error(tether("token", "revoke", "nope", env=env), 1, "no token 'nope'")


def test_policy_explain_says_which_rule_decides_and_why(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(
        '# money\n[[rule]]\ntool = "wire_*"\ntags = ["prod"]\ndecision = "approve"\n'
        'timeout = "4h"\nreason = "money leaves the company"\n'
    )
    env = dict(os.environ, TETHER_POLICY=str(policy), COLUMNS="200", PYTHONPATH=str(HERE))
    ruled = tether(
        "policy", "explain", "wire_money", "--kind", "irreversible", "-t", "prod", env=env
    )
    assert ruled.returncode == 0, ruled.stderr
    assert ruled.stdout.startswith("approve  wire_money")
    assert f"rule at {policy}:2: money leaves the company" in ruled.stdout
    assert "a person has 14400 s, then the call is rejected by default" in ruled.stdout
    tainted = tether(
        "policy", "explain", "send_email", "--app", "cliapp:app", "--tainted", "--json", env=env
    )
    assert tainted.returncode == 0, tainted.stderr
    facts = json.loads(tainted.stdout)
    assert (facts["decision"], facts["source"], facts["kind"]) == (
        "approve",
        "the taint rule",
        "irreversible",
    )
    declared = json.loads(
        tether("policy", "explain", "wire_money", "--app", "cliapp:app", "--json", env=env).stdout
    )
    assert (declared["decision"], declared["source"]) == ("approve", "the tool's declaration")
    assert_one_line_error(tether("policy", "explain", "x", env=env), 2, "say what 'x' does: --kind")
    assert_one_line_error(
        tether("policy", "explain", "x", "--kind", "write", env=env), 2, "--kind 'write'"
    )
    assert_one_line_error(
        tether("policy", "explain", "nope", "--app", "cliapp:app", env=env), 1, "has no tool"
    )
    policy.write_text('[[rule]]\ndecision = "sometimes"\n')
    assert_one_line_error(
        tether("policy", "explain", "x", "--kind", "read", env=env),
        1,
        f"{policy}:1: decision 'sometimes' is not one of",
    )


def test_bad_input_to_the_control_commands_changes_nothing(
    db_url: str, env: dict[str, str]
) -> None:
    start(db_url, "quick", 3, "q")
    before = get_run(db_url, "q")
    for args in (("approvals", "--limit", "0"), ("overview", "--limit", "0")):
        assert_one_line_error(tether(*args, env=env), 2, "--limit must be at least 1")
    assert get_run(db_url, "q") == before
