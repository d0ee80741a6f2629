"""Forks and retries on the command line: ``tether fork``, ``tether tree``, ``tether diff``,
``tether retry`` and the lineage in ``tether show``, as real subprocesses, with a real
worker process running what they make."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_cli import assert_one_line_error, get_run, start, tether, wait_status, worker_process

from tether import RunStatus

# The trip agent (cliapp.trip): turn k is a model call at seq 2k - 1, its tool call at 2k.
# Turn 6 (seq 11) adds up the prices but forgets the taxi; turn 7 (seq 13) says the total.
FIXED_TURN_6 = json.dumps(
    {
        "role": "assistant",
        "tool_calls": [
            {"id": "sum", "name": "add_up", "arguments": {"amounts": [120, 380, 25, 90, 40]}}
        ],
    }
)
WRONG, RIGHT = "The trip costs 615 euros.", "The trip costs 655 euros."


@pytest.fixture
def env(db_url: str) -> dict[str, str]:
    return dict(os.environ, TETHER_DATABASE_URL=db_url, COLUMNS="200")


@pytest.fixture
def worker(env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    with worker_process(env) as proc:
        yield proc


def ok(*args: str, env: dict[str, str]) -> str:
    result = tether(*args, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def by_seq(text: str) -> dict[str, str]:
    """The lines of a table that start with a seq, by seq."""
    return {
        line.split()[0]: line
        for line in text.splitlines()
        if line.split()[:1] and line.split()[0].isdigit()
    }


def line_of(text: str, run_id: str) -> str:
    """The line of a ``tether tree`` that shows ``run_id``."""
    (line,) = [line for line in text.splitlines() if run_id in line.replace("─", " ").split()]
    return line


def test_fork_with_an_edited_answer_then_tree_then_diff(
    db_url: str, env: dict[str, str], worker: subprocess.Popen[str]
) -> None:
    start(db_url, "trip", "What does my Lyon trip cost?", "t1")
    assert wait_status(db_url, "t1", RunStatus.SUCCEEDED).result == WRONG

    said = ok(
        "fork", "t1", "--at", "11", "--replace", FIXED_TURN_6, "--run-id", "t1-fixed", env=env
    )
    assert "forked run 't1' at seq 11 as 't1-fixed'" in said
    assert "shares seqs 1 to 10 by reference and records your replacement at seq 11" in said
    assert "tether show t1-fixed" in said and "tether diff t1 t1-fixed" in said
    assert wait_status(db_url, "t1-fixed", RunStatus.SUCCEEDED).result == RIGHT

    # A final answer edited at turn 7 ends the run with it; a fork of a fork without a
    # replacement runs turn 7 again.
    made = json.loads(ok("fork", "t1", "--at", "13", "--replace", '"Too much."', "--json", env=env))
    assert (made["forked_from"], made["fork_seq"], made["workflow"]) == ("t1", 13, "trip")
    assert made["run_id"].startswith("t1-fork-")
    assert wait_status(db_url, made["run_id"], RunStatus.SUCCEEDED).result == "Too much."
    ok("fork", "t1-fixed", "--at", "13", "--run-id", "t1-fixed-again", env=env)
    assert wait_status(db_url, "t1-fixed-again", RunStatus.SUCCEEDED).result == RIGHT
    # Idempotent on --run-id.
    again = ok(
        "fork", "t1", "--at", "11", "--replace", FIXED_TURN_6, "--run-id", "t1-fixed", env=env
    )
    assert "as 't1-fixed' (succeeded)" in again

    # Nothing of a shared prefix ran again: each run's effect log holds its own calls only.
    effects = {
        run_id: [
            (e["seq"], e["tool"]) for e in json.loads(ok("effects", run_id, "--json", env=env))
        ]
        for run_id in ("t1", "t1-fixed", "t1-fixed-again")
    }
    assert effects["t1"] == [
        (2, "price"),
        (4, "price"),
        (6, "price"),
        (8, "price"),
        (10, "price"),
        (12, "add_up"),
    ]
    assert effects["t1-fixed"] == [(12, "add_up")] and effects["t1-fixed-again"] == []

    # The tree, from any of its runs, with the asked run marked.
    tree = ok("tree", "t1-fixed", env=env)
    assert "◀ this run" in line_of(tree, "t1-fixed")
    assert "◀" not in line_of(tree, "t1")
    assert "at seq 11" in line_of(tree, "t1-fixed") and "succeeded" in line_of(tree, "t1-fixed")
    assert RIGHT in line_of(tree, "t1-fixed") and WRONG in line_of(tree, "t1")
    assert "at seq 13" in line_of(tree, "t1-fixed-again")
    assert "4 runs" in tree
    shape = json.loads(ok("tree", "t1-fixed-again", "--json", env=env))
    assert shape["root_run_id"] == "t1" and shape["run_id"] == "t1-fixed-again"
    depths = {r["run_id"]: (r["depth"], r["fork_seq"], r["current"]) for r in shape["runs"]}
    assert depths == {
        "t1": (0, None, False),
        "t1-fixed": (1, 11, False),
        made["run_id"]: (1, 13, False),
        "t1-fixed-again": (2, 13, True),
    }
    assert shape["runs"][0]["forks"] == ["t1-fixed", made["run_id"]]

    # The diff: the first divergent entry is the edited answer; then the tool call it
    # made and the final answer differ, and so do the results.
    shown = ok("diff", "t1", "t1-fixed", env=env)
    assert "first divergent entry: seq 11" in shown
    assert "10 of them shared by reference" in shown
    rows = by_seq(shown)
    assert set(rows) == {"11", "12", "13"}
    assert "tool_calls" in rows["11"] and "(replaced)" in rows["11"]
    assert "[120, 380, 25, 90]" in rows["11"] and "[120, 380, 25, 90, 40]" in rows["11"]
    assert "args, result" in rows["12"] and "→ 615" in rows["12"] and "→ 655" in rows["12"]
    assert "text" in rows["13"] and WRONG in rows["13"] and RIGHT in rows["13"]
    assert "they end differently (result)" in shown
    view = json.loads(ok("diff", "t1", "t1-fixed", "--json", env=env))
    assert (view["first_divergent_seq"], view["shared_entries"], view["same"]) == (11, 10, False)
    assert [(c["seq"], c["what"], c["differs"]) for c in view["changes"]] == [
        (11, "model", ["tool_calls"]),
        (12, "tool", ["args", "result"]),
        (13, "model", ["text", "request"]),
    ]
    assert view["changes"][1]["b"]["effect"]["args"] == {"amounts": [120, 380, 25, 90, 40]}
    assert view["outcome"] == {
        "differs": ["result"],
        "a": {"status": "succeeded", "result": WRONG, "error": None},
        "b": {"status": "succeeded", "result": RIGHT, "error": None},
    }
    same = json.loads(ok("diff", "t1-fixed", "t1-fixed-again", "--json", env=env))
    assert same["same"] and same["first_divergent_seq"] is None and same["changes"] == []
    assert same["shared_entries"] == 12
    assert "are the same: 13 entries, 12 of them shared" in ok(
        "diff", "t1-fixed", "t1-fixed-again", env=env
    )

    # show: the lineage, the rows shared with the origin, the replaced entry.
    page = ok("show", "t1-fixed", env=env)
    assert "forked from t1 at seq 11" in page
    journal = by_seq(page)
    assert "shared: t1" in journal["1"] and "shared: t1" in journal["10"]
    assert "replaced" in journal["11"] and "shared" not in journal["12"]
    assert "tool (read)" in journal["2"]  # the origin's effect, shown with its row
    assert "2 forks; see 'tether tree t1'" in ok("show", "t1", env=env)
    detail = json.loads(ok("show", "t1-fixed", "--json", env=env))
    assert (detail["forked_from"], detail["fork_seq"]) == ("t1", 11)
    owners = [(e["seq"], e["run_id"]) for e in detail["events"]]
    assert owners == [(seq, "t1" if seq < 11 else "t1-fixed") for seq in range(1, 14)]
    assert detail["events"][1]["effect"]["state"] == "completed"
    assert detail["restarts"] == []


def test_a_run_in_progress_forks_below_its_unfinished_entry(
    db_url: str, env: dict[str, str], worker: subprocess.Popen[str]
) -> None:
    start(db_url, "waits_for_go", "ada", "w1")
    wait_status(db_url, "w1", RunStatus.WAITING)  # seq 1 greet done, seq 2 waits for "go"
    refused = tether("fork", "w1", "--at", "3", env=env)
    assert_one_line_error(
        refused, 1, "the signal 'go' at seq 2 is waiting, not finished", "fork at seq 2 or before"
    )
    ok("fork", "w1", "--at", "2", "--run-id", "w1-fork", env=env)
    wait_status(db_url, "w1-fork", RunStatus.WAITING)  # its own wait, for its own signal
    ok("signal", "w1-fork", "go", '"fork"', env=env)
    run = wait_status(db_url, "w1-fork", RunStatus.SUCCEEDED)
    assert run.result == {"greeting": "hello ada", "go": "fork"}
    assert get_run(db_url, "w1").status is RunStatus.WAITING


def test_retry_from_a_seq_after_a_fix_runs_on_the_worker(
    db_url: str, env: dict[str, str], worker: subprocess.Popen[str], tmp_path: Path
) -> None:
    flag = tmp_path / "fixed"
    start(db_url, "fragile", str(flag), "fr1")
    failed = wait_status(db_url, "fr1", RunStatus.FAILED)
    assert failed.error is not None and "not fixed yet" in failed.error["message"]

    past = tether("retry", "fr1", "--from", "9", env=env)
    assert_one_line_error(past, 1, "has 2 journal entries: retry from a seq from 1 to 3")
    assert_one_line_error(tether("retry", "fr1", env=env), 2, "say which seq: --from SEQ")
    assert_one_line_error(tether("retry", "fr1", "--from", "two", env=env), 2, "--from takes")
    assert get_run(db_url, "fr1").status is RunStatus.FAILED  # refused: nothing changed

    flag.touch()  # the fix
    said = ok("retry", "fr1", "--from", "2", "--reason", "created the file", "--by", "ops", env=env)
    assert "retrying run 'fr1' from seq 2 (restart #1): 1 entry set aside" in said
    assert "tether show fr1" in said
    run = wait_status(db_url, "fr1", RunStatus.SUCCEEDED)
    assert run.result == {"note_once_ran": 1, "check": "fixed"}
    assert Path(str(flag) + ".log").read_text() == "ran\n"  # seq 1 was kept, not run again

    page = ok("show", "fr1", env=env)
    assert "restarts" in page and "1 (the last from seq 2 by ops" in page
    assert "#1 from seq 2 at " in page and "by ops: created the file (was failed: " in page
    assert "set aside: 2 step check_fixed (failed)" in page
    detail = json.loads(ok("show", "fr1", "--json", env=env))
    (restart,) = detail["restarts"]
    assert (restart["from_seq"], restart["by"], restart["reason"]) == (2, "ops", "created the file")
    assert restart["discarded"] == [
        {"seq": 2, "kind": "step", "name": "check_fixed", "status": "failed"}
    ]

    again = tether("retry", "fr1", "--from", "2", env=env)
    assert_one_line_error(again, 1, "run 'fr1' is succeeded; only a failed or needs_attention")


def test_bad_input_is_one_line_and_changes_nothing(
    db_url: str, env: dict[str, str], worker: subprocess.Popen[str]
) -> None:
    start(db_url, "quick", 3, "q1")
    wait_status(db_url, "q1", RunStatus.SUCCEEDED)  # seq 1 and 2: the step double
    start(db_url, "waits_for_go", "bob", "w2")
    wait_status(db_url, "w2", RunStatus.WAITING)
    before = ok("runs", "--json", env=env)

    cases: list[tuple[list[str], int, tuple[str, ...]]] = [
        (["fork", "q1", "--at", "9"], 1,
         ("run 'q1' has 2 journal entries: fork at a seq from 1 to 3",)),
        (["fork", "w2", "--at", "3"], 1, ("is waiting, not finished",)),
        (["fork", "w2", "--at", "2", "--replace", "1"], 1,
         ("only a finished entry's output can be replaced",)),
        (["fork", "q1", "--at", "1", "--replace", "twelve"], 2,
         ("--replace takes JSON, and 'twelve' is not JSON", "'\"the new answer\"'")),
        (["fork", "q1", "--at", "1", "--replace", "null"], 2, ("leave --replace out",)),
        (["fork", "q1", "--at", "1", "--replace", '"twelve"'], 1,
         ("is a JSON string, but it returned a JSON number",)),
        (["fork", "q1", "--at", "0"], 2, ("--at takes a seq, a whole number from 1",)),
        (["fork", "q1"], 2, ("say which seq: --at SEQ", "tether show q1")),
        (["fork", "q1", "--at", "1", "--run-id", "w2"], 1,
         ("run_id 'w2' already belongs to a run", "choose another run_id")),
        (["retry", "q1", "--from", "1"], 1,
         ("run 'q1' is succeeded; only a failed or needs_attention run can be retried",)),
        (["retry", "w2", "--from", "1", "--reason", " "], 2, ("--reason is empty",)),
        (["fork", "nope", "--at", "1"], 1, ("no run 'nope'; list runs with 'tether runs'",)),
        (["tree", "nope"], 1, ("no run 'nope'",)),
        (["tree", "nope", "--json"], 1, ("no run 'nope'",)),
        (["diff", "q1", "nope"], 1, ("no run 'nope'",)),
        (["diff", "nope", "q1", "--json"], 1, ("no run 'nope'",)),
        (["retry", "nope", "--from", "1"], 1, ("no run 'nope'",)),
    ]  # fmt: skip
    for args, code, fragments in cases:
        assert_one_line_error(tether(*args, env=env), code, *fragments)
    assert ok("runs", "--json", env=env) == before
    assert get_run(db_url, "w2").status is RunStatus.WAITING
