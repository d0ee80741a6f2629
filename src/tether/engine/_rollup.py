"""The roll-up (DESIGN section 9): what every run and worker is doing, and what needs a
person, ordered by urgency, read from storage alone."""

from __future__ import annotations

import json
import shlex
import time

from .._errors import BudgetExceededError, EffectInDoubtError, NondeterminismError
from .._records import AttentionItem, EffectRecord, Overview, Run, RunStatus, WorkerActivity
from ..storage import Store

__all__ = ["FAILURE_WINDOW", "attention_for_run", "build_overview"]

# Failed runs stay on the roll-up this long after they failed.
FAILURE_WINDOW = 24 * 3600.0

# Lower is more urgent: a deadline that will decide without a person, money that may have
# moved, a run waiting on a person, a run stopped on code or budget, a failure.
_RANK = {
    "approval_deadline": 0,
    "in_doubt": 1,
    "approval": 2,
    "nondeterminism": 3,
    "budget": 4,
    "attention": 5,
    "failed": 6,
}


def _call(effect: EffectRecord, width: int = 80) -> str:
    args = effect.args if isinstance(effect.args, dict) else {}
    text = ", ".join(f"{k}={json.dumps(v, default=str)}" for k, v in args.items())
    if len(text) > width:
        text = text[: width - 1] + "…"
    return f"{effect.tool}({text})"


def _approval(effect: EffectRecord) -> AttentionItem:
    run = shlex.quote(effect.run_id)
    title = f"{_call(effect)} awaits approval"
    if effect.tainted:
        title += " (the run read untrusted content)"
    rank = _RANK["approval_deadline" if effect.deadline is not None else "approval"]
    return AttentionItem(
        kind="approval",
        rank=rank,
        run_id=effect.run_id,
        workflow="",
        title=title,
        since=effect.created_at,
        seq=effect.seq,
        tool=effect.tool,
        deadline=effect.deadline,
        action=f"tether approve {run} {effect.seq}  (or --reject --note '<why>')",
    )


def _in_doubt(effect: EffectRecord) -> AttentionItem:
    return AttentionItem(
        kind="in_doubt",
        rank=_RANK["in_doubt"],
        run_id=effect.run_id,
        workflow="",
        title=f"{_call(effect)} may or may not have happened",
        since=effect.finished_at or effect.started_at or effect.created_at,
        seq=effect.seq,
        tool=effect.tool,
        action=f"tether resolve {shlex.quote(effect.run_id)} {effect.seq} "
        "--done JSON | --retry | --abort --reason '<how you know>'",
    )


def attention_for_run(run: Run) -> AttentionItem | None:
    """Why a run that stopped or failed needs a person (None: it does not, or an effect
    item says it better)."""
    error = run.error or {}
    code = error.get("code")
    message = str(error.get("message") or error.get("type") or run.status.value)
    first_line = message.splitlines()[0] if message else ""
    run_arg = shlex.quote(run.run_id)
    if run.status is RunStatus.FAILED:
        kind, action = "failed", f"tether show {run_arg}"
    elif run.status is not RunStatus.NEEDS_ATTENTION or code == EffectInDoubtError.code:
        return None
    elif code == BudgetExceededError.code:
        kind, action = "budget", f"tether budget {run_arg} --tokens N [--cost-usd X]"
    elif code == NondeterminismError.code:
        kind, action = "nondeterminism", f"tether show {run_arg}  (deploy the code it ran with)"
    else:
        kind, action = "attention", f"tether show {run_arg}"
    if kind == "budget":
        spent, budget = error.get("spent") or {}, error.get("budget") or {}
        limits = []
        if budget.get("tokens") is not None:
            limits.append(f"{budget['tokens']} tokens")
        if budget.get("cost_usd") is not None:
            limits.append(f"${budget['cost_usd']:g}")
        first_line = (
            f"the agent reached its budget of {' and '.join(limits) or 'its limit'}: it spent "
            f"{spent.get('tokens', 0)} tokens and ${spent.get('cost_usd', 0.0):.4f}"
        )
    return AttentionItem(
        kind=kind,
        rank=_RANK[kind],
        run_id=run.run_id,
        workflow=run.workflow,
        title=_shorten(first_line),
        since=run.updated_at,
        action=action,
    )


def _shorten(text: str, width: int = 200) -> str:
    """At most ``width`` characters, cut at a word with an ellipsis."""
    if len(text) <= width:
        return text
    cut = text[: width - 1].rsplit(" ", 1)[0]
    return cut.rstrip(",;:") + "…"


async def build_overview(store: Store, *, limit: int = 50, now: float | None = None) -> Overview:
    now = time.time() if now is None else now
    counts = await store.count_runs()
    items: list[AttentionItem] = []
    approvals = await store.list_effects(awaiting_approval=True, limit=limit)
    in_doubt = await store.list_effects(in_doubt=True, limit=limit)
    stopped = await store.list_runs(status=RunStatus.NEEDS_ATTENTION, limit=limit)
    failed = await store.list_runs(status=RunStatus.FAILED, limit=limit)
    workflows: dict[str, str] = {}
    for run in stopped:
        workflows[run.run_id] = run.workflow
        item = attention_for_run(run)
        if item is not None:
            items.append(item)
    for run in failed:
        recent = attention_for_run(run) if run.updated_at >= now - FAILURE_WINDOW else None
        if recent is not None:
            items.append(recent)
    effect_items = [_approval(e) for e in approvals] + [_in_doubt(e) for e in in_doubt]
    for item in effect_items:
        workflow = workflows.get(item.run_id)
        if workflow is None:
            run_found = await store.get_run(item.run_id)
            workflow = run_found.workflow if run_found else ""
            workflows[item.run_id] = workflow
        items.append(_with_workflow(item, workflow))
    items.sort(key=lambda i: (i.rank, i.deadline if i.deadline is not None else i.since))
    workers = await store.list_workers()
    running = await store.list_runs(status=RunStatus.RUNNING, limit=1000)
    by_owner: dict[str, list[Run]] = {}
    for run in running:
        if run.lease_owner is not None:
            by_owner.setdefault(run.lease_owner, []).append(run)
    activity = [
        WorkerActivity(
            w.worker_id, w.host, w.pid, w.started_at, w.heartbeat_at, by_owner.get(w.worker_id, [])
        )
        for w in workers
    ]
    return Overview(counts=counts, attention=items[:limit], workers=activity, at=now)


def _with_workflow(item: AttentionItem, workflow: str) -> AttentionItem:
    return AttentionItem(
        kind=item.kind,
        rank=item.rank,
        run_id=item.run_id,
        workflow=workflow,
        title=item.title,
        since=item.since,
        seq=item.seq,
        tool=item.tool,
        deadline=item.deadline,
        action=item.action,
    )
