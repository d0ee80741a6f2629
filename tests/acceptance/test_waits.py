"""Durable waits hold nothing: they survive SIGKILL, and thousands of them cost no threads."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from pathlib import Path

import pytest
from crashapp import build_app, children, count_effects, snapshot, spawn, wait_for

from tether import RunStatus


def os_threads() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise AssertionError("no Threads: line in /proc/self/status")


@pytest.mark.slow
def test_sigkill_during_a_durable_sleep_wakes_at_the_original_time(
    tmp_path: Path, db_url: str
) -> None:
    seconds = 4.0
    effects = tmp_path / "effects.jsonl"
    with children() as spawned:
        first = spawn(
            tmp_path,
            db_url,
            "--start", "sleeper", "s1", f"[{seconds}]",
            "--wait", "s1",
            "--effects", str(effects),
        )  # fmt: skip
        spawned.append(first)
        wait_for(lambda: count_effects(effects)["before"] == 1, 30, "the step before", first)

        def sleeping() -> bool:
            run = snapshot(db_url, "s1").run
            return run is not None and run.status is RunStatus.WAITING

        wait_for(sleeping, 30, "the run to wait", first)
        entries = {e.kind: e for e in snapshot(db_url, "s1").entries}
        started = entries["now"].output
        wake_at = entries["sleep"].output
        assert entries["sleep"].status == "waiting"
        assert started <= wake_at <= started + seconds + 1.0

        # Halfway through: a restarted wait would end 2 s after the original one.
        time.sleep(max(0.0, started + seconds / 2 - time.time()))
        first.kill()
        assert first.proc.returncode == -signal.SIGKILL

        second = spawn(tmp_path, db_url, "--wait", "s1", "--effects", str(effects))
        spawned.append(second)
        assert second.wait(60) == 0, second.describe()

    reopened = second.event("opening")["t"]
    result = second.event("result")["result"]
    # ctx.now() was replayed, not taken again (a datetime holds microseconds).
    assert abs(result["t0"] - started) < 1e-5
    woke = result["woke"]
    print(
        f"woke {woke - wake_at:+.3f} s from the recorded wake time; "
        f"restarting the wait would have woken at {reopened + seconds - wake_at:+.3f} s"
    )
    assert woke >= wake_at, "woke before the original wake time"
    # Restarting the wait from the new process would wake at reopened + seconds or later.
    assert woke < reopened + seconds, "the wait restarted instead of resuming"
    assert count_effects(effects) == {"before": 1, "after": 1}
    done = snapshot(db_url, "s1")
    assert done.run is not None and done.run.status is RunStatus.SUCCEEDED
    sleeps = [e for e in done.entries if e.kind == "sleep"]
    assert len(sleeps) == 1 and sleeps[0].status == "completed"
    assert sleeps[0].output == wake_at


async def test_2000_runs_waiting_on_signals_hold_no_threads(db_url: str) -> None:
    n = 2000
    app = build_app(db_url, lease_seconds=30.0)
    async with app:
        threads, os_before = threading.active_count(), os_threads()
        tasks_before = len(asyncio.all_tasks())
        began = time.monotonic()
        handles = await asyncio.gather(
            *(app.start("signaled", i, run_id=f"w{i}") for i in range(n))
        )
        peak_threads, peak_os, peak_tasks = threads, os_before, tasks_before
        deadline = time.monotonic() + 120
        while True:
            peak_threads = max(peak_threads, threading.active_count())
            peak_os = max(peak_os, os_threads())
            peak_tasks = max(peak_tasks, len(asyncio.all_tasks()))
            waiting = await app.list_runs(status=RunStatus.WAITING, limit=n + 1)
            if len(waiting) == n:
                break
            assert time.monotonic() < deadline, f"only {len(waiting)} of {n} runs waiting"
            await asyncio.sleep(0.05)
        parked = time.monotonic() - began
        worker = app.worker
        assert worker is not None
        # Parked runs hold no coroutine, task, lease or thread.
        assert worker.active == {}
        # (The worker's loop may hold one transient wait task of its own.)
        assert len(asyncio.all_tasks()) <= tasks_before + 1
        assert threading.active_count() <= threads
        assert os_threads() <= os_before
        assert all(r.lease_owner is None for r in waiting)
        print(
            f"{n} runs parked in {parked:.2f} s; threads {threads} -> peak {peak_threads} "
            f"(OS {os_before} -> peak {peak_os}); tasks peak {peak_tasks} "
            f"(max_concurrency {app.max_concurrency})"
        )
        # A thread per run would show here; a run in flight holds two tasks (the worker's
        # and the workflow's) and at most max_concurrency runs are in flight.
        assert peak_threads <= threads + 2
        assert peak_os <= os_before + 2
        assert peak_tasks <= tasks_before + 2 * app.max_concurrency + 10

        began = time.monotonic()
        await asyncio.gather(*(app.signal(f"w{i}", "go", i) for i in range(n)))
        results = await asyncio.gather(*(h.result(timeout=120) for h in handles))
        print(f"{n} runs signalled and finished in {time.monotonic() - began:.2f} s")
        assert results == [2 * i for i in range(n)]
        assert threading.active_count() <= threads + 2
        assert os_threads() <= os_before + 2
        succeeded = await app.list_runs(status=RunStatus.SUCCEEDED, limit=n + 1)
        assert len(succeeded) == n
