"""A real database outage: PostgreSQL is stopped (crash-like) for 10 s under load.

Two worker processes (presented as two machines) execute runs of ``fleet`` on a throwaway
cluster of their own (``pgcluster.py``; the shared server on 5432 is never touched). Once a
good share of the steps, not all, has run, the server is stopped with ``pg_ctl stop -m
immediate``, kept down for 10 s, and started again. The workers must back off, reconnect and
finish every run by themselves: nothing is left ``running`` or ``pending``, no step whose
entry was committed before the outage runs again, and the workers still stop cleanly.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections import Counter
from functools import partial
from pathlib import Path

import pytest
from crashapp import (
    Child,
    build_app,
    children,
    count_effects,
    create_database,
    read_effects,
    spawn,
    wait_for,
)
from pgcluster import throwaway_cluster

from tether import App, Run, RunStatus, StorageError

RUNS = 80
STEPS = 8
DELAY = 0.25  # seconds each step sleeps after its side effect
CONCURRENCY = 10  # per worker: runs queue up, so the outage finds some still pending
LEASE = 3.0
OUTAGE = 10.0
STOP_AT = 0.4  # stop the server once this share of all steps has executed
RECOVERY_TIMEOUT = 120.0
# psycopg_pool retries a broken connection 1, 3, 7, 15 s after the break (±10 %), so after a
# 10 s outage the pool is back within about 6 s of the restart; 20 s is a generous bound.
FIRST_COMMIT_BOUND = 20.0

# What the workers log while the database is gone: Tether's retry loops and psycopg_pool.
BACKOFF = re.compile(
    r"claiming failed|notification channel lost|heartbeat failed|could not hand back"
    r"|not recorded|could not record its end|cannot load its journal|could not suspend"
    r"|cannot check for dead workers|error connecting in"
)
ACTIVE = (RunStatus.PENDING, RunStatus.RUNNING, RunStatus.WAITING)


def labels(run_id: str) -> list[str]:
    return [f"{run_id}/{i}" for i in range(1, STEPS + 1)]


async def _open(url: str) -> App:
    app = App(url)
    await app.open(worker=False, create=False)
    return app


def opened(worker: Child) -> bool:
    return any(e["event"] == "opened" for e in worker.read_events())


def start_runs(url: str, run_ids: list[str]) -> None:
    async def go() -> None:
        app = build_app(url)
        await app.open(worker=False)
        try:
            for run_id in run_ids:
                await app.start("fleet", STEPS, DELAY, run_id=run_id)
        finally:
            await app.close()

    asyncio.run(go())


def read_runs(url: str) -> list[Run]:
    async def go() -> list[Run]:
        app = await _open(url)
        try:
            return await app.list_runs(limit=10_000)
        finally:
            await app.close()

    return asyncio.run(go())


def read_committed(url: str, run_ids: list[str]) -> dict[str, float | None]:
    """Every step label whose completed entry is committed, with its finish time."""

    async def go() -> dict[str, float | None]:
        app = await _open(url)
        try:
            journals = await asyncio.gather(*(app.get_journal(r) for r in run_ids))
        finally:
            await app.close()
        return {
            e.input["args"][0]: e.finished_at
            for entries in journals
            for e in entries
            if e.kind == "step" and e.status == "completed"
        }

    return asyncio.run(go())


def wait_all_succeeded(url: str, count: int, timeout: float, workers: list[Child]) -> list[Run]:
    deadline = time.monotonic() + timeout
    seen = "nothing read yet"
    while True:
        try:
            runs = read_runs(url)
        except StorageError as exc:
            seen = f"unreadable: {exc}"
        else:
            statuses = Counter(str(r.status) for r in runs)
            if statuses[str(RunStatus.SUCCEEDED)] == count:
                return runs
            seen = str(dict(statuses))
        for worker in workers:
            assert worker.proc.poll() is None, f"a worker exited\n{worker.describe()}"
        if time.monotonic() > deadline:
            raise AssertionError(f"{timeout:.0f} s after the restart, the runs are: {seen}")
        time.sleep(0.1)


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_database_outage_mid_load_every_run_completes(tmp_path: Path) -> None:
    effects = tmp_path / "effects.jsonl"
    run_ids = [f"o{i}" for i in range(1, RUNS + 1)]
    total = RUNS * STEPS
    with throwaway_cluster() as cluster, children() as workers:
        url = cluster.url("tether_outage")
        create_database(url)
        for machine in ("machine-a", "machine-b"):
            options = ["--serve", "--host", machine, "--lease", str(LEASE)]
            options += ["--concurrency", str(CONCURRENCY), "--effects", str(effects)]
            workers.append(spawn(tmp_path, url, *options, name=machine))
        for worker in workers:
            wait_for(partial(opened, worker), 30, "the workers to open", *workers)
        start_runs(url, run_ids)
        wait_for(
            lambda: sum(count_effects(effects).values()) >= STOP_AT * total,
            60, f"{STOP_AT:.0%} of the steps to run", *workers,
        )  # fmt: skip

        # -- the outage: a crash-like stop, 10 s down, a start -----------------------
        before = Counter(str(r.status) for r in read_runs(url))
        committed = read_committed(url, run_ids)  # just before the stop: a subset at most
        stopped_at = time.time()
        cluster.stop("immediate")
        executed_at_stop = sum(count_effects(effects).values())
        print(
            f"\nat the stop: {len(committed)}/{total} steps committed, {executed_at_stop} "
            f"executed; runs: {dict(before)}"
        )
        assert 0 < len(committed) < total
        assert before[str(RunStatus.SUCCEEDED)] < RUNS, "the load ended before the outage"
        time.sleep(OUTAGE)
        for worker in workers:  # the outage must not take a worker down
            assert worker.proc.poll() is None, worker.describe()
        cluster.start()
        restarted_at = time.time()

        # -- recovery: the workers find the database again by themselves --------------
        runs = wait_all_succeeded(url, RUNS, RECOVERY_TIMEOUT, workers)
        committed_after = read_committed(url, run_ids)

        assert sorted(r.run_id for r in runs) == sorted(run_ids)
        stuck = [r.run_id for r in runs if r.status in ACTIVE or r.lease_owner is not None]
        assert not stuck, f"runs left active or leased: {stuck}"
        for run in runs:
            assert run.status is RunStatus.SUCCEEDED, run
            assert run.result == labels(run.run_id), run
        assert sorted(committed_after) == sorted(label for r in run_ids for label in labels(r))

        # A step committed before the outage never runs again; one in flight may.
        executions = count_effects(effects)
        assert set(executions) == set(committed_after)
        again = {label: executions[label] for label in committed if executions[label] != 1}
        assert not again, f"steps committed before the outage ran again: {again}"
        repeated = {label: n - 1 for label, n in executions.items() if n > 1}

        # The workers saw the outage and backed off (and came back: the runs finished).
        logs = {w.pid: w.stderr.read_text(errors="replace") for w in workers}
        backoffs = {pid: Counter(re.findall(BACKOFF, text)) for pid, text in logs.items()}
        for pid, text in logs.items():
            assert "engine error" not in text, f"worker {pid}:\n{text[-4000:]}"
        assert any(backoffs.values()), f"no worker logged a retry:\n{logs}"

        after = [e for e in read_effects(effects) if e["t"] >= restarted_at]
        first_commit = min(t for t in committed_after.values() if t and t >= restarted_at)
        all_done = max(r.updated_at for r in runs)
        print(
            f"outage: {restarted_at - stopped_at:.1f} s from the stop to the server accepting "
            f"connections again\nafter the restart: first step executed in "
            f"{min(e['t'] for e in after) - restarted_at:.2f} s, first commit in "
            f"{first_commit - restarted_at:.2f} s, all {RUNS} runs succeeded in "
            f"{all_done - restarted_at:.2f} s\n"
            f"step executions: {sum(executions.values())} for {total} steps, "
            f"{sum(repeated.values())} repeated: {sorted(repeated)}\n"
            f"step executions after the restart by worker: {dict(Counter(e['pid'] for e in after))}"
            f"\nretry warnings by worker: { {pid: dict(c) for pid, c in backoffs.items()} }"
        )
        assert first_commit - restarted_at < FIRST_COMMIT_BOUND, (
            "the workers took too long to reach the database again after the restart"
        )

        # A graceful stop after the outage: SIGTERM, exit 0.
        for worker in workers:
            worker.signal(signal.SIGTERM)
        for worker in workers:
            assert worker.wait(60) == 0, worker.describe()
            assert worker.event("closed")
