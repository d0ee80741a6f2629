"""Golden journals: journals recorded by an earlier version, replayed by today's engine.

A change to how calls are numbered (gather, children, waits) or encoded would make old runs
in users' databases fail with NondeterminismError after an upgrade. Replaying committed
journals catches that. Regenerate (only on purpose) with TETHER_REGEN_GOLDEN=1.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tether import App, Context, RunStatus
from tether.storage import NewEntry, NewRun, SQLiteStore

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "order_v1.json"
# Written before journals recorded the delivery order (migration 0002): the upgrade path.
GOLDENS = [GOLDEN, GOLDEN.with_name("order_v0_before_delivery.json")]


@dataclass
class Line:
    sku: str
    quantity: int


def build(url: str, executed: list[str]) -> App:
    app = App(url, poll_interval=0.05)

    @app.step
    async def price(line: Line) -> int:
        executed.append(f"price:{line.sku}")
        return 100 * line.quantity

    @app.step
    def reserve(sku: str) -> str:
        executed.append(f"reserve:{sku}")
        return f"rsv-{sku}"

    @app.workflow
    async def part(ctx: Context, sku: str) -> str:
        return await reserve(sku)

    @app.workflow
    async def order(ctx: Context, lines: list[Line]) -> dict[str, object]:
        prices = await asyncio.gather(*(price(line) for line in lines))
        token = await ctx.uuid()
        await ctx.sleep(0)
        confirmed = await ctx.wait_signal("confirm")
        parts = [await ctx.child(part, line.sku) for line in lines]
        return {"total": sum(prices), "token": str(token), "ok": confirmed, "parts": parts}

    return app


async def _record(url: str) -> dict[str, object]:
    app = build(url, [])
    async with app:
        handle = await app.start(order, [Line("a", 1), Line("b", 2)], run_id="golden")
        await app.signal("golden", "confirm", True)
        result = await handle.result(timeout=30)
        runs = []
        for run in sorted(await app.list_runs(), key=lambda r: r.run_id):
            entries = await app.get_journal(run.run_id)
            runs.append(
                {
                    "run_id": run.run_id,
                    "workflow": run.workflow,
                    "args": run.args,
                    "parent_run_id": run.parent_run_id,
                    "parent_seq": run.parent_seq,
                    "entries": [
                        {
                            "seq": e.seq,
                            "kind": e.kind,
                            "name": e.name,
                            "status": str(e.status),
                            "input": e.input,
                            "output": e.output,
                            "delivery": e.delivery,
                        }
                        for e in entries
                    ],
                }
            )
    return {"result": result, "runs": runs}


def _load(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


order = "order"  # the workflow name, for app.start by name


@pytest.mark.parametrize("path", GOLDENS, ids=lambda p: p.stem)
async def test_golden_journal_replays_without_executing(tmp_path: Path, path: Path) -> None:
    if os.environ.get("TETHER_REGEN_GOLDEN") == "1" and path == GOLDEN:
        GOLDEN.write_text(json.dumps(await _record(f"sqlite:///{tmp_path}/regen.db"), indent=1))
    golden = _load(path)

    # Load the recorded journals into a fresh database, as an older version left them,
    # with every run handed back mid-flight (pending) so today's worker replays it.
    url = f"sqlite:///{tmp_path}/golden.db"
    store = SQLiteStore(url)
    await store.open()
    for run in golden["runs"]:
        await store.create_run(
            NewRun(
                run["run_id"],
                run["workflow"],
                json.dumps(run["args"]),
                run["parent_run_id"],
                run["parent_seq"],
            )
        )
    fences = await store.claim_runs("loader", 100, 60, frozenset({"order", "part"}))
    by_id = {f.run_id: f for f in fences}
    for run in golden["runs"]:
        for e in run["entries"]:
            await store.append_entry(
                by_id[run["run_id"]],
                NewEntry(
                    e["seq"],
                    e["kind"],
                    e["name"],
                    e["status"],
                    json.dumps(e["input"]) if e["input"] is not None else None,
                    json.dumps(e["output"]) if e["output"] is not None else None,
                    delivery=e.get("delivery"),
                ),
            )
    await store.release_runs("loader", list(by_id))
    await store.close()

    executed: list[str] = []
    app = build(url, executed)
    async with app:
        result = await app.handle("golden").result(timeout=30)
        assert (await app.get_run("golden")).status is RunStatus.SUCCEEDED
    assert result == golden["result"]
    assert executed == [], f"replay executed recorded steps again: {executed}"


@pytest.mark.parametrize("path", GOLDENS, ids=lambda p: p.stem)
@pytest.mark.parametrize("field", ["kind", "name"])
def test_golden_file_is_well_formed(field: str, path: Path) -> None:
    golden = json.loads(path.read_text())
    assert golden["runs"], "the golden file holds no runs"
    for run in golden["runs"]:
        seqs = [e["seq"] for e in run["entries"]]
        assert seqs == sorted(seqs)
        assert all(e[field] for e in run["entries"])
