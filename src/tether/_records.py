"""Records shared by the storage and engine layers (frozen dataclasses)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Decision",
    "Effect",
    "EffectRecord",
    "EffectState",
    "EntryStatus",
    "JournalEntry",
    "Run",
    "RunState",
    "RunStatus",
    "Signal",
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
