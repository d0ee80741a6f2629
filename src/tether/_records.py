"""Records shared by the storage and engine layers (frozen dataclasses)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ApiToken",
    "AttentionItem",
    "Decision",
    "Effect",
    "EffectRecord",
    "EffectState",
    "EntryStatus",
    "JournalEntry",
    "Overview",
    "Role",
    "Run",
    "RunState",
    "RunStatus",
    "Signal",
    "WorkerActivity",
]


class RunStatus(enum.StrEnum):
    """Where a run is in its life. The string values are part of the public contract."""

    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    NEEDS_ATTENTION = "needs_attention"

    def __str__(self) -> str:
        return self.value

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED})


class Effect(enum.StrEnum):
    """What a tool does to the outside world (DESIGN section 4)."""

    READ = "read"
    IDEMPOTENT = "idempotent"
    IRREVERSIBLE = "irreversible"

    def __str__(self) -> str:
        return self.value


class Decision(enum.StrEnum):
    """The agency dial (DESIGN section 6): what happens when a tool is called."""

    AUTO = "auto"  # call it
    NOTIFY = "notify"  # call it, and tell a person
    APPROVE = "approve"  # wait for a person to approve this one call
    DENY = "deny"  # never call it

    def __str__(self) -> str:
        return self.value


class EntryStatus(enum.StrEnum):
    """A journal entry is ``completed`` (output) or ``failed`` (error) once sealed;
    ``waiting`` marks a durable wait that is recorded but not resolved yet; ``intent``
    marks a tool call that may be in flight (its intent is committed, its completion not)."""

    COMPLETED = "completed"
    FAILED = "failed"
    WAITING = "waiting"
    INTENT = "intent"

    def __str__(self) -> str:
        return self.value


class EffectState(enum.StrEnum):
    """Where one tool call stands in the effect log."""

    AWAITING_APPROVAL = "awaiting_approval"  # intent recorded; a person must approve
    INTENT = "intent"  # the call may be in flight: intent committed, completion not
    IN_DOUBT = "in_doubt"  # an irreversible call that may or may not have happened
    RESOLVED = "resolved"  # a person decided; the run carries the decision out next
    COMPLETED = "completed"
    FAILED = "failed"
    # The run ended (cancelled, failed) before the call completed: nothing will settle it.
    # Whether an irreversible call of this state happened is unknown.
    ABANDONED = "abandoned"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class Run:
    """One execution of a workflow, as stored."""

    run_id: str
    workflow: str
    status: RunStatus
    args: Any  # decoded JSON: {"args": [...], "kwargs": {...}}
    result: Any = None  # decoded JSON of the return value when succeeded
    error: dict[str, Any] | None = None  # {"type", "message", ...} when failed/needs_attention
    parent_run_id: str | None = None
    parent_seq: int | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    wake_at: float | None = None
    lease_owner: str | None = None
    lease_expires_at: float | None = None
    fence: int = 0
    attempts: int = 0
    tags: tuple[str, ...] = ()  # labels given at start (app.start(tags=)), inherited by children
    # A fork: the run it was made from, and the seq its own journal starts at (below it,
    # the journal is the origin's, shared by reference).
    forked_from: str | None = None
    fork_seq: int | None = None
    fork_replaced: bool = False  # its own entry at fork_seq is a replaced output


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One durable call of a run, at position ``seq``."""

    run_id: str
    seq: int
    kind: str  # step | tool | sleep | signal | child | now | uuid | random
    name: str
    status: EntryStatus
    input: Any = None
    output: Any = None
    error: dict[str, Any] | None = None
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 1
    # The order in which the run resumed from its completed calls; replay releases
    # recorded results in this order so concurrent branches renumber identically.
    delivery: int | None = None
    # How many completions had been handed back when this call was made.
    after_delivery: int | None = None
    # Where the seq counter stood when that completion resumed the run.
    after_seq: int | None = None


@dataclass(frozen=True, slots=True)
class Signal:
    """A message delivered to a run's mailbox, consumed in order by ``ctx.wait_signal``."""

    id: int
    run_id: str
    name: str
    value: Any
    created_at: float
    consumed_seq: int | None = None


@dataclass(frozen=True, slots=True)
class EffectRecord:
    """One tool call in the effect log: its intent, its completion, and what people did."""

    run_id: str
    seq: int
    tool: str
    kind: Effect
    state: EffectState
    idempotency_key: str
    args: Any  # decoded JSON; secret parameters appear only as keyed hashes
    result: Any = None
    error: dict[str, Any] | None = None
    blast_radius: str | None = None
    approval: Decision = Decision.AUTO  # what the tool declared
    decision: Decision = Decision.AUTO  # what the policy decided for this call
    tainted: bool = False  # the run had read untrusted content before this call
    attempt: int = 1  # calls the engine authorized (a rerun after a crash adds one)
    resolution: dict[str, Any] | None = None  # a person's pending decision
    history: list[dict[str, Any]] = field(default_factory=list)
    created_at: float = 0.0  # when the intent was first recorded
    started_at: float | None = None  # when the latest call was authorized
    finished_at: float | None = None
    attempts: int = 1  # tries of the last call (retries with backoff)
    # An approval's deadline (epoch seconds) and what happens then: "approve" or "reject".
    deadline: float | None = None
    on_timeout: str | None = None

    @property
    def in_doubt(self) -> bool:
        return self.state is EffectState.IN_DOUBT


@dataclass(frozen=True, slots=True)
class RunState:
    """Everything a worker needs to replay a run, read in one go."""

    run: Run
    entries: dict[int, JournalEntry]
    signals: list[Signal] = field(default_factory=list)
    children: dict[str, Run] = field(default_factory=dict)
    # Effects whose call has no completion yet (after a crash, or awaiting approval).
    effects: dict[int, EffectRecord] = field(default_factory=dict)


class Role(enum.StrEnum):
    """What a control-plane token may do; each role may do all the one before it may."""

    VIEWER = "viewer"  # read runs, journals, effects, approvals
    APPROVER = "approver"  # also approve, reject, resolve, signal, raise budgets
    ADMIN = "admin"  # also cancel runs and manage tokens

    def __str__(self) -> str:
        return self.value

    def allows(self, needed: Role) -> bool:
        order = list(Role)
        return order.index(self) >= order.index(needed)


@dataclass(frozen=True, slots=True)
class ApiToken:
    """A bearer token of the control plane, as stored (the secret itself is never stored:
    only its SHA-256)."""

    token_id: str
    name: str
    role: Role
    created_at: float
    created_by: str | None = None
    last_used_at: float | None = None
    revoked_at: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True, slots=True)
class AttentionItem:
    """One thing that needs a person, for the roll-up.

    ``kind`` is ``approval`` (a tool call awaits approval), ``in_doubt`` (an irreversible
    call may or may not have happened), ``budget`` (an agent stopped on its budget),
    ``nondeterminism`` (the code changed under the run), ``attention`` (another stop for a
    person) or ``failed`` (the run failed). ``rank`` orders by urgency: lower first."""

    kind: str
    rank: int
    run_id: str
    workflow: str
    title: str  # one line: what happened
    since: float  # when it started needing a person
    seq: int | None = None
    tool: str | None = None
    deadline: float | None = None
    action: str = ""  # the CLI command that acts on it


@dataclass(frozen=True, slots=True)
class WorkerActivity:
    """A live worker and the runs it holds leases on (what it is doing now)."""

    worker_id: str
    host: str
    pid: int
    started_at: float
    heartbeat_at: float
    runs: list[Run] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Overview:
    """The roll-up (DESIGN section 9): run counts by status, what needs a person ordered by
    urgency, and what each worker is doing."""

    counts: dict[str, int]
    attention: list[AttentionItem]
    workers: list[WorkerActivity]
    at: float
