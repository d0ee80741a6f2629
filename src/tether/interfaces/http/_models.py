"""Request bodies and response shapes of the JSON API, as pydantic models for
``/openapi.json``.

The response models document the JSON views of :mod:`tether.interfaces._views` (the shapes
of ``tether runs --json``, ``tether show --json``, ``tether effects --json``): they allow
extra keys, since those views may grow, never shrink. Times are ISO 8601 strings in UTC.
Request bodies forbid unknown keys, so that a misspelt field is an error, not ignored.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..._records import Role

__all__ = [
    "ApprovalBody",
    "ApprovalList",
    "BudgetBody",
    "CancelBody",
    "DiffView",
    "EffectList",
    "EffectView",
    "ErrorBody",
    "ForkBody",
    "Health",
    "OverviewView",
    "ResolveBody",
    "RestartList",
    "RestartView",
    "RetryBody",
    "RunDetail",
    "RunList",
    "RunSummary",
    "SignalBody",
    "SignalSent",
    "TokenBody",
    "TokenCreated",
    "TokenList",
    "TokenView",
    "TreeView",
    "WhoAmI",
]


class _View(BaseModel):
    model_config = ConfigDict(extra="allow")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- errors -------------------------------------------------------------------------------
class ErrorDetail(_View):
    code: str = Field(description="Stable: a TetherError's code, or the server's own.")
    message: str = Field(description="What was wrong and what to do.")


class ErrorBody(BaseModel):
    error: ErrorDetail


class Health(_View):
    status: Literal["ok", "unavailable"]
    message: str | None = Field(default=None, description="Why, when unavailable.")


class WhoAmI(_View):
    name: str = Field(description="Recorded as `by` of your approvals and resolutions.")
    role: Role
    token_id: str | None
    dev: bool = Field(description="The server runs with --dev: no tokens, everyone admin.")


# -- runs ---------------------------------------------------------------------------------
class RunSummary(_View):
    """One run without its journal (`tether runs --json`)."""

    run_id: str
    workflow: str
    status: str = Field(description="pending, running, waiting, succeeded, failed, ...")
    result: Any = Field(description="The workflow's return value, once it succeeded.")
    error: Any = Field(description="Why it failed, was cancelled or needs attention.")
    parent_run_id: str | None
    created_at: str | None
    updated_at: str | None
    wake_at: str | None = Field(description="When a sleeping or waiting run wakes.")
    attempts: int
    tags: list[str] = Field(description="Labels given at start; children inherit them.")
    forked_from: str | None = Field(
        default=None, description="A fork: the run it was made from (else null)."
    )
    fork_seq: int | None = Field(
        default=None,
        description="A fork: the seq its own journal starts at; below it, the journal is "
        "the origin's, shared by reference.",
    )
    fork_replaced: bool | None = Field(
        default=None,
        description="A fork made with a replacement: its own entry at fork_seq records "
        "that output instead of the origin's.",
    )


class RunList(_View):
    runs: list[RunSummary] = Field(description="Newest first.")
    limit: int
    offset: int
    next_offset: int | None = Field(description="The offset of the next page; null if none.")


class EventEffect(_View):
    kind: str
    state: str
    idempotency_key: str | None
    attempt: int
    decision: str
    resolution: dict[str, Any] | None
    history: list[dict[str, Any] | None]
    tainted: bool
    blast_radius: str | None
    deadline: str | None = Field(description="When an approval times out.")
    on_timeout: str | None = Field(description="What then: approve or reject.")


class Event(_View):
    """One journal entry: a step, tool call, wait, sleep or child run."""

    seq: int
    kind: str
    name: str
    status: str
    input: Any = None
    output: Any = None
    error: Any = None
    started_at: str | None = None
    finished_at: str | None = None
    duration_ms: float | None = None
    attempts: int | None = None
    delivery: Any = None
    effect: EventEffect | None = Field(
        default=None, description="Only on tool events: the call's record in the effect log."
    )


class RunDetail(RunSummary):
    """One run with its arguments and journal (`tether show --json`)."""

    args: Any
    events: list[Event]


# -- effects ------------------------------------------------------------------------------
class EffectView(_View):
    """One tool call of the effect log (`tether effects --json`)."""

    run_id: str
    seq: int
    tool: str
    kind: str = Field(description="read, idempotent or irreversible")
    state: str = Field(description="intent, completed, failed, awaiting_approval, ...")
    in_doubt: bool = Field(description="An irreversible call that may or may not have happened.")
    idempotency_key: str | None
    args: Any
    result: Any
    error: Any
    blast_radius: str | None
    approval: str
    decision: str
    tainted: bool
    attempt: int
    resolution: dict[str, Any] | None = Field(description="A person's decision, with by and at.")
    history: list[dict[str, Any] | None]
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    duration_ms: float | None
    attempts: int
    deadline: str | None = Field(description="When an approval times out (null: never).")
    on_timeout: str | None = Field(description="What happens then: approve or reject.")


class EffectList(_View):
    effects: list[EffectView] = Field(
        description="In doubt first; of one run in seq order, else newest first."
    )
    limit: int
    offset: int
    next_offset: int | None


class ApprovalList(_View):
    approvals: list[EffectView] = Field(
        description="Tool calls awaiting approval, soonest deadline first, then oldest."
    )
    limit: int
    offset: int
    next_offset: int | None


# -- the roll-up --------------------------------------------------------------------------
class AttentionView(_View):
    kind: str = Field(description="approval, in_doubt, budget, nondeterminism, attention or failed")
    rank: int = Field(description="Urgency: lower first.")
    run_id: str
    workflow: str
    title: str
    since: str | None
    seq: int | None
    tool: str | None
    deadline: str | None
    action: str = Field(description="The CLI command that acts on it.")


class WorkerView(_View):
    worker_id: str
    host: str
    pid: int
    started_at: str | None
    heartbeat_at: str | None
    runs: list[RunSummary] = Field(description="The runs it holds leases on.")


class OverviewView(_View):
    counts: dict[str, int] = Field(description="Runs by status.")
    attention: list[AttentionView] = Field(description="What needs a person, most urgent first.")
    workers: list[WorkerView]
    at: str | None


# -- commands -----------------------------------------------------------------------------
class ApprovalBody(_Body):
    approved: bool = Field(strict=True, description="true approves the call, false rejects it.")
    note: str | None = Field(default=None, min_length=1, max_length=2000)


class SignalBody(_Body):
    name: str = Field(min_length=1, max_length=200, description="The signal the run waits on.")
    value: Any = Field(default=None, description="Any JSON value; the run receives it.")


class SignalSent(_View):
    run_id: str
    name: str
    run_status: str


def _finite_json(value: Any) -> Any:
    # The JSON parser takes NaN, Infinity and 1e999, which JSON has not and neither
    # database stores: a user's mistake, not the database's.
    todo = [value]
    while todo:  # without recursion: the parser allows deeper nesting than Python
        item = todo.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"{item} is not a JSON number; give a finite one")
        if isinstance(item, dict):
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)
    return value


class ResolveBody(_Body):
    action: Literal["done", "retry", "abort"] = Field(
        description="done: it happened (give its result); retry: it did not, make it "
        "again with the same idempotency key; abort: do not make it."
    )
    result: Any = Field(default=None, description="With done: what the call returned.")
    reason: str = Field(min_length=1, max_length=2000, description="How you know; recorded.")

    @field_validator("result")
    @classmethod
    def _finite(cls, value: Any) -> Any:
        return _finite_json(value)


class BudgetBody(_Body):
    model_config = ConfigDict(
        extra="forbid",
        # At least one of the two, not null: what the validator below checks, documented.
        json_schema_extra={
            "anyOf": [
                {"required": ["tokens"], "properties": {"tokens": {"type": "integer"}}},
                {"required": ["cost_usd"], "properties": {"cost_usd": {"type": "number"}}},
            ]
        },
    )

    tokens: int | None = Field(default=None, gt=0, description="The new token limit (total).")
    cost_usd: float | None = Field(
        default=None, gt=0, allow_inf_nan=False, description="The new cost limit in USD."
    )

    @field_validator("tokens", "cost_usd", mode="before")
    @classmethod
    def _a_number(cls, value: Any) -> Any:
        # JSON numbers only (2.0 is a whole number too), not "5" or true.
        if isinstance(value, bool) or not isinstance(value, int | float | None):
            raise ValueError(f"must be a number, not {value!r}")
        return value

    @model_validator(mode="after")
    def _some(self) -> BudgetBody:
        if self.tokens is None and self.cost_usd is None:
            raise ValueError("give the new budget: tokens, cost_usd or both")
        return self


class CancelBody(_Body):
    reason: str | None = Field(
        default=None, min_length=1, max_length=2000, description="Why; recorded as its error."
    )


# -- forks and retries --------------------------------------------------------------------
MAX_SEQ = 2_147_483_647  # an INTEGER column on PostgreSQL


def _whole_number(value: Any) -> Any:
    # JSON numbers only (3.0 is a whole number too, as JSON Schema says), not "3" or true.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"must be a whole number, not {value!r}")
    return value


class ForkBody(_Body):
    at_seq: int = Field(
        ge=1,
        le=MAX_SEQ,
        description="The fork shares the origin's entries below this seq and goes on from "
        "it: from 1 to one past the journal's end (the next call the origin would make).",
    )
    replace: Any = Field(
        default=None,
        description="Optional: the output to record at at_seq instead (JSON), after which "
        "the fork continues. For a model call: the answer's text, an assistant message "
        '({"role": "assistant", "content": ..., "tool_calls": [...]}) or a whole model '
        "output; for a step or tool: a value of its return type (or of the recorded "
        "output's JSON shape). Null or left out: the entry at at_seq runs afresh.",
    )
    run_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=500,
        description="The new run's id (else one is made). Idempotent: the same fork again "
        "answers the run it made (200).",
    )

    @field_validator("replace")
    @classmethod
    def _finite(cls, value: Any) -> Any:
        return _finite_json(value)

    @field_validator("at_seq", mode="before")
    @classmethod
    def _a_number(cls, value: Any) -> Any:
        return _whole_number(value)


class RetryBody(_Body):
    from_seq: int = Field(
        ge=1,
        le=MAX_SEQ,
        description="Entries from this seq on are set aside (kept for the audit) and the "
        "run executes afresh from it; those before it are kept and replayed.",
    )
    reason: str | None = Field(
        default=None,
        min_length=1,
        max_length=2000,
        description="Why (the code fix, say); recorded with the restart.",
    )

    @field_validator("from_seq", mode="before")
    @classmethod
    def _a_number(cls, value: Any) -> Any:
        return _whole_number(value)


class DiscardedEntry(_View):
    seq: int
    kind: str
    name: str
    status: str


class RestartView(_View):
    """One retry in place of a run."""

    restart: int = Field(description="1 for the run's first restart, then 2, ...")
    from_seq: int
    at: str | None = Field(description="When it was restarted.")
    by: str | None = Field(description="Who restarted it.")
    reason: str | None
    status: str | None = Field(description="The run's status when it was restarted.")
    error: Any = Field(description="The run's error then.")
    discarded: list[DiscardedEntry] = Field(
        description="The entries set aside (kept for the audit, never replayed)."
    )


class RestartList(_View):
    run_id: str
    restarts: list[RestartView] = Field(description="Oldest first.")


class TreeRun(RunSummary):
    """A run of a fork tree: its summary, its depth and its direct forks."""

    depth: int = Field(description="0 for the root, 1 for its forks, ...")
    forks: list[str] = Field(description="The ids of the runs forked from it, by fork point.")
    current: bool = Field(description="Whether it is the run asked about.")


class TreeView(_View):
    """The tree of forks that holds a run, from its root (the run no fork made)."""

    run_id: str = Field(description="The run asked about.")
    root_run_id: str
    truncated: bool = Field(description="More than 1000 runs: some forks are left out.")
    runs: list[TreeRun] = Field(description="Depth first: a run before its forks.")


class DiffSide(_View):
    """One run's entry at a seq where the two differ (an event, plus what follows)."""

    seq: int
    kind: str
    name: str
    status: str
    run_id: str = Field(description="Whose row it is: the run's own, or its origin's.")
    shared: bool = Field(description="A row of the run's origin, shared by reference.")
    summary: str = Field(description="One line on what it did.")
    model: dict[str, Any] | None = Field(
        default=None, description="A model call: its text, tool_calls, and replaced."
    )
    effect: dict[str, Any] | None = Field(
        default=None, description="A tool call: its record in the effect log."
    )


class DiffChange(_View):
    seq: int
    what: str = Field(description="model, tool, wait, step, or mixed (different kinds).")
    differs: list[str] = Field(
        description="What differs: missing, kind, name, tool, status, error, text, "
        "tool_calls, request, args, result, state, input, output."
    )
    a: DiffSide | None = Field(description="Run a's entry (null: it has none here).")
    b: DiffSide | None = Field(description="Run b's entry (null: it has none here).")


class DiffOutcome(_View):
    differs: list[str] = Field(description="Of status, result, error.")
    a: dict[str, Any]
    b: dict[str, Any]


class DiffView(_View):
    """Two runs compared (`tether diff --json`)."""

    a: RunSummary
    b: RunSummary
    same: bool = Field(description="Same journals and the same end.")
    shared_entries: int = Field(description="Entries that are one row shared by reference.")
    same_before: int = Field(description="Entries before the first divergent seq.")
    first_divergent_seq: int | None = Field(description="Null: the journals are the same.")
    changes: list[DiffChange] = Field(description="Each seq that differs, from the first.")
    outcome: DiffOutcome


# -- tokens -------------------------------------------------------------------------------
class TokenView(_View):
    token_id: str
    name: str
    role: Role
    created_at: str | None
    created_by: str | None
    last_used_at: str | None
    revoked_at: str | None
    active: bool


class TokenList(_View):
    tokens: list[TokenView]


class TokenBody(_Body):
    role: Role
    name: str | None = Field(default=None, min_length=1, max_length=100)


class TokenCreated(_View):
    token: TokenView
    secret: str = Field(description="Shown once: send it as 'Authorization: Bearer <secret>'.")
