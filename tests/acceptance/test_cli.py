"""The real ``tether`` console script, as subprocesses, against a temporary SQLite file."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cliapp import build_app

from tether import App, Run, RunStatus

T = TypeVar("T")

TETHER = Path(sys.executable).parent / "tether"
HERE = Path(__file__).resolve().parent


@pytest.fixture
def env(db_url: str) -> dict[str, str]:
    environ = dict(os.environ, TETHER_DATABASE_URL=db_url, COLUMNS="200")
    return environ


def tether(
    *args: str, env: dict[str, str], cwd: Path = HERE, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TETHER), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def assert_one_line_error(
    result: subprocess.CompletedProcess[str], code: int, *fragments: str
) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == code, output
    assert "Traceback" not in output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def with_app(db_url: str, fn: Callable[[App], Awaitable[T]]) -> T:
    """Call ``fn`` with an App on the test database, opened in this process, no worker."""

    async def call() -> T:
        app = build_app(db_url)
        await app.open(worker=False)
        try:
            return await fn(app)
        finally:
            await app.close()

    return asyncio.run(call())


def start(db_url: str, workflow: str, arg: Any, run_id: str) -> None:
    async def go(app: App) -> None:
        await app.start(workflow, arg, run_id=run_id)

    with_app(db_url, go)


def get_run(db_url: str, run_id: str) -> Run:
    async def get(app: App) -> Run:
        return await app.get_run(run_id)

    return with_app(db_url, get)


def wait_status(db_url: str, run_id: str, status: RunStatus, timeout: float = 30) -> Run:
    deadline = time.monotonic() + timeout
    while True:
        run = get_run(db_url, run_id)
        if run.status is status:
            return run
        assert time.monotonic() < deadline, f"{run_id} is {run.status}, not {status}"
        time.sleep(0.02)


def read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"no output from the worker within {timeout} s"
    return proc.stdout.readline()


@pytest.fixture
def worker(env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    """``tether worker cliapp:app`` from this directory, ready to claim runs."""
    with worker_process(env) as proc:
        yield proc


@contextlib.contextmanager
def worker_process(env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    """``tether worker cliapp:app`` as a fresh process, until the block ends."""
    with subprocess.Popen(
        [str(TETHER), "worker", "cliapp:app"],
        cwd=HERE,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            line = read_line(proc, 30)
            assert " started: cliapp:app on " in line, line
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=30)


def test_worker_executes_a_run_started_elsewhere_and_stops_on_sigterm(
    db_url: str, worker: subprocess.Popen[str]
) -> None:
    start(db_url, "quick", 5, "q1")
    assert wait_status(db_url, "q1", RunStatus.SUCCEEDED).result == 20

    worker.send_signal(signal.SIGTERM)
    out, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err
    assert "SIGTERM: stopping" in out
    assert out.rstrip().endswith("stopped")
    assert "Traceback" not in out + err


def test_runs_show_signal_and_cancel_on_waiting_runs(
    db_url: str, env: dict[str, str], worker: subprocess.Popen[str]
) -> None:
    start(db_url, "waits_for_go", "ada", "w-signal")
    start(db_url, "waits_for_go", "bob", "w-cancel")
    wait_status(db_url, "w-signal", RunStatus.WAITING)
    wait_status(db_url, "w-cancel", RunStatus.WAITING)

    listed = tether("runs", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    runs = json.loads(listed.stdout)
    assert {r["run_id"] for r in runs} == {"w-signal", "w-cancel"}
    assert all(r["status"] == "waiting" and r["workflow"] == "waits_for_go" for r in runs)
    filtered = tether("runs", "--status", "succeeded", "--json", env=env)
    assert json.loads(filtered.stdout) == []
    assert json.loads(tether("runs", "-w", "quick", "--json", env=env).stdout) == []
    assert len(json.loads(tether("runs", "--limit", "1", "--json", env=env).stdout)) == 1
    table = tether("runs", env=env)
    assert table.returncode == 0 and "w-signal" in table.stdout and "waiting" in table.stdout

    shown = tether("show", "w-signal", "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    detail = json.loads(shown.stdout)
    assert {"run_id", "workflow", "status", "result", "error", "events"} <= detail.keys()
    assert (detail["run_id"], detail["workflow"], detail["status"]) == (
        "w-signal",
        "waits_for_go",
        "waiting",
    )
    events = detail["events"]
    assert [(e["seq"], e["kind"], e["name"], e["status"]) for e in events] == [
        (1, "step", "greet", "completed"),
        (2, "signal", "go", "waiting"),
    ]
    assert events[0]["output"] == "hello ada"
    assert events[0]["duration_ms"] is not None and events[0]["attempts"] == 1
    people = tether("show", "w-signal", env=env)
    assert people.returncode == 0
    assert "greet" in people.stdout and "waiting for signal 'go'" in people.stdout

    sent = tether("signal", "w-signal", "go", '{"ok": true}', env=env)
    assert sent.returncode == 0, sent.stderr
    run = wait_status(db_url, "w-signal", RunStatus.SUCCEEDED)
    assert run.result == {"greeting": "hello ada", "go": {"ok": True}}
    again = tether("signal", "w-signal", "go", env=env)
    assert_one_line_error(again, 1, "already succeeded")

    cancelled = tether("cancel", "w-cancel", "--reason", "customer left", env=env)
    assert cancelled.returncode == 0, cancelled.stderr
    run = get_run(db_url, "w-cancel")
    assert run.status is RunStatus.CANCELLED
    assert run.error is not None and run.error["message"] == "customer left"
    twice = tether("cancel", "w-cancel", env=env)
    assert twice.returncode == 0 and "already cancelled" in twice.stdout
    finished = tether("cancel", "w-signal", env=env)
    assert_one_line_error(finished, 1, "already succeeded")


def test_signal_value_defaults_to_null(
    db_url: str, env: dict[str, str], worker: subprocess.Popen[str]
) -> None:
    start(db_url, "waits_for_go", "cy", "w-null")
    wait_status(db_url, "w-null", RunStatus.WAITING)
    assert tether("signal", "w-null", "go", env=env).returncode == 0
    assert wait_status(db_url, "w-null", RunStatus.SUCCEEDED).result["go"] is None


def test_database_url_option(tmp_path: Path, env: dict[str, str]) -> None:
    other = f"sqlite:///{tmp_path / 'other.db'}"
    start(other, "quick", 1, "elsewhere")
    result = tether("--database-url", other, "runs", "--json", env=env)
    assert [r["run_id"] for r in json.loads(result.stdout)] == ["elsewhere"]
    result = tether("-d", other, "show", "elsewhere", "--json", env=env)
    assert json.loads(result.stdout)["status"] == "pending"


@pytest.mark.parametrize(
    "args",
    [["runs"], ["runs", "--json"], ["show", "r1"], ["signal", "r1", "go"], ["cancel", "r1"]],
)
def test_a_missing_database_is_one_line_and_is_not_created(
    args: list[str], sqlite_url: str, db_path: Path
) -> None:
    env = dict(os.environ, TETHER_DATABASE_URL=sqlite_url)
    assert_one_line_error(tether(*args, env=env), 1, "no database at", str(db_path))
    assert not db_path.exists()


@pytest.mark.postgres
@pytest.mark.parametrize("args", [["runs"], ["show", "r1"], ["worker", "cliapp:app"]])
def test_an_unreachable_postgres_server_is_one_line(args: list[str]) -> None:
    url = "postgresql://u:hunter2@127.0.0.1:1/tether?connect_timeout=2"
    env = dict(os.environ, TETHER_DATABASE_URL=url)
    assert_one_line_error(tether(*args, env=env), 1, "cannot connect to", "u:***@127.0.0.1:1")


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["show", "nope"], 1, "no run 'nope'; list runs with 'tether runs'"),
        (["show", "nope", "--json"], 1, "no run 'nope'"),
        (["signal", "nope", "go", "1"], 1, "no run 'nope'"),
        (["cancel", "nope"], 1, "no run 'nope'"),
        (["signal", "nope", "go", "{bad"], 2, "malformed JSON value '{bad'"),
        (["signal", "nope", "go", "hello"], 2, "'\"text\"'"),
        (["runs", "--status", "bogus"], 2, "unknown status 'bogus'; use one of: pending"),
        (["runs", "--limit", "0"], 2, "--limit"),
        (["-d", "mysql://x/y", "runs"], 1, "unsupported database URL"),
        (["worker", "cliapp"], 2, "is not MODULE:APP"),
        (["worker", "no_such_module_xyz:app"], 1, "no module named 'no_such_module_xyz'"),
        (["worker", "cliapp:nope"], 1, "module 'cliapp' has no attribute 'nope'"),
        (["worker", "cliapp:not_an_app"], 1, "not a tether.App"),
        (["worker", "cliapp:app", "--concurrency", "0"], 2, "--concurrency"),
    ],
)
def test_errors_are_one_line_without_traceback(
    args: list[str], code: int, fragment: str, db_url: str, env: dict[str, str]
) -> None:
    with_app(db_url, lambda app: asyncio.sleep(0))  # the database exists
    assert_one_line_error(tether(*args, env=env), code, fragment)


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("raise RuntimeError('boom')\n", "importing 'mod' failed: RuntimeError: boom (at "),
        ("def broken(:\n", "importing 'mod' failed: SyntaxError"),
        ("import no_such_dependency_xyz\n", "No module named 'no_such_dependency_xyz'"),
        ("from tether import App\napp = App('sqlite:///elsewhere.db')\n", "is bound to"),
    ],
)
def test_an_unimportable_module_is_one_line(
    source: str, fragment: str, tmp_path: Path, env: dict[str, str]
) -> None:
    workdir = tmp_path / "project"
    workdir.mkdir()
    (workdir / "mod.py").write_text(source)
    explicit = ["-d", env["TETHER_DATABASE_URL"]] if "is bound to" in fragment else []
    result = tether(*explicit, "worker", "mod:app", env=env, cwd=workdir)
    assert_one_line_error(result, 2 if explicit else 1, fragment)
