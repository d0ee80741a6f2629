"""The benchmark harness runs (in its quick mode), so it never rots. Figures are printed by
the harness, not asserted here: timing on a shared machine is not a test."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import SERVER_URL

ROOT = Path(__file__).resolve().parents[2]
TOOL_KINDS = ("read", "idempotent", "irreversible")


def run_benchmark(
    script: str, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``benchmarks/<script>`` with ``args`` the way a person would; it must succeed."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, TETHER_BENCH_POSTGRES_URL=SERVER_URL),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def assert_tool_call_figures(stdout: str, out: Path) -> None:
    """The tool-call section ran: ms per call of each effect kind next to ms per plain step,
    and their ratio, printed and in the JSON as positive numbers (never a speed)."""
    assert "tool call / plain step" in stdout
    for label in ("read tool", "idempotent tool", "irreversible tool"):
        assert label in stdout
    figures = json.loads(out.read_text(encoding="utf-8"))["figures"]
    names = ["tool_step_ms_per_step"]
    for kind in TOOL_KINDS:
        names += [f"tool_{kind}_ms_per_call", f"tool_{kind}_over_step"]
    for name in names:
        value = figures[name]
        assert isinstance(value, int | float) and math.isfinite(value) and value > 0, (name, value)
    for kind in TOOL_KINDS:
        # Each call writes an intent and a completion: more commits than the plain run.
        assert figures[f"tool_{kind}_commits_per_run"] > figures["tool_step_commits_per_run"] > 0


@pytest.mark.slow
def test_core_benchmark_quick_mode_runs(tmp_path: Path) -> None:
    out = tmp_path / "core.json"
    proc = run_benchmark("core.py", "--quick", "--json", str(out))
    assert "ms/step" in proc.stdout and "steps/s" in proc.stdout
    assert "synchronous=FULL" in proc.stdout
    assert out.exists() and out.stat().st_size > 0
    assert_tool_call_figures(proc.stdout, out)


@pytest.mark.slow
@pytest.mark.postgres
def test_core_benchmark_quick_mode_runs_on_postgres(postgres_template: str, tmp_path: Path) -> None:
    # postgres_template: skipped without a server (failed under TETHER_REQUIRE_POSTGRES=1).
    out = tmp_path / "core-postgres.json"
    proc = run_benchmark("core.py", "--backend", "postgres", "--quick", "--json", str(out))
    assert "ms/step" in proc.stdout and "steps/s" in proc.stdout
    assert "worker process" in proc.stdout and "failover" in proc.stdout
    assert "synchronous_commit=" in proc.stdout
    assert out.exists() and out.stat().st_size > 0
    assert_tool_call_figures(proc.stdout, out)


@pytest.mark.slow
@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_agent_benchmark_quick_mode_runs(backend: str, tmp_path: Path, request: Any) -> None:
    if backend == "postgres":
        request.getfixturevalue("postgres_template")  # skipped (or failed in CI) without one
    out = tmp_path / "agent.json"
    proc = run_benchmark("agent.py", "--quick", "--backend", backend, "--json", str(out))
    assert "bytes stored per model call" in proc.stdout and "ms per model call" in proc.stdout
    figures = json.loads(out.read_text(encoding="utf-8"))
    for turn in (1, 10, 50):
        row = figures["storage"][f"turn_{turn}"]
        assert row["stored"] > 0 and row["copied"] > 0
    # What the 50th entry stands for is far bigger than the 10th's; what it stores is not.
    assert figures["storage"]["turn_50"]["copied"] > 3 * figures["storage"]["turn_10"]["copied"]
    assert figures["overhead"]["model_call_ms"] > 0


CONTROL_PLANE_READS = (
    "overview()",
    "list_approvals()",
    "list_runs(limit=50)",
    'list_runs(status="waiting", limit=50)',
    'list_runs(tag="tenant:7", limit=50)',
    "list_runs(limit=50, offset=N/2)",
    "check_token(secret)",
    "GET /api/v1/overview",
    "GET / (HTML)",
)


@pytest.mark.slow
@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_control_plane_benchmark_quick_mode_runs(
    backend: str, tmp_path: Path, request: Any
) -> None:
    if backend == "postgres":
        request.getfixturevalue("postgres_template")  # skipped (or failed in CI) without one
    out = tmp_path / "control-plane.json"
    proc = run_benchmark("control_plane.py", "--quick", "--backend", backend, "--json", str(out))
    assert "ms per call, median / p95" in proc.stdout
    for read in CONTROL_PLANE_READS:
        assert read in proc.stdout
    figures = json.loads(out.read_text(encoding="utf-8"))
    assert list(figures["sizes"]) == ["1000"]  # --quick: the smallest database only
    size = figures["sizes"]["1000"]
    assert size["runs"] == 1000
    # The seed holds the mix: runs in every state a dashboard shows, and calls to approve.
    counts = size["facts"]["counts"]
    for status in ("succeeded", "failed", "waiting", "running", "needs_attention"):
        assert counts.get(status, 0) > 0, (status, counts)
    assert size["facts"]["approvals_page"] > 0 and size["facts"]["workers"] == 3
    for read in CONTROL_PLANE_READS:
        op = size["ops"][read]
        for name in ("median_ms", "p95_ms"):
            value = op[name]
            assert isinstance(value, int | float) and math.isfinite(value) and value > 0
        assert op["p95_ms"] >= op["median_ms"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_fork_benchmark_quick_mode_runs(backend: str, tmp_path: Path, request: Any) -> None:
    if backend == "postgres":
        request.getfixturevalue("postgres_template")  # skipped (or failed in CI) without one
    out = tmp_path / "fork.json"
    proc = run_benchmark("fork.py", "--quick", "--backend", backend, "--json", str(out))
    for section in (
        "app.fork(origin, n)",
        "what one fork adds",
        "claim to result",
        "a fork that copied its prefix",
    ):
        assert section in proc.stdout
    figures = json.loads(out.read_text(encoding="utf-8"))
    assert list(figures["sizes"]) == ["10", "1000"]  # --quick: the two smallest origins
    for size, row in figures["sizes"].items():
        n = int(size)
        # Executed origins, whose rows are those the bulk-inserted 100,000 one copies.
        assert row["origin"]["built"] == "executed" and row["origin"]["shape_matches"]
        # A fork copies nothing: no journal or effects row of its own, one run row, and
        # its journal is the origin's n - 1 entries; a copying fork would write them all.
        added = row["fork"]["added_per_fork"]
        assert (added["journal_rows"], added["effects_rows"], added["run_rows"]) == (0, 0, 1)
        assert row["fork"]["fork_journal_entries"] == n - 1
        assert row["fork"]["origin_rows_after"] == n
        assert row["copy"]["rows"] == n - 1
        for value in (
            row["fork"]["fork_ms"]["median"],
            row["replay"]["fork_ms"]["median"],
            row["replay"]["origin_ms"]["median"],
            row["replay"]["load_fork_ms"]["median"],
        ):
            assert isinstance(value, int | float) and math.isfinite(value) and value > 0


@pytest.mark.slow
@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_peer_harness_quick_mode_runs_tether(backend: str, tmp_path: Path, request: Any) -> None:
    """benchmarks/peers/compare.py, Tether only (the peers live in .venv-peers): every
    workload runs in processes of its own and reports its figures."""
    if backend == "postgres":
        request.getfixturevalue("postgres_template")  # skipped (or failed in CI) without one
    out = tmp_path / "peers.json"
    proc = run_benchmark(
        "peers/compare.py",
        "--quick",
        "--systems",
        "tether",
        "--backends",
        backend,
        "--json",
        str(out),
        timeout=300,
    )
    assert "round 1: " not in proc.stdout, proc.stdout  # no workload failed
    figures = json.loads(out.read_text(encoding="utf-8"))["backends"][backend]
    step = figures["step"]["median"]
    for system in ("tether", "floor"):
        assert math.isfinite(step[system]["per_step_ms"]) and step[system]["per_step_ms"] > 0
    if backend == "sqlite":  # set explicitly and read back from the engine's connection
        assert step["tether"]["sqlite_pragmas"] == {"journal_mode": "wal", "synchronous": 2}
        assert step["floor"]["sqlite_pragmas"] == {"journal_mode": "wal", "synchronous": 2}
    assert figures["throughput"]["median"]["tether"]["steps_per_s"] > 0
    assert set(figures["concurrency"]) == {"1", "10"}
    recovery = figures["recovery"]["median"]["tether"]
    # Killed after 20 of 40 steps: the fresh process finished the run, ran no recorded
    # step again, and every step ran at least once.
    assert recovery["result_ok"] is True
    assert recovery["completed_steps_executed_again"] == 0
    assert recovery["missing_steps"] == []
    assert 20 <= recovery["steps_logged_before_kill"] <= recovery["recorded"] + 1
    waiting = figures["waiting"]["median"]["tether"]
    assert waiting["waiting_threads"] == waiting["baseline_threads"]  # waits hold no thread
