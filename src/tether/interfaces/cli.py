"""The ``tether`` command line: run a worker, list and inspect runs, signal and cancel them.

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
from .._records import JournalEntry, Run, RunStatus
from ..engine import App
from ..storage import redact_url
from ._render import run_report, runs_table
from ._views import run_detail, run_summary

__all__ = ["CommandError", "cli", "main"]

T = TypeVar("T")

# Keep in sync with DEFAULT_DATABASE_URL in engine/_app.py.
DEFAULT_DATABASE_URL = "sqlite:///tether.db"
USAGE = 2  # exit code of a usage error, as click uses

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
    limit: Annotated[int, typer.Option("--limit", "-n", help="At most this many runs.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
) -> None:
    """List runs, newest first."""
    wanted = _parse_status(status)
    if limit < 1:
        raise CommandError(f"--limit must be at least 1, not {limit}", USAGE)

    async def query(app: App) -> list[Run]:
        return await app.list_runs(status=wanted, workflow=workflow, limit=limit)

    found = _query(ctx, query)
    if as_json:
        _print_json([run_summary(run) for run in found])
    elif not found:
        filters = [f"status {wanted.value}"] if wanted else []
        filters += [f"workflow {workflow!r}"] if workflow else []
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
    """Show a run and its journal: every step, wait and child run, in order."""

    async def query(app: App) -> tuple[Run, list[JournalEntry]]:
        run = await app.get_run(run_id)
        return run, await app.get_journal(run_id)

    run, entries = _query(ctx, query)
    if as_json:
        _print_json(run_detail(run, entries))
    else:
        out.print(run_report(run, entries))


# -- signal, cancel -----------------------------------------------------------------------
def _parse_json(text: str | None, name: str) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CommandError(
            f"malformed JSON value {text!r} for signal {name!r} ({exc.msg} at column "
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
    parsed = _parse_json(value, name)

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
