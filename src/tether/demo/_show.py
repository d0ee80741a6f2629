"""What the demo prints: one line per journal entry, the live status, the proof table.

Values from storage and from the ledger are always wrapped in ``Text`` (never formatted
into markup), as in ``interfaces._render``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from .._records import Effect, EffectRecord, EffectState, EntryStatus, JournalEntry
from ..interfaces._render import preview, short_key, took_text
from ..interfaces._views import duration_ms
from ._world import TICKETS

__all__ = [
    "entry_line",
    "header",
    "ledger_lines",
    "model_calls",
    "proof_table",
    "status_line",
]

KIND_STYLES = {
    "model": "magenta",
    "read": "cyan",
    "idempotent": "yellow",
    "irreversible": "bold red",
}


def header(url: str, run_id: str, ledger: str, tools: dict[str, str]) -> Panel:
    """What is about to happen. ``tools``: each tool's effect kind, by name."""
    queue = ", ".join(f"{t['ticket_id']} {t['tags'][0]}" for t in TICKETS)
    kinds = Text()
    for kind in ("read", "idempotent", "irreversible"):
        names = [name for name, k in tools.items() if k == kind]
        if names:
            kinds.append(", ".join(names) + " ")
            kinds.append(f"({kind})", style=KIND_STYLES[kind])
            kinds.append("\n" if kind != "irreversible" else "")
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="dim")
    grid.add_column()
    grid.add_row("database", Text(url))
    grid.add_row("run", Text(f"{run_id}, workflow support_shift"))
    grid.add_row("agent", Text("Agent + ScriptedModel: no network, no keys"))
    grid.add_row("tools", kinds)
    grid.add_row("queue", Text(f"{len(TICKETS)} open tickets: {queue}"))
    grid.add_row("ledger", Text(f"{ledger}: what the outside world saw"))
    title = Text("An operations agent survives a SIGKILL of the process running it.\n")
    title.stylize("bold")
    return Panel(Group(title, grid), title="Tether demo", title_align="left")


def entry_line(
    entry: JournalEntry,
    effect: EffectRecord | None,
    turn: int | None,
    worker: str,
    *,
    narrow: bool = False,
) -> Text:
    """One finished journal entry: seq, kind (an effect kind for tools), name, which
    worker, how long, and what came of it. ``narrow`` (an 80-column terminal): without
    the worker and the time, which leaves room for what came of it."""
    ok = entry.status is EntryStatus.COMPLETED
    kind = effect.kind.value if effect is not None else entry.kind
    line = Text("  ")
    line.append("✓ " if ok else "✗ ", style="green" if ok else "red")
    line.append(f"{entry.seq:>2} ")
    line.append(f"{kind:<13}", style=KIND_STYLES.get(kind, ""))
    line.append(f"{entry.name:<18}", style="bold")
    if not narrow:
        line.append(f"{worker} ", style="cyan")
        line.append(f"{took_text(duration_ms(entry)):>6}  ", style="dim")
    if not ok:
        line.append(preview((entry.error or {}).get("message", ""), 50), style="red")
    elif entry.kind == "model":
        line.append_text(_model_detail(entry.output, turn))
    elif effect is not None:
        line.append(_tool_detail(effect))
    return line


def _model_detail(output: Any, turn: int | None) -> Text:
    """Turn, tokens, and what the model asked for (or answered)."""
    text = Text(f"turn {turn}, " if turn else "")
    output = output if isinstance(output, dict) else {}
    usage = output.get("usage") or {}
    if usage:
        tokens = int(usage.get("input_tokens", 0)) + int(usage.get("output_tokens", 0))
        text.append(f"{tokens:,} tokens ")
    message = output.get("message") or {}
    calls = Counter(str(call.get("name")) for call in message.get("tool_calls") or ())
    if calls:
        asked = ", ".join(f"{name} x{n}" if n > 1 else name for name, n in calls.items())
        text.append(f"→ {asked}", style="bold")
    elif message.get("content"):
        text.append(f"→ answers: {preview(message['content'], 40)}", style="bold")
    return text


def _tool_detail(effect: EffectRecord) -> str:
    result = effect.result
    if effect.tool == "list_tickets" and isinstance(result, list):
        return f"{len(result)} open tickets"
    if effect.tool == "lookup_customer" and isinstance(result, dict):
        return f"{result.get('name')}, {result.get('plan')}"
    if effect.tool == "issue_refund" and isinstance(result, dict):
        return f"{result.get('refund_id')}: ${result.get('amount_cents', 0) / 100:.2f} back"
    if effect.tool == "track_shipment" and isinstance(result, dict):
        return f"{result.get('status')}, due {result.get('estimated_delivery')}"
    if effect.tool == "create_reset_link" and isinstance(result, dict):
        return f"link valid {result.get('expires_in')}"
    if effect.tool == "send_email":
        return f"{result} to {_argument(effect, 'to')}"
    return preview(result, 44)


def _argument(effect: EffectRecord, name: str) -> Any:
    """One argument of a call, as the effect log stored it (by parameter name)."""
    return effect.args.get(name) if isinstance(effect.args, dict) else None


def status_line(worker: str, pid: int, entries: int, doing: list[str]) -> Text:
    """The live status under the lines: who runs the run and what is in flight."""
    line = Text(f"worker {worker} (pid {pid}): ")
    line.append(", ".join(doing) or "between calls", style="bold")
    line.append(f"  ({entries} journal entries)", style="dim")
    return line


def proof_table(
    effects: list[EffectRecord], ledger: list[dict[str, Any]], names: dict[int, str]
) -> Table:
    """Each tool call twice: as the effect log recorded it, and as the other side saw it
    (lines of the ledger with its key, or for reads its arguments)."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, expand=True, collapse_padding=True)
    table.add_column("SEQ", justify="right", no_wrap=True)
    for column in ("TOOL", "KIND", "KEY", "LEDGER", "EFFECT LOG", "BY"):
        table.add_column(column, no_wrap=True)
    # The flexible column: the others keep their width, this one gets the rest, cut short.
    table.add_column("FOR", no_wrap=True, overflow="ellipsis", ratio=1)
    for effect in effects:
        lines = ledger_lines(effect, ledger)
        once = effect.state is EffectState.COMPLETED and effect.attempt == 1
        table.add_row(
            str(effect.seq),
            Text(effect.tool, style="bold"),
            Text(effect.kind.value, style=KIND_STYLES.get(effect.kind.value, "")),
            Text("-" if effect.kind is Effect.READ else short_key(effect.idempotency_key, 9)),
            Text(_times(len(lines), "line"), style="green" if len(lines) == 1 else "bold red"),
            Text(
                f"{effect.state.value}, {_times(effect.attempt, 'call')}",
                style="green" if once else "bold red",
            ),
            Text(" ".join(names.get(int(line["pid"]), str(line["pid"])) for line in lines)),
            Text(_target(effect)),
        )
    return table


def _times(n: int, what: str) -> str:
    return f"{n} {what}" if n == 1 else f"{n} {what}s"


def ledger_lines(effect: EffectRecord, ledger: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ledger's lines for one call: by key for writes, by arguments for reads."""
    tools = [line for line in ledger if line.get("call") == "tool"]
    mine = [line for line in tools if line.get("tool") == effect.tool]
    if effect.kind is not Effect.READ:
        return [line for line in mine if line.get("key") == effect.idempotency_key]
    wanted = {name: _argument(effect, name) for name in ("email", "tracking_number", "queue")}
    return [
        line
        for line in mine
        if all(line["args"].get(k) == v for k, v in wanted.items() if k in line["args"])
    ]


def _target(effect: EffectRecord) -> str:
    for name in ("to", "email", "charge_id", "customer_id", "tracking_number", "queue"):
        value = _argument(effect, name)
        if value is not None:
            return str(value)
    return ""


def model_calls(
    asked: dict[str, list[int]], replayed: int, recorded: int, cut: int | None
) -> RenderableType:
    """Who asked the model for which turn, against what the journal holds."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="dim")
    grid.add_column()
    for worker, turns in asked.items():
        span = ", ".join(str(t) for t in turns) or "none"
        note = f"; turn {cut} cut off by the kill" if worker == "A" and cut in turns else ""
        grid.add_row(
            f"worker {worker}", Text(f"asked the model {len(turns)} times (turns {span}{note})")
        )
    made = sum(len(turns) for turns in asked.values())
    grid.add_row("replayed", Text(f"{replayed} answers from the journal; the model was not asked"))
    grid.add_row("in total", Text(f"{made} model calls made for {recorded} answers recorded"))
    return grid
