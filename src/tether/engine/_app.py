"""``App``: the registry of workflows and steps, the query/command API, and the worker."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, ParamSpec, TypeVar, overload

from .._errors import (
    BudgetExceededError,
    ConfigurationError,
    EffectStateError,
    RegistrationError,
    RunCancelledError,
    RunFailedError,
    RunNeedsAttentionError,
    RunNotFoundError,
    RunStateError,
    TetherError,
    UnknownWorkflowError,
)
from .._records import (
    ApiToken,
    Decision,
    Effect,
    EffectRecord,
    JournalEntry,
    Overview,
    Role,
    Run,
    RunStatus,
)
from .._serde import decode, dumps
from ..storage import NewRun, Store, open_store
from . import _fork, _restart, _tokens
from ._context import BUDGET_SIGNAL, approval_signal
from ._functions import Step, Tool, Workflow
from ._policy import Policy, load_policy
from ._registry import WorkflowDef, make_step, make_workflow
from ._rollup import build_overview
from ._secrets import SecretHasher
from ._tools import make_tool
from ._worker import Worker

__all__ = ["App", "RunHandle"]

log = logging.getLogger("tether")

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_DATABASE_URL = "sqlite:///tether.db"


class RunHandle(Generic[R]):
    """A reference to a run, returned by ``app.start``."""

    def __init__(self, app: App, run_id: str, workflow: WorkflowDef | None) -> None:
        self.app = app
        self.run_id = run_id
        self._workflow = workflow

    def __repr__(self) -> str:
        return f"<RunHandle {self.run_id!r}>"

    async def status(self) -> RunStatus:
        return (await self.app.get_run(self.run_id)).status

    async def result(self, timeout: float | None = None) -> R:
        """Wait for the run to end and return its result. Raises ``RunFailedError`` (or
        ``RunCancelledError``) if it did not succeed, ``RunNeedsAttentionError`` if it stopped
        for a person, and ``TimeoutError`` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        # This process's worker, or the store's notifications (PostgreSQL), wake us the
        # moment the run ends or stops; without either, poll quickly at first.
        notified = self.app.worker is not None or self.app.store.notifies
        delay = self.app.poll_interval if notified else 0.005
        await self.app._ensure_open()
        self.app._subscribe()  # where the backend can tell, the run's end wakes us
        while True:
            event = self.app._watch(self.run_id)
            run = await self.app.get_run(self.run_id)
            if run.status.is_terminal or run.status is RunStatus.NEEDS_ATTENTION:
                self.app._unwatch(self.run_id, event)
            if run.status is RunStatus.SUCCEEDED:
                tp = self._workflow.return_type if self._workflow else None
                value: R = decode(run.result, tp)
                return value
            if run.status is RunStatus.FAILED:
                raise RunFailedError(_describe(run), run_id=run.run_id, error=run.error)
            if run.status is RunStatus.CANCELLED:
                raise RunCancelledError(_describe(run), run_id=run.run_id, error=run.error)
            if run.status is RunStatus.NEEDS_ATTENTION:
                raise RunNeedsAttentionError(_describe(run), run_id=run.run_id, error=run.error)
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(
                    f"run {self.run_id!r} is still {run.status.value} after {timeout} s"
                )
            # This process's worker (or a notification) wakes us the moment the run ends
            # or parks; for a run executed elsewhere the App looks at every run its
            # result() calls wait on in one read per poll_interval. Without either, poll
            # quickly at first and back off.
            wait: float | None = delay if left is None else min(delay, left)
            if notified:
                self.app._poll_watched()
                wait = left
            try:
                await asyncio.wait_for(event.wait(), wait)
            except TimeoutError:
                delay = min(delay * 2, self.app.poll_interval)


def _describe(run: Run) -> str:
    error = run.error or {}
    return f"run {run.run_id!r} {run.status.value}: {error.get('type')}: {error.get('message')}"


class App:
    """A Tether application: workflows and steps bound to one database.

    ``App("sqlite:///tether.db")`` is the embedded default. ``async with app:`` opens the
    database and starts this process's worker, which resumes interrupted runs at once.
    """

    def __init__(
        self,
        database_url: str | None = None,
        *,
        lease_seconds: float = 15.0,
        max_concurrency: int = 100,
        poll_interval: float | None = None,
        shutdown_grace: float = 10.0,
        secret_key: str | bytes | None = None,
        policy: Policy | str | Path | None = None,
    ) -> None:
        self.database_url = database_url or os.environ.get(
            "TETHER_DATABASE_URL", DEFAULT_DATABASE_URL
        )
        if (
            lease_seconds <= 0
            or max_concurrency < 1
            or (poll_interval is not None and poll_interval <= 0)
        ):
            raise ConfigurationError(
                "lease_seconds and poll_interval must be > 0 and max_concurrency >= 1"
            )
        self.lease_seconds = float(lease_seconds)
        self.max_concurrency = int(max_concurrency)
        self.shutdown_grace = float(shutdown_grace)
        self._store: Store = open_store(self.database_url)
        # How often the worker looks for work nobody announced: 0.25 s on SQLite, 1 s on
        # PostgreSQL, where LISTEN/NOTIFY announces it.
        self.poll_interval = float(
            self._store.poll_interval if poll_interval is None else poll_interval
        )
        self._subscribed = False
        self._workflows: dict[str, WorkflowDef] = {}
        self._steps: dict[str, Step[Any, Any]] = {}
        self._tools: dict[str, Tool[Any, Any]] = {}
        # Hashes the arguments tools declare secret (see _secrets.py for where the key is).
        self._secrets = SecretHasher(secret_key)
        # The agency dial: a policy file (App(policy=) or TETHER_POLICY), read now so that a
        # malformed one stops the App before it runs anything.
        if policy is None and os.environ.get("TETHER_POLICY"):
            policy = os.environ["TETHER_POLICY"]
        self.policy: Policy = (
            policy
            if isinstance(policy, Policy)
            else load_policy(None if policy is None else Path(policy))
        )
        self._worker: Worker | None = None
        self._opened = False
        self._watchers: dict[str, asyncio.Event] = {}
        self._poller: asyncio.Future[None] | None = None
        self._closing: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<App {self.database_url!r}>"

    # -- registration ---------------------------------------------------------------------
    @overload
    def workflow(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> Workflow[P, R]: ...
    @overload
    def workflow(
        self, /, *, name: str | None = None
    ) -> Callable[[Callable[P, Coroutine[Any, Any, R]]], Workflow[P, R]]: ...
    def workflow(self, fn: Any = None, /, *, name: str | None = None) -> Any:
        """Register an ``async def`` workflow whose first parameter is the Context."""

        def register(f: Callable[..., Any]) -> Workflow[Any, Any]:
            definition = make_workflow(f, name)
            existing = self._workflows.get(definition.name)
            if existing is not None and existing.fn is not f:
                raise RegistrationError(
                    f"workflow name {definition.name!r} is already registered; pass "
                    "name=... to tell them apart"
                )
            self._workflows[definition.name] = definition
            return Workflow(definition)

        return register(fn) if fn is not None else register

    @overload
    def step(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> Step[P, R]: ...
    @overload
    def step(self, fn: Callable[P, R], /) -> Step[P, R]: ...
    @overload
    def step(
        self,
        /,
        *,
        name: str | None = None,
        retries: int = 0,
        backoff: float = 1.0,
        backoff_max: float = 60.0,
        timeout: float | None = None,
    ) -> Callable[[Callable[P, Any]], Step[P, Any]]: ...
    def step(
        self,
        fn: Any = None,
        /,
        *,
        name: str | None = None,
        retries: int = 0,
        backoff: float = 1.0,
        backoff_max: float = 60.0,
        timeout: float | None = None,
    ) -> Any:
        """Register a step (``def`` or ``async def``). Its result is recorded once and
        replayed after a crash. ``retries`` extra attempts with exponential backoff from
        ``backoff`` seconds (jittered, capped at ``backoff_max``); ``timeout`` per attempt."""

        def register(f: Callable[..., Any]) -> Step[Any, Any]:
            definition = make_step(
                f,
                name,
                retries=retries,
                backoff=backoff,
                backoff_max=backoff_max,
                timeout=timeout,
            )
            step: Step[Any, Any] = Step(definition)
            self._steps[definition.name] = step
            return step

        return register(fn) if fn is not None else register

    @overload
    def tool(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> Tool[P, R]: ...
    @overload
    def tool(self, fn: Callable[P, R], /) -> Tool[P, R]: ...
    @overload
    def tool(
        self,
        /,
        *,
        effect: Effect | str,
        name: str | None = None,
        approval: Decision | str = Decision.AUTO,
        blast_radius: str | None = None,
        reconcile: Callable[..., Any] | None = None,
        secret_params: tuple[str, ...] | list[str] = (),
        untrusted_output: bool = False,
        retries: int = 0,
        backoff: float = 1.0,
        backoff_max: float = 60.0,
        timeout: float | None = None,
        approval_timeout: float | None = None,
        on_timeout: str = "reject",
    ) -> Callable[[Callable[P, Any]], Tool[P, Any]]: ...
    def tool(
        self,
        fn: Any = None,
        /,
        *,
        effect: Effect | str | None = None,
        name: str | None = None,
        approval: Decision | str = Decision.AUTO,
        blast_radius: str | None = None,
        reconcile: Callable[..., Any] | None = None,
        secret_params: tuple[str, ...] | list[str] = (),
        untrusted_output: bool = False,
        retries: int = 0,
        backoff: float = 1.0,
        backoff_max: float = 60.0,
        timeout: float | None = None,
        approval_timeout: float | None = None,
        on_timeout: str = "reject",
    ) -> Any:
        """Register a tool: a call with a declared effect on the outside world (DESIGN
        section 4). ``effect`` is required: ``Effect.READ`` (no side effect),
        ``Effect.IDEMPOTENT`` (the callee deduplicates by ``idempotency_key``) or
        ``Effect.IRREVERSIBLE`` (never made twice: after a crash its ``reconcile`` hook or
        a person decides). A tool that declares an ``idempotency_key`` keyword parameter
        gets one, stable for the call across retries and crashes. ``approval`` is the
        default agency level; ``secret_params`` are stored only as keyed hashes;
        ``untrusted_output`` marks the run tainted after the call. Retries as for steps;
        an irreversible tool is retried only when it raises ``NotAttempted``. A call that
        waits for approval waits at most ``approval_timeout`` seconds (default: forever),
        then is rejected, or approved with ``on_timeout="approve"``."""

        def register(f: Callable[..., Any]) -> Tool[Any, Any]:
            if effect is None:
                raise RegistrationError(
                    f"tool {name or getattr(f, '__name__', f)!r} declares no effect; say "
                    "what it does: @app.tool(effect=Effect.READ | Effect.IDEMPOTENT | "
                    "Effect.IRREVERSIBLE)"
                )
            definition = make_tool(
                f,
                name,
                effect=effect,
                approval=approval,
                blast_radius=blast_radius,
                reconcile=reconcile,
                secret_params=secret_params,
                untrusted_output=untrusted_output,
                retries=retries,
                backoff=backoff,
                backoff_max=backoff_max,
                timeout=timeout,
                approval_timeout=approval_timeout,
                on_timeout=on_timeout,
            )
            existing = self._tools.get(definition.name)
            if existing is not None and existing.fn is not f:
                raise RegistrationError(
                    f"tool name {definition.name!r} is already registered; pass name=... "
                    "to tell them apart"
                )
            tool: Tool[Any, Any] = Tool(definition)
            self._tools[definition.name] = tool
            return tool

        return register(fn) if fn is not None else register

    @property
    def tools(self) -> dict[str, Tool[Any, Any]]:
        return dict(self._tools)

    @property
    def workflows(self) -> dict[str, WorkflowDef]:
        return dict(self._workflows)

    def _definition(self, workflow: Any) -> WorkflowDef:
        if isinstance(workflow, Workflow):
            name = workflow.name
        elif isinstance(workflow, str):
            name = workflow
        elif callable(workflow):
            name = getattr(workflow, "__name__", repr(workflow))
        else:
            raise UnknownWorkflowError(f"{workflow!r} is not a workflow")
        definition = self._workflows.get(name)
        if definition is None:
            known = ", ".join(sorted(self._workflows)) or "none"
            raise UnknownWorkflowError(
                f"workflow {name!r} is not registered in this App (registered: {known}); "
                "decorate it with @app.workflow in the module the worker imports",
                workflow=name,
            )
        return definition

    def _encode_args(self, wf: WorkflowDef, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        try:
            wf.signature.bind(None, *args, **kwargs)
        except TypeError as exc:
            raise TetherError(f"workflow {wf.name!r}: bad arguments: {exc}") from None
        return dumps({"args": list(args), "kwargs": kwargs}, what=f"arguments of {wf.name!r}")

    def _decode_args(self, wf: WorkflowDef, stored: Any) -> tuple[list[Any], dict[str, Any]]:
        args = list(stored.get("args", []))
        kwargs = dict(stored.get("kwargs", {}))
        positional = [p for p in wf.params if p[2] in _POSITIONAL]
        for i, value in enumerate(args):
            if i < len(positional):
                args[i] = decode(value, positional[i][1])
        types = {name: tp for name, tp, _ in wf.params}
        for key, value in kwargs.items():
            kwargs[key] = decode(value, types.get(key))
        return args, kwargs

    # -- lifecycle ----------------------------------------------------------------------
    async def open(self, *, worker: bool = True, create: bool = True) -> None:
        """Open the database (applying migrations) and, unless ``worker=False``, start
        this process's worker."""
        if not self._opened:
            await self._store.open(create=create)
            self._opened = True
        if worker and self._worker is None:
            self._worker = Worker(
                self,
                self._store,
                lease_seconds=self.lease_seconds,
                max_concurrency=self.max_concurrency,
                poll_interval=self.poll_interval,
                shutdown_grace=self.shutdown_grace,
            )
            self._subscribe()
            await self._worker.start()

    async def close(self) -> None:
        """Stop the worker gracefully (runs are handed back, not lost) and close storage.
        Concurrent calls (a SIGTERM handler and ``async with``) share one shutdown."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
        closing = self._closing
        try:
            await asyncio.shield(closing)
        finally:
            if closing.done() and self._closing is closing:
                self._closing = None

    async def _close(self) -> None:
        poller, self._poller = self._poller, None
        if poller is not None and not poller.done():
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
        if self._worker is not None:
            worker = self._worker
            await worker.stop()
            self._worker = None
        if self._opened:
            await self._store.close()
            self._opened = False
            self._subscribed = False

    async def __aenter__(self) -> App:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _ensure_open(self) -> Store:
        if not self._opened:
            await self.open(worker=False)
        return self._store

    @property
    def store(self) -> Store:
        return self._store

    @property
    def worker(self) -> Worker | None:
        return self._worker

    def _wake_worker(self) -> None:
        if self._worker is not None:
            self._worker.wake()

    def _watch(self, run_id: str) -> asyncio.Event:
        event = self._watchers.get(run_id)
        if event is None or event.is_set():
            event = self._watchers[run_id] = asyncio.Event()
        return event

    def _unwatch(self, run_id: str, event: asyncio.Event) -> None:
        if self._watchers.get(run_id) is event:
            del self._watchers[run_id]

    def _poll_watched(self) -> None:
        """Make sure one task looks at every watched run each poll_interval."""
        poller = self._poller
        if poller is None or poller.done() or poller.get_loop() is not asyncio.get_running_loop():
            self._poller = asyncio.ensure_future(self._poll_loop())

    async def _poll_loop(self) -> None:
        # One read for all the runs this process's result() calls wait on, however many:
        # 10,000 handles each re-reading its own run every poll_interval made 10,000
        # reads a second.
        while self._watchers and self._opened:
            await asyncio.sleep(self.poll_interval)
            watched = list(self._watchers)
            if not watched:
                break
            try:
                stopped = await self._store.stopped_runs(watched)
            except TetherError as exc:  # the next round looks again
                log.warning("cannot look at watched runs: %s", exc)
                continue
            for run_id in stopped:
                self._notify(run_id)

    def _notify(self, run_id: str) -> None:
        event = self._watchers.pop(run_id, None)
        if event is not None:
            event.set()

    def _subscribe(self) -> None:
        """Hear what other processes do (PostgreSQL LISTEN/NOTIFY), once per open."""
        if self._opened and not self._subscribed:
            self._subscribed = True
            self._store.subscribe(self._on_store_event)

    def _on_store_event(self, kind: str, value: str) -> None:
        if kind == "done":
            self._notify(value)
        elif kind == "connected":
            # Ends announced before the channel was (re)connected were missed: every
            # waiting result() looks again.
            for run_id in list(self._watchers):
                self._notify(run_id)
        if self._worker is not None:
            self._worker.on_event(kind, value)

    # -- commands and queries -------------------------------------------------------------
    async def start(
        self,
        workflow: Workflow[P, R] | str,
        /,
        *args: Any,
        run_id: str | None = None,
        tags: tuple[str, ...] | list[str] = (),
        **kwargs: Any,
    ) -> RunHandle[R]:
        """Start a run of ``workflow``. Idempotent on ``run_id``: starting an existing
        run_id returns that run's handle and starts nothing. ``tags`` label the run (and
        its children) for policy rules and for ``list_runs(tag=...)``."""
        definition = self._definition(workflow)
        args_json = self._encode_args(definition, args, kwargs)
        labels = _check_tags(tags)
        store = await self._ensure_open()
        if run_id is None:
            run_id = os.urandom(8).hex()
        else:
            _check_text("run_id", run_id)
        new = NewRun(run_id, definition.name, args_json, tags=labels)
        _, created = await store.create_run(new)
        if created and not store.listening:
            # (Where the store is hearing announcements, the run's own announcement wakes
            # this App's worker too: waking it here as well would cost a second claim.)
            self._wake_worker()
        return RunHandle(self, run_id, definition)

    async def fork(
        self,
        origin: str,
        at_seq: int,
        /,
        replace: Any = None,
        *,
        run_id: str | None = None,
    ) -> RunHandle[Any]:
        """A new run from ``origin`` at journal position ``at_seq``: it shares the origin's
        entries below ``at_seq`` by reference (nothing is copied, nothing in them runs
        again) and continues from there. With ``replace`` (JSON data), the entry at
        ``at_seq`` is recorded with that output instead (a different model answer, say)
        and the fork continues after it. Effects after the fork point are new calls with
        new idempotency keys, decided by the policy anew. Idempotent on ``run_id``."""
        if run_id is not None:
            _check_text("run_id", run_id)
        await self._ensure_open()
        run = await _fork.fork(
            self, origin, at_seq, replace=replace, replacing=replace is not None, run_id=run_id
        )
        self._wake_worker()
        return RunHandle(self, run.run_id, self._workflows.get(run.workflow))

    async def retry(
        self, run_id: str, from_seq: int, *, by: str | None = None, reason: str | None = None
    ) -> Run:
        """Restart a failed or needs_attention run in place from ``from_seq`` (after a
        code fix): the entries before it are kept and replayed, those from it on are set
        aside and recorded with the restart (``list_restarts``). Refused when that would
        make an irreversible call again, or drop a child run or a fork's shared entries."""
        if reason is not None:
            _check_text("reason", reason, limit=2000)
        await self._ensure_open()
        run = await _restart.restart(self, run_id, from_seq, by=by or _whoami(), reason=reason)
        self._wake_worker()
        return run

    async def list_restarts(self, run_id: str) -> list[dict[str, Any]]:
        """The run's retries in place, oldest first, each with the entries it set aside."""
        await self.get_run(run_id)
        return await self._store.list_restarts(run_id)

    def handle(self, run_id: str) -> RunHandle[Any]:
        return RunHandle(self, run_id, None)

    async def get_run(self, run_id: str) -> Run:
        store = await self._ensure_open()
        run = await store.get_run(run_id)
        if run is None:
            raise RunNotFoundError(
                f"no run {run_id!r}; list runs with 'tether runs'", run_id=run_id
            )
        return run

    async def list_runs(
        self,
        *,
        status: RunStatus | str | None = None,
        workflow: str | None = None,
        tag: str | None = None,
        forked_from: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Run]:
        """Runs, newest first, filtered by status, workflow name, tag, and the run they
        were forked from."""
        if status is not None:
            try:
                status = RunStatus(status)
            except ValueError:
                allowed = ", ".join(s.value for s in RunStatus)
                raise TetherError(f"status {status!r} is not one of {allowed}") from None
        _check_page(limit, offset)
        store = await self._ensure_open()
        return await store.list_runs(
            status=status,
            workflow=workflow,
            tag=tag,
            forked_from=forked_from,
            limit=limit,
            offset=offset,
        )

    async def list_approvals(self, *, limit: int = 100, offset: int = 0) -> list[EffectRecord]:
        """Tool calls awaiting a person's approval, of runs that have not ended: soonest
        deadline first, then oldest."""
        _check_page(limit, offset)
        store = await self._ensure_open()
        return await store.list_effects(awaiting_approval=True, limit=limit, offset=offset)

    async def overview(self, *, limit: int = 50) -> Overview:
        """The roll-up: run counts by status, what needs a person (most urgent first, at
        most ``limit``), and what each live worker is doing."""
        _check_page(limit, 0)
        return await build_overview(await self._ensure_open(), limit=limit)

    # -- control-plane tokens -------------------------------------------------------------
    async def create_token(
        self, role: Role | str, *, name: str | None = None, by: str | None = None
    ) -> tuple[ApiToken, str]:
        """A new bearer token for the HTTP API and web UI: the record, and the secret,
        which is shown this once (only its hash is stored)."""
        store = await self._ensure_open()
        return await _tokens.create_token(store, role, name=name, by=by or _whoami())

    async def check_token(self, secret: str) -> ApiToken | None:
        """The active token with this secret, or None (unknown or revoked)."""
        return await _tokens.check_token(await self._ensure_open(), secret)

    async def list_tokens(self) -> list[ApiToken]:
        return await (await self._ensure_open()).list_tokens()

    async def revoke_token(self, token_id: str) -> ApiToken:
        """Revoke a token at once: its next request is refused."""
        return await _tokens.revoke_token(await self._ensure_open(), token_id)

    async def get_journal(self, run_id: str) -> list[JournalEntry]:
        await self.get_run(run_id)
        return await self._store.list_entries(run_id)

    async def blobs(self, hashes: list[str]) -> dict[str, str]:
        """Stored content-addressed texts by hash (a model call's messages, large values)."""
        store = await self._ensure_open()
        return await store.get_blobs(list(hashes))

    async def raise_budget(
        self,
        run_id: str,
        *,
        tokens: int | None = None,
        cost_usd: float | None = None,
        by: str | None = None,
    ) -> Run:
        """Raise the budget of a run stopped on one (``BudgetExceededError``) and hand it
        back to the workers: it resumes where it stopped. ``tokens`` and ``cost_usd`` are
        the new limits for the whole agent run (not increments); one left out stays as
        it was."""
        if tokens is None and cost_usd is None:
            raise TetherError("raise the budget by giving tokens, cost_usd or both")
        if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int)):
            raise TetherError(f"tokens must be a whole number, not {tokens!r}")
        if cost_usd is not None and (
            isinstance(cost_usd, bool)
            or not isinstance(cost_usd, int | float)
            or not math.isfinite(cost_usd)
        ):
            raise TetherError(f"cost_usd must be a finite number, not {cost_usd!r}")
        run = await self.get_run(run_id)
        error = run.error if run.status is RunStatus.NEEDS_ATTENTION else None
        if not isinstance(error, dict) or error.get("code") != BudgetExceededError.code:
            raise RunStateError(
                f"run {run_id!r} is not stopped on a budget (it is {run.status.value})",
                run_id=run_id,
            )
        spent, limits = error.get("spent") or {}, dict(error.get("budget") or {})
        if tokens is not None:
            if tokens <= spent.get("tokens", 0):
                raise TetherError(
                    f"tokens {tokens} does not raise the budget: the run has spent "
                    f"{spent.get('tokens', 0)} tokens; give more than that"
                )
            limits["tokens"] = tokens
        if cost_usd is not None:
            if cost_usd <= spent.get("cost_usd", 0.0):
                raise TetherError(
                    f"cost_usd {cost_usd} does not raise the budget: the run has spent "
                    f"${spent.get('cost_usd', 0.0):.4f}; give more than that"
                )
            limits["cost_usd"] = float(cost_usd)
        value = limits | {"by": by or _whoami(), "at": time.time()}
        store = await self._ensure_open()
        run = await store.hand_back(
            run_id,
            code=BudgetExceededError.code,
            signal_name=BUDGET_SIGNAL,
            value_json=dumps(value, what="the budget"),
        )
        self._wake_worker()
        return run

    async def signal(self, run_id: str, name: str, value: Any = None) -> None:
        """Deliver ``value`` to the run's mailbox under ``name``; a run waiting on it wakes."""
        _check_text("signal name", name)
        if name.startswith("tether:"):
            raise TetherError(
                f"signal name {name!r}: names starting with 'tether:' are reserved (approvals "
                "travel under them; use app.approve)"
            )
        value_json = dumps(value, what=f"value of signal {name!r}")
        store = await self._ensure_open()
        await store.send_signal(run_id, name, value_json)
        if self._worker is not None:
            self._worker.poke(run_id)  # a run executing here sees the signal at once
            self._worker.wake()

    async def cancel(self, run_id: str, reason: str = "cancelled") -> Run:
        """Cancel the run and its unfinished children. A step in flight finishes, but
        its result is discarded; the run makes no further durable call."""
        store = await self._ensure_open()
        run = await store.cancel_run(run_id, reason)
        if self._worker is not None:
            self._worker.cancel_local(run_id)
            self._worker.wake()
        self._notify(run_id)
        return run

    # -- the effect log -------------------------------------------------------------------
    async def list_effects(
        self,
        run_id: str | None = None,
        *,
        in_doubt: bool = False,
        limit: int = 100,
        offset: int = 0,
    ) -> list[EffectRecord]:
        """The effect log: every tool call with its intent, completion and history, in
        doubt first; of one run in seq order, else newest first."""
        store = await self._ensure_open()
        if run_id is not None:
            await self.get_run(run_id)
        return await store.list_effects(
            run_id=run_id, in_doubt=in_doubt, limit=limit, offset=offset
        )

    async def get_effect(self, run_id: str, seq: int) -> EffectRecord:
        for effect in await self.list_effects(run_id, limit=1_000_000):
            if effect.seq == seq:
                return effect
        raise EffectStateError(
            f"run {run_id!r} has no tool call at seq {seq}; list its effects with "
            f"'tether effects {run_id}'",
            run_id=run_id,
            seq=seq,
        )

    async def resolve(
        self,
        run_id: str,
        seq: int,
        action: str,
        *,
        result: Any = None,
        by: str | None = None,
        reason: str,
    ) -> EffectRecord:
        """Decide an in-doubt irreversible call, recorded with who and why, and hand the
        run back to the workers. ``action`` is ``"done"`` (it happened; ``result`` is what
        it returned), ``"retry"`` (it did not; make it, with the same idempotency key) or
        ``"abort"`` (do not make it; the call raises ``EffectAbortedError`` in the run)."""
        if action not in ("done", "retry", "abort"):
            raise TetherError(f"resolve action must be done, retry or abort, not {action!r}")
        if action != "done" and result is not None:
            raise TetherError(f"a result goes only with 'done', not with {action!r}")
        _check_text("reason", reason, limit=2000)
        if by is not None:
            _check_text("by", by)
        who = by or _whoami()
        resolution = {"action": action, "by": who, "reason": reason, "at": time.time()}
        if action == "done":
            resolution["result"] = result
        text = dumps(resolution, what="the result given to resolve")
        _check_finite(text, "the result given to resolve")
        event = dumps({"event": "resolved"} | resolution, what="the resolution")
        store = await self._ensure_open()
        effect = await store.resolve_effect(run_id, seq, text, event)
        self._wake_worker()
        return effect

    async def approve(
        self,
        run_id: str,
        seq: int | None = None,
        *,
        approved: bool = True,
        by: str | None = None,
        note: str | None = None,
    ) -> EffectRecord:
        """Approve (or, with ``approved=False``, reject) the tool call awaiting approval at
        ``seq`` (default: the run's only one). The approval binds to that one call: its
        tool, arguments and idempotency key. The run wakes and makes it exactly once."""
        if seq is None:
            waiting = [
                e for e in await self.list_effects(run_id, limit=1_000_000)
                if e.state.value == "awaiting_approval"
            ]  # fmt: skip
            if not waiting:
                raise EffectStateError(
                    f"run {run_id!r} has no tool call awaiting approval", run_id=run_id
                )
            if len(waiting) > 1:
                found = ", ".join(f"seq {e.seq} ({e.tool})" for e in waiting)
                raise EffectStateError(
                    f"run {run_id!r} has {len(waiting)} tool calls awaiting approval "
                    f"({found}); say which with seq",
                    run_id=run_id,
                )
            seq = waiting[0].seq
        if note is not None:
            _check_text("note", note, limit=2000)
        if by is not None:
            _check_text("by", by)
        verdict = {"approved": bool(approved), "by": by or _whoami(), "note": note}
        verdict["at"] = time.time()
        event = {"event": "approval" if approved else "rejection"} | verdict
        store = await self._ensure_open()
        effect = await store.decide_approval(
            run_id,
            seq,
            dumps(verdict | {"action": "approve" if approved else "reject"}, what="approval"),
            dumps(event, what="approval"),
            approval_signal(seq),
        )
        if self._worker is not None:
            self._worker.poke(run_id)
            self._worker.wake()
        return effect


def _whoami() -> str:
    try:
        user = os.getlogin()
    except OSError:
        user = os.environ.get("USER") or os.environ.get("LOGNAME") or f"uid {os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def _check_page(limit: object, offset: object) -> None:
    for what, value, low in (("limit", limit, 1), ("offset", offset, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise TetherError(f"{what} must be a whole number >= {low}, not {value!r}")


def _check_tags(tags: object) -> tuple[str, ...]:
    if isinstance(tags, str) or not isinstance(tags, tuple | list):
        raise TetherError(f"tags must be a list of strings, e.g. tags=['prod'], not {tags!r}")
    if len(tags) > 32:
        raise TetherError(f"a run takes at most 32 tags, not {len(tags)}")
    for tag in tags:
        _check_text("a tag", tag, limit=100)
    return tuple(dict.fromkeys(tags))


def _check_finite(text: str, what: str) -> None:
    """Refuse NaN and infinities, which JSON has not (the stores' JSON functions refuse
    them), before anything is written."""

    def refuse(constant: str) -> None:
        raise TetherError(f"{what} holds {constant}, which JSON cannot carry; give a number")

    json.loads(text, parse_constant=refuse)


def _check_text(what: str, value: object, *, limit: int = 200) -> None:
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise TetherError(f"{what} must be a non-empty string of at most {limit} characters")
    if "\x00" in value:
        raise TetherError(f"{what} holds a NUL character (\\x00); remove it")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise TetherError(f"{what} {value!r} is not valid UTF-8 text") from None


_POSITIONAL = (
    inspect.Parameter.POSITIONAL_ONLY,
    inspect.Parameter.POSITIONAL_OR_KEYWORD,
)
