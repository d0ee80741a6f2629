"""Fork recovery and time travel on the command line: ``tether fork``, ``tether tree``,
``tether diff`` and ``tether retry``. Registered on the ``tether`` command line by ``cli``.

A fork is a new run that shares its origin's journal below a seq by reference and runs on
from there (``app.fork``); a retry restarts a failed run in place from a seq
(``app.retry``). Both only write the new state: a worker runs the result.
"""

from __future__ import annotations

import json
import shlex
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from rich.tree import Tree as RichTree

from .._records import Run, RunStatus
from ..engine import App
from ._lineage import Diff, Tree, diff_runs, diff_view, entry_summary, fork_tree, tree_view
from ._render import preview, status_text
from ._views import run_summary
from .cli import USAGE, CommandError, _print_json, _query, cli, out

__all__: list[str] = []


def _parse_at(text: str | None, option: str, run_id: str) -> int:
    if text is None:
        raise CommandError(
            f"say which seq: {option} SEQ (the seqs are in 'tether show {shlex.quote(run_id)}')",
            USAGE,
        )
    try:
        seq = int(text)
    except ValueError:
        seq = 0
    if seq < 1:
        raise CommandError(
            f"{option} takes a seq, a whole number from 1 (see 'tether show "
            f"{shlex.quote(run_id)}'), not {text!r}",
            USAGE,
        )
    return seq


def _parse_replacement(text: str) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CommandError(
            f"--replace takes JSON, and {text!r} is not JSON ({exc.msg} at column "
            f"{exc.colno}); quote text as a JSON string, e.g. --replace "
            "'\"the new answer\"', or give an object, e.g. --replace '{\"total\": 655}'",
            USAGE,
        ) from None
    if value is None:
        raise CommandError(
            "--replace null gives no output to record; leave --replace out to fork without "
            "replacing the entry",
            USAGE,
        )
    return value


def _outcome(run: Run) -> str:
    if run.status is RunStatus.SUCCEEDED:
        return f"→ {preview(run.result, 60)}"
    if run.error:
        return f"{run.error.get('type')}: {preview(run.error.get('message'), 60)}"
    return ""


# -- fork ---------------------------------------------------------------------------------
@cli.command()
def fork(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="The run to fork.")],
    at: Annotated[
        str | None,
        typer.Option(
            "--at",
            metavar="SEQ",
            help="Where the fork starts: it shares the entries below SEQ.",
            show_default=False,
        ),
    ] = None,
    replace: Annotated[
        str | None,
        typer.Option(
            "--replace",
            metavar="JSON",
            help="Record this output at SEQ (e.g. a model answer's text as a JSON string) "
            "and go on after it.",
        ),
    ] = None,
    new_id: Annotated[
        str | None,
        typer.Option("--run-id", metavar="ID", help="The fork's run id (default: made up)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the new run as JSON.")] = False,
) -> None:
    """Fork a run at SEQ: a new run that shares its entries below SEQ and runs on from SEQ.

    The entries below SEQ are shared by reference: nothing is copied, nothing in them runs
    again. A worker runs the fork on from SEQ. With --replace JSON, the entry at SEQ is
    recorded with that output instead (a different model answer, say) and the fork goes on
    after it. Calls after the fork point are new calls, with new idempotency keys, decided
    by the policy anew. Forking below an entry that has not finished is refused.
    """
    seq = _parse_at(at, "--at", run_id)
    value = None if replace is None else _parse_replacement(replace)

    async def act(app: App) -> Run:
        handle = await app.fork(run_id, seq, value, run_id=new_id)
        return await app.get_run(handle.run_id)

    run = _query(ctx, act)
    if as_json:
        _print_json(run_summary(run))
        return
    origin, new = shlex.quote(run_id), shlex.quote(run.run_id)
    shares = {1: "shares no entry", 2: "shares seq 1 by reference"}.get(
        seq, f"shares seqs 1 to {seq - 1} by reference"
    )
    then = f"records your replacement at seq {seq}" if value is not None else ""
    out.print(
        f"forked run {run_id!r} at seq {seq} as {run.run_id!r} ({run.status.value}): it "
        f"{shares}{' and ' + then if then else ''}; a worker runs it on from there",
        markup=False,
        soft_wrap=True,
    )
    commands = [
        (f"tether show {new}", "watch it"),
        (f"tether diff {origin} {new}", f"what differs from {run_id}"),
        (f"tether tree {new}", "its place among the branches"),
    ]
    width = max(len(command) for command, _ in commands)
    for command, meaning in commands:
        out.print(f"  {command.ljust(width)}  # {meaning}", markup=False, style="dim")


# -- tree ---------------------------------------------------------------------------------
def _tree_label(run: Run, current: bool) -> Text:
    label = Text(run.run_id, style="bold")
    if run.forked_from is not None:
        label.append(f"  at seq {run.fork_seq}", style="cyan")
    label.append("  ")
    label.append_text(status_text(run.status.value))
    detail = _outcome(run)
    if detail:
        label.append(f"  {detail}")
    if current:
        label.append("  ◀ this run", style="bold yellow")
    return label


def tree_render(tree: Tree) -> RichTree:
    nodes = tree.walk()
    _, root = next(nodes)
    shown = RichTree(_tree_label(root.run, root.run.run_id == tree.run_id), guide_style="dim")
    parents: list[RichTree] = [shown]
    for depth, node in nodes:
        del parents[depth:]
        branch = parents[-1].add(_tree_label(node.run, node.run.run_id == tree.run_id))
        parents.append(branch)
    return shown


@cli.command()
def tree(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="A run of the tree.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the tree as JSON.")] = False,
) -> None:
    """The branch tree of a run: its forks, their forks, and the run they all come from.

    Each run with its fork point, status and result; the run asked about is marked.
    """

    async def query(app: App) -> Tree:
        return await fork_tree(app, run_id)

    found = _query(ctx, query)
    if as_json:
        _print_json(tree_view(found))
        return
    out.print(tree_render(found))
    count = len(found)
    if found.truncated:
        out.print(f"only the first {count} runs shown", style="dim")
    elif count == 1:
        out.print(
            f"run {run_id!r} has no forks; make one with 'tether fork {shlex.quote(run_id)} "
            "--at SEQ'",
            style="dim",
            markup=False,
        )
    else:
        out.print(f"{count} runs; compare two with 'tether diff RUN_A RUN_B'", style="dim")


# -- diff ---------------------------------------------------------------------------------
def diff_render(diff: Diff) -> RenderableType:
    """The first divergent entry, then every entry that differs, side by side, then how
    each run ended."""
    a, b = diff.a.run_id, diff.b.run_id
    parts: list[RenderableType] = []
    shared = f", {diff.shared} of them shared by reference" if diff.shared else ""
    if diff.first_divergent is None:
        parts.append(
            Text(f"the journals of {a} and {b} are the same: {diff.same_before} entries{shared}")
        )
    else:
        after = len(diff.changes) - 1
        parts.append(
            Text.assemble(
                (f"first divergent entry: seq {diff.first_divergent}", "bold"),
                f" (the {diff.same_before} entries before it are the same{shared}); ",
                f"after it {after} more {'differs' if after == 1 else 'differ'}"
                if after
                else "nothing differs after it",
            )
        )
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, expand=True)
        table.add_column("SEQ", justify="right", no_wrap=True)
        table.add_column("WHAT", no_wrap=True)
        table.add_column("DIFFERS")
        table.add_column(a, ratio=1, overflow="fold")
        table.add_column(b, ratio=1, overflow="fold")
        for change in diff.changes:
            one = "-" if change.a is None else entry_summary(change.a, change.a_effect)
            two = "-" if change.b is None else entry_summary(change.b, change.b_effect)
            what = change.what
            if change.a is not None and change.b is not None and change.a.kind == change.b.kind:
                what = f"{change.a.kind} {change.a.name}"
            differs = ", ".join(change.differs)
            if change.differs == ("missing",):
                differs = f"only in {a if change.a is not None else b}"
            table.add_row(
                str(change.seq),
                Text(what),
                Text(differs, style="yellow"),
                Text(one),
                Text(two),
                style="bold" if change.seq == diff.first_divergent else "",
            )
        parts.append(table)
    ends = Table.grid(padding=(0, 2))
    ends.add_column(style="bold")
    ends.add_column()
    for run in (diff.a, diff.b):
        ends.add_row(Text(run.run_id), status_text(run.status.value) + Text(f"  {_outcome(run)}"))
    if diff.outcome:
        parts.append(Text(f"they end differently ({', '.join(diff.outcome)}):"))
    else:
        parts.append(Text("they end the same:"))
    parts.append(ends)
    return Group(*parts)


@cli.command()
def diff(
    ctx: typer.Context,
    run_a: Annotated[str, typer.Argument(metavar="RUN_A", help="A run.")],
    run_b: Annotated[str, typer.Argument(metavar="RUN_B", help="Another run.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the diff as JSON.")] = False,
) -> None:
    """Compare two runs: the first entry where their journals diverge and, side by side,
    what differs after it.

    What differs: model answers (text, tool calls), tool calls and their effects (tool,
    arguments, result, state), waits and steps, and how each run ended. Entries shared by
    reference (a fork's rows of its origin) are the same by definition.
    """

    async def query(app: App) -> Diff:
        return await diff_runs(app, run_a, run_b)

    found = _query(ctx, query)
    if as_json:
        _print_json(diff_view(found))
    else:
        out.print(diff_render(found))


# -- retry --------------------------------------------------------------------------------
@cli.command()
def retry(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="A failed or stopped run.")],
    from_seq: Annotated[
        str | None,
        typer.Option(
            "--from",
            metavar="SEQ",
            help="Run again from this seq; the entries before it are kept.",
            show_default=False,
        ),
    ] = None,
    reason: Annotated[
        str | None,
        typer.Option("--reason", "-r", metavar="TEXT", help="Why (e.g. the fix); recorded."),
    ] = None,
    by: Annotated[
        str | None, typer.Option("--by", metavar="NAME", help="Who retries (default: user@host).")
    ] = None,
) -> None:
    """Retry a failed or needs_attention run in place from SEQ, after a code fix.

    The entries before SEQ are kept and replayed, those from SEQ on are set aside (kept for
    the audit) and run again on the next worker. The restart is recorded, with who and why.

    Refused when that would make an irreversible call again (fork the run instead), drop a
    child run, or drop entries a fork shares.
    """
    seq = _parse_at(from_seq, "--from", run_id)
    if reason is not None and not reason.strip():
        raise CommandError("--reason is empty; leave it out or say why", USAGE)

    async def act(app: App) -> tuple[Run, list[dict[str, Any]]]:
        run = await app.retry(run_id, seq, by=by, reason=reason)
        return run, await app.list_restarts(run_id)

    run, restarts = _query(ctx, act)
    last = restarts[-1] if restarts else {}
    aside = last.get("discarded") or []
    number = f" (restart #{last['restart']})" if last.get("restart") is not None else ""
    noun = "entry" if len(aside) == 1 else "entries"
    out.print(
        f"retrying run {run_id!r} from seq {seq}{number}: {len(aside)} {noun} set aside, the "
        f"run is {run.status.value} and resumes on the next worker; watch it with "
        f"'tether show {shlex.quote(run_id)}'",
        markup=False,
        soft_wrap=True,
    )
