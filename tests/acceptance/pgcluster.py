"""A throwaway PostgreSQL cluster for tests that stop and start the server itself.

The shared test server (``TETHER_TEST_POSTGRES_URL``, 127.0.0.1:5432) is never touched:
this makes a new cluster with ``initdb`` in a temporary directory, runs it with ``pg_ctl``
on a free port of its own, and deletes it afterwards. ``initdb`` and ``pg_ctl`` refuse to
run as root, so as root they run as the ``postgres`` OS user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

__all__ = ["PgCluster", "throwaway_cluster"]

OS_USER = "postgres"
PREFIX = "tether-pgcluster-"
# Not pytest's tmp_path (under /tmp/pytest-of-root, closed to others): the postgres user
# must be able to reach the cluster's directory.
PARENT = Path("/tmp")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _unavailable(reason: str) -> NoReturn:
    """Skip, or fail when CI requires PostgreSQL (``TETHER_REQUIRE_POSTGRES=1``)."""
    if os.environ.get("TETHER_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"PostgreSQL is required (TETHER_REQUIRE_POSTGRES=1) but {reason}")
    pytest.skip(reason)


class PgCluster:
    """One cluster in ``base``: data in ``base/data``, server log in ``base/server.log``,
    the Unix socket in ``base`` too (never in the shared server's /var/run/postgresql)."""

    def __init__(self, base: Path, port: int, *, as_user: str | None) -> None:
        self.base = base
        self.data = base / "data"
        self.log = base / "server.log"
        self.port = port
        self.as_user = as_user
        self.running = False

    def url(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def _run(self, *argv: str, timeout: float = 60.0) -> None:
        prefix = ["runuser", "-u", self.as_user, "--"] if self.as_user else []
        done = subprocess.run(
            [*prefix, *argv],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} exited {done.returncode}\n{done.stdout}\n{done.stderr}\n"
                f"{self.log_tail()}"
            )

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def init(self) -> None:
        # --no-sync only for initdb's own files; the server itself runs with fsync=on.
        self._run(
            "initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
            "-E", "UTF8", "--no-sync",
        )  # fmt: skip

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.base} "
            "-c fsync=on -c max_connections=100"
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w",
            "-t", "60", "start",
        )  # fmt: skip
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """``immediate`` is a crash as far as clients can tell: every backend is killed at
        once, nothing is checkpointed, and the next start replays the WAL."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")
        self.running = False

    def destroy(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(Exception):
                self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)


def _remove_leftovers(as_user: str | None) -> None:
    """Stop and delete the clusters of earlier test processes that were killed."""
    for base in PARENT.glob(f"{PREFIX}*"):
        pid = base.name.removeprefix(PREFIX).split("-")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not Path(f"/proc/{pid}").exists():
            PgCluster(base, 0, as_user=as_user).destroy()


@contextlib.contextmanager
def throwaway_cluster() -> Iterator[PgCluster]:
    """A started cluster on a free port; stopped and deleted on exit, even on failure."""
    for tool in ("initdb", "pg_ctl"):
        if shutil.which(tool) is None:
            _unavailable(f"{tool} is not on PATH")
    as_user: str | None = None
    if os.geteuid() == 0:  # initdb and pg_ctl refuse to run as root
        try:
            account = pwd.getpwnam(OS_USER)
        except KeyError:
            _unavailable(f"running as root and there is no {OS_USER!r} OS user for initdb")
        as_user = OS_USER
    _remove_leftovers(as_user)
    base = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=PARENT))
    os.chmod(base, 0o700)
    if as_user is not None:
        os.chown(base, account.pw_uid, account.pw_gid)
    cluster = PgCluster(base, _free_port(), as_user=as_user)
    try:
        cluster.init()
        for attempt in range(3):
            try:
                cluster.start()
                break
            except RuntimeError:
                # Another process took the port between the probe and the start.
                if attempt == 2 or "could not bind" not in cluster.log_tail():
                    raise
                cluster.port = _free_port()
        yield cluster
    finally:
        cluster.destroy()
