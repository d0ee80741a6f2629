"""Real processes, real signals, real SQLite files: crashes, shutdowns and lost leases."""

from __future__ import annotations

import re
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from crashapp import (
    children,
    count_effects,
    create_database,
    expected_linear,
    list_runs,
    read_effects,
    snapshot,
    spawn,
    wait_for,
)

from tether import RunStatus
from tether.storage._migrations import load_migrations


def test_sigkill_mid_run_resumes_from_last_completed_step(tmp_path: Path, db_url: str) -> None:
    effects, ready = tmp_path / "effects.jsonl", tmp_path / "ready"
    with children() as spawned:
        first = spawn(
            tmp_path,
            db_url,
            "--start", "linear", "r1", "[5]",
            "--wait", "r1",
            "--effects", str(effects),
            "--hang", "step3",
            "--ready", str(ready),
        )  # fmt: skip
        spawned.append(first)
        wait_for(ready.exists, 30, "step3 to start", first)
        first.kill()
        assert first.proc.returncode == -signal.SIGKILL

        assert count_effects(effects) == {"step1": 1, "step2": 1, "step3": 1}
        before = snapshot(db_url, "r1")
        assert before.run is not None and before.run.status is RunStatus.RUNNING
        assert sorted(before.steps) == ["step1", "step2"]

        # lease_seconds=30: resuming at once proves the dead-pid takeover, not expiry.
        second = spawn(tmp_path, db_url, "--wait", "r1", "--effects", str(effects))
        spawned.append(second)
        assert second.wait(60) == 0, second.describe()

    assert second.event("result")["result"] == {"total": expected_linear(5)}
    assert count_effects(effects) == {"step1": 1, "step2": 1, "step3": 2, "step4": 1, "step5": 1}
    assert count_effects(effects, second.pid) == {"step3": 1, "step4": 1, "step5": 1}
    after = snapshot(db_url, "r1")
    assert after.run is not None and after.run.status is RunStatus.SUCCEEDED
    assert [e.seq for e in after.entries] == [1, 2, 3, 4, 5]

    opening = second.event("opening")["t"]
    first_recovered = min(e["t"] for e in read_effects(effects) if e["pid"] == second.pid)
    delay = first_recovered - opening
    print(f"first recovered step ran {delay * 1000:.1f} ms after the new App began opening")
    assert delay < 5.0, f"recovery took {delay:.2f} s: the dead process's lease was not taken over"


def test_sigterm_lets_the_step_in_flight_commit_and_hands_the_run_back(
    tmp_path: Path, db_url: str
) -> None:
    effects, ready = tmp_path / "effects.jsonl", tmp_path / "ready"
    with children() as spawned:
        worker = spawn(
            tmp_path,
            db_url,
            "--start", "linear", "t1", "[4]",
            "--serve",
            "--effects", str(effects),
            "--hang", "step2",
            "--hang-seconds", "1.5",
            "--ready", str(ready),
        )  # fmt: skip
        spawned.append(worker)
        wait_for(ready.exists, 30, "step2 to start", worker)
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0, worker.describe()
        assert worker.event("closed")

        handed_back = snapshot(db_url, "t1")
        run = handed_back.run
        assert run is not None
        assert run.status is RunStatus.PENDING
        assert run.lease_owner is None and run.lease_expires_at is None
        # The step in flight at SIGTERM finished and committed; nothing after it started.
        assert sorted(handed_back.steps) == ["step1", "step2"]
        assert count_effects(effects) == {"step1": 1, "step2": 1}

        other = spawn(tmp_path, db_url, "--wait", "t1", "--effects", str(effects))
        spawned.append(other)
        assert other.wait(60) == 0, other.describe()

    assert other.event("result")["result"] == {"total": expected_linear(4)}
    assert count_effects(effects) == {"step1": 1, "step2": 1, "step3": 1, "step4": 1}
    assert count_effects(effects, other.pid) == {"step3": 1, "step4": 1}
    done = snapshot(db_url, "t1")
    assert done.run is not None and done.run.status is RunStatus.SUCCEEDED


@pytest.mark.slow
def test_a_paused_worker_past_its_lease_cannot_overwrite_the_new_owner(
    tmp_path: Path, db_url: str
) -> None:
    effects, ready = tmp_path / "effects.jsonl", tmp_path / "ready"
    with children() as spawned:
        # The first worker freezes its whole event loop inside f2 (no heartbeat), and is
        # then stopped: alive, so only lease expiry lets another worker take the run.
        first = spawn(
            tmp_path,
            db_url,
            "--lease", "1.0",
            "--start", "fenced", "x1", "[]",
            "--wait", "x1",
            "--effects", str(effects),
            "--hang", "f2",
            "--hang-seconds", "4",
            "--hang-blocking",
            "--ready", str(ready),
        )  # fmt: skip
        spawned.append(first)
        wait_for(ready.exists, 30, "f2 to start", first)
        first.signal(signal.SIGSTOP)
        held = snapshot(db_url, "x1").run
        assert held is not None and held.status is RunStatus.RUNNING

        second = spawn(
            tmp_path, db_url, "--lease", "1.0", "--wait", "x1", "--effects", str(effects)
        )
        spawned.append(second)
        assert second.wait(60) == 0, second.describe()
        assert second.event("result")["result"]["f2_pid"] == second.pid
        taken = snapshot(db_url, "x1")
        assert taken.run is not None and taken.run.fence > held.fence

        first.signal(signal.SIGCONT)
        assert first.wait(60) == 0, first.describe()

    lost = [e for e in first.read_events() if e["event"] == "lease_lost"]
    assert [(e["run_id"], e["seq"]) for e in lost] == [("x1", 2)]
    # The rejected write is logged by the stale worker, and only by it.
    stale_log = first.stderr.read_text()
    rejected = re.compile(
        r"run x1: step '[^']*whoami' at seq 2 not recorded: .*lease lost.*; "
        r"another worker owns the run now"
    )
    assert rejected.search(stale_log), f"the rejected write was not logged:\n{stale_log}"
    assert "not recorded" not in second.stderr.read_text()
    # The first worker sees the second's result, not its own.
    assert first.event("result")["result"] == second.event("result")["result"]

    final = snapshot(db_url, "x1")
    assert final.run is not None and final.run.status is RunStatus.SUCCEEDED
    assert final.run.result == {"total": final.steps["f3"], "f2_pid": second.pid}
    assert [(e.seq, e.kind, e.status) for e in final.entries] == [
        (1, "step", "completed"),
        (2, "step", "completed"),
        (3, "step", "completed"),
    ]
    assert final.steps["f2"] == second.pid
    assert count_effects(effects) == {"f1": 1, "f2": 2, "f3": 1}
    assert count_effects(effects, first.pid) == {"f1": 1, "f2": 1}


@pytest.mark.slow
def test_duplicate_start_from_two_processes_makes_one_run(tmp_path: Path, db_url: str) -> None:
    effects = tmp_path / "effects.jsonl"
    create_database(db_url)  # the race under test is the start, not the creation
    for round_ in range(3):
        run_id = f"dup{round_}"
        at = f"{time.time() + 1.0:.6f}"
        with children() as spawned:
            argv = ["--at", at, "--start", "linear", run_id, "[3]", "--wait", run_id]
            for _ in range(2):
                spawned.append(spawn(tmp_path, db_url, *argv, "--effects", str(effects)))
            for child in spawned:
                assert child.wait(60) == 0, child.describe()
        results = [child.event("result")["result"] for child in spawned]
        assert results == [{"total": expected_linear(3)}] * 2
        snap = snapshot(db_url, run_id)
        assert snap.run is not None and snap.run.status is RunStatus.SUCCEEDED
        assert snap.run.attempts == 1

    assert count_effects(effects) == {"step1": 3, "step2": 3, "step3": 3}  # once per round
    assert sorted(run.run_id for run in list_runs(db_url)) == ["dup0", "dup1", "dup2"]


@pytest.mark.slow
def test_two_processes_opening_a_new_database_at_once(tmp_path: Path) -> None:
    versions = [m.version for m in load_migrations("sqlite")]
    for round_ in range(4):
        workdir = tmp_path / f"round{round_}"
        workdir.mkdir()
        db_file = workdir / "new.db"
        db_url = f"sqlite:///{db_file}"
        at = f"{time.time() + 1.0:.6f}"
        with children() as spawned:
            for name in ("a", "b"):
                argv = ["--at", at, "--start", "linear", name, "[2]", "--wait", name]
                spawned.append(spawn(workdir, db_url, *argv))
            for child in spawned:
                assert child.wait(60) == 0, child.describe()
        for child in spawned:
            assert child.event("result")["result"] == {"total": expected_linear(2)}
        conn = sqlite3.connect(db_file)
        try:
            applied = [row[0] for row in conn.execute("SELECT version FROM schema_migrations")]
            statuses = dict(conn.execute("SELECT run_id, status FROM runs").fetchall())
        finally:
            conn.close()
        assert applied == versions
        assert statuses == {"a": "succeeded", "b": "succeeded"}
