"""``tether budget``: a run stopped on its budget, shown with the command that raises it,
raised from the command line, and resumed by a worker process where it stopped."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator

import pytest
from test_cli import assert_one_line_error, get_run, start, tether, wait_status, worker_process

from tether import RunStatus


@pytest.fixture
def env(db_url: str) -> dict[str, str]:
    return dict(os.environ, TETHER_DATABASE_URL=db_url, COLUMNS="200")


@pytest.fixture
def worker(env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    with worker_process(env) as proc:
        yield proc


def test_a_budget_stop_is_shown_raised_and_resumed(
    db_url: str, env: dict[str, str], worker: subprocess.Popen[str]
) -> None:
    start(db_url, "frugal", "who are ada and bob?", "r")
    stopped = wait_status(db_url, "r", RunStatus.NEEDS_ATTENTION)
    assert stopped.error is not None and stopped.error["code"] == "budget_exceeded"
    spent = stopped.error["spent"]["tokens"]

    shown = tether("show", "r", env=env)
    assert shown.returncode == 0, shown.stderr
    assert "reached its budget" in shown.stdout
    assert "tether budget r --tokens" in shown.stdout
    assert "calls lookup" in shown.stdout  # the model call's line says what it chose
    as_json = json.loads(tether("show", "r", "--json", env=env).stdout)
    model = [e for e in as_json["events"] if e["kind"] == "model"]
    assert len(model) == 1 and model[0]["output"]["usage"]["input_tokens"] > 0

    raised = tether("budget", "r", "--tokens", str(spent + 10_000), "--by", "ops", env=env)
    assert raised.returncode == 0, raised.stderr
    assert "resumes where it stopped" in raised.stdout
    done = wait_status(db_url, "r", RunStatus.SUCCEEDED)
    assert done.result == "ada and bob are both customers"
    shown = tether("show", "r", env=env).stdout
    assert f"raised to {spent + 10_000} tokens by ops" in shown


def test_bad_budget_commands_say_what_is_wrong_and_change_nothing(
    db_url: str, env: dict[str, str], worker: subprocess.Popen[str]
) -> None:
    start(db_url, "frugal", "who is ada?", "r")
    stopped = wait_status(db_url, "r", RunStatus.NEEDS_ATTENTION)
    spent = stopped.error["spent"]["tokens"] if stopped.error else 0
    cases = [
        (("budget", "r"), 2, "--tokens N, --cost-usd X or both"),
        (("budget", "r", "--tokens", "lots"), 2, "--tokens takes a whole number, not 'lots'"),
        (("budget", "r", "--tokens", "-5"), 2, "must be more than 0"),
        (("budget", "r", "--cost-usd", "nan"), 2, "must be more than 0"),
        (("budget", "r", "--tokens", str(spent)), 1, f"has spent {spent} tokens"),
        (("budget", "nope", "--tokens", "100"), 1, "no run 'nope'"),
    ]
    for args, code, fragment in cases:
        assert_one_line_error(tether(*args, env=env), code, fragment)
    run = get_run(db_url, "r")
    assert run.status is RunStatus.NEEDS_ATTENTION and run.error == stopped.error

    start(db_url, "notify", "ada", "other")
    wait_status(db_url, "other", RunStatus.SUCCEEDED)
    assert_one_line_error(
        tether("budget", "other", "--tokens", "100", env=env), 1, "not stopped on a budget"
    )
