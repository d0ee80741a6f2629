"""``tether serve`` as a real process: it listens, answers only with a token (made with the
real ``tether token create``), refuses --dev on a non-loopback host, and stops cleanly on
SIGTERM and SIGINT."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tether import App, Context

TETHER = Path(sys.executable).parent / "tether"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def seed(url: str) -> None:
    """A database with one finished run."""
    app = App(url, poll_interval=0.05)

    @app.workflow
    async def hello(ctx: Context, name: str) -> str:
        return f"hello {name}"

    async def go() -> None:
        async with app:
            await (await app.start(hello, "world", run_id="h1")).result(timeout=30)

    asyncio.run(go())


@pytest.fixture
def env(sqlite_url: str) -> dict[str, str]:
    seed(sqlite_url)
    return dict(os.environ, TETHER_DATABASE_URL=sqlite_url, COLUMNS="200")


def tether(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TETHER), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


class Server:
    def __init__(self, port: int, env: dict[str, str], *args: str) -> None:
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [str(TETHER), "serve", "--port", str(port), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            stdin=subprocess.DEVNULL,
        )

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"tether serve exited: {self.output()}")
            try:
                if httpx.get(f"{self.base}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError("tether serve never answered /healthz")

    def stop(self, sig: signal.Signals) -> int:
        self.process.send_signal(sig)
        return self.process.wait(timeout=30)

    def output(self) -> str:
        if self.process.poll() is None:
            self.process.kill()
        out, _ = self.process.communicate(timeout=30)
        return out


@pytest.fixture
def serve(env: dict[str, str]) -> Iterator[list[Server]]:
    servers: list[Server] = []
    yield servers
    for server in servers:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait(timeout=30)
        if server.process.stdout is not None:
            server.process.stdout.close()


def test_serve_answers_with_a_token_and_stops_on_sigterm(
    env: dict[str, str], serve: list[Server]
) -> None:
    server = Server(free_port(), env)
    serve.append(server)
    server.wait_ready()

    refused = httpx.get(f"{server.base}/api/v1/runs")
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "unauthenticated"

    made = tether("token", "create", "--role", "viewer", "--name", "ci", "--json", env=env)
    assert made.returncode == 0, made.stderr
    secret = json.loads(made.stdout)["secret"]
    headers = {"Authorization": f"Bearer {secret}"}
    runs = httpx.get(f"{server.base}/api/v1/runs", headers=headers)
    assert runs.status_code == 200, runs.text
    assert [(r["run_id"], r["status"], r["result"]) for r in runs.json()["runs"]] == [
        ("h1", "succeeded", "hello world")
    ]
    me = httpx.get(f"{server.base}/api/v1/whoami", headers=headers).json()
    assert me["role"] == "viewer" and me["name"].startswith("ci (token ")
    # A viewer may not make tokens.
    denied = httpx.post(f"{server.base}/api/v1/tokens", headers=headers, json={"role": "admin"})
    assert denied.status_code == 403

    assert server.stop(signal.SIGTERM) == 0
    output = server.output()
    assert f"listening on http://127.0.0.1:{server.port}" in output
    assert "no tokens yet: make one with 'tether token create --role admin'" in output
    assert "SIGTERM: stopping" in output and "tether serve stopped" in output
    assert "Traceback" not in output


def test_serve_stops_on_sigint_and_dev_mode_needs_no_token(
    env: dict[str, str], serve: list[Server]
) -> None:
    server = Server(free_port(), env, "--dev")
    serve.append(server)
    server.wait_ready()
    me = httpx.get(f"{server.base}/api/v1/whoami")
    assert me.status_code == 200 and me.json()["name"] == "dev"
    assert server.stop(signal.SIGINT) == 0
    output = server.output()
    assert "dev mode: no tokens" in output and "tether serve stopped" in output


def test_dev_mode_refuses_a_host_other_machines_reach(env: dict[str, str]) -> None:
    result = tether("serve", "--dev", "--host", "0.0.0.0", "--port", str(free_port()), env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --dev"), result.stderr
    assert "loopback" in lines[0] and "'0.0.0.0'" in lines[0]
    assert "Traceback" not in result.stdout + result.stderr


def test_serve_reports_a_missing_database_and_a_port_in_use(
    env: dict[str, str], tmp_path: Path
) -> None:
    missing = dict(env, TETHER_DATABASE_URL=f"sqlite:///{tmp_path / 'nope.db'}")
    result = tether("serve", "--port", str(free_port()), env=missing)
    assert result.returncode == 1
    assert result.stderr.startswith("error: no database at "), result.stderr
    assert not (tmp_path / "nope.db").exists()

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = tether("serve", "--port", str(port), env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"cannot listen on http://127.0.0.1:{port}" in result.stderr
    assert "--port" in result.stderr and "Traceback" not in result.stderr

    bad = tether("serve", "--port", "70000", env=env)
    assert bad.returncode == 2 and "--port must be between 1 and 65535" in bad.stderr
