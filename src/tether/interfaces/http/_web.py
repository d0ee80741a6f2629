"""The web UI: server-rendered pages (Jinja2) made live with htmx, no build step.

Pages: ``/`` (the roll-up), ``/runs``, ``/runs/{run_id}`` (the trajectory), ``/approvals``,
``/login`` and ``/logout``. Each live page polls a fragment of itself under ``/ui/...``
every two seconds. Actions are form posts under ``/ui/...`` (approve or reject, resolve an
in-doubt call, raise a budget); htmx sends them with the CSRF header and swaps the answer
in place, and without JavaScript they still work as plain forms (303 back to the page).

Who may do what is :mod:`._auth`'s business: pages need the viewer role and actions the
approver role; a viewer sees no action buttons. Errors are answered by the server's
handlers, which call :func:`error_page`: a page, or for htmx a message in ``#flash``.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

import jinja2
from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from ..._errors import BudgetExceededError, RunNotFoundError, StorageError, TetherError
from ..._records import EffectState, Role, Run, RunStatus
from .._lineage import diff_runs, diff_view, fork_tree
from ._auth import (
    Principal,
    clear_token_cookie,
    csrf_token,
    is_dev,
    require,
    set_token_cookie,
    tether_app,
    verify_csrf,
)
from ._errors import ApiError, status_of
from ._webview import (
    Refusal,
    TreeRow,
    budget_suggestion,
    child_ids,
    install_filters,
    requested,
    run_note,
    timeline,
    tree_rows,
)

__all__ = ["error_page", "router"]

TEMPLATES = Path(__file__).resolve().parent / "templates"
EVERY = 1_000_000_000  # a limit for list_effects that means all of a run's effects
# A recorded output longer than this (as JSON text) is not put into a fork form to edit.
MAX_EDIT = 50_000
MAX_FORKS_SHOWN = 20  # a run page lists this many forks; the branch view has them all
MAX_SEQ = 2_147_483_647
PAGE_SIZE = 50

router = APIRouter(include_in_schema=False)

Viewer = Annotated[Principal, Depends(require(Role.VIEWER))]
Approver = Annotated[Principal, Depends(require(Role.APPROVER))]


def _dom_id(prefix: str, run_id: str, seq: int | None = None) -> str:
    """An HTML id for a run's element, safe in CSS selectors whatever the run id holds."""
    digest = hashlib.sha256(run_id.encode()).hexdigest()[:12]
    return f"{prefix}-{digest}" + ("" if seq is None else f"-{seq}")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    install_filters(env)
    env.globals.update(dom_id=_dom_id, requested=requested, max_edit=MAX_EDIT)
    return env


templates = Jinja2Templates(env=_environment())

# Pages hold what a token may read: never cache them.
NO_STORE = {"Cache-Control": "no-store"}


def _is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


async def _context(request: Request, who: Principal, page: str, **extra: Any) -> dict[str, Any]:
    """What every page and fragment needs: who asks, what they may do, the CSRF token and
    the number of calls awaiting approval (the navigation shows it)."""
    approvals = await tether_app(request).list_approvals(limit=100)
    base = {
        "who": who,
        "page": page,
        "dev": is_dev(request),
        "csrf": csrf_token(request),
        "can_act": who.role.allows(Role.APPROVER),
        "approvals_count": len(approvals),
        "fragment": False,
        "oob": False,
    }
    return base | extra


def _render(
    request: Request,
    name: str,
    context: dict[str, Any],
    status_code: int = 200,
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    return templates.TemplateResponse(
        request, name, context, status_code=status_code, headers=NO_STORE | (headers or {})
    )


def error_page(request: Request, status_code: int, message: str) -> Response:
    """The server's error handlers answer HTML requests with this: a page, or for an htmx
    request a message swapped into the page's ``#flash`` slot (the form keeps its input)."""
    if _is_htmx(request):
        html = templates.get_template("_flash.html").render(ok=False, message=message)
        headers = NO_STORE | {"HX-Retarget": "#flash", "HX-Reswap": "innerHTML"}
        return HTMLResponse(html, status_code=status_code, headers=headers)
    heading = {
        400: "That did not work",
        403: "Not allowed",
        404: "Not found",
        409: "Not now",
        422: "Bad request",
        503: "Unavailable",
    }.get(status_code, "Something went wrong")
    who = getattr(request.state, "principal", None)
    context = {
        "who": who,
        "page": None,
        "dev": is_dev(request),
        "csrf": csrf_token(request),
        "can_act": False,
        "approvals_count": 0,
        "oob": False,
        "heading": heading,
        "status_code": status_code,
        "message": message,
    }
    return _render(request, "error.html", context, status_code=status_code)


# -- overview -----------------------------------------------------------------------------
@router.get("/", response_class=HTMLResponse)
async def overview_page(request: Request, who: Viewer) -> Response:
    overview = await tether_app(request).overview()
    context = await _context(request, who, "overview", overview=overview)
    return _render(request, "overview.html", context)


@router.get("/ui/overview", response_class=HTMLResponse)
async def overview_fragment(request: Request, who: Viewer) -> Response:
    overview = await tether_app(request).overview()
    context = await _context(request, who, "overview", overview=overview, fragment=True)
    return _render(request, "_overview.html", context)


# -- runs ---------------------------------------------------------------------------------
Limit = Annotated[int, Query(ge=1, le=500)]
Offset = Annotated[int, Query(ge=0, le=1_000_000_000)]


async def _runs_context(
    request: Request,
    who: Principal,
    status: str,
    workflow: str,
    tag: str,
    limit: int,
    offset: int,
    fragment: bool,
) -> dict[str, Any]:
    filters = {"status": status.strip(), "workflow": workflow.strip(), "tag": tag.strip()}
    error = None
    runs: list[Run] = []
    if filters["status"] and filters["status"] not in {s.value for s in RunStatus}:
        known = ", ".join(s.value for s in RunStatus)
        error = f"there is no status {filters['status']!r}; pick one of {known}"
    else:
        runs = await tether_app(request).list_runs(
            status=filters["status"] or None,
            workflow=filters["workflow"] or None,
            tag=filters["tag"] or None,
            limit=limit + 1,
            offset=offset,
        )
    has_more = len(runs) > limit
    runs = runs[:limit]
    kept = {key: value for key, value in filters.items() if value}

    def query(at: int) -> str:
        return urlencode(kept | {"limit": limit} | ({"offset": at} if at else {}))

    return await _context(
        request,
        who,
        "runs",
        runs=runs,
        details={run.run_id: run_note(run) for run in runs},
        filters=filters,
        error=error,
        limit=limit,
        offset=offset,
        has_more=has_more,
        query=query(offset),
        prev_query=query(max(0, offset - limit)),
        next_query=query(offset + limit),
        fragment=fragment,
    )


@router.get("/runs", response_class=HTMLResponse)
async def runs_page(
    request: Request,
    who: Viewer,
    status: str = "",
    workflow: str = "",
    tag: str = "",
    limit: Limit = PAGE_SIZE,
    offset: Offset = 0,
) -> Response:
    context = await _runs_context(request, who, status, workflow, tag, limit, offset, False)
    return _render(request, "runs.html", context)


@router.get("/ui/runs", response_class=HTMLResponse)
async def runs_fragment(
    request: Request,
    who: Viewer,
    status: str = "",
    workflow: str = "",
    tag: str = "",
    limit: Limit = PAGE_SIZE,
    offset: Offset = 0,
) -> Response:
    context = await _runs_context(request, who, status, workflow, tag, limit, offset, True)
    return _render(request, "_runs.html", context)


# -- one run ------------------------------------------------------------------------------
async def _run_context(
    request: Request,
    who: Principal,
    run_id: str,
    *,
    fragment: bool,
    refused: Refusal | None = None,
) -> dict[str, Any]:
    app = tether_app(request)
    run = await app.get_run(run_id)
    entries = await app.get_journal(run_id)
    effects = await app.list_effects(run_id, limit=EVERY)
    # A fork's prefix is its origin's rows: their tool calls are in the origin's log.
    shown = list(effects)
    for owner in sorted({e.run_id for e in entries if e.kind == "tool"} - {run_id}):
        try:
            shown += await app.list_effects(owner, limit=EVERY)
        except RunNotFoundError:
            continue
    order = child_ids(entries)
    children: dict[str, Run] = {}
    for child_id in order:
        try:
            children[child_id] = await app.get_run(child_id)
        except RunNotFoundError:
            continue  # the entry is written with the child; a missing one shows as a link
    items = timeline(entries, shown, children, run)
    approvals = [e for e in effects if e.state is EffectState.AWAITING_APPROVAL]
    in_doubt = [e for e in effects if e.state is EffectState.IN_DOUBT]
    error = run.error if run.status is RunStatus.NEEDS_ATTENTION else None
    budget = None
    if isinstance(error, dict) and error.get("code") == BudgetExceededError.code:
        budget = budget_suggestion(run)
    todo = None
    if approvals or in_doubt or budget:
        todo = {"approvals": approvals, "in_doubt": in_doubt, "budget": budget}
    # What this run spent: a fork's shared prefix is its origin's spending, counted apart.
    models = {"calls": 0, "tokens": 0, "cost": 0.0, "shared": 0}
    for item in items:
        if item.model is not None and item.shared:
            models["shared"] += 1
        elif item.model is not None and not item.replaced:  # a person's, not a model's
            models["calls"] += 1
            models["tokens"] += item.model.input_tokens + item.model.output_tokens
            models["cost"] += item.model.cost_usd or 0.0
    origin = None
    if run.forked_from is not None:
        try:
            origin = await app.get_run(run.forked_from)
        except RunNotFoundError:
            origin = None
    forks = await app.list_runs(forked_from=run_id, limit=MAX_FORKS_SHOWN + 1)
    return await _context(
        request,
        who,
        "runs",
        run=run,
        items=items,
        children=children,
        child_order=order,
        todo=todo,
        models=models,
        origin=origin,
        forks=forks,
        restarts=await app.list_restarts(run_id),
        retryable=run.status in (RunStatus.FAILED, RunStatus.NEEDS_ATTENTION),
        refused=refused,
        fragment=fragment,
    )


@router.get("/runs/{run_id:path}", response_class=HTMLResponse)
async def run_page(request: Request, who: Viewer, run_id: str) -> Response:
    context = await _run_context(request, who, run_id, fragment=False)
    return _render(request, "run.html", context)


@router.get("/ui/runs/{run_id:path}/timeline", response_class=HTMLResponse)
async def run_fragment(request: Request, who: Viewer, run_id: str) -> Response:
    context = await _run_context(request, who, run_id, fragment=True)
    return _render(request, "_run.html", context)


# -- approvals ----------------------------------------------------------------------------
async def _approvals_context(request: Request, who: Principal, fragment: bool) -> dict[str, Any]:
    app = tether_app(request)
    approvals = await app.list_approvals(limit=100)
    workflows: dict[str, str] = {}
    for effect in approvals:
        if effect.run_id not in workflows:
            try:
                workflows[effect.run_id] = (await app.get_run(effect.run_id)).workflow
            except RunNotFoundError:
                workflows[effect.run_id] = ""
    return await _context(
        request,
        who,
        "approvals",
        approvals=approvals,
        workflows=workflows,
        fragment=fragment,
        decided=None,
        error=None,
    )


@router.get("/approvals", response_class=HTMLResponse)
async def approvals_page(request: Request, who: Viewer) -> Response:
    return _render(request, "approvals.html", await _approvals_context(request, who, False))


@router.get("/ui/approvals", response_class=HTMLResponse)
async def approvals_fragment(request: Request, who: Viewer) -> Response:
    return _render(request, "_approvals.html", await _approvals_context(request, who, True))


# -- actions ------------------------------------------------------------------------------
def _seq(text: str) -> int:
    try:
        seq = int(text)
    except ValueError:
        seq = 0
    if not 1 <= seq <= MAX_SEQ:
        raise ApiError(422, "invalid_request", f"seq must be a whole number >= 1, not {text!r}")
    return seq


def _local_path(target: str, fallback: str = "/") -> str:
    """``target`` if it is a path on this server (never another site), else ``fallback``."""
    if target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return fallback


def _run_url(run_id: str) -> str:
    return "/runs/" + quote(run_id, safe="")


async def _after_run_action(
    request: Request, who: Principal, run_id: str, message: str, *, retarget: bool = False
) -> Response:
    """An action on the run page done: the run's live region again, and a note in #flash.
    ``retarget``: the form aimed its answer elsewhere (its own message slot, for a
    refusal), so say where the region goes."""
    if not _is_htmx(request):
        return RedirectResponse(_run_url(run_id), status_code=303)
    context = await _run_context(request, who, run_id, fragment=True)
    region = templates.get_template("_run.html").render(context | {"request": request})
    flash = templates.get_template("_flash.html").render(ok=True, message=message, oob=True)
    headers = NO_STORE
    if retarget:
        headers = headers | {"HX-Retarget": "#run-live", "HX-Reswap": "outerHTML"}
    return HTMLResponse(region + flash, headers=headers)


@router.post("/ui/approve", response_class=HTMLResponse)
async def approve_action(
    request: Request,
    who: Approver,
    run_id: Annotated[str, Form(min_length=1, max_length=500)],
    seq: Annotated[str, Form()],
    decision: Annotated[str, Form()] = "approve",
    note: Annotated[str, Form(max_length=2000)] = "",
    source: Annotated[str, Form()] = "approvals",
) -> Response:
    if decision not in ("approve", "reject"):
        raise ApiError(
            422, "invalid_request", f"decision must be approve or reject, not {decision!r}"
        )
    approved = decision == "approve"
    effect = await tether_app(request).approve(
        run_id, _seq(seq), approved=approved, by=who.name, note=note.strip() or None
    )
    verb = "Approved" if approved else "Rejected"
    if source == "run":
        return await _after_run_action(
            request, who, run_id, f"{verb} {effect.tool} (seq {effect.seq})."
        )
    if not _is_htmx(request):
        return RedirectResponse("/approvals", status_code=303)
    context = await _context(
        request,
        who,
        "approvals",
        effect=effect,
        decided={"approved": approved, "by": who.name, "note": note.strip() or None},
        workflows={},
        error=None,
    )
    return _render(request, "_approval.html", context)


@router.post("/ui/resolve", response_class=HTMLResponse)
async def resolve_action(
    request: Request,
    who: Approver,
    run_id: Annotated[str, Form(min_length=1, max_length=500)],
    seq: Annotated[str, Form()],
    action: Annotated[str, Form()],
    reason: Annotated[str, Form(max_length=2000)] = "",
    result: Annotated[str, Form(max_length=1_000_000)] = "",
) -> Response:
    if not reason.strip():
        raise ApiError(
            422, "invalid_request", "say how you know in 'How you know': it goes on the record"
        )
    value: Any = None
    if result.strip():
        if action != "done":
            raise ApiError(
                422,
                "invalid_request",
                f"a result goes only with 'It happened', not with {action!r}: clear the result",
            )
        value = _json_result(result)
    effect = await tether_app(request).resolve(
        run_id, _seq(seq), action, result=value, by=who.name, reason=reason.strip()
    )
    said = {"done": "it happened", "retry": "make it again", "abort": "do not make it"}
    return await _after_run_action(
        request,
        who,
        run_id,
        f"Resolved {effect.tool} (seq {effect.seq}): {said.get(action, action)}.",
    )


def _not_finite(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is too large a number to store")
    return value


def _json_result(text: str) -> Any:
    """The result a person typed for "It happened", as JSON (422 if it is not JSON)."""
    return _json_value(text, "the result", 'e.g. {"message_id": "m-42"} or "sent"')


def _json_value(text: str, what: str, examples: str) -> Any:
    """JSON a person typed into a form (422 naming ``what`` if it is not JSON)."""
    example = f"write it as JSON, {examples}"
    try:
        return json.loads(text, parse_constant=_not_finite, parse_float=_finite)
    except json.JSONDecodeError as exc:
        raise ApiError(
            422,
            "invalid_request",
            f"{what} is not valid JSON ({exc.msg} at character {exc.pos}); {example}",
        ) from None
    except ValueError as exc:  # NaN or Infinity, which JSON has not
        raise ApiError(422, "invalid_request", f"{what}: {exc}; {example}") from None
    except RecursionError:
        raise ApiError(
            422, "invalid_request", f"{what} is nested too deeply to store; {example}"
        ) from None


def _number(text: str, what: str, kind: type[int] | type[float]) -> Any:
    text = text.strip()
    if not text:
        return None
    try:
        value = kind(text)
    except ValueError:
        whole = "a whole number" if kind is int else "a number"
        raise ApiError(422, "invalid_request", f"{what} must be {whole}, not {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ApiError(422, "invalid_request", f"{what} must be a finite number, not {text!r}")
    return value


@router.post("/ui/budget", response_class=HTMLResponse)
async def budget_action(
    request: Request,
    who: Approver,
    run_id: Annotated[str, Form(min_length=1, max_length=500)],
    tokens: Annotated[str, Form(max_length=40)] = "",
    cost_usd: Annotated[str, Form(max_length=40)] = "",
) -> Response:
    new_tokens = _number(tokens, "tokens", int)
    new_cost = _number(cost_usd, "cost in USD", float)
    await tether_app(request).raise_budget(
        run_id, tokens=new_tokens, cost_usd=new_cost, by=who.name
    )
    given = [f"{new_tokens:,} tokens" if new_tokens else "", f"${new_cost}" if new_cost else ""]
    return await _after_run_action(
        request,
        who,
        run_id,
        f"Budget raised to {' and '.join(g for g in given if g)}; the run resumes.",
    )


# -- forks and retries ------------------------------------------------------------------
def _text(value: str) -> str:
    """A textarea's text as typed: browsers send its line breaks as CRLF."""
    return value.replace("\r\n", "\n")


async def _refused(
    request: Request, who: Principal, run_id: str, refusal: Refusal, status_code: int
) -> Response:
    """A fork or retry the App refused: the message next to the form that asked, which
    keeps what was typed (htmx swaps only the message in; a plain form post gets the run
    page again with the form open, its values kept)."""
    if _is_htmx(request):
        html = templates.get_template("_refusal.html").render(refusal=refusal)
        return HTMLResponse(html, status_code=status_code, headers=NO_STORE)
    context = await _run_context(request, who, run_id, fragment=False, refused=refusal)
    return _render(request, "run.html", context, status_code=status_code)


def _refusal_status(exc: Exception) -> int:
    if isinstance(exc, ApiError):
        return exc.status_code
    assert isinstance(exc, TetherError)
    return status_of(exc)


@router.post("/ui/fork", response_class=HTMLResponse)
async def fork_action(
    request: Request,
    who: Approver,
    run_id: Annotated[str, Form(min_length=1, max_length=500)],
    seq: Annotated[str, Form()],
    mode: Annotated[str, Form()] = "replace",
    answer: Annotated[str | None, Form(max_length=1_000_000)] = None,
    replace: Annotated[str | None, Form(max_length=1_000_000)] = None,
) -> Response:
    """Fork ``run_id`` at ``seq``: ``mode=replace`` records ``answer`` (a model's text)
    or ``replace`` (JSON) there instead and goes on after it; ``mode=rerun`` runs the
    entry again. Then the new run's page."""
    at = _seq(seq)
    values = {"answer": _text(answer or ""), "replace": _text(replace or "")}
    app = tether_app(request)
    try:
        value: Any = None
        if mode == "replace":
            value = _replacement(values["answer"] if answer is not None else None, replace)
        elif mode != "rerun":
            raise ApiError(422, "invalid_request", f"mode must be replace or rerun, not {mode!r}")
        handle = await app.fork(run_id, at, value)
    except (ApiError, TetherError) as exc:
        if isinstance(exc, RunNotFoundError | StorageError):
            raise
        refusal = Refusal("fork", at, _refusal_message(exc), values)
        return await _refused(request, who, run_id, refusal, _refusal_status(exc))
    target = _run_url(handle.run_id)
    if _is_htmx(request):
        return Response(status_code=200, headers=NO_STORE | {"HX-Redirect": target})
    return RedirectResponse(target, status_code=303)


def _refusal_message(exc: Exception) -> str:
    return exc.message if isinstance(exc, ApiError | TetherError) else str(exc)


def _replacement(answer: str | None, replace: str | None) -> Any:
    """What a fork form asks to record: a model's answer as text, or JSON."""
    again = "or use 'Fork and run it again' to make the call afresh"
    if answer is not None:
        if not answer.strip():
            raise ApiError(
                422,
                "invalid_request",
                f"the answer is empty: write the answer the model should have given, {again}",
            )
        return answer.strip()
    if replace is None or not replace.strip():
        raise ApiError(
            422,
            "invalid_request",
            f"the replacement is empty: write the output to record, as JSON, {again}",
        )
    value = _json_value(replace, "the replacement", 'e.g. {"total": 42} or "approved"')
    if value is None:
        raise ApiError(
            422,
            "invalid_request",
            f"null is no replacement: write the output to record, as JSON, {again}",
        )
    return value


@router.post("/ui/retry", response_class=HTMLResponse)
async def retry_action(
    request: Request,
    who: Approver,
    run_id: Annotated[str, Form(min_length=1, max_length=500)],
    seq: Annotated[str, Form()],
    reason: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    """Retry a failed or needs_attention run in place from ``seq``."""
    at = _seq(seq)
    try:
        await tether_app(request).retry(run_id, at, by=who.name, reason=reason.strip() or None)
    except TetherError as exc:
        if isinstance(exc, RunNotFoundError | StorageError):
            raise
        refusal = Refusal("retry", at, exc.message, {"reason": reason})
        return await _refused(request, who, run_id, refusal, status_of(exc))
    return await _after_run_action(
        request,
        who,
        run_id,
        f"Retrying from seq {at}: the entries from it on are set aside (kept below) and the "
        "run goes on from there on the next worker.",
        retarget=True,
    )


# -- lineage: the branch view and the diff -----------------------------------------------
async def _tree_context(
    request: Request, who: Principal, run_id: str, *, fragment: bool
) -> dict[str, Any]:
    tree = await fork_tree(tether_app(request), run_id)
    rows = tree_rows(tree)
    live = any(not row.run.status.is_terminal for row in rows)
    current = next((row for row in rows if row.current), None)
    if current is None:  # a tree past MAX_TREE runs may leave the run asked about out
        run = await tether_app(request).get_run(run_id)
        current = TreeRow(run, 0, True, run.forked_from, 0)
    # The compare form starts on the run asked about and its origin (or its first fork).
    if current.origin is not None:
        compare = (current.origin, current.run.run_id)
    else:
        first = next((row for row in rows if row.origin == current.run.run_id), current)
        compare = (current.run.run_id, first.run.run_id)
    return await _context(
        request,
        who,
        "runs",
        tree=tree,
        rows=rows,
        current=current.run,
        compare=compare,
        live=live,
        fragment=fragment,
    )


@router.get("/tree/{run_id:path}", response_class=HTMLResponse)
async def tree_page(request: Request, who: Viewer, run_id: str) -> Response:
    context = await _tree_context(request, who, run_id, fragment=False)
    return _render(request, "tree.html", context)


@router.get("/ui/tree/{run_id:path}", response_class=HTMLResponse)
async def tree_fragment(request: Request, who: Viewer, run_id: str) -> Response:
    context = await _tree_context(request, who, run_id, fragment=True)
    return _render(request, "_tree.html", context)


DiffId = Annotated[str, Query(min_length=1, max_length=500)]


async def _diff_context(
    request: Request, who: Principal, a: str, b: str, *, fragment: bool
) -> dict[str, Any]:
    diff = await diff_runs(tether_app(request), a, b)
    view = diff_view(diff)
    live = not (diff.a.status.is_terminal and diff.b.status.is_terminal)
    return await _context(
        request,
        who,
        "runs",
        diff=diff,
        view=view,
        a=diff.a,
        b=diff.b,
        query=urlencode({"a": a, "b": b}),
        swapped=urlencode({"a": b, "b": a}),
        live=live,
        fragment=fragment,
    )


@router.get("/diff", response_class=HTMLResponse)
async def diff_page(request: Request, who: Viewer, a: DiffId, b: DiffId) -> Response:
    context = await _diff_context(request, who, a, b, fragment=False)
    return _render(request, "diff.html", context)


@router.get("/ui/diff", response_class=HTMLResponse)
async def diff_fragment(request: Request, who: Viewer, a: DiffId, b: DiffId) -> Response:
    context = await _diff_context(request, who, a, b, fragment=True)
    return _render(request, "_diff.html", context)


# -- login --------------------------------------------------------------------------------
def _login_form(
    request: Request, next_path: str, error: str | None = None, status_code: int = 200
) -> Response:
    context = {
        "who": None,
        "page": "login",
        "dev": False,
        "csrf": csrf_token(request),
        "can_act": False,
        "approvals_count": 0,
        "oob": False,
        "next": next_path,
        "error": error,
    }
    return _render(request, "login.html", context, status_code=status_code)


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request, next: str = "/") -> Response:
    target = _local_path(next)
    if is_dev(request):
        return RedirectResponse(target, status_code=303)
    return _login_form(request, target)


@router.post("/login", response_class=HTMLResponse)
async def login(
    request: Request,
    token: Annotated[str, Form(max_length=4096)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/",
) -> Response:
    await verify_csrf(request)
    target = _local_path(next)
    if is_dev(request):
        return RedirectResponse(target, status_code=303)
    secret = token.strip()
    if not secret:
        return _login_form(request, target, "Paste a token first.", 400)
    found = await tether_app(request).check_token(secret) if len(secret) <= 512 else None
    if found is None:
        return _login_form(
            request,
            target,
            "That token is unknown or revoked. Check that you copied all of it, or ask an "
            "admin for a new one ('tether token create --role approver').",
            401,
        )
    response = RedirectResponse(target, status_code=303)
    set_token_cookie(response, request, secret)
    return response


@router.get("/logout", response_class=HTMLResponse)
async def logout_page(request: Request) -> Response:
    """A page with the logout button: a GET changes nothing, or any site could log a
    browser out with a link or an image."""
    if is_dev(request):
        return RedirectResponse("/", status_code=303)
    context = {
        "who": None,
        "page": "logout",
        "dev": False,
        "csrf": csrf_token(request),
        "can_act": False,
        "approvals_count": 0,
        "oob": False,
    }
    return _render(request, "logout.html", context)


@router.post("/logout", response_class=HTMLResponse)
async def logout(request: Request) -> Response:
    await verify_csrf(request)
    response = RedirectResponse("/" if is_dev(request) else "/login", status_code=303)
    clear_token_cookie(response)
    return response
