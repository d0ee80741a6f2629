"""Control-plane commands: ``tether overview``, ``tether approvals``, ``tether token ...``
and ``tether policy explain``. Registered on the ``tether`` command line by ``cli``."""

from __future__ import annotations

import os
import shlex
import time
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from .._records import ApiToken, Decision, Effect, EffectRecord, Overview, Role
from ..engine import App
from ..engine._policy import CallFacts, Ruling, load_policy
from ._render import local_time, preview
from ._views import effect_view, overview_view, token_view
from .cli import USAGE, CommandError, _print_json, _query, cli, load_app, out

__all__ = ["policy_cli", "token_cli"]

token_cli = typer.Typer(
    name="token",
    help="Bearer tokens of the HTTP API and web UI (tether serve).",
    no_args_is_help=True,
)
policy_cli = typer.Typer(
    name="policy", help="The policy file: what the agency dial decides.", no_args_is_help=True
)
cli.add_typer(token_cli)
cli.add_typer(policy_cli)


_PAST = {"reject": "rejected", "approve": "approved"}


def _until(deadline: float | None, now: float) -> str:
    if deadline is None:
        return "none"
    left = deadline - now
    if left <= 0:
        return "due now"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if left >= size:
            return f"in {left / size:.0f}{unit}"
    return f"in {left:.0f}s"


# -- overview -----------------------------------------------------------------------------
@cli.command()
def overview(
    ctx: typer.Context,
    limit: Annotated[
        int, typer.Option("--limit", "-n", help="At most this many items needing a person.")
    ] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The roll-up: runs by status, what needs a person (most urgent first), and what each
    worker is doing now."""
    if limit < 1:
        raise CommandError(f"--limit must be at least 1, not {limit}", USAGE)

    async def query(app: App) -> Overview:
        return await app.overview(limit=limit)

    found = _query(ctx, query)
    if as_json:
        _print_json(overview_view(found))
        return
    counts = "  ".join(f"{status} {n}" for status, n in sorted(found.counts.items()))
    out.print(Text("runs  ", style="bold") + Text(counts or "none"))
    if found.attention:
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, expand=True, title_justify="left")
        table.title = "needs a person"
        table.add_column("WHAT", no_wrap=True)
        table.add_column("RUN", overflow="fold")
        table.add_column("SINCE", no_wrap=True)
        table.add_column("DEADLINE", no_wrap=True)
        table.add_column("DETAIL / DO", ratio=1)
        for item in found.attention:
            table.add_row(
                Text(item.kind.replace("_", " "), style="bold yellow"),
                Text(item.run_id + (f" #{item.seq}" if item.seq is not None else "")),
                local_time(item.since),
                _until(item.deadline, found.at) if item.deadline else "",
                Text(item.title) + Text("\n" + item.action, style="dim"),
            )
        out.print(table)
    else:
        out.print("nothing needs a person")
    if not found.workers:
        out.print("no live workers", style="dim")
    for worker in found.workers:
        doing = ", ".join(f"{r.run_id} ({r.workflow})" for r in worker.runs) or "idle"
        out.print(
            Text(f"worker {worker.worker_id[:12]} ", style="bold")
            + Text(f"{worker.host} pid {worker.pid}: {doing}")
        )


# -- approvals ----------------------------------------------------------------------------
def _approvals_table(effects: list[EffectRecord], now: float) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, expand=True)
    table.add_column("RUN", overflow="fold", style="bold")
    table.add_column("SEQ", justify="right")
    table.add_column("CALL", ratio=1, overflow="fold")
    table.add_column("WHY", ratio=1, overflow="fold")
    table.add_column("WAITING SINCE", no_wrap=True)
    table.add_column("DEADLINE", no_wrap=True)
    for effect in effects:
        asked = next((e for e in effect.history if e.get("event") == "approval_requested"), {})
        why = str(asked.get("rule") or "")
        if effect.tainted:
            why = "tainted run; " + why
        deadline = _until(effect.deadline, now)
        if effect.deadline is not None:
            deadline += f", then {effect.on_timeout}"
        table.add_row(
            Text(effect.run_id),
            str(effect.seq),
            Text(f"{effect.tool} {preview(effect.args, 60)}")
            + Text(f"\n{effect.kind.value}", style="dim"),
            Text(why),
            local_time(effect.created_at),
            deadline,
        )
    return table


@cli.command()
def approvals(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option("--limit", "-n", help="At most this many.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
) -> None:
    """Tool calls waiting for a person's approval, soonest deadline first, then oldest.
    Act on one with 'tether approve RUN_ID SEQ [--reject] [--note TEXT]'."""
    if limit < 1:
        raise CommandError(f"--limit must be at least 1, not {limit}", USAGE)

    async def query(app: App) -> list[EffectRecord]:
        return await app.list_approvals(limit=limit)

    found = _query(ctx, query)
    if as_json:
        _print_json([effect_view(effect) for effect in found])
        return
    if not found:
        out.print("no tool call awaits approval")
        return
    out.print(_approvals_table(found, time.time()))
    first = found[0]
    out.print(
        f"approve: tether approve {shlex.quote(first.run_id)} {first.seq} --note '<why>'\n"
        f"reject:  tether approve {shlex.quote(first.run_id)} {first.seq} --reject "
        "--note '<why>'",
        style="dim",
        markup=False,
    )


# -- tokens -------------------------------------------------------------------------------
def _parse_role(role: str) -> Role:
    try:
        return Role(role.strip().lower())
    except ValueError:
        known = ", ".join(r.value for r in Role)
        raise CommandError(f"unknown role {role!r}; use one of: {known}", USAGE) from None


@token_cli.command("create")
def token_create(
    ctx: typer.Context,
    role: Annotated[
        str,
        typer.Option(
            "--role",
            "-r",
            metavar="ROLE",
            help="viewer (read), approver (also approve, resolve, signal, budgets) or admin "
            "(also cancel and manage tokens).",
        ),
    ],
    name: Annotated[
        str | None, typer.Option("--name", metavar="NAME", help="Who or what it is for.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Make a token. Its secret is printed this once: only its hash is stored."""
    wanted = _parse_role(role)

    async def act(app: App) -> tuple[ApiToken, str]:
        return await app.create_token(wanted, name=name)

    token, secret = _query(ctx, act)
    if as_json:
        _print_json(token_view(token) | {"secret": secret})
        return
    out.print(f"token {token.token_id} ({token.role.value}, {token.name!r}):", markup=False)
    out.print(secret, markup=False, soft_wrap=True)
    out.print(
        "Keep it now: it is not shown again. Use it as 'Authorization: Bearer <token>' or "
        "paste it into the web UI's login page.",
        style="dim",
        markup=False,
    )


@token_cli.command("list")
def token_list(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
) -> None:
    """List tokens (never their secrets)."""

    async def query(app: App) -> list[ApiToken]:
        return await app.list_tokens()

    found = _query(ctx, query)
    if as_json:
        _print_json([token_view(token) for token in found])
        return
    if not found:
        out.print("no tokens; make one with 'tether token create --role admin'")
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("ID", "NAME", "ROLE", "CREATED", "LAST USED", "STATE"):
        table.add_column(column)
    for token in found:
        state = "active" if token.active else f"revoked {local_time(token.revoked_at)}"
        table.add_row(
            token.token_id,
            Text(token.name),
            token.role.value,
            local_time(token.created_at),
            local_time(token.last_used_at) if token.last_used_at else "never",
            Text(state, style="green" if token.active else "dim"),
        )
    out.print(table)


@token_cli.command("revoke")
def token_revoke(
    ctx: typer.Context,
    token_id: Annotated[str, typer.Argument(metavar="TOKEN_ID", help="See 'tether token list'.")],
) -> None:
    """Revoke a token: its next request is refused."""

    async def act(app: App) -> ApiToken:
        return await app.revoke_token(token_id)

    token = _query(ctx, act)
    out.print(f"revoked token {token.token_id} ({token.name!r})", markup=False)


# -- policy -------------------------------------------------------------------------------
def _choice(value: str, kind: type[Effect] | type[Decision], option: str) -> str:
    try:
        return kind(value.strip().lower()).value
    except ValueError:
        known = ", ".join(m.value for m in kind)
        raise CommandError(f"{option} {value!r} is not one of: {known}", USAGE) from None


@policy_cli.command("explain")
def policy_explain(
    tool: Annotated[str, typer.Argument(metavar="TOOL", help="The tool's name.")],
    kind: Annotated[
        str | None,
        typer.Option(
            "--kind", "-k", help="read | idempotent | irreversible (default: from --app)."
        ),
    ] = None,
    tainted: Annotated[
        bool, typer.Option("--tainted", help="As in a run that has read untrusted content.")
    ] = False,
    tags: Annotated[
        list[str] | None, typer.Option("--tag", "-t", help="A tag of the run (repeatable).")
    ] = None,
    blast_radius: Annotated[
        str | None, typer.Option("--blast-radius", help="The tool's blast radius.")
    ] = None,
    declared: Annotated[
        str | None,
        typer.Option(
            "--declared", help="The tool's own approval= (default: from --app, else auto)."
        ),
    ] = None,
    policy: Annotated[
        str | None,
        typer.Option(
            "--policy", "-p", metavar="FILE", help="The policy file (default: $TETHER_POLICY)."
        ),
    ] = None,
    app_target: Annotated[
        str | None,
        typer.Option(
            "--app", metavar="MODULE:APP", help="Read the tool's declaration from this app."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print what the policy decides for a call of TOOL, the rule that matches, and why."""
    path = policy or os.environ.get("TETHER_POLICY") or None
    ruling_kind = None if kind is None else _choice(kind, Effect, "--kind")
    level = None if declared is None else _choice(declared, Decision, "--declared")
    timeout, on_timeout, radius = None, "reject", blast_radius
    if app_target is not None:
        found = load_app(app_target).tools.get(tool)
        if found is None:
            raise CommandError(f"{app_target} has no tool {tool!r}")
        spec = found.definition
        ruling_kind = ruling_kind or spec.effect.value
        level = level or spec.approval.value
        radius = radius or spec.blast_radius
        timeout, on_timeout = spec.approval_timeout, spec.on_timeout
    if ruling_kind is None:
        raise CommandError(
            f"say what {tool!r} does: --kind read|idempotent|irreversible, or --app "
            "MODULE:APP to read its declaration",
            USAGE,
        )
    rules = load_policy(Path(path) if path else None)
    facts = CallFacts(
        tool,
        Effect(ruling_kind),
        radius,
        Decision(level or "auto"),
        tainted,
        frozenset(tags or ()),
        timeout,
        on_timeout,
    )
    ruling: Ruling = rules.explain(facts)
    if as_json:
        _print_json(
            {
                "tool": tool,
                "kind": facts.kind.value,
                "tainted": tainted,
                "tags": sorted(facts.tags),
                "blast_radius": radius,
                "declared": facts.declared.value,
                "policy": path,
                "decision": ruling.decision.value,
                "source": ruling.source,
                "reason": ruling.reason,
                "timeout": ruling.timeout,
                "on_timeout": ruling.on_timeout if ruling.timeout is not None else None,
            }
        )
        return
    out.print(Text(ruling.decision.value, style="bold") + Text(f"  {tool}"))
    out.print(f"  because: {ruling.source}: {ruling.reason}", markup=False)
    if ruling.decision is Decision.APPROVE:
        if ruling.timeout is not None:
            out.print(
                f"  a person has {ruling.timeout:g} s, then the call is "
                f"{_PAST[ruling.on_timeout]} by default",
                markup=False,
            )
        else:
            out.print("  a person decides; no deadline", markup=False)
    where = path or "no policy file (set TETHER_POLICY or --policy)"
    out.print(f"  policy: {where}", style="dim", markup=False)
