"""The JSON API, under ``/api/v1``: the same data and commands as the CLI's ``--json``.

Reads need the viewer role; approving, rejecting, signalling, resolving and raising a
budget the approver role; cancelling and managing tokens the admin role. What a person
decides is recorded with ``by`` set to the principal's name. Lists page with ``limit``
(1 to 500) and ``offset``; a page says the ``next_offset``, or ``null`` on the last page.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query, Request
from fastapi.dependencies.models import Dependant
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from ..._errors import EffectStateError, RunNotFoundError
from ..._records import EffectRecord, Role, Run, RunStatus
from ...engine import App
from .._lineage import diff_runs as lineage_diff
from .._lineage import diff_view, fork_tree, tree_view
from .._views import (
    effect_view,
    iso_time,
    overview_view,
    run_detail,
    run_summary,
    token_view,
)
from ._auth import Principal, is_dev, principal, require, tether_app
from ._errors import ApiError
from ._models import (
    ApprovalBody,
    ApprovalList,
    BudgetBody,
    CancelBody,
    DiffView,
    EffectList,
    EffectView,
    ErrorBody,
    ForkBody,
    OverviewView,
    ResolveBody,
    RestartList,
    RetryBody,
    RunDetail,
    RunList,
    RunSummary,
    SignalBody,
    SignalSent,
    TokenBody,
    TokenCreated,
    TokenList,
    TokenView,
    TreeView,
    WhoAmI,
)

__all__ = ["router"]

EVERY = 1_000_000_000  # a limit for list_effects that means all of a run's effects
MAX_LIMIT = 500
MAX_OFFSET = 1_000_000_000
MAX_SEQ = 2_147_483_647  # an INTEGER column on PostgreSQL

_errors: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "No valid token."},
    403: {"model": ErrorBody, "description": "The token's role may not (or a CSRF failure)."},
    422: {"model": ErrorBody, "description": "Malformed parameters or body."},
    503: {"model": ErrorBody, "description": "The database is unavailable."},
}
_not_found: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "No such run (or tool call, or token)."}
}
_conflict: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorBody, "description": "The run or call is not in a state for this."},
    400: {"model": ErrorBody, "description": "A value the command refuses."},
}


def _query_names(dependant: Dependant) -> set[str]:
    names = {param.alias for param in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


async def _known_query(request: Request) -> None:
    """Refuse query parameters a route does not take (a misspelt filter would otherwise
    be ignored, and the answer look right). Who asks is checked first."""
    await principal(request)
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or not request.query_params:
        return
    allowed = _query_names(route.dependant)
    unknown = sorted(set(request.query_params) - allowed)
    if unknown:
        takes = ", ".join(sorted(allowed)) if allowed else "no query parameters"
        raise ApiError(
            422,
            "invalid_request",
            f"unknown query parameter{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(repr(name) for name in unknown)}; this route takes {takes}",
        )
    for name in sorted(set(request.query_params)):
        if len(request.query_params.getlist(name)) > 1:
            raise ApiError(
                422, "invalid_request", f"query parameter {name!r} is given more than once"
            )


router = APIRouter(prefix="/api/v1", responses=_errors, dependencies=[Depends(_known_query)])

Viewer = Annotated[Principal, Depends(require(Role.VIEWER))]
Approver = Annotated[Principal, Depends(require(Role.APPROVER))]
Admin = Annotated[Principal, Depends(require(Role.ADMIN))]
Tether = Annotated[App, Depends(tether_app)]

RunId = Annotated[str, Path(min_length=1, max_length=500, description="The run's id.")]
Seq = Annotated[int, Path(ge=1, le=MAX_SEQ, description="The tool call's seq in its run.")]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="At most this many (1 to 500).")]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Skip this many.")]


def _page(items: list[Any], limit: int, offset: int) -> tuple[list[Any], int | None]:
    """The page (``limit`` of ``items``, fetched with one more) and the next offset."""
    more = len(items) > limit
    return items[:limit], offset + limit if more else None


async def _effect(app: App, run_id: str, seq: int) -> EffectRecord:
    try:
        return await app.get_effect(run_id, seq)
    except EffectStateError:
        raise ApiError(
            404,
            "effect_not_found",
            f"run {run_id!r} has no tool call at seq {seq}; list its calls at "
            f"/api/v1/runs/{run_id}/effects",
        ) from None


# -- who, what needs a person -------------------------------------------------------------
@router.get(
    "/whoami", tags=["overview"], response_model=WhoAmI, summary="The principal of this request"
)
async def whoami(request: Request, who: Viewer) -> dict[str, Any]:
    return {
        "name": who.name,
        "role": who.role.value,
        "token_id": who.token_id,
        "dev": is_dev(request),
    }


@router.get(
    "/overview",
    tags=["overview"],
    response_model=OverviewView,
    summary="The roll-up: counts by status, what needs a person, what workers do",
)
async def overview(
    _: Viewer,
    app: Tether,
    limit: Annotated[
        int, Query(ge=1, le=MAX_LIMIT, description="At most this many attention items.")
    ] = 50,
) -> dict[str, Any]:
    return overview_view(await app.overview(limit=limit))


# -- runs ---------------------------------------------------------------------------------
@router.get(
    "/runs",
    tags=["runs"],
    response_model=RunList,
    response_model_exclude_unset=True,
    summary="List runs",
)
async def list_runs(
    _: Viewer,
    app: Tether,
    status: Annotated[RunStatus | None, Query(description="Only runs with this status.")] = None,
    workflow: Annotated[
        str | None, Query(max_length=500, description="Only runs of this workflow.")
    ] = None,
    tag: Annotated[
        str | None, Query(max_length=500, description="Only runs carrying this tag.")
    ] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> dict[str, Any]:
    found = await app.list_runs(
        status=status, workflow=workflow, tag=tag, limit=limit + 1, offset=offset
    )
    runs, next_offset = _page(found, limit, offset)
    return {
        "runs": [run_summary(run) for run in runs],
        "limit": limit,
        "offset": offset,
        "next_offset": next_offset,
    }


@router.get(
    "/runs/{run_id}",
    tags=["runs"],
    response_model=RunDetail,
    response_model_exclude_unset=True,
    responses=_not_found,
    summary="A run with its journal (the shape of `tether show --json`)",
)
async def get_run(_: Viewer, app: Tether, run_id: RunId) -> dict[str, Any]:
    run = await app.get_run(run_id)
    entries = await app.get_journal(run_id)
    effects = await app.list_effects(run_id, limit=EVERY)
    return run_detail(run, entries, effects)


@router.get(
    "/runs/{run_id}/effects",
    tags=["effects"],
    response_model=EffectList,
    response_model_exclude_unset=True,
    responses=_not_found,
    summary="A run's tool calls, in doubt first, then in seq order",
)
async def list_run_effects(
    _: Viewer,
    app: Tether,
    run_id: RunId,
    in_doubt: Annotated[bool, Query(description="Only irreversible calls in doubt.")] = False,
    limit: Limit = 100,
    offset: Offset = 0,
) -> dict[str, Any]:
    found = await app.list_effects(run_id, in_doubt=in_doubt, limit=limit + 1, offset=offset)
    effects, next_offset = _page(found, limit, offset)
    return {
        "effects": [effect_view(effect) for effect in effects],
        "limit": limit,
        "offset": offset,
        "next_offset": next_offset,
    }


@router.get(
    "/runs/{run_id}/effects/{seq}",
    tags=["effects"],
    response_model=EffectView,
    response_model_exclude_unset=True,
    responses=_not_found,
    summary="One tool call of a run",
)
async def get_effect(_: Viewer, app: Tether, run_id: RunId, seq: Seq) -> dict[str, Any]:
    return effect_view(await _effect(app, run_id, seq))


@router.get(
    "/effects",
    tags=["effects"],
    response_model=EffectList,
    response_model_exclude_unset=True,
    summary="The effect log of all runs, in doubt first, then newest first",
)
async def list_effects(
    _: Viewer,
    app: Tether,
    in_doubt: Annotated[bool, Query(description="Only irreversible calls in doubt.")] = False,
    limit: Limit = 100,
    offset: Offset = 0,
) -> dict[str, Any]:
    found = await app.list_effects(None, in_doubt=in_doubt, limit=limit + 1, offset=offset)
    effects, next_offset = _page(found, limit, offset)
    return {
        "effects": [effect_view(effect) for effect in effects],
        "limit": limit,
        "offset": offset,
        "next_offset": next_offset,
    }


@router.get(
    "/approvals",
    tags=["approvals"],
    response_model=ApprovalList,
    response_model_exclude_unset=True,
    summary="Tool calls awaiting approval, soonest deadline first",
)
async def list_approvals(
    _: Viewer, app: Tether, limit: Limit = 100, offset: Offset = 0
) -> dict[str, Any]:
    found = await app.list_approvals(limit=limit + 1, offset=offset)
    approvals, next_offset = _page(found, limit, offset)
    return {
        "approvals": [effect_view(effect) for effect in approvals],
        "limit": limit,
        "offset": offset,
        "next_offset": next_offset,
    }


# -- commands -----------------------------------------------------------------------------
@router.post(
    "/runs/{run_id}/approvals/{seq}",
    tags=["approvals"],
    response_model=EffectView,
    response_model_exclude_unset=True,
    responses=_not_found | _conflict,
    summary="Approve or reject a tool call awaiting approval",
)
async def decide_approval(
    who: Approver, app: Tether, run_id: RunId, seq: Seq, body: ApprovalBody
) -> dict[str, Any]:
    """The decision binds to that one call (its tool, arguments and idempotency key), is
    recorded in its history with `by` (you) and `note`, and wakes the run: approved, the
    call is made exactly once; rejected, it raises ApprovalRejectedError in the run."""
    await _effect(app, run_id, seq)
    effect = await app.approve(run_id, seq, approved=body.approved, by=who.name, note=body.note)
    return effect_view(effect)


@router.post(
    "/runs/{run_id}/signals",
    tags=["runs"],
    response_model=SignalSent,
    responses=_not_found | _conflict,
    summary="Send a signal to a run",
)
async def send_signal(
    who: Approver, app: Tether, run_id: RunId, body: SignalBody
) -> dict[str, Any]:
    """A run waiting on that name (`ctx.wait_signal(name)`) wakes with the value; one
    that does not wait on it yet finds it in its mailbox when it does."""
    run = await app.get_run(run_id)
    if run.status.is_terminal:
        raise ApiError(
            409, "run_state", f"run {run_id!r} already {run.status.value}; it takes no signals"
        )
    await app.signal(run_id, body.name, body.value)
    return {"run_id": run_id, "name": body.name, "run_status": run.status.value}


@router.post(
    "/runs/{run_id}/effects/{seq}/resolve",
    tags=["effects"],
    response_model=EffectView,
    response_model_exclude_unset=True,
    responses=_not_found | _conflict,
    summary="Resolve an irreversible tool call in doubt",
)
async def resolve_effect(
    who: Approver, app: Tether, run_id: RunId, seq: Seq, body: ResolveBody
) -> dict[str, Any]:
    """Say what happened to a call that may or may not have: `done` (it happened; `result`
    is what it returned), `retry` (it did not: make it again with the same idempotency
    key) or `abort` (do not make it). Recorded with `by` (you) and `reason`; the run
    resumes on the next worker."""
    await _effect(app, run_id, seq)
    effect = await app.resolve(
        run_id, seq, body.action, result=body.result, by=who.name, reason=body.reason
    )
    return effect_view(effect)


@router.post(
    "/runs/{run_id}/budget",
    tags=["runs"],
    response_model=RunSummary,
    responses=_not_found | _conflict,
    summary="Raise the budget of a run stopped on one",
)
async def raise_budget(
    who: Approver, app: Tether, run_id: RunId, body: BudgetBody
) -> dict[str, Any]:
    """The new limits are for the whole agent run (not increments) and must be above what
    it has spent; one left out stays as it was. The run resumes where it stopped."""
    run = await app.raise_budget(run_id, tokens=body.tokens, cost_usd=body.cost_usd, by=who.name)
    return run_summary(run)


@router.post(
    "/runs/{run_id}/cancel",
    tags=["runs"],
    response_model=RunSummary,
    responses=_not_found | _conflict,
    summary="Cancel a run and its unfinished child runs",
)
async def cancel_run(
    who: Admin,
    app: Tether,
    run_id: RunId,
    body: Annotated[CancelBody | None, Body()] = None,
) -> dict[str, Any]:
    """A step in flight finishes, but the run makes no further durable call. Cancelling a
    cancelled run changes nothing; cancelling a finished one is a 409."""
    run = await app.get_run(run_id)
    if run.status is RunStatus.CANCELLED:
        return run_summary(run)
    if run.status.is_terminal:
        raise ApiError(
            409, "run_state", f"run {run_id!r} already {run.status.value}; nothing to cancel"
        )
    reason = body.reason if body is not None and body.reason else "cancelled"
    cancelled: Run = await app.cancel(run_id, f"{reason} (by {who.name})")
    return run_summary(cancelled)


# -- forks and retries --------------------------------------------------------------------
_fork_errors: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "No such run."},
    409: {
        "model": ErrorBody,
        "description": "The position does not fit the run's journal now (past its end, "
        "below an unfinished entry, before an irreversible call already made), the run is "
        "not in a state for this, or the run_id is taken by another run.",
    },
    422: {
        "model": ErrorBody,
        "description": "Malformed body, or a replacement that does not fit the entry.",
    },
}


_fork_existed: dict[int | str, dict[str, Any]] = {
    200: {"model": RunSummary, "description": "The fork already existed (the same run_id)."}
}


@router.post(
    "/runs/{run_id}/fork",
    tags=["forks"],
    response_model=RunSummary,
    status_code=201,
    responses=_fork_existed | _fork_errors,
    summary="Fork a run at a journal position, optionally replacing that entry's output",
)
async def fork_run(who: Approver, app: Tether, run_id: RunId, body: ForkBody) -> JSONResponse:
    """A new run that shares the origin's entries below `at_seq` by reference (nothing is
    copied, nothing in them runs again: their model answers, tool results and effects are
    the origin's) and goes on from there. With `replace`, the entry at `at_seq` is recorded
    with that output and the fork continues after it. Its calls from there on are new
    calls with new idempotency keys, decided by the policy anew: a fork acts on the world,
    hence the approver role. Answers the new run (201), or with `run_id` of a fork that
    already exists (same origin and seq), that run (200)."""
    existed = False
    if body.run_id is not None:
        try:
            await app.get_run(body.run_id)
            existed = True
        except RunNotFoundError:
            existed = False
    handle = await app.fork(run_id, body.at_seq, body.replace, run_id=body.run_id)
    run = await app.get_run(handle.run_id)
    return JSONResponse(run_summary(run), status_code=200 if existed else 201)


@router.get(
    "/runs/{run_id}/tree",
    tags=["forks"],
    response_model=TreeView,
    response_model_exclude_unset=True,
    responses=_not_found,
    summary="The tree of forks a run belongs to, from its root",
)
async def fork_tree_of(_: Viewer, app: Tether, run_id: RunId) -> dict[str, Any]:
    """The run's lineage: from the root of its fork chain (the run that is no fork) down
    through every fork of every branch; each node says where it was forked (`fork_seq`)."""
    return tree_view(await fork_tree(app, run_id))


@router.get(
    "/diff",
    tags=["forks"],
    response_model=DiffView,
    response_model_exclude_unset=True,
    responses=_not_found,
    summary="Compare two runs: the first divergent entry and what differs after it",
)
async def diff_runs(
    _: Viewer,
    app: Tether,
    a: Annotated[str, Query(min_length=1, max_length=500, description="One run's id.")],
    b: Annotated[str, Query(min_length=1, max_length=500, description="The other's.")],
) -> dict[str, Any]:
    """Typically a run and a fork of it (or two forks): the entries they share, the first
    seq where they differ, then what differs after it (model answers, tool calls and their
    effects, the result)."""
    return diff_view(await lineage_diff(app, a, b))


@router.post(
    "/runs/{run_id}/retry",
    tags=["forks"],
    response_model=RunSummary,
    responses=_fork_errors,
    summary="Retry a failed or needs_attention run in place from a seq",
)
async def retry_run(who: Approver, app: Tether, run_id: RunId, body: RetryBody) -> dict[str, Any]:
    """After a code fix: the entries before `from_seq` are kept and replayed, those from
    it on are set aside (kept for the audit: `GET /runs/{run_id}/restarts`), and the run
    executes afresh from `from_seq` on the next worker. Recorded with `by` (you) and
    `reason`. Refused (409) when that would make an irreversible call again that was
    already made or may have been, or drop a child run or entries a fork shares: fork the
    run instead."""
    run = await app.retry(run_id, body.from_seq, by=who.name, reason=body.reason)
    return run_summary(run)


@router.get(
    "/runs/{run_id}/restarts",
    tags=["forks"],
    response_model=RestartList,
    responses=_not_found,
    summary="A run's retries in place, with the entries each set aside",
)
async def list_run_restarts(_: Viewer, app: Tether, run_id: RunId) -> dict[str, Any]:
    restarts = await app.list_restarts(run_id)
    return {"run_id": run_id, "restarts": [restart_view(r) for r in restarts]}


def restart_view(restart: dict[str, Any]) -> dict[str, Any]:
    """A restart record with its time as ISO 8601."""
    at = restart.get("at")
    if isinstance(at, int | float) and not isinstance(at, bool):
        return restart | {"at": iso_time(float(at))}
    return restart


# -- tokens -------------------------------------------------------------------------------
@router.get(
    "/tokens",
    tags=["tokens"],
    response_model=TokenList,
    summary="The API tokens (never their secrets)",
)
async def list_tokens(_: Admin, app: Tether) -> dict[str, Any]:
    return {"tokens": [token_view(token) for token in await app.list_tokens()]}


@router.post(
    "/tokens",
    tags=["tokens"],
    response_model=TokenCreated,
    status_code=201,
    summary="Make a token; its secret is in this answer only",
)
async def create_token(who: Admin, app: Tether, body: TokenBody) -> dict[str, Any]:
    token, secret = await app.create_token(body.role, name=body.name, by=who.name)
    return {"token": token_view(token), "secret": secret}


@router.delete(
    "/tokens/{token_id}",
    tags=["tokens"],
    response_model=TokenView,
    responses=_not_found,
    summary="Revoke a token: it no longer authenticates",
)
async def revoke_token(
    _: Admin,
    app: Tether,
    token_id: Annotated[str, Path(min_length=1, max_length=200)],
) -> dict[str, Any]:
    if not any(token.token_id == token_id for token in await app.list_tokens()):
        raise ApiError(
            404, "token_not_found", f"no token {token_id!r}; list them at /api/v1/tokens"
        )
    return token_view(await app.revoke_token(token_id))
