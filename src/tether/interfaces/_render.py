"""Runs and journals as rich tables and panels, for people.

Every value that comes from storage is wrapped in ``Text`` (never formatted into markup), so
a step output such as ``"[red]"`` is shown as written instead of being read as a style.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from .._records import (
    Effect,
    EffectRecord,
    EffectState,
    EntryStatus,
    JournalEntry,
    Run,
    RunStatus,
)
from ._lineage import is_replaced
from ._views import duration_ms

__all__ = [
    "approve_commands",
    "effect_detail",
    "effects_table",
    "entry_detail",
    "journal_table",
    "local_time",
    "preview",
    "resolve_commands",
    "restarts_list",
    "run_panel",
    "run_report",
    "runs_table",
    "short_key",
    "status_text",
    "took_text",
]

STATUS_STYLES = {
    RunStatus.PENDING.value: "cyan",
    RunStatus.RUNNING.value: "bold blue",
    RunStatus.WAITING.value: "yellow",
    RunStatus.SUCCEEDED.value: "green",
    RunStatus.FAILED.value: "bold red",
    RunStatus.CANCELLED.value: "magenta",
    RunStatus.NEEDS_ATTENTION.value: "bold red reverse",
    EntryStatus.COMPLETED.value: "green",
    EntryStatus.WAITING.value: "yellow",
    EffectState.AWAITING_APPROVAL.value: "bold yellow",
    EffectState.INTENT.value: "blue",
    EffectState.IN_DOUBT.value: "bold red",
    EffectState.RESOLVED.value: "cyan",
}


def status_text(status: str) -> Text:
    return Text(str(status), style=STATUS_STYLES.get(str(status), ""))


def preview(value: Any, width: int = 60) -> str:
    """Compact one-line JSON, cut at ``width`` characters."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def local_time(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    moment = datetime.fromtimestamp(timestamp)
    if moment.date() == datetime.now().date():
        return moment.strftime("%H:%M:%S")
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _error_line(error: dict[str, Any] | None) -> str:
    if not error:
        return ""
    kind, message = error.get("type"), error.get("message")
    return f"{kind}: {message}" if kind else str(message)


def _wake(timestamp: float) -> str:
    left = timestamp - time.time()
    if left <= 0:
        return "due now"
    return f"wakes at {local_time(timestamp)} (in {left:.0f} s)" if left >= 1 else "wakes now"


def _run_detail(run: Run) -> str:
    if run.status in (RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.NEEDS_ATTENTION):
        return _error_line(run.error)
    if run.status is RunStatus.SUCCEEDED:
        return f"→ {preview(run.result, 40)}"
    if run.status is RunStatus.WAITING and run.wake_at is not None:
        return _wake(run.wake_at)
    if run.parent_run_id is not None:
        return f"child of {run.parent_run_id}"
    return ""


def runs_table(runs: list[Run]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, expand=True)
    table.add_column("RUN ID", overflow="fold", style="bold")
    table.add_column("WORKFLOW")
    table.add_column("STATUS", no_wrap=True)
    table.add_column("CREATED", no_wrap=True)
    table.add_column("UPDATED", no_wrap=True)
    table.add_column("DETAIL", no_wrap=True, overflow="ellipsis", ratio=1)
    for run in runs:
        table.add_row(
            Text(run.run_id),
            Text(run.workflow),
            status_text(run.status.value),
            local_time(run.created_at),
            local_time(run.updated_at),
            Text(_run_detail(run)),
        )
    return table


def run_panel(run: Run, *, forks: int = 0, restarts: Sequence[Mapping[str, Any]] = ()) -> Panel:
    """The run at a glance; with its lineage (the run it was forked from, its ``forks``)
    and its ``restarts`` (retries in place), when it has any."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="dim")
    grid.add_column()
    grid.add_row("workflow", Text(run.workflow))
    grid.add_row("status", status_text(run.status.value))
    if run.parent_run_id is not None:
        grid.add_row("parent", Text(f"{run.parent_run_id} (seq {run.parent_seq})"))
    if run.forked_from is not None:
        below = (run.fork_seq or 1) - 1
        shares = {0: "", 1: "; shares seq 1 with it by reference"}.get(
            below, f"; shares seqs 1 to {below} with it by reference"
        )
        grid.add_row(
            "lineage", Text(f"forked from {run.forked_from} at seq {run.fork_seq}{shares}")
        )
    if forks:
        noun = "fork" if forks == 1 else "forks"
        grid.add_row("forks", Text(f"{forks} {noun}; see 'tether tree {run.run_id}'"))
    if restarts:
        last = restarts[-1]
        who = f" by {last['by']}" if last.get("by") else ""
        grid.add_row(
            "restarts",
            Text(f"{len(restarts)} (the last from seq {last.get('from_seq')}{who}, at ")
            + Text(f"{local_time(last.get('at'))})"),
        )
    grid.add_row("arguments", Text(preview(run.args, 100)))
    grid.add_row("created", local_time(run.created_at))
    grid.add_row("updated", local_time(run.updated_at))
    grid.add_row("attempts", str(run.attempts))
    if run.wake_at is not None and not run.status.is_terminal:
        grid.add_row("wake", _wake(run.wake_at))
    if run.status is RunStatus.SUCCEEDED:
        grid.add_row("result", Text(preview(run.result, 200)))
    if run.error:
        grid.add_row("error", Text(_error_line(run.error), style="red"))
    return Panel(grid, title=Text(f"run {run.run_id}", style="bold"), title_align="left")


def entry_detail(entry: JournalEntry) -> str:
    """What a person wants to know about an entry: its output, its error, or its wait."""
    if entry.status is EntryStatus.FAILED:
        return _error_line(entry.error)
    if entry.status is EntryStatus.WAITING:
        if entry.kind == "sleep" and entry.output is not None:
            return f"until {local_time(float(entry.output))}"
        if entry.kind == "signal":
            timeout = (entry.input or {}).get("timeout")
            return f"waiting for signal {entry.name!r}" + (
                f" (timeout {timeout} s)" if timeout is not None else ""
            )
        if entry.kind == "child":
            return f"waiting for child run {(entry.input or {}).get('run_id')}"
        return "waiting"
    if entry.status is EntryStatus.INTENT:
        return "in flight (intent recorded, no completion yet)"
    if entry.kind == "sleep":
        return ""
    if entry.kind == "model" and isinstance(entry.output, dict):
        return model_detail(entry.output)
    if entry.kind == "budget" and isinstance(entry.output, dict):
        limits = entry.output
        given = [f"{limits['tokens']} tokens" if limits.get("tokens") else ""]
        given.append(f"${limits['cost_usd']}" if limits.get("cost_usd") else "")
        return f"raised to {' and '.join(g for g in given if g)} by {limits.get('by')}"
    return preview(entry.output)


def model_detail(output: dict[str, Any]) -> str:
    """A model call: what it answered (text, or the tools it called), tokens and cost."""
    message = output.get("message") or {}
    calls = [call.get("name", "?") for call in message.get("tool_calls") or ()]
    said = f"calls {', '.join(calls)}" if calls else preview(message.get("content"), 50)
    usage = output.get("usage") or {}
    tokens = usage.get("input_tokens", 0) + usage.get("output_tokens", 0)
    cost = output.get("cost_usd") or 0.0
    return f"{said} · {tokens} tokens" + (f" · ${cost:.4f}" if cost else "")


def short_key(key: str, width: int = 12) -> str:
    return key if len(key) <= width else key[: width - 1] + "…"


def _last_event(effect: EffectRecord, name: str) -> dict[str, Any]:
    for event in reversed(effect.history):
        if isinstance(event, dict) and event.get("event") == name:
            return event
    return {}


_DECIDED = {
    "approve": "approved",
    "reject": "rejected",
    "done": "resolved as done",
    "retry": "resolved as retry",
    "abort": "resolved as abort",
}


def effect_detail(effect: EffectRecord) -> str:
    """What a person wants to know about a tool call: its result, its error, or why it
    waits for one."""
    if effect.state is EffectState.IN_DOUBT:
        reason = _last_event(effect, "in_doubt").get("reason")
        return "may or may not have happened" + (f": {reason}" if reason else "")
    if effect.state is EffectState.AWAITING_APPROVAL:
        return f"awaiting approval of {preview(effect.args, 40)}"
    if effect.state is EffectState.RESOLVED:
        done = effect.resolution or {}
        action = str(done.get("action", ""))
        who = f" by {done['by']}" if done.get("by") else ""
        why = done.get("reason") or done.get("note")
        then = "; the next worker carries it out"
        return f"{_DECIDED.get(action, 'resolved')}{who}" + (f": {why}" if why else "") + then
    if effect.state is EffectState.ABANDONED:
        unknown = "; whether it happened is unknown" if effect.kind is Effect.IRREVERSIBLE else ""
        return f"never completed: the run ended first{unknown}"
    if effect.state is EffectState.INTENT:
        return "in flight (intent recorded, no completion yet)"
    if effect.state is EffectState.FAILED:
        return _error_line(effect.error)
    return preview(effect.result)


def took_text(ms: float | None) -> str:
    """A duration for people: milliseconds, seconds, minutes or hours."""
    if ms is None:
        return ""
    if ms < 1000:
        return f"{ms:.0f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    if ms < 3_600_000:
        return f"{ms / 60_000:.1f} min"
    return f"{ms / 3_600_000:.1f} h"


def effects_table(
    effects: list[EffectRecord],
    *,
    wide: bool = True,
) -> Table:
    """One line per tool call of the effect log. Not ``wide`` (a narrow terminal):
    without the key, try and decision columns, which ``--json`` and ``show`` have."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, expand=True)
    table.add_column("RUN", overflow="fold", style="bold")
    table.add_column("SEQ", justify="right", no_wrap=True)
    table.add_column("TOOL", no_wrap=True)
    table.add_column("KIND", no_wrap=True)
    table.add_column("STATE", no_wrap=True)
    if wide:
        table.add_column("KEY", no_wrap=True, style="dim")
        table.add_column("TRY", justify="right", no_wrap=True)
    table.add_column("TOOK", justify="right", no_wrap=True)
    if wide:
        table.add_column("DECISION", no_wrap=True)
    table.add_column("RESULT", no_wrap=True, overflow="ellipsis", ratio=1)
    for effect in effects:
        cells: list[RenderableType] = [
            Text(effect.run_id),
            str(effect.seq),
            Text(effect.tool),
            effect.kind.value,
            status_text(effect.state.value),
        ]
        if wide:
            cells += [short_key(effect.idempotency_key), str(effect.attempt)]
        cells.append(took_text(duration_ms(effect)))
        if wide:
            cells.append(effect.decision.value)
        cells.append(Text(effect_detail(effect)))
        table.add_row(*cells)
    return table


def resolve_commands(effect: EffectRecord) -> list[tuple[str, str]]:
    """The commands that resolve an in-doubt call, each with what it means."""
    base = f"tether resolve {shlex.quote(effect.run_id)} {effect.seq}"
    why = "--reason '<how you know>'"
    return [
        (f"{base} --done '<JSON result>' {why}", "it happened; JSON is what it returned"),
        (f"{base} --retry {why}", "it did not happen: make the call again, same key"),
        (f"{base} --abort {why}", "do not make it: it raises EffectAbortedError in the run"),
    ]


def approve_commands(effect: EffectRecord, only: bool) -> list[tuple[str, str]]:
    """The commands that approve or reject a call awaiting approval."""
    base = f"tether approve {shlex.quote(effect.run_id)}" + ("" if only else f" {effect.seq}")
    return [
        (base, "make the call"),
        (f"{base} --reject --note '<why>'", "do not make it: it raises ApprovalRejectedError"),
    ]


def _commands(rows: list[tuple[str, str]]) -> Text:
    """Commands to copy, each after a comment that says what it means (no borders)."""
    lines: list[Text] = []
    for command, meaning in rows:
        lines += [Text(f"  # {meaning}", style="dim"), Text(f"  {command}")]
    return Text("\n").join(lines)


def budget_commands(run: Run) -> list[tuple[str, str]]:
    """The commands that raise the budget a run stopped on."""
    error = run.error or {}
    spent, limits = error.get("spent") or {}, error.get("budget") or {}
    base = f"tether budget {shlex.quote(run.run_id)}"
    rows = []
    if limits.get("tokens") is not None or not limits.get("cost_usd"):
        more = max(int(limits.get("tokens") or 0), int(spent.get("tokens", 0))) * 2 or 10_000
        rows.append((f"{base} --tokens {more}", "allow more tokens (the new total)"))
    if limits.get("cost_usd"):
        more_usd = round(max(limits["cost_usd"], spent.get("cost_usd", 0.0)) * 2, 4)
        rows.append((f"{base} --cost-usd {more_usd}", "allow more spending (the new total)"))
    return rows


def _todo(run: Run, effects: list[EffectRecord]) -> RenderableType | None:
    """What a person must do for the run to go on: resolve, approve or raise a budget."""
    in_doubt = [e for e in effects if e.state is EffectState.IN_DOUBT]
    awaiting = [e for e in effects if e.state is EffectState.AWAITING_APPROVAL]
    error = run.error if run.status is RunStatus.NEEDS_ATTENTION else None
    over = isinstance(error, dict) and error.get("code") == "budget_exceeded"
    if not in_doubt and not awaiting and not over:
        return None
    parts: list[RenderableType] = []
    if over:
        spent = (error or {}).get("spent") or {}
        parts.append(
            Text.assemble(
                ("the agent", "bold"),
                " ",
                ("reached its budget", "bold red"),
                f" after {spent.get('turns', '?')} model calls ({spent.get('tokens', '?')} "
                f"tokens, ${spent.get('cost_usd', 0.0):.4f}): raise it to resume",
            )
        )
        parts.append(_commands(budget_commands(run)))
    for effect in in_doubt:
        parts.append(
            Text.assemble(
                (f"seq {effect.seq} {effect.tool}", "bold"),
                " ",
                ("is in doubt", "bold red"),
                f" (idempotency key {effect.idempotency_key}): find out whether it happened, "
                "then run one of",
            )
        )
        parts.append(_commands(resolve_commands(effect)))
    for effect in awaiting:
        parts.append(
            Text.assemble(
                (f"seq {effect.seq} {effect.tool}", "bold"),
                " ",
                ("awaits approval", "bold yellow"),
                f" of {preview(effect.args, 60)}: run one of",
            )
        )
        parts.append(_commands(approve_commands(effect, only=len(awaiting) == 1)))
    return Group(Text("to do", style="bold underline"), *parts)


def _row_source(run: Run | None, entry: JournalEntry) -> Text:
    if run is None:
        return Text("")
    if entry.run_id != run.run_id:
        return Text(f"shared: {entry.run_id}", style="dim")
    if is_replaced(run, entry):
        return Text("replaced", style="bold yellow")
    return Text("")


def journal_table(
    entries: list[JournalEntry],
    effects: Mapping[int, EffectRecord] | None = None,
    run: Run | None = None,
) -> Table:
    """One line per entry; the tries column only when some step was retried. A tool
    entry shows its effect kind and its state in the effect log (``effects`` by seq).
    For a fork (``run``), a column says which rows it shares with the run it was forked
    from (by reference) and which one it replaced."""
    retried = any(entry.attempts > 1 for entry in entries)
    lineage = run is not None and run.forked_from is not None
    table = Table(
        box=box.SIMPLE_HEAD, pad_edge=False, title="journal", title_justify="left", expand=True
    )
    table.add_column("SEQ", justify="right", no_wrap=True)
    table.add_column("KIND", no_wrap=True)
    table.add_column("NAME", style="bold", no_wrap=True)
    table.add_column("STATUS", no_wrap=True)
    table.add_column("STARTED", no_wrap=True)
    table.add_column("TOOK", justify="right", no_wrap=True)
    if retried:
        table.add_column("TRIES", justify="right", no_wrap=True)
    if lineage:
        table.add_column("ROW", no_wrap=True)
    # The flexible column: the others keep their width, this one gets the rest, cut short.
    table.add_column("OUTPUT", no_wrap=True, overflow="ellipsis", ratio=1)
    for entry in entries:
        took = duration_ms(entry)
        effect = (effects or {}).get(entry.seq) if entry.kind == "tool" else None
        kind = entry.kind if effect is None else f"tool ({effect.kind.value})"
        status = entry.status.value if effect is None else effect.state.value
        cells: list[RenderableType] = [
            str(entry.seq),
            kind,
            Text(entry.name),
            status_text(status),
            local_time(entry.started_at),
            "" if took is None else f"{took:.0f} ms",
        ]
        if retried:
            cells.append(str(entry.attempts))
        if lineage:
            cells.append(_row_source(run, entry))
        detail = entry_detail(entry) if effect is None else effect_detail(effect)
        cells.append(Text(detail))
        table.add_row(*cells)
    return table


def restarts_list(restarts: Sequence[Mapping[str, Any]]) -> RenderableType:
    """Each retry in place: from which seq, when, by whom and why, what the run was, and
    the entries it set aside."""
    lines: list[Text] = [Text("restarts", style="bold underline")]
    for restart in restarts:
        who = f" by {restart['by']}" if restart.get("by") else ""
        why = f": {restart['reason']}" if restart.get("reason") else ""
        was = f" (was {restart['status']}" if restart.get("status") else ""
        if was and restart.get("error"):
            was += f": {_error_line(restart['error'])}"
        was += ")" if was else ""
        lines.append(
            Text(f"  #{restart.get('restart')} from seq {restart.get('from_seq')} at ")
            + Text(local_time(restart.get("at")))
            + Text(f"{who}{why}{was}")
        )
        aside = restart.get("discarded") or []
        if aside:
            shown = ", ".join(
                f"{e.get('seq')} {e.get('kind')} {e.get('name')} ({e.get('status')})"
                for e in aside[:8]
            )
            more = f", and {len(aside) - 8} more" if len(aside) > 8 else ""
            lines.append(Text(f"    set aside: {shown}{more}", style="dim"))
    return Text("\n").join(lines)


def run_report(
    run: Run,
    entries: list[JournalEntry],
    effects: list[EffectRecord] | None = None,
    *,
    forks: int = 0,
    restarts: Sequence[Mapping[str, Any]] = (),
) -> RenderableType:
    """The run's panel, its journal, its restarts, and what a person must do for it to go
    on. ``effects`` may hold those of the run it was forked from: each entry shows the
    effect of its own row (its owner's, at its seq)."""
    panel = run_panel(run, forks=forks, restarts=restarts)
    if not entries:
        return Group(panel, Text("no journal entries yet", style="dim"))
    effects = effects or []
    rows = {(entry.run_id, entry.seq) for entry in entries}
    by_seq = {e.seq: e for e in effects if (e.run_id, e.seq) in rows}
    parts: list[RenderableType] = [panel, journal_table(entries, by_seq, run)]
    if restarts:
        parts.append(restarts_list(restarts))
    if not run.status.is_terminal:
        todo = _todo(run, [e for e in effects if e.run_id == run.run_id])
        if todo is not None:
            parts.append(todo)
    return Group(*parts)
