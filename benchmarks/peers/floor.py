"""The raw floor beside the ``step`` workload: one committed ``INSERT`` per transaction on
the same disk, in the same pattern (a fresh database, ``--warmup`` x ``--steps`` commits,
then ``--repeats`` batches of ``--steps``). SQLite: plain ``sqlite3``, WAL,
``synchronous=FULL``, ``BEGIN IMMEDIATE; INSERT; COMMIT``. PostgreSQL: plain psycopg in
autocommit, one ``INSERT`` per round trip. ``per_step_ms`` is ms per commit;
on PostgreSQL ``async_per_step_ms`` is the same through psycopg's async connection (an
asyncio program's floor)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import _harness as h  # noqa: E402


def _step(args: h.Args) -> dict[str, Any]:
    out: dict[str, Any] = {"versions": h.versions("psycopg")}
    if args.backend == "sqlite":
        import core

        floor: Any = core.Floor(Path(args.db))
        out["sqlite_pragmas"] = h.sqlite_pragmas(floor.conn)
    else:
        import _pgbench

        floor = _pgbench.Floor(args.db)
    try:
        for _ in range(args.warmup):
            floor.batch(args.steps)
        batches = [floor.batch(args.steps) for _ in range(args.repeats)]
        if args.backend == "postgres":  # the same through psycopg's async connection
            out["async_per_step_ms"] = asyncio.run(_async_floor(floor, args))
    finally:
        if args.backend == "sqlite":
            floor.close()
        else:
            floor.conn.close()
    out["per_step_ms"] = h.median(batches)
    out["runs_ms"] = [ms * args.steps for ms in batches]
    return out


async def _async_floor(floor: Any, args: h.Args) -> float:
    await floor.open_async()
    try:
        await floor.async_batch(args.steps)
        return h.median([await floor.async_batch(args.steps) for _ in range(args.repeats)])
    finally:
        await floor.aconn.close()


if __name__ == "__main__":
    sys.exit(h.main({"step": _step}))
