"""PostgreSQL store: many workers on many machines share one database.

- **Group commit.** Every write goes through one queue per process, flushed by one task on
  one connection: writes queued while a flush is in flight share the next transaction. A
  flush of a single one-statement write runs in autocommit (one round trip). A
  one-statement write that nothing could join (no flush in flight, nothing else ready to
  run) is made by its caller instead, without a task. The writer's connection waits for
  its replies on a socket kept registered with the loop (``_pgwait``).
- **Fencing.** A write that advances a run checks, in the same statement, that the writer
  still holds the lease, and takes a share lock on the run's row while it does: a claim by
  another worker (``FOR UPDATE SKIP LOCKED``) can neither slip in between the check and the
  commit, nor wait for it.
- **Leases** are measured by the database server's clock, so workers on machines whose
  clocks disagree still agree on who holds a run.
- **Wake-ups** travel by ``LISTEN/NOTIFY`` on the channel ``tether``, sent inside the
  transaction that makes a run runnable, so they arrive only once it is committed. Payloads:
  ``run:<workflow>``, ``timer:<wake_at>:<workflow>``, ``signal:<run_id>``,
  ``cancel:<run_id>``, ``done:<run_id>``. A lost connection is reconnected with backoff and
  reported as ``connected``, since notifications may have been missed meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import AsyncConnection, sql
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from .._errors import (
    ConfigurationError,
    DatabaseNotFoundError,
    RunNotFoundError,
    StorageError,
    TetherError,
)
from .._records import (
    ApiToken,
    EffectRecord,
    EffectState,
    EntryStatus,
    JournalEntry,
    Run,
    RunState,
    RunStatus,
    Signal,
    WorkerActivity,
)
from . import _procs
from ._migrations import load_migrations, split_statements
from ._pgwait import WatchedConnection
from ._rows import (
    BLOB_THRESHOLD,
    DISCARD_COLUMNS,
    EFFECT_COLUMNS,
    JOURNAL_COLUMNS,
    RUN_COLUMNS,
    STOPPED,
    TOKEN_COLUMNS,
    blob_hash,
    child_run_id_taken,
    effect_from_row,
    effect_params,
    effect_query,
    effect_state_error,
    entry_from_row,
    fork_point_queries,
    has_blob,
    journal_params,
    lease_lost,
    lineage_query,
    new_run_record,
    restart_error,
    restart_records,
    run_from_row,
    run_id_conflict,
    signal_from_row,
    stopped_for,
    tags_json,
    token_from_row,
)
from ._store import (
    EventHandler,
    Fence,
    InDoubt,
    NewEffect,
    NewEntry,
    NewRun,
    WorkerInfo,
    nothing_else_ready,
)
from ._url import redact_url as _redact

__all__ = ["PostgresStore", "parse_postgres_url"]

log = logging.getLogger("tether.storage")

T = TypeVar("T")
Conn = WatchedConnection  # every pool connection (see _pgwait)

CHANNEL = "tether"
# Serializes migrations between processes opening one database at once.
_MIGRATION_LOCK = 0x7E7E_0001
# The lease clock: the server's, so that workers whose clocks disagree agree on leases.
_SERVER_NOW = "extract(epoch from statement_timestamp())::float8"
_TERMINAL = "('succeeded', 'failed', 'cancelled')"
# A timer is due when either the claiming worker's clock or the server's says so; "wake
# now" is written on the server's clock. So a process whose clock runs ahead (or behind)
# can neither postpone a wake-up nor make one wait.
_DUE = f"greatest(%s, {_SERVER_NOW})"
# The fence check. The row is found by its key first (OFFSET 0 keeps the planner from
# reaching for a partial index on status or owner, whose statistics swing as runs start
# and end), locked FOR SHARE, then checked.
_OWNED = (
    "SELECT 1 FROM (SELECT lease_owner, fence, status FROM runs WHERE run_id = %s "
    "OFFSET 0 FOR SHARE) o WHERE o.lease_owner = %s AND o.fence = %s AND o.status = 'running'"
)
_SEAL = (
    "ON CONFLICT (run_id, seq) DO UPDATE SET status = EXCLUDED.status, "
    "output = EXCLUDED.output, output_ref = EXCLUDED.output_ref, "
    "error = EXCLUDED.error, finished_at = EXCLUDED.finished_at, "
    "attempts = EXCLUDED.attempts, delivery = EXCLUDED.delivery, "
    "started_at = CASE WHEN EXCLUDED.status = 'intent' "
    "THEN EXCLUDED.started_at ELSE journal.started_at END"
)
# One journal write with its fence check (and share lock): a plain step is one statement.
# Bytes, built once: psycopg then neither formats nor encodes it per call.
_JOURNAL_WRITE = (
    f"INSERT INTO journal ({JOURNAL_COLUMNS}) "
    "SELECT %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::float8, %s::float8, %s, "
    f"%s::int, %s::int, %s::int WHERE EXISTS ({_OWNED}) {_SEAL}"
).encode()
# A call asked about anew (a retry in place) gets its new approval deadline.
_NEW_DEADLINE = (
    "deadline = COALESCE(EXCLUDED.deadline, effects.deadline), on_timeout = CASE WHEN "
    "EXCLUDED.deadline IS NOT NULL THEN EXCLUDED.on_timeout ELSE effects.on_timeout END"
)
# A tool call's intent, first written or written again (a call authorized anew).
_EFFECT_UPSERT = (
    f"INSERT INTO effects ({EFFECT_COLUMNS}) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (run_id, seq) DO UPDATE SET attempt = EXCLUDED.attempt, in_doubt = FALSE, "
    f"resolution = NULL, history = (effects.history::jsonb || %s::jsonb)::text, {_NEW_DEADLINE}"
)
_APPEND_EVENT = "history = (history::jsonb || %s::jsonb)::text"
# A tool call's intent as one statement (one round trip in autocommit): the fence check,
# then the effect, then its journal entry, each only if the one before went through.
_INTENT = (
    f"WITH owned AS ({_OWNED}), "
    f"effect AS (INSERT INTO effects ({EFFECT_COLUMNS}) "
    "SELECT %s::text, %s::int, %s::text, %s::text, %s::text, %s::text, %s::text, "
    "%s::boolean, %s::int, %s::boolean, %s::text, %s::text, %s::float8, %s::float8, "
    "%s::text FROM owned "
    "ON CONFLICT (run_id, seq) DO UPDATE SET attempt = EXCLUDED.attempt, in_doubt = FALSE, "
    "resolution = NULL, history = (effects.history::jsonb || %s::jsonb)::text, "
    f"{_NEW_DEADLINE} RETURNING 1) "
    f"INSERT INTO journal ({JOURNAL_COLUMNS}) "
    "SELECT %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::float8, %s::float8, %s, "
    f"%s::int, %s::int, %s::int FROM effect {_SEAL}"
)
# A journal write with the blobs it refers to (a model call's new messages, a large value),
# as one statement: the blobs and the entry are written only if the fence check passes.
_WITH_BLOBS = (
    f"WITH owned AS ({_OWNED}), "
    "blob AS (INSERT INTO blobs (hash, data, size) SELECT b.h, b.d, length(b.d) "
    "FROM unnest(%s::text[], %s::text[]) AS b(h, d) WHERE EXISTS (SELECT 1 FROM owned) "
    "ON CONFLICT DO NOTHING) "
    f"INSERT INTO journal ({JOURNAL_COLUMNS}) "
    "SELECT %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::float8, %s::float8, %s, "
    f"%s::int, %s::int, %s::int WHERE EXISTS (SELECT 1 FROM owned) {_SEAL}"
)
_UNSEALED = (EntryStatus.WAITING, EntryStatus.INTENT)
# Claiming: each of three partial indexes (runs_pending, runs_wake, runs_lease) is read in
# its own order up to the limit, then the oldest runs of those are taken. Ordered index
# scans stop after `limit` live rows and mark the dead entries they pass (runs that left
# the state) so that the next scan skips them; one query ORing the three states would
# be a bitmap scan, which reads every dead entry of the index again on every claim until
# vacuum runs: 10,000 runs parked on a signal made each claim read 10,000 entries.
# SKIP LOCKED lets workers claim side by side and skips a run whose owner is writing to
# it right now; candidates locked here but not taken are free again when it commits.
_CLAIM = (
    "WITH p AS (SELECT run_id, created_at FROM runs WHERE status = 'pending' "
    "AND workflow = ANY(%s) ORDER BY created_at LIMIT %s FOR UPDATE SKIP LOCKED), "
    "w AS (SELECT run_id, created_at FROM runs WHERE status = 'waiting' "
    f"AND wake_at <= {_DUE} AND workflow = ANY(%s) ORDER BY wake_at LIMIT %s "
    "FOR UPDATE SKIP LOCKED), "
    "e AS (SELECT run_id, created_at FROM runs WHERE status = 'running' "
    f"AND lease_expires_at < {_SERVER_NOW} AND workflow = ANY(%s) "
    "ORDER BY lease_expires_at LIMIT %s FOR UPDATE SKIP LOCKED), "
    "c AS (SELECT run_id FROM (SELECT * FROM p UNION ALL SELECT * FROM w "
    "UNION ALL SELECT * FROM e) a ORDER BY created_at LIMIT %s) "
    "UPDATE runs r SET status = 'running', lease_owner = %s, "
    f"lease_expires_at = {_SERVER_NOW} + %s, fence = r.fence + 1, "
    "attempts = r.attempts + 1, wake_at = NULL, updated_at = %s "
    "FROM c WHERE r.run_id = c.run_id RETURNING r.run_id, r.fence"
)
# Many plain journal writes of one flush as one statement: one row per write, each with
# its own fence check, and RETURNING says which went through.
_APPEND_MANY = (
    f"INSERT INTO journal ({JOURNAL_COLUMNS}) SELECT {JOURNAL_COLUMNS} "
    "FROM unnest(%s::text[], %s::int[], %s::text[], %s::text[], %s::text[], %s::text[], "
    "%s::text[], %s::text[], %s::text[], %s::text[], %s::float8[], %s::float8[], %s::int[], "
    "%s::int[], %s::int[], %s::int[], %s::text[], %s::bigint[]) "
    f"AS v({JOURNAL_COLUMNS}, worker_id, fence) "
    "WHERE EXISTS (SELECT 1 FROM (SELECT lease_owner, fence, status FROM runs r "
    "WHERE r.run_id = v.run_id OFFSET 0 FOR SHARE) o WHERE o.lease_owner = v.worker_id "
    f"AND o.fence = v.fence AND o.status = 'running') {_SEAL} RETURNING run_id, seq"
)
_ENTRY_COLUMNS = """j.run_id, j.seq, j.kind, j.name, j.status,
       COALESCE(j.input, bi.data), COALESCE(j.output, bo.data), j.error,
       j.started_at, j.finished_at, j.attempts, j.delivery, j.after_delivery, j.after_seq"""
_ENTRY_SELECT = f"""
SELECT {_ENTRY_COLUMNS}
FROM journal j
LEFT JOIN blobs bi ON bi.hash = j.input_ref
LEFT JOIN blobs bo ON bo.hash = j.output_ref
WHERE j.run_id = %s ORDER BY j.seq
"""
# The journal of a fork: its origin's entries below the fork point, then its own.
_FORK_LAST, _FORK_UNFINISHED, _FORK_ENTRY = fork_point_queries("%s")
_LINEAGE_SELECT = lineage_query("%s", _ENTRY_COLUMNS)

# Options of ours in the URL's query string; everything else goes to libpq.
_OPTIONS = {"pool_size": 10, "pool_timeout": 10.0}


def parse_postgres_url(url: str) -> tuple[str, dict[str, Any]]:
    """``postgresql://user@host:port/db?pool_size=10&pool_timeout=10`` → (conninfo, options).

    ``pool_size`` bounds this process's connections (plus one for notifications);
    ``pool_timeout`` is how long an operation waits for a connection before failing.
    Other query parameters (``sslmode``, ``connect_timeout``, ...) pass to libpq.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ConfigurationError(f"not a PostgreSQL URL: {_redact(url)!r}")
    if not parts.path.strip("/"):
        raise ConfigurationError(
            f"{_redact(url)!r} names no database; use postgresql://user@host:5432/dbname"
        )
    options: dict[str, Any] = dict(_OPTIONS)
    passthrough = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in _OPTIONS:
            try:
                options[key] = type(_OPTIONS[key])(value)
            except ValueError:
                raise ConfigurationError(
                    f"{_redact(url)!r}: {key} must be a number, not {value!r}"
                ) from None
            if options[key] <= 0:
                raise ConfigurationError(f"{_redact(url)!r}: {key} must be > 0")
        else:
            passthrough.append((key, value))
    if not any(key == "connect_timeout" for key, _ in passthrough):
        passthrough.append(("connect_timeout", "5"))
    query = urlencode(passthrough, quote_via=quote)  # %20, not +: libpq decodes only %XX
    conninfo = urlunsplit(("postgresql", parts.netloc, parts.path, query, parts.fragment))
    return conninfo, options


async def _configure(conn: Conn) -> None:
    # A write waiting on a row lock holds up every write of this process behind it
    # (heartbeats included): give up after a while and retry instead.
    # Tether's statements are short index reads and writes; JIT compilation is set off by
    # cost estimates that follow the table's statistics, and then costs 10-20 ms to save
    # nothing (a fork's 10-entry read took 29 ms, 13 of them compiling).
    await conn.execute("SET lock_timeout = '5s'; SET jit = off")


_ATTEMPTS = 3  # tries of a write the server aborted for a deadlock or conflict


@dataclass(slots=True)
class _Op:
    run: Callable[[Conn], Awaitable[Any]]
    future: asyncio.Future[Any]
    single: bool  # one statement: may run in autocommit when it is alone in its flush
    # A plain journal write (no blob, signal or child): its row for _APPEND_MANY.
    row: tuple[Any, ...] | None = None


class PostgresStore:
    """The scale-out backend (psycopg 3, async, with psycopg-pool)."""

    poll_interval = 1.0  # a safety net: LISTEN/NOTIFY does the waking
    notifies = True
    _loop: asyncio.AbstractEventLoop  # the loop the pool was opened in (set with _pool)

    def __init__(self, url: str) -> None:
        self.url = url
        self.display_url = _redact(url)
        self.conninfo, options = parse_postgres_url(url)
        self.pool_size: int = options["pool_size"]
        self.pool_timeout: float = options["pool_timeout"]
        self._pool: AsyncConnectionPool[WatchedConnection] | None = None
        self._queue: list[_Op] = []
        # The task flushing the queue, or a write made by its caller (see _write).
        self._flusher: asyncio.Future[None] | None = None
        # The connection the flusher writes through, kept between flushes (see _on_writer).
        self._held: WatchedConnection | None = None
        self._handlers: list[EventHandler] = []
        self._listener: asyncio.Task[None] | None = None
        self._opening = asyncio.Lock()
        self._listening = False
        self.commits = 0  # committed write transactions, for tests and benchmarks

    # -- lifecycle ----------------------------------------------------------------------
    async def open(self, *, create: bool = True) -> None:
        async with self._opening:  # two tasks opening at once must not build two pools
            if self._pool is None:
                await self._open(create)

    async def _open(self, create: bool) -> None:
        try:
            conn = await self._connect(create)
        except psycopg.Error as exc:
            raise StorageError(f"cannot connect to {self.display_url}: {_reason(exc)}") from exc
        try:
            await self._migrate(conn, create)
        except psycopg.Error as exc:
            raise StorageError(f"cannot open {self.display_url}: {_reason(exc)}") from exc
        finally:
            await conn.close()
        pool = AsyncConnectionPool(
            self.conninfo,
            connection_class=WatchedConnection,
            min_size=1,
            max_size=self.pool_size,
            kwargs={"autocommit": True},
            configure=_configure,
            open=False,
            timeout=self.pool_timeout,
            # The pool retries a broken connection with doubling delays for this long, then
            # gives up on it; the next request for a connection starts afresh at once. A
            # short window keeps the delays short: after an outage of any length the
            # workers reconnect within about a second of the database coming back.
            reconnect_timeout=5.0,
            name="tether",
        )
        try:
            await pool.open(wait=True, timeout=self.pool_timeout)
        except PoolTimeout as exc:
            await pool.close()
            raise StorageError(f"cannot connect to {self.display_url}: {exc}") from exc
        self._loop = asyncio.get_running_loop()
        self._pool = pool

    async def _connect(self, create: bool) -> AsyncConnection[tuple[Any, ...]]:
        try:
            return await AsyncConnection.connect(self.conninfo, autocommit=True)
        except psycopg.OperationalError as exc:
            if "does not exist" not in str(exc) or "database" not in str(exc):
                raise
            if not create:
                raise DatabaseNotFoundError(
                    f"no database at {self.display_url}; check TETHER_DATABASE_URL or start "
                    "a worker to create it",
                    path=self.display_url,
                ) from exc
        # The database itself is missing: create it, as a first worker would expect.
        dbname = urlsplit(self.conninfo).path.lstrip("/")
        admin = urlunsplit(urlsplit(self.conninfo)._replace(path="/postgres"))
        async with await AsyncConnection.connect(admin, autocommit=True) as conn:
            with contextlib.suppress(
                psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation
            ):
                await conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        return await AsyncConnection.connect(self.conninfo, autocommit=True)

    async def _migrate(self, conn: AsyncConnection[tuple[Any, ...]], create: bool) -> None:
        if not create:
            cur = await conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
            row = await cur.fetchone()
            if row is None or not row[0]:
                raise DatabaseNotFoundError(
                    f"{self.display_url} holds no Tether schema; check TETHER_DATABASE_URL "
                    "or start a worker to create it",
                    path=self.display_url,
                )
        async with conn.transaction():
            # Two processes opening a new database at once apply each migration once.
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
                "name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
            )
            cur = await conn.execute("SELECT version FROM schema_migrations")
            applied = {row[0] for row in await cur.fetchall()}
            for migration in load_migrations("postgres"):
                if migration.version in applied:
                    continue
                for statement in split_statements(migration.sql):
                    await conn.execute(statement.encode())
                await conn.execute(
                    "INSERT INTO schema_migrations VALUES (%s, %s, %s)",
                    (migration.version, migration.name, time.time()),
                )

    async def close(self) -> None:
        while self._flusher is not None:
            await asyncio.shield(self._flusher)
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        self._handlers.clear()
        if self._pool is not None:
            await self._give_back()
            pool, self._pool = self._pool, None
            await pool.close()

    @property
    def listening(self) -> bool:
        """Whether the notification channel is up: what is announced now reaches the
        subscribers (or, if it drops meanwhile, its reconnection does)."""
        return self._listening

    @property
    def pool(self) -> AsyncConnectionPool[WatchedConnection]:
        if self._pool is None:
            raise StorageError("the store is not open")
        return self._pool

    def _error(self, what: str, exc: BaseException) -> TetherError:
        if isinstance(exc, psycopg.DataError | TypeError | ValueError):
            error: TetherError = TetherError(f"cannot store this value: {_reason(exc)}")
        else:
            error = StorageError(f"{self.display_url}: {what} failed: {_reason(exc)}")
        error.__cause__ = exc
        return error

    # -- notifications ------------------------------------------------------------------
    def subscribe(self, handler: EventHandler) -> None:
        self._handlers.append(handler)
        if self._listener is None and self._pool is not None:
            self._listener = asyncio.create_task(self._listen(), name="tether-listen")

    def _dispatch(self, kind: str, value: str) -> None:
        for handler in list(self._handlers):
            try:
                handler(kind, value)
            except Exception:
                log.exception("event handler failed on %s:%s", kind, value)

    async def _listen(self) -> None:
        delay = 0.0
        unsupported = False
        while True:
            try:
                async with await AsyncConnection.connect(
                    # TCP keepalives: a connection a NAT dropped silently is noticed in
                    # about a minute, not hours.
                    self.conninfo,
                    autocommit=True,
                    keepalives=1,
                    keepalives_idle=30,
                    keepalives_interval=10,
                    keepalives_count=3,
                ) as conn:
                    try:
                        await conn.execute(f"LISTEN {CHANNEL}")
                    except psycopg.errors.FeatureNotSupported as exc:
                        if not unsupported:  # e.g. some distributed SQL engines
                            log.warning("no LISTEN/NOTIFY (%s): workers will poll", exc)
                            unsupported = True
                        await asyncio.sleep(60.0)
                        continue
                    if delay:
                        log.info("notification channel reconnected")
                    delay = 0.0
                    self._listening = True
                    try:
                        self._dispatch("connected", "")
                        async for note in conn.notifies():
                            kind, _, value = note.payload.partition(":")
                            self._dispatch(kind, value)
                    finally:
                        self._listening = False
            except psycopg.Error as exc:
                delay = min(2.0, max(0.05, delay * 2))
                log.warning(
                    "notification channel lost (%s); reconnecting in %.2f s", _reason(exc), delay
                )
            await asyncio.sleep(delay * (0.5 + random.random() / 2))

    # -- group commit -------------------------------------------------------------------
    def _write(
        self,
        run: Callable[[Conn], Awaitable[T]],
        *,
        single: bool = False,
        row: tuple[Any, ...] | None = None,
    ) -> Awaitable[T]:
        if self._pool is None:
            raise StorageError("the store is not open")
        loop = self._loop  # not get_running_loop(): on Python 3.11 it costs a getpid call
        future: asyncio.Future[T] = loop.create_future()
        op = _Op(run, future, single, row)
        if single and self._flusher is None and not self._queue and nothing_else_ready(loop):
            # Nothing is being written, and nothing else is ready to run in this turn of
            # the loop, so no other write could join this one's flush: the caller writes
            # it itself and spares two trips through the loop (one to start a flusher
            # task, one back). It takes the flusher's place now, so writes queued from
            # here on wait for it, in order. A one-statement write only: if the caller is
            # cancelled, the wait sees the statement through (see _pgwait), as a flusher
            # task would.
            self._flusher = loop.create_future()
            return self._write_now(op, self._flusher)
        self._queue.append(op)
        if self._flusher is None:
            self._start_flusher()
        return future

    def _start_flusher(self) -> None:
        self._flusher = self._loop.create_task(self._flush_loop(), name="tether-flush")

    async def _write_now(self, op: _Op, place: asyncio.Future[None]) -> Any:
        """The caller's own write (see _write). ``place`` holds the flusher's place until
        it is done; then a flusher task takes over whatever was queued meanwhile. Every
        caller of _write awaits it at once, so this always runs."""
        try:
            await self._flush([op])  # every write goes through _flush, queued or not
        except BaseException:
            if op.future.done() and not op.future.cancelled():
                op.future.exception()  # what it failed with is raised here instead
            raise
        finally:
            place.set_result(None)
            self._flusher = None
            if self._queue:
                self._start_flusher()
        return await op.future

    async def _flush_loop(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                await self._flush(batch)
        finally:
            self._flusher = None

    async def _flush(self, batch: list[_Op]) -> None:
        if len(batch) == 1:
            await self._flush_alone(batch[0])
            return
        try:
            outcomes = await self._on_writer(lambda conn: self._run_batch(conn, batch))
        except asyncio.CancelledError as exc:
            _fail(batch, self._error("write", exc))
            raise
        except Exception as exc:
            if _connection_lost(exc):
                _fail(batch, self._error("write", exc))
                return
            # One bad write (a value the server rejects, a deadlock) must not fail its
            # neighbours: each goes again on its own.
            log.warning("batch of %d failed (%s); retrying one by one", len(batch), exc)
            for op in batch:
                await self._flush_alone(op)
            return
        self.commits += 1
        _settle(outcomes)

    async def _run_batch(self, conn: Conn, batch: list[_Op]) -> list[_Outcome]:
        """Apply the batch in queue order: a write queued after a cancel or a finish must
        see it. Runs of consecutive plain journal writes go as one statement each."""
        outcomes: list[_Outcome] = []
        async with conn.transaction():
            for chunk in _chunks(batch):
                if len(chunk) > 1:
                    outcomes.extend(await self._append_many(conn, chunk))
                    continue
                [op] = chunk
                try:
                    outcomes.append((op.future, await op.run(conn), None))
                except TetherError as exc:  # this op only: it wrote nothing
                    outcomes.append((op.future, None, exc))
        return outcomes

    @staticmethod
    async def _append_many(conn: Conn, ops: list[_Op]) -> list[_Outcome]:
        columns = list(zip(*(op.row for op in ops if op.row is not None), strict=True))
        cur = await conn.execute(_APPEND_MANY, [list(column) for column in columns])
        written = {(row[0], row[1]) for row in await cur.fetchall()}
        outcomes: list[_Outcome] = []
        for op in ops:
            assert op.row is not None
            if (op.row[0], op.row[1]) in written:
                outcomes.append((op.future, None, None))
            else:
                fence = Fence(op.row[0], op.row[-2], op.row[-1])
                outcomes.append((op.future, None, lease_lost(fence)))
        return outcomes

    async def _on_writer(self, work: Callable[[Conn], Awaitable[T]]) -> T:
        """Do one flush's ``work`` on the writer connection. Writes go one flush at a time,
        so the flusher keeps one connection out of the pool between flushes: a step's
        write costs no checkout and no return. It goes back to the pool (which checks it,
        and replaces it if broken) after any error, if a flush leaves it in a transaction,
        at close, and after every flush when the pool has one connection for everything.
        While held, its socket stays registered with the loop (``WatchedConnection``)."""
        conn = self._held
        if conn is None:
            conn = self._held = await self.pool.getconn()
        try:
            conn.watch()  # (once: it stays watched while held)
            result = await work(conn)
        except BaseException:
            await self._give_back()
            raise
        if self.pool_size < 2 or conn.pgconn.transaction_status != TransactionStatus.IDLE:
            await self._give_back()
        return result

    async def _give_back(self) -> None:
        conn, self._held = self._held, None
        if conn is not None:
            conn.unwatch()
            if self._pool is not None:
                await self._pool.putconn(conn)

    async def _run_alone(self, op: _Op, conn: Conn) -> _Outcome:
        if not op.single:
            [outcome] = await self._run_batch(conn, [op])
            return outcome
        try:
            return (op.future, await op.run(conn), None)
        except TetherError as exc:
            return (op.future, None, exc)

    async def _flush_alone(self, op: _Op) -> None:
        """One write in its own transaction (in autocommit if it is one statement),
        retried when the server aborted it for a deadlock or a serialization conflict."""
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                outcome = await self._on_writer(functools.partial(self._run_alone, op))
            except asyncio.CancelledError as exc:
                _fail([op], self._error("write", exc))
                raise
            except Exception as exc:
                if _retryable(exc) and attempt < _ATTEMPTS:
                    await asyncio.sleep(0.01 * attempt * (1 + random.random()))
                    continue
                _fail([op], self._error("write", exc))
                return
            if outcome[2] is None:
                self.commits += 1
            _settle([outcome])
            return

    async def _read(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            async with self.pool.connection() as conn:
                cur = await conn.execute(query.encode(), params)
                return await cur.fetchall()
        except (psycopg.Error, PoolTimeout) as exc:
            raise self._error("read", exc) from exc

    # -- values -------------------------------------------------------------------------
    @staticmethod
    async def _value(conn: Conn, text: str | None) -> tuple[str | None, str | None]:
        if text is None or len(text) <= BLOB_THRESHOLD:
            return text, None
        digest = blob_hash(text)
        await conn.execute(
            "INSERT INTO blobs (hash, data, size) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
            (digest, text, len(text)),
        )
        return None, digest

    # -- runs ---------------------------------------------------------------------------
    @staticmethod
    async def _insert_run(conn: Conn, new: NewRun, now: float) -> bool:
        cur = await conn.execute(
            "WITH ins AS (INSERT INTO runs (run_id, workflow, status, args, parent_run_id, "
            "parent_seq, created_at, updated_at, tags, forked_from, fork_seq, fork_replaced) "
            "VALUES (%s, %s, 'pending', %s, %s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (run_id) DO NOTHING RETURNING run_id, workflow), "
            "tagged AS (INSERT INTO run_tags (tag, run_id) "
            "SELECT t, ins.run_id FROM ins, unnest(%s::text[]) AS t ON CONFLICT DO NOTHING) "
            "SELECT (SELECT count(pg_notify(%s, 'run:' || workflow)) FROM ins), "
            "(SELECT workflow FROM runs WHERE run_id = %s)",
            (
                new.run_id,
                new.workflow,
                new.args_json,
                new.parent_run_id,
                new.parent_seq,
                now,
                now,
                tags_json(new.tags),
                new.forked_from,
                new.fork_seq,
                new.fork_replaced,
                list(new.tags),
                CHANNEL,
                new.run_id,
            ),
        )
        row = await cur.fetchone()
        assert row is not None
        if row[0]:
            return True
        existing = row[1]
        if existing is None:
            # Another transaction inserted it after this statement's snapshot was taken
            # (the insert waited for it to commit): a new statement sees it.
            cur = await conn.execute("SELECT workflow FROM runs WHERE run_id = %s", (new.run_id,))
            found = await cur.fetchone()
            if found is None:
                raise StorageError(f"run {new.run_id!r} could not be created; try again")
            existing = found[0]
        if existing != new.workflow:
            raise run_id_conflict(new.run_id, existing, new.workflow)
        return False

    async def create_run(self, new: NewRun) -> tuple[Run, bool]:
        now = time.time()
        if await self._write(lambda conn: self._insert_run(conn, new, now), single=True):
            return new_run_record(new, now), True  # as stored: no need to read it back
        run = await self.get_run(new.run_id)
        assert run is not None
        return run, False

    async def create_fork(self, new: NewRun, replaced: NewEntry | None) -> tuple[Run, bool]:
        async def op(conn: Conn) -> bool:
            if not await self._insert_run(conn, new, time.time()):
                return False
            if replaced is not None:
                values = (*await self._value(conn, replaced.input_json),
                          *await self._value(conn, replaced.output_json))  # fmt: skip
                await conn.execute(
                    f"INSERT INTO journal ({JOURNAL_COLUMNS}) VALUES "
                    "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    journal_params(Fence(new.run_id, "", 0), replaced, values),
                )
            return True

        created = await self._write(op)
        run = await self.get_run(new.run_id)
        assert run is not None
        return run, created

    async def fork_point(
        self, run_id: str, at_seq: int
    ) -> tuple[int, JournalEntry | None, JournalEntry | None]:
        last_rows = await self._read(_FORK_LAST, (run_id,))
        unfinished_rows = await self._read(_FORK_UNFINISHED, (at_seq, run_id))
        at_rows = await self._read(_FORK_ENTRY, (run_id, at_seq))
        first = unfinished_rows[0][0] if unfinished_rows else None
        unfinished = None
        if first is not None:
            found = await self._read(_FORK_ENTRY, (run_id, first))
            unfinished = entry_from_row(found[0]) if found else None
        last = last_rows[0][0] if last_rows and last_rows[0][0] is not None else 0
        return last, unfinished, entry_from_row(at_rows[0]) if at_rows else None

    async def get_run(self, run_id: str) -> Run | None:
        rows = await self._read(f"SELECT {RUN_COLUMNS} FROM runs WHERE run_id = %s", (run_id,))
        return run_from_row(rows[0]) if rows else None

    async def stopped_runs(self, run_ids: list[str]) -> list[str]:
        rows = await self._read(
            f"SELECT run_id FROM runs WHERE run_id = ANY(%s) AND status IN {STOPPED}",
            (run_ids,),
        )
        return [row[0] for row in rows]

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
        where, params = [], []
        if status is not None:
            where.append("status = %s")
            params.append(str(status))
        if workflow is not None:
            where.append("workflow = %s")
            params.append(workflow)
        if tag is not None:
            where.append("run_id IN (SELECT run_id FROM run_tags WHERE tag = %s)")
            params.append(tag)
        if forked_from is not None:
            where.append("forked_from = %s")
            params.append(forked_from)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = await self._read(
            f"SELECT {RUN_COLUMNS} FROM runs {clause} "
            "ORDER BY created_at DESC, run_id LIMIT %s OFFSET %s",
            (*params, limit, offset),
        )
        return [run_from_row(row) for row in rows]

    async def list_entries(self, run_id: str) -> list[JournalEntry]:
        rows = await self._read(_LINEAGE_SELECT, (run_id, run_id))
        return [entry_from_row(row) for row in rows]

    async def list_signals(self, run_id: str) -> list[Signal]:
        rows = await self._read(
            "SELECT id, name, value, created_at FROM signals "
            "WHERE run_id = %s AND consumed_seq IS NULL ORDER BY id",
            (run_id,),
        )
        return [signal_from_row(run_id, row) for row in rows]

    async def load_state(self, run_id: str) -> RunState:
        try:
            async with self.pool.connection() as conn:
                async with _pipeline(conn):  # three reads, one round trip
                    run_cur = await conn.execute(
                        f"SELECT {RUN_COLUMNS} FROM runs WHERE run_id = %s".encode(), (run_id,)
                    )
                    entry_cur = await conn.execute(_ENTRY_SELECT.encode(), (run_id,))
                    signal_cur = await conn.execute(
                        b"SELECT id, name, value, created_at FROM signals "
                        b"WHERE run_id = %s AND consumed_seq IS NULL ORDER BY id",
                        (run_id,),
                    )
                    row = await run_cur.fetchone()
                    entry_rows = await entry_cur.fetchall()
                    signal_rows = await signal_cur.fetchall()
                if row is None:
                    raise RunNotFoundError(f"no run {run_id!r}", run_id=run_id)
                run = run_from_row(row)
                if run.forked_from is not None:  # its origin's prefix too
                    cur = await conn.execute(_LINEAGE_SELECT.encode(), (run_id, run_id))
                    entry_rows = await cur.fetchall()
                entries = {r[1]: entry_from_row(r) for r in entry_rows}
                signals = [signal_from_row(run_id, r) for r in signal_rows]
                children: dict[str, Run] = {}
                if any(
                    e.kind == "child" and e.status is EntryStatus.WAITING for e in entries.values()
                ):
                    cur = await conn.execute(
                        f"SELECT {RUN_COLUMNS} FROM runs WHERE parent_run_id = %s".encode(),
                        (run_id,),
                    )
                    children = {r[0]: run_from_row(r) for r in await cur.fetchall()}
                effects: dict[int, EffectRecord] = {}
                if any(e.kind == "tool" and e.status in _UNSEALED for e in entries.values()):
                    cur = await conn.execute(
                        effect_query("%s", run_id=True, page=False).encode(), (run_id,)
                    )
                    for r in await cur.fetchall():
                        effect = effect_from_row(r)
                        if effect.seq in entries and entries[effect.seq].status in _UNSEALED:
                            effects[effect.seq] = effect
        except (psycopg.Error, PoolTimeout) as exc:
            raise self._error("read", exc) from exc
        return RunState(run, entries, signals, children, effects)

    async def list_effects(
        self,
        *,
        run_id: str | None = None,
        in_doubt: bool = False,
        awaiting_approval: bool = False,
        limit: int = 100,
        offset: int = 0,
    ) -> list[EffectRecord]:
        query = effect_query(
            "%s",
            run_id=run_id is not None,
            in_doubt=in_doubt,
            awaiting_approval=awaiting_approval,
            page=True,
        )
        params = (run_id,) if run_id is not None else ()
        rows = await self._read(query, (*params, limit, offset))
        return [effect_from_row(row) for row in rows]

    async def count_runs(self) -> dict[str, int]:
        rows = await self._read("SELECT status, count(*) FROM runs GROUP BY status")
        return {status: count for status, count in rows}

    async def list_workers(self) -> list[WorkerActivity]:
        rows = await self._read(
            "SELECT worker_id, host, pid, started_at, heartbeat_at FROM workers "
            "ORDER BY started_at, worker_id"
        )
        return [WorkerActivity(*row) for row in rows]

    # -- control-plane tokens -----------------------------------------------------------
    async def create_token(self, token: ApiToken, secret_hash: str) -> None:
        async def op(conn: Conn) -> None:
            await conn.execute(
                f"INSERT INTO api_tokens ({TOKEN_COLUMNS}, secret_hash) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    token.token_id,
                    token.name,
                    token.role.value,
                    token.created_at,
                    token.created_by,
                    None,
                    None,
                    secret_hash,
                ),
            )

        await self._write(op, single=True)

    async def find_token(self, secret_hash: str) -> ApiToken | None:
        rows = await self._read(
            f"SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE secret_hash = %s", (secret_hash,)
        )
        return token_from_row(rows[0]) if rows else None

    async def touch_token(self, token_id: str, at: float) -> None:
        async def op(conn: Conn) -> None:
            await conn.execute(
                "UPDATE api_tokens SET last_used_at = %s WHERE token_id = %s", (at, token_id)
            )

        await self._write(op, single=True)

    async def list_tokens(self) -> list[ApiToken]:
        rows = await self._read(f"SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at")
        return [token_from_row(row) for row in rows]

    async def revoke_token(self, token_id: str, at: float) -> ApiToken | None:
        async def op(conn: Conn) -> ApiToken | None:
            await conn.execute(
                "UPDATE api_tokens SET revoked_at = %s WHERE token_id = %s AND revoked_at IS NULL",
                (at, token_id),
            )
            cur = await conn.execute(
                f"SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE token_id = %s", (token_id,)
            )
            row = await cur.fetchone()
            return None if row is None else token_from_row(row)

        return await self._write(op)

    @staticmethod
    async def _effect(conn: Conn, run_id: str, seq: int) -> EffectRecord | None:
        cur = await conn.execute(
            effect_query("%s", run_id=True, seq=True, page=False).encode(), (run_id, seq)
        )
        row = await cur.fetchone()
        return None if row is None else effect_from_row(row)

    @staticmethod
    async def _lock_run(conn: Conn, run_id: str) -> tuple[str, str]:
        """(status, workflow) of the run, its row locked against a concurrent suspend."""
        # The row lock orders this against a suspend (which locks the row first): either
        # the suspend sees what this writes, or this sees the run waiting and wakes it.
        # (Not FOR SHARE: two writers at once would deadlock upgrading it.)
        cur = await conn.execute(
            "SELECT status, workflow FROM runs WHERE run_id = %s FOR NO KEY UPDATE", (run_id,)
        )
        row = await cur.fetchone()
        if row is None:
            raise RunNotFoundError(f"no run {run_id!r}", run_id=run_id)
        return row[0], row[1]

    # -- commands -----------------------------------------------------------------------
    async def send_signal(self, run_id: str, name: str, value_json: str) -> None:
        async def op(conn: Conn) -> None:
            status, workflow = await self._lock_run(conn, run_id)
            await self._deliver(conn, run_id, status, workflow, name, value_json)

        await self._write(op)

    @staticmethod
    async def _deliver(
        conn: Conn, run_id: str, status: str, workflow: str, name: str, value_json: str
    ) -> None:
        now = time.time()
        await conn.execute(
            "INSERT INTO signals (run_id, name, value, created_at) VALUES (%s, %s, %s, %s)",
            (run_id, name, value_json, now),
        )
        if status == "waiting":
            await conn.execute(
                f"UPDATE runs SET wake_at = {_SERVER_NOW}, updated_at = %s WHERE run_id = %s",
                (now, run_id),
            )
            await _notify(conn, f"run:{workflow}")
        elif status == "running":  # its holder looks at its mailbox now
            await _notify(conn, f"signal:{run_id}")

    async def resolve_effect(
        self, run_id: str, seq: int, resolution_json: str, event_json: str
    ) -> EffectRecord:
        async def op(conn: Conn) -> EffectRecord:
            status, workflow = await self._lock_run(conn, run_id)
            found = await self._effect(conn, run_id, seq)
            if found is None or not found.in_doubt or status != "needs_attention":
                raise effect_state_error(run_id, seq, found, "in doubt")
            await conn.execute(
                f"UPDATE effects SET in_doubt = FALSE, resolution = %s, {_APPEND_EVENT} "
                "WHERE run_id = %s AND seq = %s",
                (resolution_json, f"[{event_json}]", run_id, seq),
            )
            # Back to the workers, which carry the decision out when they replay the run.
            await conn.execute(
                "UPDATE runs SET status = 'pending', error = NULL, updated_at = %s "
                "WHERE run_id = %s",
                (time.time(), run_id),
            )
            await _notify(conn, f"run:{workflow}")
            resolved = await self._effect(conn, run_id, seq)
            assert resolved is not None
            return resolved

        return await self._write(op)

    async def hand_back(self, run_id: str, *, code: str, signal_name: str, value_json: str) -> Run:
        async def op(conn: Conn) -> None:
            status, workflow = await self._lock_run(conn, run_id)
            cur = await conn.execute("SELECT error FROM runs WHERE run_id = %s", (run_id,))
            row = await cur.fetchone()
            stopped_for(run_id, status, row[0] if row else None, code)
            await self._deliver(conn, run_id, status, workflow, signal_name, value_json)
            await conn.execute(
                "UPDATE runs SET status = 'pending', error = NULL, updated_at = %s "
                "WHERE run_id = %s",
                (time.time(), run_id),
            )
            await _notify(conn, f"run:{workflow}")

        await self._write(op)
        run = await self.get_run(run_id)
        assert run is not None
        return run

    async def restart_run(
        self,
        run_id: str,
        from_seq: int,
        *,
        expect: tuple[str, float],
        by: str,
        reason: str | None,
    ) -> Run:
        async def op(conn: Conn) -> None:
            now = time.time()
            cur = await conn.execute(
                "SELECT status, updated_at, error, workflow FROM runs WHERE run_id = %s "
                "FOR NO KEY UPDATE",
                (run_id,),
            )
            row = await cur.fetchone()
            if row is None:
                raise RunNotFoundError(f"no run {run_id!r}", run_id=run_id)
            restart_error(run_id, row[0], row[1], expect)
            cur = await conn.execute(
                "SELECT COALESCE(MAX(restart), 0) + 1 FROM run_restarts WHERE run_id = %s",
                (run_id,),
            )
            found = await cur.fetchone()
            restart = found[0] if found else 1
            await conn.execute(
                f"INSERT INTO journal_discarded (run_id, restart, {DISCARD_COLUMNS}) "
                f"SELECT run_id, %s, {DISCARD_COLUMNS} FROM journal "
                "WHERE run_id = %s AND seq >= %s",
                (restart, run_id, from_seq),
            )
            await conn.execute(
                "DELETE FROM journal WHERE run_id = %s AND seq >= %s", (run_id, from_seq)
            )
            await conn.execute(
                "UPDATE signals SET consumed_seq = NULL WHERE run_id = %s AND consumed_seq >= %s",
                (run_id, from_seq),
            )
            await conn.execute(
                "INSERT INTO run_restarts (run_id, restart, from_seq, at, by_whom, reason, "
                "status, error) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (run_id, restart, from_seq, now, by, reason, row[0], row[2]),
            )
            await conn.execute(
                "UPDATE runs SET status = 'pending', error = NULL, result = NULL, "
                "wake_at = NULL, lease_owner = NULL, lease_expires_at = NULL, updated_at = %s "
                "WHERE run_id = %s",
                (now, run_id),
            )
            await _notify(conn, f"run:{row[3]}")

        await self._write(op)
        run = await self.get_run(run_id)
        assert run is not None
        return run

    async def list_restarts(self, run_id: str) -> list[dict[str, Any]]:
        restarts = await self._read(
            "SELECT restart, from_seq, at, by_whom, reason, status, error FROM run_restarts "
            "WHERE run_id = %s ORDER BY restart",
            (run_id,),
        )
        discarded = await self._read(
            "SELECT restart, seq, kind, name, status FROM journal_discarded "
            "WHERE run_id = %s ORDER BY restart, seq",
            (run_id,),
        )
        return restart_records(restarts, discarded)

    async def get_blobs(self, hashes: list[str]) -> dict[str, str]:
        if not hashes:
            return {}
        rows = await self._read(
            "SELECT hash, data FROM blobs WHERE hash = ANY(%s)", (list(hashes),)
        )
        return {digest: data for digest, data in rows}

    async def decide_approval(
        self, run_id: str, seq: int, decision_json: str, event_json: str, signal_name: str
    ) -> EffectRecord:
        async def op(conn: Conn) -> EffectRecord:
            status, workflow = await self._lock_run(conn, run_id)
            found = await self._effect(conn, run_id, seq)
            if found is None or found.state is not EffectState.AWAITING_APPROVAL:
                raise effect_state_error(run_id, seq, found, "awaiting approval")
            if status in ("succeeded", "failed", "cancelled"):
                raise effect_state_error(run_id, seq, found, f"in a live run (it is {status})")
            await conn.execute(
                f"UPDATE effects SET resolution = %s, {_APPEND_EVENT} "
                "WHERE run_id = %s AND seq = %s",
                (decision_json, f"[{event_json}]", run_id, seq),
            )
            await self._deliver(conn, run_id, status, workflow, signal_name, decision_json)
            decided = await self._effect(conn, run_id, seq)
            assert decided is not None
            return decided

        return await self._write(op)

    async def cancel_run(self, run_id: str, reason: str) -> Run:
        async def op(conn: Conn) -> None:
            now = time.time()
            cur = await conn.execute("SELECT 1 FROM runs WHERE run_id = %s", (run_id,))
            if await cur.fetchone() is None:
                raise RunNotFoundError(f"no run {run_id!r}", run_id=run_id)
            error = json.dumps({"type": "Cancelled", "message": reason})
            todo = [run_id]
            while todo:  # the run and, depth first, every unfinished descendant
                current = todo.pop()
                cur = await conn.execute(
                    "UPDATE runs SET status = 'cancelled', error = %s, lease_owner = NULL, "
                    "wake_at = NULL, updated_at = %s WHERE run_id = %s "
                    f"AND status NOT IN {_TERMINAL} RETURNING parent_run_id",
                    (error, now, current),
                )
                cancelled = await cur.fetchone()
                if cancelled is not None:
                    await _notify(conn, f"cancel:{current}")
                    await _notify(conn, f"done:{current}")
                    if cancelled[0] is not None:
                        await self._wake(conn, cancelled[0], now)
                cur = await conn.execute(
                    "SELECT run_id FROM runs WHERE parent_run_id = %s "
                    f"AND status NOT IN {_TERMINAL}",
                    (current,),
                )
                todo.extend(r[0] for r in await cur.fetchall())

        await self._write(op)
        run = await self.get_run(run_id)
        assert run is not None
        return run

    @staticmethod
    async def _wake(conn: Conn, run_id: str, now: float) -> None:
        """Wake a waiting run (a parent whose child ended)."""
        # No status condition in WHERE: a condition there is checked against the last
        # committed row without waiting for a suspend in flight, and the wake-up would be
        # lost. Lock the row, then decide on its current status.
        await conn.execute(
            f"WITH w AS (UPDATE runs SET wake_at = CASE WHEN status = 'waiting' "
            f"THEN {_SERVER_NOW} ELSE wake_at END, updated_at = %s "
            "WHERE run_id = %s RETURNING workflow, status) "
            "SELECT count(pg_notify(%s, 'run:' || workflow)) FROM w WHERE status = 'waiting'",
            (now, run_id, CHANNEL),
        )

    # -- workers and leases -------------------------------------------------------------
    async def register_worker(self, info: WorkerInfo) -> None:
        async def op(conn: Conn) -> None:
            now = time.time()
            await conn.execute(
                "INSERT INTO workers VALUES (%s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (worker_id) DO UPDATE SET heartbeat_at = EXCLUDED.heartbeat_at",
                (info.worker_id, info.host, info.boot_id, info.pid, info.pid_start, now, now),
            )

        await self._write(op, single=True)

    async def unregister_worker(self, worker_id: str) -> None:
        async def op(conn: Conn) -> None:
            await conn.execute("DELETE FROM workers WHERE worker_id = %s", (worker_id,))

        await self._write(op, single=True)

    async def expire_dead_local_workers(self, me: WorkerInfo) -> int:
        rows = await self._read(
            "SELECT worker_id, boot_id, pid, pid_start FROM workers WHERE host = %s", (me.host,)
        )
        dead = _procs.dead_workers(me, rows)
        if not dead:
            return 0

        async def op(conn: Conn) -> int:
            cur = await conn.execute(
                "WITH gone AS (DELETE FROM workers WHERE worker_id = ANY(%s)) "
                "UPDATE runs SET lease_expires_at = 0 "
                "WHERE lease_owner = ANY(%s) AND status = 'running'",
                (dead, dead),
            )
            return cur.rowcount

        return int(await self._write(op, single=True))

    async def pending_workflows(self) -> set[str]:
        rows = await self._read("SELECT DISTINCT workflow FROM runs WHERE status = 'pending'")
        return {row[0] for row in rows}

    async def claim_runs(
        self, worker_id: str, limit: int, lease_seconds: float, workflows: frozenset[str]
    ) -> list[Fence]:
        if not workflows:
            return []
        names = sorted(workflows)

        async def op(conn: Conn) -> list[Fence]:
            now = time.time()
            cur = await conn.execute(
                _CLAIM,
                (
                    names,
                    limit,
                    now,
                    names,
                    limit,
                    names,
                    limit,
                    limit,
                    worker_id,
                    lease_seconds,
                    now,
                ),
            )
            return [Fence(row[0], worker_id, row[1]) for row in await cur.fetchall()]

        return await self._write(op, single=True)

    async def heartbeat(self, worker_id: str, run_ids: list[str], lease_seconds: float) -> set[str]:
        async def op(conn: Conn) -> set[str]:
            cur = await conn.execute(
                "WITH w AS (UPDATE workers SET heartbeat_at = %s WHERE worker_id = %s) "
                f"UPDATE runs SET lease_expires_at = {_SERVER_NOW} + %s "
                "WHERE run_id = ANY(%s) AND lease_owner = %s AND status = 'running' "
                "RETURNING run_id",
                (time.time(), worker_id, lease_seconds, run_ids, worker_id),
            )
            return {row[0] for row in await cur.fetchall()}

        return await self._write(op, single=True)

    async def release_runs(self, worker_id: str, run_ids: list[str]) -> None:
        async def op(conn: Conn) -> None:
            await conn.execute(
                "WITH r AS (UPDATE runs SET status = 'pending', lease_owner = NULL, "
                "lease_expires_at = NULL, updated_at = %s "
                "WHERE run_id = ANY(%s) AND lease_owner = %s AND status = 'running' "
                "RETURNING workflow) "
                "SELECT count(pg_notify(%s, 'run:' || workflow)) FROM (SELECT DISTINCT "
                "workflow FROM r) d",
                (time.time(), run_ids, worker_id, CHANNEL),
            )

        if run_ids:
            await self._write(op, single=True)

    async def next_wake_at(self, workflows: frozenset[str]) -> float | None:
        if not workflows:
            return None
        names = sorted(workflows)
        # Timers are on the workers' clock, leases on the server's: return the next lease
        # expiry as time left, moved onto this process's clock, so that a worker whose
        # clock runs ahead of the server's does not spin waiting for an expiry it thinks
        # has passed.
        rows = await self._read(
            "SELECT (SELECT min(wake_at) FROM runs WHERE status = 'waiting' "
            " AND workflow = ANY(%s)),"
            " (SELECT min(lease_expires_at) FROM runs WHERE status = 'running'"
            f"  AND workflow = ANY(%s)) - {_SERVER_NOW}",
            (names, names),
        )
        if not rows:
            return None
        timer, lease_left = rows[0]
        lease = None if lease_left is None else time.time() + max(0.0, lease_left)
        due = [t for t in (timer, lease) if t is not None]
        return min(due) if due else None

    # -- journal writes -----------------------------------------------------------------
    @staticmethod
    async def _check(conn: Conn, fence: Fence) -> None:
        cur = await conn.execute(_OWNED, (fence.run_id, fence.worker_id, fence.fence))
        if await cur.fetchone() is None:
            raise lease_lost(fence)

    async def append_entry(
        self,
        fence: Fence,
        entry: NewEntry,
        *,
        consume_signal: int | None = None,
        start_child: NewRun | None = None,
        effect: NewEffect | None = None,
    ) -> None:
        blob = has_blob(entry)
        if effect is not None and consume_signal is None and start_child is None and not blob:
            await self._write_intent(fence, entry, effect)  # the common intent: one statement
            return
        if blob and effect is None and consume_signal is None and start_child is None:
            await self._write_with_blobs(fence, entry)  # a model call: one statement
            return
        alone = consume_signal is None and start_child is None and effect is None
        if alone and not blob:
            # A plain step: one statement, batched with its neighbours' (see _APPEND_MANY).
            params = journal_params(fence, entry, (entry.input_json, None, entry.output_json, None))

            async def plain(conn: Conn) -> None:
                owner = (fence.run_id, fence.worker_id, fence.fence)
                if await conn.write(_JOURNAL_WRITE, (*params, *owner)) != 1:
                    raise lease_lost(fence)

            row = (*params, fence.worker_id, int(fence.fence))
            await self._write(plain, single=True, row=row)
            return

        async def op(conn: Conn) -> None:
            await self._check(conn, fence)  # a stale writer must write nothing: check first
            if effect is not None:
                await conn.execute(
                    _EFFECT_UPSERT,
                    (*effect_params(fence, effect, time.time()), f"[{effect.event_json}]"),
                )
            if start_child is not None and not await self._insert_run(
                conn, start_child, time.time()
            ):
                raise child_run_id_taken(start_child.run_id)
            if entry.blobs:
                async with conn.cursor() as cur:
                    await cur.executemany(
                        "INSERT INTO blobs (hash, data, size) VALUES (%s, %s, %s) "
                        "ON CONFLICT DO NOTHING",
                        [(digest, text, len(text)) for digest, text in entry.blobs],
                    )
            input_inline, input_ref = await self._value(conn, entry.input_json)
            output_inline, output_ref = await self._value(conn, entry.output_json)
            # The insert checks the fence again (with its share lock): it is the plain
            # step's statement, shared.
            cur = await conn.execute(
                _JOURNAL_WRITE,
                (
                    *journal_params(
                        fence, entry, (input_inline, input_ref, output_inline, output_ref)
                    ),
                    fence.run_id,
                    fence.worker_id,
                    fence.fence,
                ),
            )
            if cur.rowcount != 1:
                raise lease_lost(fence)
            if consume_signal is not None:
                await conn.execute(
                    "UPDATE signals SET consumed_seq = %s WHERE id = %s AND consumed_seq IS NULL",
                    (entry.seq, consume_signal),
                )

        await self._write(op)

    async def _write_with_blobs(self, fence: Fence, entry: NewEntry) -> None:
        hashes = [digest for digest, _ in entry.blobs]
        texts = [text for _, text in entry.blobs]
        values: list[str | None] = []
        for text in (entry.input_json, entry.output_json):
            if text is None or len(text) <= BLOB_THRESHOLD:
                values += [text, None]
            else:
                digest = blob_hash(text)
                hashes.append(digest)
                texts.append(text)
                values += [None, digest]
        inline_in, ref_in, inline_out, ref_out = values
        params = (
            fence.run_id,
            fence.worker_id,
            fence.fence,
            hashes,
            texts,
            *journal_params(fence, entry, (inline_in, ref_in, inline_out, ref_out)),
        )

        async def op(conn: Conn) -> None:
            cur = await conn.execute(_WITH_BLOBS, params)
            if cur.rowcount != 1:
                raise lease_lost(fence)

        await self._write(op, single=True)

    async def _write_intent(self, fence: Fence, entry: NewEntry, effect: NewEffect) -> None:
        params = (
            fence.run_id,
            fence.worker_id,
            fence.fence,
            *effect_params(fence, effect, time.time()),
            f"[{effect.event_json}]",
            *journal_params(fence, entry, (entry.input_json, None, entry.output_json, None)),
        )

        async def op(conn: Conn) -> None:
            cur = await conn.execute(_INTENT, params)
            if cur.rowcount != 1:
                raise lease_lost(fence)

        await self._write(op, single=True)

    async def finish_run(
        self,
        fence: Fence,
        status: RunStatus,
        *,
        result_json: str | None = None,
        error_json: str | None = None,
        in_doubt: InDoubt | None = None,
    ) -> None:
        terminal = status.is_terminal

        async def op(conn: Conn) -> None:
            now = time.time()
            if in_doubt is not None:
                await self._check(conn, fence)
                await conn.execute(
                    f"UPDATE effects SET in_doubt = TRUE, resolution = NULL, {_APPEND_EVENT} "
                    "WHERE run_id = %s AND seq = %s",
                    (f"[{in_doubt.event_json}]", fence.run_id, in_doubt.seq),
                )
            cur = await conn.execute(
                "WITH fin AS (UPDATE runs SET status = %s, result = %s, error = %s, "
                "lease_owner = NULL, lease_expires_at = NULL, wake_at = NULL, updated_at = %s "
                "WHERE run_id = %s AND lease_owner = %s AND fence = %s AND status = 'running' "
                "RETURNING run_id, parent_run_id), "
                # The parent's row is locked whatever its status (see _wake).
                "par AS (UPDATE runs p SET wake_at = CASE WHEN p.status = 'waiting' "
                f"THEN {_SERVER_NOW} ELSE p.wake_at END FROM fin "
                "WHERE %s AND p.run_id = fin.parent_run_id RETURNING p.workflow, p.status) "
                "SELECT (SELECT count(pg_notify(%s, 'done:' || run_id)) FROM fin), "
                "(SELECT count(pg_notify(%s, 'run:' || workflow)) FROM par "
                "WHERE status = 'waiting')",
                (
                    str(status),
                    result_json,
                    error_json,
                    now,
                    fence.run_id,
                    fence.worker_id,
                    fence.fence,
                    terminal,
                    CHANNEL,
                    CHANNEL,
                ),
            )
            row = await cur.fetchone()
            if row is None or row[0] != 1:
                raise lease_lost(fence)

        await self._write(op, single=in_doubt is None)

    async def suspend_run(
        self,
        fence: Fence,
        *,
        wake_at: float | None,
        signal_names: frozenset[str],
        child_ids: frozenset[str],
    ) -> None:
        async def op(conn: Conn) -> None:
            now = time.time()
            # Park first: the row lock it takes orders this against send_signal and a
            # child's finish_run, so the check below sees what they wrote, or they see the
            # run waiting and wake it. A wake-up is never lost.
            cur = await conn.execute(
                "UPDATE runs SET status = 'waiting', wake_at = %s, lease_owner = NULL, "
                "lease_expires_at = NULL, updated_at = %s "
                "WHERE run_id = %s AND lease_owner = %s AND fence = %s AND status = 'running' "
                "RETURNING workflow",
                (wake_at, now, fence.run_id, fence.worker_id, fence.fence),
            )
            row = await cur.fetchone()
            if row is None:
                raise lease_lost(fence)
            workflow = row[0]
            cur = await conn.execute(
                "SELECT EXISTS (SELECT 1 FROM signals WHERE run_id = %s AND name = ANY(%s) "
                "AND consumed_seq IS NULL) OR EXISTS (SELECT 1 FROM runs WHERE "
                f"run_id = ANY(%s) AND status IN {_TERMINAL})",
                (fence.run_id, sorted(signal_names), sorted(child_ids)),
            )
            ready = await cur.fetchone()
            if ready is not None and ready[0]:
                await conn.execute(
                    f"UPDATE runs SET wake_at = {_SERVER_NOW} WHERE run_id = %s", (fence.run_id,)
                )
                await _notify(conn, f"run:{workflow}")
            elif wake_at is not None:
                await _notify(conn, f"timer:{wake_at!r}:{workflow}")

        await self._write(op)


_Outcome = tuple[asyncio.Future[Any], Any, BaseException | None]


def _chunks(batch: list[_Op]) -> list[list[_Op]]:
    """Consecutive plain journal writes with distinct entries together; the rest alone."""
    chunks: list[list[_Op]] = []
    run: list[_Op] = []
    keys: set[tuple[Any, Any]] = set()
    for op in batch:
        key = None if op.row is None else (op.row[0], op.row[1])
        if key is not None and key not in keys:
            run.append(op)
            keys.add(key)
            continue
        if run:
            chunks.append(run)
            run, keys = [], set()
        if key is not None:  # the same entry again: it starts the next group
            run.append(op)
            keys.add(key)
        else:
            chunks.append([op])
    if run:
        chunks.append(run)
    return chunks


def _settle(outcomes: list[_Outcome]) -> None:
    for future, value, failure in outcomes:
        if future.done():  # the awaiting task was cancelled
            continue
        if failure is None:
            future.set_result(value)
        else:
            future.set_exception(failure)


def _fail(batch: list[_Op], error: BaseException) -> None:
    for op in batch:
        if not op.future.done():
            op.future.set_exception(error)


def _retryable(exc: BaseException) -> bool:
    return isinstance(
        exc,
        psycopg.errors.DeadlockDetected
        | psycopg.errors.SerializationFailure
        | psycopg.errors.LockNotAvailable,
    )


def _pipeline(conn: Conn) -> contextlib.AbstractAsyncContextManager[Any]:
    """Pipeline mode where libpq has it (14+), else plain round trips."""
    if psycopg.Pipeline.is_supported():
        return conn.pipeline()
    return contextlib.nullcontext()


async def _notify(conn: Conn, payload: str) -> None:
    await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _connection_lost(exc: BaseException) -> bool:
    return isinstance(exc, psycopg.OperationalError | PoolTimeout) and not _retryable(exc)
