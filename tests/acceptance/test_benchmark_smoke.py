"""The benchmark harness runs (in its quick mode), so it never rots. Figures are printed by
the harness, not asserted here: timing on a shared machine is not a test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_core_benchmark_quick_mode_runs(tmp_path: Path) -> None:
    out = tmp_path / "core.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "core.py"), "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ms/step" in proc.stdout and "steps/s" in proc.stdout
    assert "synchronous=FULL" in proc.stdout
    assert out.exists() and out.stat().st_size > 0
