"""Many worker processes on one PostgreSQL database: failover, rolling deploys, scale.

Every worker is a real child process (``crashapp.py``) presented as running on its own
machine (``--host``): it cannot see the other workers' pids, so it takes their runs over
only when a lease expires or is handed back, as workers on separate machines would. Each
step of the ``fleet`` workflow appends one fsynced line ``{"step": "<run_id>/<i>", "pid",
"t"}`` to the effects file per real execution, so repeated executions show up by label.

Fencing (a worker frozen past its lease, its late write rejected and logged) is tested on
both backends in ``test_crash.py``.
"""

from __future__ import annotations

import signal
import time
from collections import Counter, defaultdict
from functools import partial
from pathlib import Path

import pytest
from crashapp import (
    Child,
    children,
    count_effects,
    list_runs,
    read_effects,
    snapshots,
    spawn,
    start_runs,
    wait_for,
)

from tether import Run, RunStatus

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def labels(run_ids: list[str], steps: int) -> set[str]:
    return {f"{run_id}/{i}" for run_id in run_ids for i in range(1, steps + 1)}


def run_of(label: str) -> str:
    return label.rpartition("/")[0]


def has_worked(effects: Path, pid: int) -> bool:
    return bool(count_effects(effects, pid))


def wait_opened(child: Child, timeout: float = 30.0) -> str:
    """Wait until the child's App is open (its worker registered and made its first
    claim); its worker id."""
    wait_for(
        lambda: any(e["event"] == "opened" for e in child.read_events()),
        timeout,
        f"worker {child.pid} to open",
        child,
    )
    worker_id: str = child.event("opened")["worker_id"]
    return worker_id


def wait_all_succeeded(db_url: str, count: int, timeout: float, *watch: Child) -> list[Run]:
    """Poll the runs table until ``count`` runs exist and every one has succeeded; fail
    early if a run ends otherwise or a watched worker exits."""
    deadline = time.monotonic() + timeout
    while True:
        runs = list_runs(db_url)
        bad = [r for r in runs if r.status.is_terminal and r.status is not RunStatus.SUCCEEDED]
        assert not bad, f"runs ended badly: {[(r.run_id, r.status, r.error) for r in bad[:5]]}"
        if len(runs) == count and all(r.status is RunStatus.SUCCEEDED for r in runs):
            return runs
        for child in watch:
            if child.proc.poll() is not None:
                raise AssertionError(f"worker {child.pid} exited early\n{child.describe()}")
        if time.monotonic() > deadline:
            statuses = Counter(str(r.status) for r in runs)
            raise AssertionError(f"after {timeout} s, {len(runs)} runs: {dict(statuses)}")
        time.sleep(0.2)


def assert_fleet_results(runs: list[Run], run_ids: list[str], steps: int) -> None:
    assert sorted(r.run_id for r in runs) == sorted(run_ids), "runs lost or added"
    for run in runs:
        assert run.status is RunStatus.SUCCEEDED, (run.run_id, run.status, run.error)
        assert run.result == [f"{run.run_id}/{i}" for i in range(1, steps + 1)], run.run_id


def test_failover_resumes_each_run_from_its_last_entry_within_lease_expiry(
    tmp_path: Path, postgres_url: str
) -> None:
    effects = tmp_path / "effects.jsonl"
    steps, delay, lease = 20, 0.2, 2.0
    run_ids = [f"fo{i}" for i in range(1, 6)]
    start_runs(postgres_url, "fleet", run_ids, steps, delay)
    worker = ["--lease", str(lease), "--serve", "--effects", str(effects)]
    with children() as spawned:
        a = spawn(tmp_path, postgres_url, "--host", "machine-a", *worker, name="a")
        spawned.append(a)
        wait_opened(a)

        # Several steps into every run, so that B has journal entries to skip.
        def a_is_into_every_run() -> bool:
            executed = Counter(run_of(label) for label in count_effects(effects, a.pid))
            return all(executed[run_id] >= 4 for run_id in run_ids)

        wait_for(a_is_into_every_run, 30, "worker A to execute 4 steps of every run", a)
        b = spawn(tmp_path, postgres_url, "--host", "machine-b", *worker, name="b")
        spawned.append(b)
        wait_opened(b)
        assert not count_effects(effects, b.pid), "B took runs from a live A"

        a.kill()
        killed_at = time.time()
        # A is dead: nothing changes these runs until B claims them, which it can do only
        # once their leases (last renewed by A's heartbeat, every lease/3 s) expire. A
        # moment first, for a journal write the server had received from A before the kill
        # and still commits.
        time.sleep(0.1)
        at_kill = snapshots(postgres_url, run_ids)
        read_in = time.time() - killed_at
        for run_id, snap in at_kill.items():
            assert snap.run is not None and snap.run.status is RunStatus.RUNNING, (
                f"{run_id} was not in flight at the kill; lengthen the runs"
            )
            assert snap.run.lease_expires_at is not None
        assert not count_effects(effects, b.pid), "B resumed a run before its lease expired"

        runs = wait_all_succeeded(postgres_url, len(run_ids), 60, b)
        b.signal(signal.SIGTERM)
        assert b.wait(30) == 0, b.describe()

    assert_fleet_results(runs, run_ids, steps)
    counts = count_effects(effects)
    assert set(counts) == labels(run_ids, steps)
    by_a, by_b = count_effects(effects, a.pid), count_effects(effects, b.pid)
    assert by_a + by_b == counts
    print(f"\nkilled A; read {len(run_ids)} runs' leases {read_in * 1000:.0f} ms after the kill")
    delays = {}
    for run_id in run_ids:
        snap = at_kill[run_id]
        assert snap.run is not None and snap.run.lease_expires_at is not None
        expires = snap.run.lease_expires_at
        done = set(snap.steps)
        k = len(done)
        # The journal is a prefix of the run's steps, and every step it holds ran once.
        assert done == {f"{run_id}/{i}" for i in range(1, k + 1)}
        for label in done:
            assert counts[label] == 1, f"{label} was completed before the kill but ran again"
        # B resumed right after the last journal entry: every step after it ran once on
        # B; only the one in flight at the kill (fleet's steps run one at a time) ran on
        # A as well.
        rest = [f"{run_id}/{i}" for i in range(k + 1, steps + 1)]
        assert rest, f"{run_id} had finished its steps before the kill"
        assert all(by_b[label] == 1 for label in rest), {label: by_b[label] for label in rest}
        assert {label for label in rest if by_a[label]} <= {rest[0]}
        repeated = sorted(label for label in labels([run_id], steps) if counts[label] > 1)
        assert repeated in ([], [rest[0]])
        b_effects = [e for e in read_effects(effects) if e["pid"] == b.pid]
        first = min((e for e in b_effects if run_of(e["step"]) == run_id), key=lambda e: e["t"])
        assert first["step"] == rest[0], "B did not resume from the last journal entry"
        delays[run_id] = first["t"] - expires
        print(
            f"{run_id}: {k} steps journaled at the kill, repeated {repeated or 'none'}; lease "
            f"expired {expires - killed_at:+.3f} s after the kill, B's first step "
            f"{delays[run_id] * 1000:.1f} ms after expiry"
        )
    for run_id, resumed_after in delays.items():
        assert resumed_after >= 0, f"{run_id}: B ran a step before A's lease expired"
        assert resumed_after <= 0.5, (
            f"{run_id}: resumed {resumed_after:.3f} s after lease expiry (limit 0.5 s)"
        )


def test_rolling_deploy_repeats_no_step_and_loses_no_run(tmp_path: Path, postgres_url: str) -> None:
    effects = tmp_path / "effects.jsonl"
    steps, delay, n = 5, 0.1, 200
    run_ids = [f"rd{i:03d}" for i in range(n)]
    began = time.monotonic()

    def worker(host: str) -> Child:
        return spawn(
            tmp_path,
            postgres_url,
            "--host", host,
            "--lease", "5",
            "--concurrency", "10",
            "--serve",
            "--effects", str(effects),
            name=host,
        )  # fmt: skip

    with children() as spawned:
        spawned.extend(worker(f"old-{i}") for i in range(3))
        for child in spawned:
            wait_opened(child)
        start_runs(postgres_url, "fleet", run_ids, steps, delay)
        live = list(spawned)
        stopped: list[tuple[Child, str]] = []
        for i in range(3):
            old = live[i]
            wait_for(partial(has_worked, effects, old.pid), 30, f"worker {i} to work", old)
            worker_id = old.event("opened")["worker_id"]
            old.signal(signal.SIGTERM)
            assert old.wait(30) == 0, old.describe()
            assert old.event("closed")
            # Handed back: no run is left leased by a worker that is gone.
            runs = list_runs(postgres_url)
            assert not [r.run_id for r in runs if r.lease_owner == worker_id]
            done = sum(r.status is RunStatus.SUCCEEDED for r in runs)
            print(f"\nreplaced worker {i} at {time.monotonic() - began:.2f} s: {done}/{n} done")
            stopped.append((old, worker_id))
            new = worker(f"new-{i}")
            spawned.append(new)
            live[i] = new
            wait_opened(new)
        deployed = time.monotonic() - began
        runs = wait_all_succeeded(postgres_url, n, 60, *live)
        finished = time.monotonic() - began
        for child in live:
            child.signal(signal.SIGTERM)
        for child in live:
            assert child.wait(30) == 0, child.describe()

    assert_fleet_results(runs, run_ids, steps)
    counts = count_effects(effects)
    repeated = sorted(label for label, c in counts.items() if c > 1)
    pids: dict[str, set[int]] = defaultdict(set)
    for e in read_effects(effects):
        pids[run_of(e["step"])].add(e["pid"])
    handed_over = {
        old.pid: sum(old.pid in p and len(p) > 1 for p in pids.values()) for old, _ in stopped
    }
    print(
        f"deploy done at {deployed:.2f} s, all {n} runs at {finished:.2f} s; "
        f"step executions repeated: {len(repeated)} {repeated[:10]}; runs each stopped "
        f"worker handed over mid-run: {list(handed_over.values())}"
    )
    assert repeated == []
    assert set(counts) == labels(run_ids, steps)
    assert all(c == 1 for c in counts.values())
    # The deploy did interrupt runs (else this test would prove nothing).
    assert sum(handed_over.values()) > 0


def test_four_workers_share_a_thousand_runs_and_run_every_step_once(
    tmp_path: Path, postgres_url: str
) -> None:
    effects = tmp_path / "effects.jsonl"
    steps, n = 3, 1000
    run_ids = [f"sc{i:04d}" for i in range(n)]
    # Five connections per worker (four pooled, one listening) rather than eleven: the
    # server's max_connections (100 by default) is shared with whatever else runs on it.
    db = f"{postgres_url}?pool_size=4"
    with children() as spawned:
        for i in range(4):
            argv = ["--host", f"machine-{i}", "--serve", "--effects", str(effects)]
            spawned.append(spawn(tmp_path, db, *argv, name=f"w{i}"))
        for child in spawned:
            wait_opened(child)
        began = time.monotonic()
        start_runs(postgres_url, "fleet", run_ids, steps, 0.0)
        started = time.monotonic() - began
        runs = wait_all_succeeded(postgres_url, n, 90, *spawned)
        elapsed = time.monotonic() - began
        for child in spawned:
            child.signal(signal.SIGTERM)
        for child in spawned:
            assert child.wait(30) == 0, child.describe()

    assert_fleet_results(runs, run_ids, steps)
    counts = count_effects(effects)
    assert set(counts) == labels(run_ids, steps)
    repeated = sorted(label for label, c in counts.items() if c > 1)
    assert repeated == [], repeated[:10]
    executed: dict[int, set[str]] = {child.pid: set() for child in spawned}
    for e in read_effects(effects):
        executed[e["pid"]].add(run_of(e["step"]))
    share = [len(executed[child.pid]) for child in spawned]
    print(
        f"\n{n} runs x {steps} steps: started in {started:.2f} s, all done in {elapsed:.2f} s; "
        f"runs each worker executed: {share} (a run resumed elsewhere counts twice)"
    )
    assert sum(1 for count in share if count) >= 2, share
