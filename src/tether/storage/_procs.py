"""Who holds a lease: host, boot id and process, so a dead local holder is seen at once."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from functools import cache
from typing import Any

from ._store import WorkerInfo

__all__ = ["alive", "boot_id", "dead_workers", "host", "pid_start"]


@cache
def host() -> str:
    """This machine as far as process ids go: host name, machine id and pid namespace.

    Workers with the same identity judge each other's pids. Two machines may share a host
    name (the machine id tells them apart) and two containers may share a host name and a
    kernel (the pid namespace tells them apart): a pid seen from one means nothing in the
    other."""
    parts = [socket.gethostname()]
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            with open(path, encoding="ascii") as f:
                parts.append(f.read().strip()[:12])
            break
        except OSError:
            continue
    try:
        parts.append(os.readlink("/proc/self/ns/pid").removeprefix("pid:"))
    except OSError:
        pass
    return "/".join(part for part in parts if part)


@cache
def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def pid_start(pid: int) -> str:
    """The process's start time in clock ticks since boot: (pid, start) names a process
    uniquely, even after the pid is reused."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return ""
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else ""


def alive(pid: int, start: str) -> bool:
    """Whether the process that held a lease still runs. Only a proven death counts:
    without /proc (macOS, BSD) a process that answers kill(0) is taken to be alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except FileNotFoundError:
        # It exited between kill(0) and here, or there is no /proc at all.
        return not os.path.isdir("/proc/self")
    except OSError:
        return True
    fields = stat[stat.rfind(")") + 2 :].split()
    if fields and fields[0] == "Z":  # a zombie still answers kill(0): it is dead
        return False
    current = fields[19] if len(fields) > 19 else ""
    return not start or not current or current == start


def dead_workers(me: WorkerInfo, rows: Iterable[tuple[Any, ...]]) -> list[str]:
    """Of the workers recorded on this host (rows: worker_id, boot_id, pid, pid_start),
    those proven dead: the host rebooted since, or their process is gone."""
    return [
        row[0]
        for row in rows
        if row[0] != me.worker_id
        and (
            (row[1] != me.boot_id and "unknown" not in (row[1], me.boot_id))
            or (row[1] == me.boot_id and not alive(row[2], row[3]))
        )
    ]
