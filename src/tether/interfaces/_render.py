"""Runs and journals as rich tables and panels, for people.

Every value that comes from storage is wrapped in ``Text`` (never formatted into markup), so
a step output such as ``"[red]"`` is shown as written instead of being read as a style.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from .._records import EntryStatus, JournalEntry, Run, RunStatus
from ._views import duration_ms

__all__ = [
    "entry_detail",
    "journal_table",
    "local_time",
    "preview",
    "run_panel",
    "run_report",
    "runs_table",
    "status_text",
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


def run_panel(run: Run) -> Panel:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="dim")
    grid.add_column()
    grid.add_row("workflow", Text(run.workflow))
    grid.add_row("status", status_text(run.status.value))
    if run.parent_run_id is not None:
        grid.add_row("parent", Text(f"{run.parent_run_id} (seq {run.parent_seq})"))
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
    if entry.kind == "sleep":
        return ""
    return preview(entry.output)


def journal_table(entries: list[JournalEntry]) -> Table:
    """One line per entry; the tries column only when some step was retried."""
    retried = any(entry.attempts > 1 for entry in entries)
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
    # The flexible column: the others keep their width, this one gets the rest, cut short.
    table.add_column("OUTPUT", no_wrap=True, overflow="ellipsis", ratio=1)
    for entry in entries:
        took = duration_ms(entry)
        cells: list[RenderableType] = [
            str(entry.seq),
            entry.kind,
            Text(entry.name),
            status_text(entry.status.value),
            local_time(entry.started_at),
            "" if took is None else f"{took:.0f} ms",
        ]
        if retried:
            cells.append(str(entry.attempts))
        cells.append(Text(entry_detail(entry)))
        table.add_row(*cells)
    return table


def run_report(run: Run, entries: list[JournalEntry]) -> RenderableType:
    if not entries:
        return Group(run_panel(run), Text("no journal entries yet", style="dim"))
    return Group(run_panel(run), journal_table(entries))
