"""Every runnable example in docs/, README.md and examples/ runs and exits 0.

An example that names a PostgreSQL database runs against a fresh test database instead.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)
POSTGRES_URL = re.compile(r"postgresql://[^\"']+")


def _snippets() -> list[tuple[str, str]]:
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for i, code in enumerate(BLOCK.findall(path.read_text())):
            if "asyncio.run(" in code:  # a whole program, not a fragment
                found.append((f"{path.name}#{i}", code))
    for path in sorted((ROOT / "examples").glob("*.py")):
        found.append((path.name, path.read_text()))
    return found


def _cases() -> list[object]:
    return [
        pytest.param(name, code, id=name, marks=[pytest.mark.postgres])
        if POSTGRES_URL.search(code)
        else pytest.param(name, code, id=name)
        for name, code in _snippets()
    ]


@pytest.mark.parametrize(("name", "code"), _cases())
def test_example_runs(name: str, code: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if POSTGRES_URL.search(code):
        url = request.getfixturevalue("postgres_url")
        code = POSTGRES_URL.sub(url, code)
    script = tmp_path / "example.py"
    script.write_text(code)
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        # XDG_CONFIG_HOME: an example with secret arguments creates its key file here.
        env={
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(ROOT / "src"),
            "XDG_CONFIG_HOME": str(tmp_path),
        },
    )
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"
