"""The storage boundary: the ``Store`` protocol every backend implements.

The engine talks to storage only through this protocol. JSON values cross it as text
(already encoded by the engine) on the way in, and as decoded JSON on the way out. Every
write that changes a claimed run carries a :class:`Fence`; a backend must reject it with
``LeaseLostError`` when the run's lease has moved on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .._records import (
    ApiToken,
    EffectRecord,
    JournalEntry,
    Run,
    RunState,
    RunStatus,
    Signal,
    WorkerActivity,
)

__all__ = [
    "EventHandler",
    "Fence",
    "InDoubt",
    "NewEffect",
    "NewEntry",
    "NewRun",
    "Store",
    "WorkerInfo",
]

# Called with (kind, value) for what other processes did (see Store.subscribe).
EventHandler = Callable[[str, str], None]


def nothing_else_ready(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether no other callback waits to run in this turn of ``loop``: then no other
    write could join one made now, and a backend may commit it without group commit's
    trip through the loop. False on a loop without asyncio's ready queue (uvloop)."""
    ready = getattr(loop, "_ready", None)
    return ready is not None and not ready


@dataclass(frozen=True, slots=True)
class Fence:
    """Proof of ownership of a claimed run: who claimed it and the token they got."""

    run_id: str
    worker_id: str
    fence: int


@dataclass(frozen=True, slots=True)
class NewRun:
    run_id: str
    workflow: str
    args_json: str
    parent_run_id: str | None = None
    parent_seq: int | None = None
    tags: tuple[str, ...] = ()
    forked_from: str | None = None
    fork_seq: int | None = None
    fork_replaced: bool = False


@dataclass(slots=True)  # not frozen: built on every durable call, and frozen costs there
class NewEntry:
    """A journal write. ``status`` waiting records a wait; completed/failed seal the entry."""

    seq: int
    kind: str
    name: str
    status: str
    input_json: str | None = None
    output_json: str | None = None
    error_json: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 1
    delivery: int | None = None  # completion order within the run (see JournalEntry)
    after_delivery: int | None = None  # completions handed back when the call was made
    after_seq: int | None = None  # the seq counter when the last of them resumed the run
    # The entry's row exists (a tool call's intent): a backend may update it in place.
    replaces: bool = False
    # Content-addressed values the entry refers to by hash, as (hash, text) pairs, written
    # (each at most once, ever) in the same transaction: a model call's new messages.
    blobs: tuple[tuple[str, str], ...] = ()


@dataclass(slots=True)  # not frozen: built on every tool call
class NewEffect:
    """The intent of a tool call, written with its journal entry (``append_entry``).

    The first write inserts the effect; a later one (a call authorized again: after an
    approval, a crash, a person's retry) sets ``attempt``, clears ``in_doubt`` and the
    pending ``resolution``, and appends ``event_json`` to the effect's history."""

    seq: int
    kind: str  # Effect value
    idempotency_key: str
    blast_radius: str | None
    approval: str  # Decision value the tool declared
    decision: str  # Decision value the policy gave this call
    tainted: bool
    attempt: int
    event_json: str  # one JSON object, appended to the effect's history
    deadline: float | None = None  # an approval's deadline (first write only)
    on_timeout: str | None = None  # approve | reject, when the deadline passes


@dataclass(frozen=True, slots=True)
class InDoubt:
    """An effect that a run stops on for a person (``finish_run``)."""

    seq: int
    event_json: str


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    worker_id: str
    host: str
    boot_id: str
    pid: int
    pid_start: str


class Store(Protocol):
    """The system of record. Implementations: ``SQLiteStore``, ``PostgresStore``."""

    url: str
    # How often a worker looks for work when nothing woke it: short where other processes
    # cannot notify (SQLite), a slow safety net where they can (PostgreSQL).
    poll_interval: float
    # Whether ``subscribe`` hears other processes (a run's end wakes ``handle.result()``).
    notifies: bool

    @property
    def listening(self) -> bool:
        """Whether announcements reach ``subscribe``'s handlers right now."""
        ...

    async def open(self, *, create: bool = True) -> None: ...
    async def close(self) -> None: ...

    def subscribe(self, handler: EventHandler) -> None:
        """Call ``handler(kind, value)`` when another process makes something happen:
        ``run``/workflow (a run became runnable), ``timer``/"wake_at:workflow" (a run
        parked until then), ``signal``/run_id, ``cancel``/run_id, ``done``/run_id (a run
        ended or stopped for a person), and ``connected``/"" (the channel (re)connected,
        so events may have been missed). A backend without notifications never calls it."""
        ...

    # -- runs ---------------------------------------------------------------------------
    async def create_run(self, new: NewRun) -> tuple[Run, bool]:
        """Insert the run unless ``run_id`` exists; return it and whether it was created."""
        ...

    async def create_fork(self, new: NewRun, replaced: NewEntry | None) -> tuple[Run, bool]:
        """Insert the fork ``new`` (``forked_from``, ``fork_seq`` set) unless its run_id
        exists, with its own entry at ``fork_seq`` when ``replaced`` (an edited output),
        in one transaction; return the run and whether it was created. The origin's
        entries below ``fork_seq`` are never copied: reads follow the lineage."""
        ...

    async def fork_point(
        self, run_id: str, at_seq: int
    ) -> tuple[int, JournalEntry | None, JournalEntry | None]:
        """For a fork at ``at_seq``: the run's last seq (0 for none), its first unfinished
        entry below ``at_seq`` (None if all are finished), and its entry at ``at_seq``;
        lineage included, in index lookups (a fork costs the same at any journal length)."""
        ...

    async def get_run(self, run_id: str) -> Run | None: ...
    async def stopped_runs(self, run_ids: list[str]) -> list[str]:
        """Of ``run_ids``, those that ended or stopped for a person (succeeded, failed,
        cancelled, needs_attention): one read for every ``result()`` a process waits on."""
        ...

    async def list_runs(
        self,
        *,
        status: RunStatus | None = None,
        workflow: str | None = None,
        tag: str | None = None,
        forked_from: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Run]:
        """Runs, newest first; with ``tag``, those started with that tag; with
        ``forked_from``, the forks made from that run."""
        ...

    async def count_runs(self) -> dict[str, int]:
        """How many runs are in each status (statuses with none are left out)."""
        ...

    async def list_workers(self) -> list[WorkerActivity]:
        """The registered workers (``runs`` left empty), oldest first."""
        ...

    async def list_entries(self, run_id: str) -> list[JournalEntry]: ...
    async def list_signals(self, run_id: str) -> list[Signal]:
        """The run's mailbox: its unconsumed signals, oldest first."""
        ...

    async def load_state(self, run_id: str) -> RunState:
        """The run, its journal, its unconsumed signals and its children's outcomes."""
        ...

    async def list_effects(
        self,
        *,
        run_id: str | None = None,
        in_doubt: bool = False,
        awaiting_approval: bool = False,
        limit: int = 100,
        offset: int = 0,
    ) -> list[EffectRecord]:
        """The effect log, in-doubt effects first; of one run in seq order, else newest
        first. ``awaiting_approval``: only calls awaiting a person's approval, of runs
        that have not ended, soonest deadline first, then oldest."""
        ...

    # -- control-plane tokens (only the SHA-256 of a secret is stored) -------------------
    async def create_token(self, token: ApiToken, secret_hash: str) -> None: ...
    async def find_token(self, secret_hash: str) -> ApiToken | None: ...
    async def touch_token(self, token_id: str, at: float) -> None: ...
    async def list_tokens(self) -> list[ApiToken]: ...
    async def revoke_token(self, token_id: str, at: float) -> ApiToken | None:
        """Revoke the token (once; a second revoke keeps the first time); None if unknown."""
        ...

    # -- commands from outside a run ---------------------------------------------------
    async def send_signal(self, run_id: str, name: str, value_json: str) -> None: ...
    async def cancel_run(self, run_id: str, reason: str) -> Run: ...

    async def resolve_effect(
        self, run_id: str, seq: int, resolution_json: str, event_json: str
    ) -> EffectRecord:
        """Record a person's decision on an in-doubt effect of a run that stopped for it,
        and hand the run back to the workers (status pending), which carry it out.
        ``EffectStateError`` when the effect is not in doubt."""
        ...

    async def hand_back(self, run_id: str, *, code: str, signal_name: str, value_json: str) -> Run:
        """A run stopped for a person (needs_attention with error ``code``) gets the
        person's answer in its mailbox and goes back to the workers, in one transaction.
        Raises RunNotFoundError, or RunStateError if the run is not stopped that way."""
        ...

    async def restart_run(
        self,
        run_id: str,
        from_seq: int,
        *,
        expect: tuple[str, float],
        by: str,
        reason: str | None,
    ) -> Run:
        """Restart a stopped run from ``from_seq`` in place, in one transaction: its
        entries from ``from_seq`` on are set aside (``journal_discarded``, with the restart
        number), signals they consumed go back to the mailbox, the restart is recorded
        (``run_restarts``), and the run goes back to the workers (pending). ``expect`` is
        the (status, updated_at) the caller checked the run in: RunStateError if it
        changed since."""
        ...

    async def list_restarts(self, run_id: str) -> list[dict[str, Any]]:
        """The run's restarts, oldest first: restart, from_seq, at, by, reason, and the
        status and error it had, with the entries set aside (``discarded``: seq, kind,
        name, status)."""
        ...

    async def get_blobs(self, hashes: list[str]) -> dict[str, str]:
        """The stored texts of these content hashes (those that exist)."""
        ...

    async def decide_approval(
        self, run_id: str, seq: int, decision_json: str, event_json: str, signal_name: str
    ) -> EffectRecord:
        """Record a person's approval or rejection of an effect awaiting one, and deliver
        it to the run as the signal ``signal_name`` (which wakes it).
        ``EffectStateError`` when the effect awaits no approval."""
        ...

    # -- workers and leases ------------------------------------------------------------
    async def register_worker(self, info: WorkerInfo) -> None: ...
    async def unregister_worker(self, worker_id: str) -> None: ...
    async def expire_dead_local_workers(self, me: WorkerInfo) -> int:
        """Expire at once the leases of workers on this host whose process is gone."""
        ...

    async def claim_runs(
        self, worker_id: str, limit: int, lease_seconds: float, workflows: frozenset[str]
    ) -> list[Fence]:
        """Claim up to ``limit`` runnable runs of the given workflows."""
        ...

    async def pending_workflows(self) -> set[str]:
        """The workflows of runs waiting to be claimed."""
        ...

    async def heartbeat(self, worker_id: str, run_ids: list[str], lease_seconds: float) -> set[str]:
        """Extend the leases of the runs this worker is executing; return those it still
        holds. Leases of runs it no longer executes are left to expire."""
        ...

    async def release_runs(self, worker_id: str, run_ids: list[str]) -> None:
        """Hand runs back (status pending) so any worker resumes them at once."""
        ...

    async def next_wake_at(self, workflows: frozenset[str]) -> float | None:
        """When the next timer or lease of these workflows' runs comes due."""
        ...

    # -- journal writes of a claimed run (group committed, fenced) ----------------------
    async def append_entry(
        self,
        fence: Fence,
        entry: NewEntry,
        *,
        consume_signal: int | None = None,
        start_child: NewRun | None = None,
        effect: NewEffect | None = None,
    ) -> None:
        """Write a journal entry; with ``effect``, its effect-log record in the same
        transaction (the intent of a tool call, or its denial)."""
        ...

    async def finish_run(
        self,
        fence: Fence,
        status: RunStatus,
        *,
        result_json: str | None = None,
        error_json: str | None = None,
        in_doubt: InDoubt | None = None,
    ) -> None:
        """End the run (or stop it for a person); ``in_doubt`` marks the effect it
        stopped on, in the same transaction."""
        ...

    async def suspend_run(
        self,
        fence: Fence,
        *,
        wake_at: float | None,
        signal_names: frozenset[str],
        child_ids: frozenset[str],
    ) -> None:
        """Park the run as waiting; wake it at once if a wait it blocks on is already met."""
        ...
