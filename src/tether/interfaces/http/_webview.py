"""What the web pages show, computed from the App's records (no HTML here).

The templates stay simple: they read the small frozen records built here (a run's
trajectory as :class:`Item`, an effect's history as :class:`Event`) and format times with
the Jinja filters of :func:`install_filters`.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import jinja2

from ..._records import EffectRecord, EffectState, EntryStatus, JournalEntry, Run, RunStatus
from .._lineage import Tree, TreeNode, is_replaced
from .._render import preview, took_text
from .._views import duration_ms, iso_time

__all__ = [
    "ATTENTION_LABELS",
    "STATUSES",
    "Event",
    "Item",
    "ModelCall",
    "Refusal",
    "TreeRow",
    "budget_suggestion",
    "child_ids",
    "error_line",
    "history",
    "install_filters",
    "requested",
    "run_note",
    "timeline",
    "tree_rows",
]

STATUSES = [status.value for status in RunStatus]

ATTENTION_LABELS = {
    "approval": "Approval",
    "in_doubt": "In doubt",
    "budget": "Budget stop",
    "nondeterminism": "Code changed",
    "attention": "Needs attention",
    "failed": "Failed",
}


@dataclass(frozen=True, slots=True)
class Event:
    """One line of a tool call's history: what happened, who, when, and why."""

    label: str
    css: str
    at: float | None
    who: str | None = None
    text: str | None = None


@dataclass(frozen=True, slots=True)
class ModelCall:
    """What a model call cost and what the model chose."""

    calls: list[tuple[str, str]]  # (tool, arguments as compact JSON)
    text: str | None
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    stop_reason: str | None
    latency_ms: float | None
    tries: int | None


@dataclass(frozen=True, slots=True)
class Item:
    """One journal entry of the trajectory."""

    seq: int
    kind: str
    name: str
    status: str  # the entry's status
    state: str  # what the timeline colours: the effect state for a tool call, else status
    started_at: float | None
    took: str
    summary: str
    entry: JournalEntry
    effect: EffectRecord | None = None
    model: ModelCall | None = None
    events: list[Event] = field(default_factory=list)
    wake_at: float | None = None
    child_id: str | None = None
    child: Run | None = None
    # A fork's journal: an entry of its origin's, shared by reference (``entry.run_id``
    # names whose), and the entry a fork recorded in place of the origin's (``replace``).
    shared: bool = False
    replaced: bool = False

    @property
    def finished(self) -> bool:
        """Completed or failed: a fork may start here (and replace its output)."""
        return self.status in ("completed", "failed")

    @property
    def replaceable(self) -> bool:
        """Whether a fork may record another output here (a sleep has none)."""
        return self.finished and self.kind != "sleep"

    def fork_value(self) -> str:
        """What the fork form starts with: a model answer's text, else the recorded
        output as JSON (nothing for a failed entry, which returned nothing)."""
        if self.model is not None:
            return self.model.text or ""
        if self.status != "completed":
            return ""
        return json.dumps(self.entry.output, indent=2, ensure_ascii=False, default=str)


@dataclass(frozen=True, slots=True)
class Refusal:
    """A fork or retry the App refused, shown next to the form that asked (``action``
    at ``seq``), with what was typed in it (``values``, by field name)."""

    action: str  # "fork" or "retry"
    seq: int
    message: str
    values: dict[str, str]

    def value(self, action: str, seq: int, name: str, default: str) -> str:
        if (self.action, self.seq) == (action, seq):
            return self.values.get(name, default)
        return default


@dataclass(frozen=True, slots=True)
class TreeRow:
    """One run of the branch view: how deep it is, which run it was forked from, at
    which seq, how many forks it has, and the tree's lines to its left (``guides``, one
    per level: ``pipe`` an ancestor's line going on down, ``blank`` none, then ``tee``
    or, for the last fork of its origin, ``elbow``)."""

    run: Run
    depth: int
    current: bool
    origin: str | None
    forks: int
    guides: tuple[str, ...] = ()

    @property
    def indent(self) -> str:
        """How deep it is, for a select's option (where spaces collapse)."""
        return "\u00a0\u00a0" * max(0, self.depth - 1) + ("↳ " if self.depth else "")


MAX_GUIDES = 8  # levels of lines drawn; a deeper run is drawn at this depth


def tree_rows(tree: Tree) -> list[TreeRow]:
    """The branch tree as rows, depth first (a run before its forks)."""
    rows = []
    # (node, depth, its origin, whether each of its ancestors below the root and it
    # itself is the last fork of its own origin)
    stack: list[tuple[TreeNode, int, str | None, tuple[bool, ...]]] = [(tree.root, 0, None, ())]
    while stack:
        node, depth, origin, lasts = stack.pop()
        guides = tuple("blank" if last else "pipe" for last in lasts[:-1])
        if lasts:
            guides += ("elbow" if lasts[-1] else "tee",)
        run = node.run
        rows.append(
            TreeRow(
                run,
                depth,
                run.run_id == tree.run_id,
                origin,
                len(node.forks),
                guides[-MAX_GUIDES:],
            )
        )
        count = len(node.forks)
        for index, fork in reversed(list(enumerate(node.forks))):
            stack.append((fork, depth + 1, run.run_id, (*lasts, index == count - 1)))
    return rows


def error_line(error: dict[str, Any] | None) -> str:
    if not error:
        return ""
    kind, message = error.get("type"), error.get("message")
    return f"{kind}: {message}" if kind else str(message)


def run_note(run: Run) -> str:
    """One line on a run for the runs list: its error, its result, or its wait."""
    if run.status in (RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.NEEDS_ATTENTION):
        return error_line(run.error)
    if run.status is RunStatus.SUCCEEDED:
        return "→ " + preview(run.result, 80)
    if run.status is RunStatus.WAITING and run.wake_at is not None:
        return f"wakes {_until(run.wake_at)}"
    if run.parent_run_id is not None:
        return f"child of {run.parent_run_id}"
    return ""


# -- the trajectory -----------------------------------------------------------------------
def child_ids(entries: list[JournalEntry]) -> list[str]:
    """The run ids of the child runs a journal started."""
    found = []
    for entry in entries:
        if entry.kind == "child" and isinstance(entry.input, dict):
            run_id = entry.input.get("run_id")
            if isinstance(run_id, str):
                found.append(run_id)
    return found


def timeline(
    entries: list[JournalEntry],
    effects: list[EffectRecord],
    children: dict[str, Run],
    run: Run | None = None,
) -> list[Item]:
    """Every journal entry in seq order, each with what a person wants to know of it.

    ``effects`` are those of every run whose rows the journal holds (a fork's prefix is
    its origin's); each entry gets the effect of its own row. With ``run``, the entries
    of a fork's origin are marked ``shared`` and the one it replaced ``replaced``."""
    by_row = {(effect.run_id, effect.seq): effect for effect in effects}
    items = []
    for entry in entries:
        item = _item(entry, by_row.get((entry.run_id, entry.seq)), children)
        if run is not None:
            shared = entry.run_id != run.run_id
            replaced = not shared and is_replaced(run, entry)
            if shared or replaced:
                item = replace(item, shared=shared, replaced=replaced)
        items.append(item)
    return items


def _item(entry: JournalEntry, effect: EffectRecord | None, children: dict[str, Run]) -> Item:
    took = took_text(duration_ms(entry))
    base: dict[str, Any] = {
        "seq": entry.seq,
        "kind": entry.kind,
        "name": entry.name,
        "status": entry.status.value,
        "state": entry.status.value,
        "started_at": entry.started_at,
        "took": took,
        "entry": entry,
    }
    if entry.kind == "model" and isinstance(entry.output, dict):
        model = _model_call(entry.output)
        return Item(**base, summary=_model_summary(model), model=model)
    if entry.kind == "tool":
        if effect is not None:
            base["state"] = effect.state.value
            base["took"] = took_text(duration_ms(effect)) or took
        return Item(
            **base,
            summary=_tool_summary(entry, effect),
            effect=effect,
            events=history(effect) if effect is not None else [],
        )
    if entry.kind == "child":
        child_id = child_ids([entry])
        run_id = child_id[0] if child_id else None
        child = children.get(run_id) if run_id else None
        return Item(**base, summary=_entry_summary(entry), child_id=run_id, child=child)
    waits = entry.kind in ("sleep", "signal") and entry.status is EntryStatus.WAITING
    wake_at = _number(entry.output) if waits else None
    return Item(**base, summary=_entry_summary(entry), wake_at=wake_at)


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _model_call(output: dict[str, Any]) -> ModelCall:
    message = output.get("message") or {}
    calls = []
    for call in message.get("tool_calls") or ():
        if isinstance(call, dict):
            arguments = call.get("arguments")
            calls.append((str(call.get("name", "?")), preview(arguments, 120)))
    usage = output.get("usage") or {}
    tries = output.get("tries")
    content = message.get("content")
    return ModelCall(
        calls=calls,
        text=content if isinstance(content, str) and content.strip() else None,
        input_tokens=int(_number(usage.get("input_tokens")) or 0),
        output_tokens=int(_number(usage.get("output_tokens")) or 0),
        cost_usd=_number(output.get("cost_usd")),
        stop_reason=output.get("stop_reason")
        if isinstance(output.get("stop_reason"), str)
        else None,
        latency_ms=_number(output.get("latency_ms")),
        tries=tries if isinstance(tries, int) and not isinstance(tries, bool) else None,
    )


def _model_summary(model: ModelCall) -> str:
    if model.calls:
        names = ", ".join(name for name, _ in model.calls)
        return f"chose to call {names}"
    if model.text:
        return "answered"
    return "answered with nothing"


def _tool_summary(entry: JournalEntry, effect: EffectRecord | None) -> str:
    if effect is None:
        return _entry_summary(entry)
    state = effect.state
    if state is EffectState.AWAITING_APPROVAL:
        return "waits for a person to approve this call"
    if state is EffectState.IN_DOUBT:
        return "may or may not have happened: a person finds out and resolves it"
    if state is EffectState.RESOLVED:
        done = effect.resolution or {}
        return f"resolved as {done.get('action', '?')}; the next worker carries it out"
    if state is EffectState.INTENT:
        return "in flight: intent recorded, no completion yet"
    if state is EffectState.ABANDONED:
        return "never completed: the run ended first"
    if state is EffectState.FAILED:
        return error_line(effect.error)
    return "returned " + preview(effect.result, 100)


def _entry_summary(entry: JournalEntry) -> str:
    if entry.status is EntryStatus.FAILED:
        return error_line(entry.error)
    if entry.status is EntryStatus.WAITING:
        if entry.kind == "sleep":
            return "asleep"
        if entry.kind == "signal":
            given = entry.input.get("timeout") if isinstance(entry.input, dict) else None
            timeout = _number(given)
            return f"waits for signal {entry.name!r}" + (
                f" (timeout {took_text(timeout * 1000)})" if timeout else ""
            )
        if entry.kind == "child":
            return "waits for its child run"
        return "waiting"
    if entry.status is EntryStatus.INTENT:
        return "in flight: intent recorded, no completion yet"
    if entry.kind == "sleep":
        return "slept"
    if entry.kind == "signal":
        return "received " + preview(entry.output, 100)
    if entry.kind == "child":
        return "child run returned " + preview(entry.output, 100)
    if entry.kind == "budget" and isinstance(entry.output, dict):
        limits = entry.output
        given = [f"{limits['tokens']} tokens" if limits.get("tokens") else ""]
        given.append(f"${limits['cost_usd']}" if limits.get("cost_usd") else "")
        return f"budget raised to {' and '.join(g for g in given if g)} by {limits.get('by')}"
    return "returned " + preview(entry.output, 100)


# -- an effect's history ------------------------------------------------------------------
_EVENTS = {
    "intent": ("call authorized", "info"),
    "approval_requested": ("approval requested", "warn"),
    "approval": ("approved", "approved"),
    "rejection": ("rejected", "rejected"),
    "approved": ("call made after approval", "info"),
    "rejected": ("call not made: rejected", "rejected"),
    "denied": ("denied by the policy", "rejected"),
    "in_doubt": ("in doubt", "in_doubt"),
    "resolved": ("resolved", "approved"),
    "retry": ("made again (resolved: retry)", "info"),
    "done": ("marked done (resolved)", "info"),
    "abort": ("aborted (resolved)", "rejected"),
    "rerun": ("made again after a restart", "info"),
}


def history(effect: EffectRecord) -> list[Event]:
    """The tool call's history for people: approvals with who and when, rejections, doubts
    and resolutions. The engine's own notes of a decision are left out where the person's
    decision already says it."""
    events = []
    for raw in effect.history:
        if not isinstance(raw, dict):
            continue
        name = str(raw.get("event", "?"))
        label, css = _EVENTS.get(name, (name.replace("_", " "), ""))
        at = _number(raw.get("at"))
        who = raw.get("by") if isinstance(raw.get("by"), str) else None
        text = raw.get("note") or raw.get("reason")
        if name == "resolved" and raw.get("action"):
            label = f"resolved: {raw['action']}"
        if name == "intent" and isinstance(raw.get("attempt"), int) and raw["attempt"] > 1:
            label = f"call authorized (attempt {raw['attempt']})"
        if name in ("approved", "rejected") and not raw.get("timed_out"):
            # The person's "approval"/"rejection" event says who and why; this one is
            # the worker acting on it.
            who, text = None, None
        if name == "approval_requested" and raw.get("rule"):
            text = f"{raw.get('reason') or ''} ({raw['rule']})".strip()
        events.append(Event(label=label, css=css, at=at, who=who, text=str(text) if text else None))
    return events


def _last(effect: EffectRecord, name: str) -> dict[str, Any]:
    for event in reversed(effect.history):
        if isinstance(event, dict) and event.get("event") == name:
            return event
    return {}


def requested(effect: EffectRecord) -> dict[str, Any]:
    """The approval request of a call: why it waits for a person (``rule``, ``reason``)."""
    return _last(effect, "approval_requested")


def budget_suggestion(run: Run) -> dict[str, Any]:
    """What a budget stop spent, its limits, and new limits to suggest (twice as much)."""
    error = run.error or {}
    spent = error.get("spent") if isinstance(error.get("spent"), dict) else {}
    limits = error.get("budget") if isinstance(error.get("budget"), dict) else {}
    assert isinstance(spent, dict) and isinstance(limits, dict)
    tokens = _number(limits.get("tokens"))
    cost = _number(limits.get("cost_usd"))
    used_tokens = _number(spent.get("tokens")) or 0.0
    used_cost = _number(spent.get("cost_usd")) or 0.0
    return {
        "spent": spent,
        "limits": limits,
        "tokens": int(max(tokens or 0, used_tokens) * 2) or 10_000
        if tokens is not None or not cost
        else None,
        "cost_usd": round(max(cost, used_cost) * 2, 4) if cost else None,
    }


# -- Jinja filters ------------------------------------------------------------------------
def _clock(timestamp: float | None) -> str:
    """A time in UTC, short when it is today (the browser rewrites it in local time)."""
    if timestamp is None:
        return "-"
    moment = datetime.fromtimestamp(timestamp, UTC)
    if moment.date() == datetime.now(UTC).date():
        return moment.strftime("%H:%M:%S UTC")
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _span(seconds: float) -> str:
    seconds = abs(seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min"
    if seconds < 86400:
        hours, rest = divmod(seconds, 3600)
        return f"{hours:.0f} h {rest // 60:.0f} min" if rest >= 60 else f"{hours:.0f} h"
    return f"{seconds / 86400:.1f} d"


def _ago(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    left = time.time() - timestamp
    return "just now" if left < 2 else f"{_span(left)} ago"


def _until(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    left = timestamp - time.time()
    if abs(left) < 1:
        return "now"
    return f"in {_span(left)}" if left > 0 else f"{_span(left)} overdue"


def _tidy(title: str) -> str:
    """A roll-up title cut short (at 200 characters) ends at its last full sentence."""
    if len(title) >= 200 and ". " in title:
        return title[: title.rindex(". ") + 1]
    return title


def _path_id(run_id: str) -> str:
    """A run id as one path segment: even ``/`` and ``..`` in it stay inside it."""
    return quote(run_id, safe="")


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def _usd(value: float | None) -> str:
    if value is None:
        return "-"
    return f"${value:.4f}" if value < 1 else f"${value:,.2f}"


def install_filters(env: jinja2.Environment) -> None:
    env.filters.update(
        clock=_clock,
        iso=iso_time,
        ago=_ago,
        until=_until,
        pretty=_pretty,
        preview=preview,
        usd=_usd,
        error_line=error_line,
        tidy=_tidy,
        path_id=_path_id,
    )
    env.globals.update(statuses=STATUSES, attention_labels=ATTENTION_LABELS)
