"""The ``tether`` command line: run a worker, list and inspect runs, signal and cancel them,
read the effect log, resolve in-doubt tool calls and approve the ones that wait for a person.

Tables for people, ``--json`` for programs and agents. Every command talks to the database
through an :class:`~tether.App` and its public query and command API, never through SQL.

The database is ``--database-url``/``-d``, else ``TETHER_DATABASE_URL``, else
``sqlite:///tether.db``. Commands that read or act on runs never create a database: a wrong
URL is reported instead of silently answering from a new, empty file.

Expected failures (no database, no such run, malformed JSON, an unimportable ``MODULE:APP``,
any :class:`~tether.TetherError`) print one line, ``error: ...``, to stderr and exit with
1, or 2 for a usage error. Tracebacks are kept for bugs.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import signal
import sys
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from operator import attrgetter
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from .._errors import RunNotFoundError, TetherError
from .._records import EffectRecord, EffectState, JournalEntry, Run, RunStatus
from ..engine import App
from ..storage import redact_url
from ._render import effects_table, preview, run_report, runs_table
from ._views import EVENT_EFFECT_KEYS, effect_view, iso_time, run_detail, run_summary
from .http._cli import serve as serve_command

__all__ = ["CommandError", "cli", "main"]

T = TypeVar("T")

# Keep in sync with DEFAULT_DATABASE_URL in engine/_app.py.
DEFAULT_DATABASE_URL = "sqlite:///tether.db"
USAGE = 2  # exit code of a usage error, as click uses
WIDE = 120  # columns from which tables show every column
EVERY = 1_000_000_000  # a limit for list_effects that means all of a run's effects

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

cli = typer.Typer(
    name="tether",
    help="Tether: durable execution for AI agents. Inspect and act on runs, run workers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="markdown",
)


class CommandError(Exception):
    """An expected failure of a command: shown as one line, never as a traceback."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


@dataclass(frozen=True, slots=True)
class Settings:
    explicit_url: str | None  # --database-url, when given

    @property
    def database_url(self) -> str:
        return self.explicit_url or os.environ.get("TETHER_DATABASE_URL") or DEFAULT_DATABASE_URL


@cli.callback()
def _root(
    ctx: typer.Context,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            "-d",
            metavar="URL",
            help="Database URL (default: $TETHER_DATABASE_URL, else sqlite:///tether.db).",
        ),
    ] = None,
) -> None:
    ctx.obj = Settings(database_url)


def _settings(ctx: typer.Context) -> Settings:
    settings = ctx.find_object(Settings)
    return settings if settings is not None else Settings(None)


def _query(ctx: typer.Context, fn: Callable[[App], Awaitable[T]]) -> T:
    """Open the existing database (never create one), call ``fn(app)``, close."""
    url = _settings(ctx).database_url

    async def run() -> T:
        app = App(url)
        await app.open(worker=False, create=False)
        try:
            return await fn(app)
        finally:
            await app.close()

    return asyncio.run(run())


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _parse_status(status: str | None) -> RunStatus | None:
    if status is None:
        return None
    try:
        return RunStatus(status.strip().lower())
    except ValueError:
        known = ", ".join(s.value for s in RunStatus)
        raise CommandError(f"unknown status {status!r}; use one of: {known}", USAGE) from None


# -- runs, show ---------------------------------------------------------------------------
@cli.command()
def runs(
    ctx: typer.Context,
    status: Annotated[
        str | None,
        typer.Option("--status", "-s", metavar="STATUS", help="Only runs with this status."),
    ] = None,
    workflow: Annotated[
        str | None, typer.Option("--workflow", "-w", help="Only runs of this workflow.")
    ] = None,
    tag: Annotated[str | None, typer.Option("--tag", "-t", help="Only runs with this tag.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="At most this many runs.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
) -> None:
    """List runs, newest first."""
    wanted = _parse_status(status)
    if limit < 1:
        raise CommandError(f"--limit must be at least 1, not {limit}", USAGE)

    async def query(app: App) -> list[Run]:
        return await app.list_runs(status=wanted, workflow=workflow, tag=tag, limit=limit)

    found = _query(ctx, query)
    if as_json:
        _print_json([run_summary(run) for run in found])
    elif not found:
        filters = [f"status {wanted.value}"] if wanted else []
        filters += [f"workflow {workflow!r}"] if workflow else []
        filters += [f"tag {tag!r}"] if tag else []
        out.print("no runs" + (f" with {' and '.join(filters)}" if filters else ""), markup=False)
    else:
        out.print(runs_table(found))
        if len(found) == limit:
            out.print(f"the newest {limit} shown; see more with --limit", style="dim")


@cli.command()
def show(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="The run to show.")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the run and its journal as JSON.")
    ] = False,
) -> None:
    """Show a run and its journal: every step, tool call, wait and child run, in order.

    For a fork, the run it was forked from and the entries it shares with it; a run's
    restarts (retries in place) with the entries they set aside.
    """

    async def query(app: App) -> tuple[Run, list[JournalEntry], list[EffectRecord], Any, int]:
        run = await app.get_run(run_id)
        entries = await app.get_journal(run_id)
        effects = await app.list_effects(run_id, limit=EVERY)
        # A fork's shared rows are its origins': so are their tool calls' effects.
        for owner in sorted({e.run_id for e in entries if e.kind == "tool"} - {run_id}):
            rows = {e.seq for e in entries if e.run_id == owner}
            theirs = await app.list_effects(owner, limit=EVERY)
            effects += [effect for effect in theirs if effect.seq in rows]
        restarts = await app.list_restarts(run_id)
        forks = len(await app.list_runs(forked_from=run_id, limit=EVERY))
        return run, entries, effects, restarts, forks

    run, entries, effects, restarts, forks = _query(ctx, query)
    if as_json:
        own = [effect for effect in effects if effect.run_id == run_id]
        detail = run_detail(run, entries, own)
        shared = {effect.seq: effect_view(effect) for effect in effects if effect.run_id != run_id}
        for entry, event in zip(entries, detail["events"], strict=True):
            event["run_id"] = entry.run_id  # whose row: the run's own, or an origin's
            if entry.seq in shared:
                event["effect"] = {k: shared[entry.seq][k] for k in EVENT_EFFECT_KEYS}
        detail["restarts"] = [restart | {"at": iso_time(restart.get("at"))} for restart in restarts]
        _print_json(detail)
    else:
        out.print(run_report(run, entries, effects, forks=forks, restarts=restarts))


# -- signal, cancel -----------------------------------------------------------------------
def _parse_json(text: str | None, what: str) -> Any:
    """``text`` as JSON (``None`` for ``None``); ``what`` names it in the error."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CommandError(
            f"malformed JSON value {text!r} for {what} ({exc.msg} at column "
            f"{exc.colno}); pass JSON, e.g. 'true', '42', '\"text\"' or '{{\"ok\": true}}'",
            USAGE,
        ) from None


@cli.command("signal")
def signal_command(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="The run to signal.")],
    name: Annotated[str, typer.Argument(metavar="NAME", help="The signal name the run waits on.")],
    value: Annotated[
        str | None, typer.Argument(metavar="JSON", help="A JSON value (default: null).")
    ] = None,
) -> None:
    """Send a signal to a run; a run waiting on that name wakes up with the value."""
    parsed = _parse_json(value, f"signal {name!r}")

    async def send(app: App) -> Run:
        run = await app.get_run(run_id)
        if run.status.is_terminal:
            raise CommandError(f"run {run_id!r} already {run.status.value}; it takes no signals")
        await app.signal(run_id, name, parsed)
        return run

    run = _query(ctx, send)
    out.print(f"sent signal {name!r} to run {run_id!r} ({run.status.value})", markup=False)


@cli.command()
def cancel(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="The run to cancel.")],
    reason: Annotated[
        str, typer.Option("--reason", "-r", help="Why; recorded as the run's error.")
    ] = "cancelled from the command line",
) -> None:
    """Cancel a run and its unfinished child runs. A step in flight finishes, but the run
    makes no further durable call."""

    async def act(app: App) -> tuple[Run, Run]:
        before = await app.get_run(run_id)
        if before.status.is_terminal:
            return before, before
        return before, await app.cancel(run_id, reason)

    before, after = _query(ctx, act)
    if before.status is RunStatus.CANCELLED:
        out.print(f"run {run_id!r} was already cancelled", markup=False)
    elif after.status is not RunStatus.CANCELLED:
        raise CommandError(f"run {run_id!r} already {after.status.value}; nothing to cancel")
    else:
        out.print(f"cancelled run {run_id!r} (was {before.status.value})", markup=False)


# -- effects, resolve, approve ------------------------------------------------------------
EFFECTS_FORMS = "'tether effects [RUN_ID]' or 'tether effects export RUN_ID [-o FILE]'"


@cli.command(
    help="""The effect log: every tool call with its intent, completion and history.

Two forms:

* `tether effects [RUN_ID] [--in-doubt] [--json] [--limit N]` lists tool calls, those in
doubt first; of one run in seq order, else newest first.

* `tether effects export RUN_ID [-o FILE]` writes all of a run's tool calls as JSON Lines
(one JSON object per line, in seq order) for audit: to stdout, or to FILE.
"""
)
def effects(
    ctx: typer.Context,
    args: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="RUN_ID | export RUN_ID",
            help="A run whose tool calls to list (default: all runs), or 'export' and a run.",
            show_default=False,
        ),
    ] = None,
    in_doubt: Annotated[
        bool, typer.Option("--in-doubt", help="Only irreversible calls in doubt.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit", "-n", help="At most this many calls (default 50).", show_default=False
        ),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option("--output", "-o", metavar="FILE", help="export: write to FILE, not stdout."),
    ] = None,
) -> None:
    words = list(args or [])
    if words and words[0] == "export":
        if len(words) != 2:
            problem = (
                "needs a RUN_ID" if len(words) == 1 else f"takes one RUN_ID, not {len(words) - 1}"
            )
            raise CommandError(f"effects export {problem}; use {EFFECTS_FORMS}", USAGE)
        given = [
            name
            for name, on in (
                ("--in-doubt", in_doubt),
                ("--json", as_json),
                ("--limit", limit is not None),
            )
            if on
        ]
        if given:
            raise CommandError(
                f"effects export writes every call of the run as JSON Lines; "
                f"{' and '.join(given)} {'does' if len(given) == 1 else 'do'} not apply to it",
                USAGE,
            )
        _export_effects(ctx, words[1], output)
        return
    if len(words) > 1:
        raise CommandError(f"unexpected arguments {' '.join(words)!r}; use {EFFECTS_FORMS}", USAGE)
    if output is not None:
        raise CommandError(
            f"--output goes with export: 'tether effects export RUN_ID -o {output}'", USAGE
        )
    run_id = words[0] if words else None
    wanted = 50 if limit is None else limit
    if wanted < 1:
        raise CommandError(f"--limit must be at least 1, not {wanted}", USAGE)

    async def query(app: App) -> list[EffectRecord]:
        return await app.list_effects(run_id, in_doubt=in_doubt, limit=wanted)

    found = _query(ctx, query)
    if as_json:
        _print_json([effect_view(effect) for effect in found])
        return
    if not found:
        what = "no effects in doubt" if in_doubt else "no effects"
        out.print(what if run_id is None else f"run {run_id!r} has {what}", markup=False)
        return
    out.print(effects_table(found, wide=out.width >= WIDE))
    if len(found) == wanted:
        out.print(f"the first {wanted} shown; see more with --limit", style="dim")
    doubtful = sorted({e.run_id for e in found if e.in_doubt})
    if doubtful:
        runs = ", ".join(repr(r) for r in doubtful[:3]) + (", ..." if len(doubtful) > 3 else "")
        out.print(
            Text.assemble(
                ("in doubt", "bold red"),
                f": find out whether each call happened, then resolve it; 'tether show RUN_ID' "
                f"prints the commands (run {runs})",
            )
        )
    awaiting = sorted({e.run_id for e in found if e.state is EffectState.AWAITING_APPROVAL})
    if awaiting:
        runs = ", ".join(repr(r) for r in awaiting[:3]) + (", ..." if len(awaiting) > 3 else "")
        out.print(
            Text.assemble(
                ("awaiting approval", "bold yellow"),
                f": 'tether approve RUN_ID [SEQ]' or with --reject (run {runs})",
            )
        )


def _export_effects(ctx: typer.Context, run_id: str, output: str | None) -> None:
    async def query(app: App) -> list[EffectRecord]:
        return await app.list_effects(run_id, limit=EVERY)

    found = sorted(_query(ctx, query), key=lambda effect: effect.seq)
    lines = "".join(json.dumps(effect_view(effect), ensure_ascii=False) + "\n" for effect in found)
    if output is None or output == "-":
        sys.stdout.write(lines)
        return
    try:
        with open(output, "w", encoding="utf-8") as file:
            file.write(lines)
    except OSError as exc:
        raise CommandError(f"cannot write {output}: {exc.strerror or exc}") from None
    noun = "call" if len(found) == 1 else "calls"
    out.print(f"wrote {len(found)} tool {noun} of run {run_id!r} to {output}", markup=False)


def _parse_seq(text: str) -> int:
    try:
        seq = int(text)
    except ValueError:
        seq = 0
    if seq < 1:
        raise CommandError(
            f"SEQ must be a positive whole number, the seq of a tool call (see 'tether "
            f"effects RUN_ID'), not {text!r}",
            USAGE,
        )
    return seq


_OUTCOMES = {
    "done": "the call happened, with the result given",
    "retry": "the call is made again, with the same idempotency key",
    "abort": "the call is not made; it raises EffectAbortedError in the run",
}


@cli.command()
def resolve(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="The run that needs attention.")],
    seq: Annotated[
        str, typer.Argument(metavar="SEQ", help="The in-doubt call's seq (see tether effects).")
    ],
    done: Annotated[
        str | None,
        typer.Option("--done", metavar="JSON", help="It happened; JSON is what it returned."),
    ] = None,
    retry: Annotated[
        bool, typer.Option("--retry", help="It did not happen: make it again, same key.")
    ] = False,
    abort: Annotated[
        bool, typer.Option("--abort", help="Do not make it: the call raises an error in the run.")
    ] = False,
    reason: Annotated[
        str | None,
        typer.Option("--reason", "-r", metavar="TEXT", help="How you know (required); recorded."),
    ] = None,
    by: Annotated[
        str | None, typer.Option("--by", metavar="NAME", help="Who decides (default: user@host).")
    ] = None,
) -> None:
    """Resolve an irreversible tool call in doubt: it happened, it did not, or it must not.

    The run is needs_attention because the call may or may not have happened. Find out,
    then say which with exactly one of --done JSON (it happened; JSON is what it returned),
    --retry (it did not; make it again with the same idempotency key) or --abort (do not
    make it), and why with --reason. The decision is recorded in the effect's history, with
    who and why, and the run resumes on the next worker.
    """
    number = _parse_seq(seq)
    chosen = [
        name
        for name, on in (("--done", done is not None), ("--retry", retry), ("--abort", abort))
        if on
    ]
    if len(chosen) != 1:
        problem = "say what happened" if not chosen else f"choose one of {', '.join(chosen)}"
        raise CommandError(
            f"{problem}: --done JSON (it happened; JSON is its result), --retry (it did not) "
            "or --abort (do not make it)",
            USAGE,
        )
    if reason is None or not reason.strip():
        raise CommandError(
            "--reason is required: say how you know, e.g. --reason 'the mail log shows it "
            "was sent'",
            USAGE,
        )
    action = chosen[0].removeprefix("--")
    result = _parse_json(done, "--done")

    async def act(app: App) -> EffectRecord:
        return await app.resolve(run_id, number, action, result=result, by=by, reason=reason)

    effect = _query(ctx, act)
    who = (effect.resolution or {}).get("by") or by or "you"
    out.print(
        f"resolved seq {effect.seq} of run {run_id!r} ({effect.tool}) as {action} by {who}: "
        f"{_OUTCOMES[action]}; the run resumes on the next worker",
        markup=False,
    )


@cli.command()
def approve(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="The run that waits.")],
    seq: Annotated[
        str | None,
        typer.Argument(
            metavar="SEQ",
            help="The call's seq; needed only when several wait.",
            show_default=False,
        ),
    ] = None,
    reject: Annotated[
        bool, typer.Option("--reject", help="Reject the call instead: it is never made.")
    ] = False,
    note: Annotated[
        str | None, typer.Option("--note", metavar="TEXT", help="A note, recorded with it.")
    ] = None,
    by: Annotated[
        str | None, typer.Option("--by", metavar="NAME", help="Who decides (default: user@host).")
    ] = None,
) -> None:
    """Approve (or --reject) a tool call that waits for a person.

    The run's only call awaiting approval, or the one at SEQ when several wait. The
    decision binds to that one call (its tool, arguments and idempotency key), is recorded
    in its history, and wakes the run.
    """
    number = None if seq is None else _parse_seq(seq)
    if note is not None and not note.strip():
        raise CommandError("--note is empty; leave it out or say something", USAGE)

    async def act(app: App) -> EffectRecord:
        wanted = number
        if wanted is None:
            waiting = [
                e
                for e in await app.list_effects(run_id, limit=EVERY)
                if e.state is EffectState.AWAITING_APPROVAL
            ]
            if not waiting:
                raise CommandError(
                    f"run {run_id!r} has no tool call awaiting approval; see "
                    f"'tether effects {run_id}'"
                )
            if len(waiting) > 1:
                found = ", ".join(f"seq {e.seq} ({e.tool} {preview(e.args, 40)})" for e in waiting)
                raise CommandError(
                    f"run {run_id!r} has {len(waiting)} tool calls awaiting approval: {found}; "
                    f"say which: 'tether approve {run_id} SEQ'"
                )
            wanted = waiting[0].seq
        return await app.approve(run_id, wanted, approved=not reject, by=by, note=note)

    effect = _query(ctx, act)
    verdict = effect.resolution or {}
    who = verdict.get("by") or by or "you"
    call = f"seq {effect.seq} of run {run_id!r} ({effect.tool} {preview(effect.args, 60)})"
    if reject:
        out.print(
            f"rejected {call} by {who}: the call is never made; it raises "
            "ApprovalRejectedError in the run",
            markup=False,
        )
    else:
        out.print(
            f"approved {call} by {who}: the run makes this one call when a worker resumes it",
            markup=False,
        )


@cli.command()
def budget(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="The run stopped on a budget.")],
    tokens: Annotated[
        str | None,
        typer.Option("--tokens", metavar="N", help="The new token limit (total, not more)."),
    ] = None,
    cost_usd: Annotated[
        str | None,
        typer.Option("--cost-usd", metavar="X", help="The new cost limit in US dollars."),
    ] = None,
    by: Annotated[
        str | None, typer.Option("--by", metavar="NAME", help="Who raises it (default: user@host).")
    ] = None,
) -> None:
    """Raise the budget of a run stopped on one; it resumes where it stopped.

    The limits are for the whole agent run, so they must be above what it has spent
    ('tether show RUN_ID' says how much). A limit you leave out stays as it was.
    """
    if tokens is None and cost_usd is None:
        raise CommandError("say the new budget: --tokens N, --cost-usd X or both", USAGE)
    limit = _parse_number(tokens, "--tokens", int) if tokens is not None else None
    dollars = _parse_number(cost_usd, "--cost-usd", float) if cost_usd is not None else None

    async def act(app: App) -> Run:
        return await app.raise_budget(run_id, tokens=limit, cost_usd=dollars, by=by)

    _query(ctx, act)
    given = " and ".join(
        part
        for part in (
            f"{limit} tokens" if limit is not None else "",
            f"${dollars}" if dollars is not None else "",
        )
        if part
    )
    out.print(
        f"raised the budget of run {run_id!r} to {given}: it resumes where it stopped on the "
        "next worker",
        markup=False,
    )


def _parse_number(text: str, option: str, kind: type[int] | type[float]) -> Any:
    try:
        value = kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise CommandError(f"{option} takes {what}, not {text!r}", USAGE) from None
    if not value > 0 or value != value or value in (float("inf"),):
        raise CommandError(f"{option} must be more than 0, not {text!r}", USAGE)
    return value


# -- worker -------------------------------------------------------------------------------
def _exception_line(exc: BaseException) -> str:
    line = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, SyntaxError):  # its message already names the file and line
        return line
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if not f.filename.startswith("<frozen") and "importlib" not in f.filename
    ]
    if frames:
        line += f" (at {frames[-1].filename}:{frames[-1].lineno})"
    return line


def load_app(target: str) -> App:
    """Import ``MODULE:APP`` (the current directory first on ``sys.path``)."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr or ":" in attr:
        raise CommandError(
            f"{target!r} is not MODULE:APP; e.g. 'tether worker myproject.flows:app'", USAGE
        )
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise CommandError(
                f"cannot import {module_name!r}: no module named {missing!r} "
                f"(looked in {os.getcwd()} and on sys.path)"
            ) from None
        raise CommandError(f"importing {module_name!r} failed: {_exception_line(exc)}") from None
    except Exception as exc:
        raise CommandError(f"importing {module_name!r} failed: {_exception_line(exc)}") from None
    try:
        found = attrgetter(attr)(module)
    except AttributeError:
        raise CommandError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(found, App):
        raise CommandError(
            f"{target!r} is {type(found).__name__!r}, not a tether.App; point at the object "
            "made with App(...)"
        )
    return found


def _configure_logging() -> None:
    # Leave logging alone if the imported module set it up; else warnings on stderr and
    # the worker's own notes (takeovers, retries).
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    tether_log = logging.getLogger("tether")
    if tether_log.level == logging.NOTSET:
        tether_log.setLevel(logging.INFO)


def _say(message: str) -> None:
    print(message, flush=True)


async def _serve(app: App, target: str) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            # Safe, because runs are durable: another worker resumes them from the journal.
            _say(f"{sig.name} again: exiting now; runs in flight resume on the next worker")
            os._exit(130)
        _say(f"{sig.name}: stopping; steps in flight finish, then runs are handed back")
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    label = "worker"
    try:
        await app.open()
        worker = app.worker
        assert worker is not None
        label = f"worker {worker.worker_id[:12]}"
        names = ", ".join(sorted(app.workflows)) or "none"
        _say(
            f"{label} started: {target} on {redact_url(app.database_url)} (pid {os.getpid()}, "
            f"concurrency {app.max_concurrency}, workflows: {names})"
        )
        await stop.wait()
    finally:
        await app.close()
    _say(f"{label} stopped")


@cli.command()
def worker(
    ctx: typer.Context,
    target: Annotated[
        str, typer.Argument(metavar="MODULE:APP", help="Where the App is, e.g. flows:app.")
    ],
    concurrency: Annotated[
        int | None,
        typer.Option("--concurrency", "-c", help="Runs executed at once (default: the App's)."),
    ] = None,
) -> None:
    """Run a worker for the App at MODULE:APP until SIGINT or SIGTERM.

    The App decides its database: App() with no URL reads TETHER_DATABASE_URL, which
    --database-url sets before the module is imported. On SIGINT/SIGTERM the worker stops
    claiming, lets steps in flight finish, and hands its runs back; a second signal exits
    at once (the runs are durable and resume on the next worker).
    """
    explicit = _settings(ctx).explicit_url
    if explicit:
        os.environ["TETHER_DATABASE_URL"] = explicit
    if concurrency is not None and concurrency < 1:
        raise CommandError(f"--concurrency must be at least 1, not {concurrency}", USAGE)
    app = load_app(target)
    if explicit and app.database_url != explicit:
        raise CommandError(
            f"--database-url is {redact_url(explicit)} but {target} is bound to "
            f"{redact_url(app.database_url)}; "
            "create the App with App() so that it reads TETHER_DATABASE_URL, or drop "
            "--database-url",
            USAGE,
        )
    if concurrency is not None:
        app.max_concurrency = concurrency
    _configure_logging()
    asyncio.run(_serve(app, target))


# -- demo ---------------------------------------------------------------------------------
@cli.command()
def demo(ctx: typer.Context) -> None:
    """Run a workflow in a worker process, SIGKILL it mid-run, resume, and show the proof."""
    from ..demo import run as run_demo  # imported here: only this command needs it

    code = run_demo(_settings(ctx).database_url)
    if code:
        raise typer.Exit(code)


cli.command("serve")(serve_command)  # the HTTP API and web UI (interfaces/http)


# -- entry point --------------------------------------------------------------------------
def describe(exc: TetherError) -> str:
    """One line for an error, with what to do next."""
    if isinstance(exc, RunNotFoundError):
        run_id = getattr(exc, "run_id", None)
        return f"no run {run_id!r}; list runs with 'tether runs'"
    return exc.message


def _fail(message: str, exit_code: int) -> NoReturn:
    err.print(Text.assemble(("error:", "bold red"), " ", " ".join(message.split())), soft_wrap=True)
    sys.exit(exit_code)


def main(argv: list[str] | None = None) -> None:
    """The ``tether`` console script."""
    try:
        cli(args=argv, prog_name="tether")
    except CommandError as exc:
        _fail(exc.message, exc.exit_code)
    except TetherError as exc:
        _fail(describe(exc), 1)


# Each registers its commands: overview, approvals, token, policy; fork, tree, diff, retry.
from . import _cli_control, _cli_fork  # noqa: E402, F401
