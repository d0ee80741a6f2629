"""SQLite store: WAL, ``synchronous=FULL`` by default, group commit.

All access happens on the event loop's thread through one connection. Writes are queued and
flushed together on the next loop iteration, inside one ``BEGIN IMMEDIATE`` transaction:
concurrent runs share one commit (group commit), while a single run still waits for its own
write to be durable before moving on (no write-behind). Each queued write is a small
function that validates its fence before writing, so one stale writer cannot spoil the
others in the batch.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

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

__all__ = ["SQLiteStore"]

log = logging.getLogger("tether.storage")

T = TypeVar("T")

_TERMINAL = ("succeeded", "failed", "cancelled")
_UNSEALED = (EntryStatus.WAITING, EntryStatus.INTENT)
_OWNED = (
    "SELECT 1 FROM runs WHERE run_id = ? AND lease_owner = ? AND fence = ? AND status = 'running'"
)
# A journal write with its fence check: one statement for a plain step.
_UPSERT_TAIL = (
    f" WHERE EXISTS ({_OWNED}) "
    "ON CONFLICT (run_id, seq) DO UPDATE SET status = excluded.status, "
    "output = excluded.output, output_ref = excluded.output_ref, "
    "error = excluded.error, finished_at = excluded.finished_at, "
    "attempts = excluded.attempts, delivery = excluded.delivery, "
    "started_at = CASE WHEN excluded.status = 'intent' "
    "THEN excluded.started_at ELSE journal.started_at END"
)
_JOURNAL_UPSERT = (
    f"INSERT INTO journal ({JOURNAL_COLUMNS}) "
    "SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?" + _UPSERT_TAIL
)
# The same for a completed call with every value given and stored inline: the NULLs are
# written into the statement, because the sqlite3 module binds a None parameter through
# its adapter lookup (two failed attribute lookups, about a microsecond, per None).
_JOURNAL_UPSERT_DONE = (
    f"INSERT INTO journal ({JOURNAL_COLUMNS}) "
    "SELECT ?, ?, ?, ?, ?, ?, NULL, ?, NULL, NULL, ?, ?, ?, ?, ?, ?" + _UPSERT_TAIL
)


def _plain_write(fence: Fence, entry: NewEntry) -> tuple[str, tuple[Any, ...]]:
    """The statement and parameters of a journal write with no blob to store."""
    owner = (fence.run_id, fence.worker_id, fence.fence)
    params = journal_params(fence, entry, (entry.input_json, None, entry.output_json, None))
    if (
        entry.error_json is None
        and entry.input_json is not None
        and entry.output_json is not None
        and entry.started_at is not None
        and entry.finished_at is not None
        and entry.delivery is not None
        and entry.after_delivery is not None
        and entry.after_seq is not None
    ):
        # Without input_ref (6), output_ref (8) and error (9), which the statement has.
        return _JOURNAL_UPSERT_DONE, (*params[:6], params[7], *params[10:], *owner)
    return _JOURNAL_UPSERT, (*params, *owner)


# A tool call's intent, first written or written again (a call authorized anew).
# The fence check is part of it, as of a plain journal insert.
_EFFECT_UPSERT = (
    f"INSERT INTO effects ({EFFECT_COLUMNS}) "
    f"SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ? WHERE EXISTS ({_OWNED}) "
    "ON CONFLICT (run_id, seq) DO UPDATE SET attempt = excluded.attempt, in_doubt = 0, "
    "resolution = NULL, history = json_insert(effects.history, '$[#]', json(?)), "
    # A call asked about anew (a retry in place) gets its new deadline.
    "deadline = CASE WHEN excluded.deadline IS NOT NULL THEN excluded.deadline "
    "ELSE effects.deadline END, on_timeout = CASE WHEN excluded.deadline IS NOT NULL "
    "THEN excluded.on_timeout ELSE effects.on_timeout END"
)
# A tool call's completion, over its intent.
_SEAL_IN_PLACE = (
    "UPDATE journal SET status = ?, output = ?, output_ref = ?, error = ?, finished_at = ?, "
    f"attempts = ?, delivery = ? WHERE run_id = ? AND seq = ? AND EXISTS ({_OWNED})"
)
_APPEND_EVENT = "history = json_insert(history, '$[#]', json(?))"

_ENTRY_COLUMNS = """j.run_id, j.seq, j.kind, j.name, j.status,
       COALESCE(j.input, bi.data), COALESCE(j.output, bo.data), j.error,
       j.started_at, j.finished_at, j.attempts, j.delivery, j.after_delivery,
       j.after_seq"""
_ENTRY_SELECT = f"""
SELECT {_ENTRY_COLUMNS}
FROM journal j
LEFT JOIN blobs bi ON bi.hash = j.input_ref
LEFT JOIN blobs bo ON bo.hash = j.output_ref
WHERE j.run_id = ? ORDER BY j.seq
"""
# The journal of a fork: its origin's entries below the fork point, then its own.
_FORK_LAST, _FORK_UNFINISHED, _FORK_ENTRY = fork_point_queries("?")
_LINEAGE_SELECT = lineage_query("?", _ENTRY_COLUMNS)


def parse_sqlite_url(url: str) -> tuple[str, str]:
    """``sqlite:///relative.db``, ``sqlite:////abs/path.db``, ``?synchronous=NORMAL``."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite":
        raise ConfigurationError(f"not a sqlite URL: {url!r}")
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if parts.netloc:
        raise ConfigurationError(
            f"{url!r}: use sqlite:///relative/path.db or sqlite:////absolute/path.db"
        )
    if not path:
        raise ConfigurationError(f"{url!r} names no file; use e.g. sqlite:///tether.db")
    sync = parse_qs(parts.query).get("synchronous", ["FULL"])[0].upper()
    if sync not in ("FULL", "NORMAL", "EXTRA"):
        raise ConfigurationError(f"{url!r}: synchronous must be FULL, NORMAL or EXTRA")
    return path, sync


def _switch_to_wal(conn: sqlite3.Connection, timeout: float = 30.0) -> str:
    # Switching a new database to WAL takes an exclusive lock, and SQLite answers BUSY at
    # once, without the busy handler, while another process opening the same new file
    # holds it: retry, as the busy timeout would.
    deadline = time.monotonic() + timeout
    while True:
        try:
            return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


_INLINE_RUN = 16  # at most this many writes in a row committed without a loop iteration


class SQLiteStore:
    """The embedded default backend."""

    poll_interval = 0.25  # other processes on this file cannot notify: look often
    notifies = False
    listening = False

    def __init__(self, url: str) -> None:
        self.url = url
        self.path, self.synchronous = parse_sqlite_url(url)
        self._conn: sqlite3.Connection | None = None
        self._queue: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]] = []
        self._flush_scheduled = False
        self._inline = 0  # writes committed at once since the last one through the loop
        self.commits = 0  # committed write transactions, for tests and benchmarks

    # -- lifecycle ----------------------------------------------------------------------
    async def open(self, *, create: bool = True) -> None:
        if self._conn is not None:
            return
        if not create and not Path(self.path).exists():
            raise DatabaseNotFoundError(
                f"no database at {os.path.abspath(self.path)}; check TETHER_DATABASE_URL "
                "or start a worker to create it",
                path=self.path,
            )
        try:
            parent = Path(self.path).parent
            if create:
                parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
            conn.execute("PRAGMA busy_timeout = 30000")
            if _switch_to_wal(conn).lower() != "wal":
                raise StorageError(f"{self.path}: could not switch to WAL journal mode")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            conn.execute("PRAGMA foreign_keys = OFF")
            self._migrate(conn)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open {self.path}: {exc}") from exc
        self._conn = conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        # BEGIN IMMEDIATE takes the write lock first, so two processes opening a new
        # database at once apply each migration exactly once, one after the other.
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
            )
            applied = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            for migration in load_migrations("sqlite"):
                if migration.version in applied:
                    continue
                for statement in split_statements(migration.sql):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations VALUES (?, ?, ?)",
                    (migration.version, migration.name, time.time()),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        if self._queue:
            self._flush()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StorageError("the store is not open")
        return self._conn

    def subscribe(self, handler: EventHandler) -> None:
        """SQLite has no notifications between processes: workers poll instead."""

    # -- group commit -------------------------------------------------------------------
    def _write(self, op: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.append((op, future))
        if self._flush_scheduled:
            return future  # joins the batch already on its way
        if self._inline < _INLINE_RUN and nothing_else_ready(loop):
            # Nothing else is ready to run before a scheduled flush would: no other write
            # could join this batch, so commit it now and spare the caller two trips
            # through the loop. Every _INLINE_RUN-th such write still goes through the
            # loop, so a long run of steps cannot keep I/O and timers waiting.
            self._inline += 1
            self._flush()
        else:
            self._inline = 0
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        batch, self._queue = self._queue, []
        if not batch:
            return
        if self._conn is None:  # closed under queued writes: fail them, never leave them
            for _, future in batch:
                if not future.done():
                    future.set_exception(StorageError("the store was closed"))
            return
        conn = self._conn
        outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        begun = False
        try:
            conn.execute("BEGIN IMMEDIATE")
            begun = True
            try:
                for op, future in batch:
                    try:
                        outcomes.append((future, op(conn), None))
                    except TetherError as exc:  # this op only: it wrote nothing
                        outcomes.append((future, None, exc))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except Exception as db_error:  # sqlite3.Error, or a value the driver cannot bind
            if begun and len(batch) > 1:
                # One bad write must not fail its neighbours: commit each on its own.
                # (Not when BEGIN failed: the database as a whole is unavailable.)
                log.warning(
                    "%s: batch of %d failed (%s); retrying one by one",
                    self.path,
                    len(batch),
                    db_error,
                )
                for item in batch:
                    self._queue_one(item)
                return
            error = (
                StorageError(f"{self.path}: write failed: {db_error}")
                if isinstance(db_error, sqlite3.Error)
                else TetherError(f"cannot store this value: {db_error}")
            )
            error.__cause__ = db_error
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        self.commits += 1
        for future, value, failure in outcomes:
            if future.done():  # the awaiting task was cancelled
                continue
            if failure is None:
                future.set_result(value)
            else:
                future.set_exception(failure)

    def _queue_one(
        self, item: tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]
    ) -> None:
        saved, self._queue = self._queue, [item]
        try:
            self._flush()
        finally:
            self._queue = saved + self._queue

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            return self.conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: read failed: {exc}") from exc

    def _read_in(self, sql: str, values: list[str]) -> list[tuple[Any, ...]]:
        """``sql`` with ``{marks}`` for an ``IN`` list of ``values``, read in chunks that
        stay within SQLite's limit of bound parameters."""
        rows: list[tuple[Any, ...]] = []
        for start in range(0, len(values), 500):
            chunk = values[start : start + 500]
            rows += self._read(sql.format(marks=", ".join("?" * len(chunk))), tuple(chunk))
        return rows

    # -- values -------------------------------------------------------------------------
    @staticmethod
    def _value(conn: sqlite3.Connection, text: str | None) -> tuple[str | None, str | None]:
        """(inline, ref): large values are stored once, by content hash."""
        if text is None or len(text) <= BLOB_THRESHOLD:
            return text, None
        digest = blob_hash(text)
        conn.execute(
            "INSERT OR IGNORE INTO blobs (hash, data, size) VALUES (?, ?, ?)",
            (digest, text, len(text)),
        )
        return None, digest

    # -- runs ---------------------------------------------------------------------------
    @staticmethod
    def _insert_run(conn: sqlite3.Connection, new: NewRun, now: float) -> bool:
        cur = conn.execute(
            "INSERT INTO runs (run_id, workflow, status, args, parent_run_id, parent_seq, "
            "created_at, updated_at, tags, forked_from, fork_seq, fork_replaced) "
            "VALUES (?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id) DO NOTHING",
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
            ),
        )
        if cur.rowcount == 1:
            if new.tags:
                conn.executemany(
                    "INSERT OR IGNORE INTO run_tags (tag, run_id) VALUES (?, ?)",
                    [(tag, new.run_id) for tag in new.tags],
                )
            return True
        row = conn.execute("SELECT workflow FROM runs WHERE run_id = ?", (new.run_id,)).fetchone()
        if row[0] != new.workflow:
            raise run_id_conflict(new.run_id, row[0], new.workflow)
        return False

    async def create_run(self, new: NewRun) -> tuple[Run, bool]:
        now = time.time()
        if await self._write(lambda conn: self._insert_run(conn, new, now)):
            return new_run_record(new, now), True  # as stored: no need to read it back
        run = await self.get_run(new.run_id)
        assert run is not None
        return run, False

    async def create_fork(self, new: NewRun, replaced: NewEntry | None) -> tuple[Run, bool]:
        def op(conn: sqlite3.Connection) -> bool:
            if not self._insert_run(conn, new, time.time()):
                return False
            if replaced is not None:
                values = (*self._value(conn, replaced.input_json),
                          *self._value(conn, replaced.output_json))  # fmt: skip
                conn.execute(
                    f"INSERT INTO journal ({JOURNAL_COLUMNS}) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
        last_rows = self._read(_FORK_LAST, (run_id,))
        unfinished_rows = self._read(_FORK_UNFINISHED, (at_seq, run_id))
        at_rows = self._read(_FORK_ENTRY, (run_id, at_seq))
        first = unfinished_rows[0][0] if unfinished_rows else None
        unfinished = None
        if first is not None:
            found = self._read(_FORK_ENTRY, (run_id, first))
            unfinished = entry_from_row(found[0]) if found else None
        last = last_rows[0][0] if last_rows and last_rows[0][0] is not None else 0
        return last, unfinished, entry_from_row(at_rows[0]) if at_rows else None

    async def get_run(self, run_id: str) -> Run | None:
        rows = self._read(f"SELECT {RUN_COLUMNS} FROM runs WHERE run_id = ?", (run_id,))
        return run_from_row(rows[0]) if rows else None

    async def stopped_runs(self, run_ids: list[str]) -> list[str]:
        sql = f"SELECT run_id FROM runs WHERE run_id IN ({{marks}}) AND status IN {STOPPED}"
        return [row[0] for row in self._read_in(sql, run_ids)]

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
            where.append("status = ?")
            params.append(str(status))
        if workflow is not None:
            where.append("workflow = ?")
            params.append(workflow)
        if tag is not None:
            where.append("run_id IN (SELECT run_id FROM run_tags WHERE tag = ?)")
            params.append(tag)
        if forked_from is not None:
            where.append("forked_from = ?")
            params.append(forked_from)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self._read(
            f"SELECT {RUN_COLUMNS} FROM runs {clause} "
            "ORDER BY created_at DESC, run_id LIMIT ? OFFSET ?",
            (*params, limit, offset),
        )
        return [run_from_row(row) for row in rows]

    async def list_entries(self, run_id: str) -> list[JournalEntry]:
        return [entry_from_row(row) for row in self._read(_LINEAGE_SELECT, (run_id, run_id))]

    async def list_signals(self, run_id: str) -> list[Signal]:
        return [
            signal_from_row(run_id, row)
            for row in self._read(
                "SELECT id, name, value, created_at FROM signals "
                "WHERE run_id = ? AND consumed_seq IS NULL ORDER BY id",
                (run_id,),
            )
        ]

    async def load_state(self, run_id: str) -> RunState:
        run = await self.get_run(run_id)
        if run is None:
            raise RunNotFoundError(f"no run {run_id!r}", run_id=run_id)
        rows = (
            self._read(_ENTRY_SELECT, (run_id,))
            if run.forked_from is None
            else self._read(_LINEAGE_SELECT, (run_id, run_id))
        )
        entries = {row[1]: entry_from_row(row) for row in rows}
        signals = await self.list_signals(run_id)
        children: dict[str, Run] = {}
        if any(e.kind == "child" and e.status is EntryStatus.WAITING for e in entries.values()):
            rows = self._read(f"SELECT {RUN_COLUMNS} FROM runs WHERE parent_run_id = ?", (run_id,))
            children = {row[0]: run_from_row(row) for row in rows}
        effects: dict[int, EffectRecord] = {}
        if any(e.kind == "tool" and e.status in _UNSEALED for e in entries.values()):
            effects = {
                e.seq: e
                for e in await self.list_effects(run_id=run_id, limit=1_000_000)
                if e.seq in entries and entries[e.seq].status in _UNSEALED
            }
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
            "?",
            run_id=run_id is not None,
            in_doubt=in_doubt,
            awaiting_approval=awaiting_approval,
            page=True,
        )
        params = (run_id,) if run_id is not None else ()
        return [effect_from_row(row) for row in self._read(query, (*params, limit, offset))]

    @staticmethod
    def _effect(conn: sqlite3.Connection, run_id: str, seq: int) -> EffectRecord | None:
        row = conn.execute(
            effect_query("?", run_id=True, seq=True, page=False), (run_id, seq)
        ).fetchone()
        return None if row is None else effect_from_row(row)

    async def count_runs(self) -> dict[str, int]:
        rows = self._read("SELECT status, count(*) FROM runs GROUP BY status", ())
        return {status: count for status, count in rows}

    async def list_workers(self) -> list[WorkerActivity]:
        rows = self._read(
            "SELECT worker_id, host, pid, started_at, heartbeat_at FROM workers "
            "ORDER BY started_at, worker_id",
            (),
        )
        return [WorkerActivity(*row) for row in rows]

    # -- control-plane tokens -----------------------------------------------------------
    async def create_token(self, token: ApiToken, secret_hash: str) -> None:
        await self._write(
            lambda conn: conn.execute(
                f"INSERT INTO api_tokens ({TOKEN_COLUMNS}, secret_hash) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
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
        )

    async def find_token(self, secret_hash: str) -> ApiToken | None:
        rows = self._read(
            f"SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE secret_hash = ?", (secret_hash,)
        )
        return token_from_row(rows[0]) if rows else None

    async def touch_token(self, token_id: str, at: float) -> None:
        await self._write(
            lambda conn: conn.execute(
                "UPDATE api_tokens SET last_used_at = ? WHERE token_id = ?", (at, token_id)
            )
        )

    async def list_tokens(self) -> list[ApiToken]:
        rows = self._read(f"SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at", ())
        return [token_from_row(row) for row in rows]

    async def revoke_token(self, token_id: str, at: float) -> ApiToken | None:
        def op(conn: sqlite3.Connection) -> ApiToken | None:
            conn.execute(
                "UPDATE api_tokens SET revoked_at = ? WHERE token_id = ? AND revoked_at IS NULL",
                (at, token_id),
            )
            row = conn.execute(
                f"SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE token_id = ?", (token_id,)
            ).fetchone()
            return None if row is None else token_from_row(row)

        return await self._write(op)

    # -- commands -----------------------------------------------------------------------
    async def resolve_effect(
        self, run_id: str, seq: int, resolution_json: str, event_json: str
    ) -> EffectRecord:
        def op(conn: sqlite3.Connection) -> EffectRecord:
            now = time.time()
            row = conn.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                raise RunNotFoundError(f"no run {run_id!r}", run_id=run_id)
            found = self._effect(conn, run_id, seq)
            if found is None or not found.in_doubt or row[0] != "needs_attention":
                raise effect_state_error(run_id, seq, found, "in doubt")
            conn.execute(
                f"UPDATE effects SET in_doubt = 0, resolution = ?, {_APPEND_EVENT} "
                "WHERE run_id = ? AND seq = ?",
                (resolution_json, event_json, run_id, seq),
            )
            # Back to the workers, which carry the decision out when they replay the run.
            conn.execute(
                "UPDATE runs SET status = 'pending', error = NULL, updated_at = ? WHERE run_id = ?",
                (now, run_id),
            )
            resolved = self._effect(conn, run_id, seq)
            assert resolved is not None
            return resolved

        return await self._write(op)

    async def hand_back(self, run_id: str, *, code: str, signal_name: str, value_json: str) -> Run:
        def op(conn: sqlite3.Connection) -> None:
            now = time.time()
            row = conn.execute(
                "SELECT status, error FROM runs WHERE run_id = ?", (run_id,)
            ).fetchone()
            if row is None:
                raise RunNotFoundError(f"no run {run_id!r}", run_id=run_id)
            stopped_for(run_id, row[0], row[1], code)
            self._deliver(conn, run_id, signal_name, value_json, now)
            conn.execute(
                "UPDATE runs SET status = 'pending', error = NULL, updated_at = ? WHERE run_id = ?",
                (now, run_id),
            )

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
        def op(conn: sqlite3.Connection) -> None:
            now = time.time()
            row = conn.execute(
                "SELECT status, updated_at, error FROM runs WHERE run_id = ?", (run_id,)
            ).fetchone()
            if row is None:
                raise RunNotFoundError(f"no run {run_id!r}", run_id=run_id)
            restart_error(run_id, row[0], row[1], expect)
            (restart,) = conn.execute(
                "SELECT COALESCE(MAX(restart), 0) + 1 FROM run_restarts WHERE run_id = ?",
                (run_id,),
            ).fetchone()
            conn.execute(
                f"INSERT INTO journal_discarded (run_id, restart, {DISCARD_COLUMNS}) "
                f"SELECT run_id, ?, {DISCARD_COLUMNS} FROM journal WHERE run_id = ? AND seq >= ?",
                (restart, run_id, from_seq),
            )
            conn.execute("DELETE FROM journal WHERE run_id = ? AND seq >= ?", (run_id, from_seq))
            conn.execute(
                "UPDATE signals SET consumed_seq = NULL WHERE run_id = ? AND consumed_seq >= ?",
                (run_id, from_seq),
            )
            conn.execute(
                "INSERT INTO run_restarts (run_id, restart, from_seq, at, by_whom, reason, "
                "status, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, restart, from_seq, now, by, reason, row[0], row[2]),
            )
            conn.execute(
                "UPDATE runs SET status = 'pending', error = NULL, result = NULL, wake_at = NULL, "
                "lease_owner = NULL, lease_expires_at = NULL, updated_at = ? WHERE run_id = ?",
                (now, run_id),
            )

        await self._write(op)
        run = await self.get_run(run_id)
        assert run is not None
        return run

    async def list_restarts(self, run_id: str) -> list[dict[str, Any]]:
        restarts = self._read(
            "SELECT restart, from_seq, at, by_whom, reason, status, error FROM run_restarts "
            "WHERE run_id = ? ORDER BY restart",
            (run_id,),
        )
        discarded = self._read(
            "SELECT restart, seq, kind, name, status FROM journal_discarded WHERE run_id = ? "
            "ORDER BY restart, seq",
            (run_id,),
        )
        return restart_records(restarts, discarded)

    async def get_blobs(self, hashes: list[str]) -> dict[str, str]:
        rows = self._read_in("SELECT hash, data FROM blobs WHERE hash IN ({marks})", hashes)
        return {digest: data for digest, data in rows}

    async def decide_approval(
        self, run_id: str, seq: int, decision_json: str, event_json: str, signal_name: str
    ) -> EffectRecord:
        def op(conn: sqlite3.Connection) -> EffectRecord:
            now = time.time()
            row = conn.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                raise RunNotFoundError(f"no run {run_id!r}", run_id=run_id)
            found = self._effect(conn, run_id, seq)
            if found is None or found.state is not EffectState.AWAITING_APPROVAL:
                raise effect_state_error(run_id, seq, found, "awaiting approval")
            if row[0] in _TERMINAL:
                raise effect_state_error(run_id, seq, found, f"in a live run (it is {row[0]})")
            conn.execute(
                f"UPDATE effects SET resolution = ?, {_APPEND_EVENT} WHERE run_id = ? AND seq = ?",
                (decision_json, event_json, run_id, seq),
            )
            self._deliver(conn, run_id, signal_name, decision_json, now)
            decided = self._effect(conn, run_id, seq)
            assert decided is not None
            return decided

        return await self._write(op)

    async def send_signal(self, run_id: str, name: str, value_json: str) -> None:
        def op(conn: sqlite3.Connection) -> None:
            now = time.time()
            row = conn.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                raise RunNotFoundError(f"no run {run_id!r}", run_id=run_id)
            self._deliver(conn, run_id, name, value_json, now)

        await self._write(op)

    @staticmethod
    def _deliver(
        conn: sqlite3.Connection, run_id: str, name: str, value_json: str, now: float
    ) -> None:
        conn.execute(
            "INSERT INTO signals (run_id, name, value, created_at) VALUES (?, ?, ?, ?)",
            (run_id, name, value_json, now),
        )
        # A waiting run is woken; a running one sees the signal when it next suspends.
        conn.execute(
            "UPDATE runs SET wake_at = ?, updated_at = ? WHERE run_id = ? AND status = 'waiting'",
            (now, now, run_id),
        )

    async def cancel_run(self, run_id: str, reason: str) -> Run:
        def op(conn: sqlite3.Connection) -> None:
            now = time.time()
            row = conn.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                raise RunNotFoundError(f"no run {run_id!r}", run_id=run_id)
            error = json.dumps({"type": "Cancelled", "message": reason})
            todo = [run_id]
            while todo:  # the run and, depth first, every unfinished descendant
                current = todo.pop()
                cur = conn.execute(
                    "UPDATE runs SET status = 'cancelled', error = ?, lease_owner = NULL, "
                    "wake_at = NULL, updated_at = ? WHERE run_id = ? "
                    f"AND status NOT IN {_TERMINAL}",
                    (error, now, current),
                )
                if cur.rowcount:
                    self._wake_parent(conn, current, now)
                todo.extend(
                    r[0]
                    for r in conn.execute(
                        "SELECT run_id FROM runs WHERE parent_run_id = ? "
                        f"AND status NOT IN {_TERMINAL}",
                        (current,),
                    )
                )

        await self._write(op)
        run = await self.get_run(run_id)
        assert run is not None
        return run

    @staticmethod
    def _wake_parent(conn: sqlite3.Connection, run_id: str, now: float) -> None:
        conn.execute(
            "UPDATE runs SET wake_at = ?, updated_at = ? WHERE status = 'waiting' AND "
            "run_id = (SELECT parent_run_id FROM runs WHERE run_id = ?)",
            (now, now, run_id),
        )

    # -- workers and leases -------------------------------------------------------------
    async def register_worker(self, info: WorkerInfo) -> None:
        def op(conn: sqlite3.Connection) -> None:
            now = time.time()
            conn.execute(
                "INSERT OR REPLACE INTO workers VALUES (?, ?, ?, ?, ?, ?, ?)",
                (info.worker_id, info.host, info.boot_id, info.pid, info.pid_start, now, now),
            )

        await self._write(op)

    async def unregister_worker(self, worker_id: str) -> None:
        await self._write(
            lambda conn: conn.execute("DELETE FROM workers WHERE worker_id = ?", (worker_id,))
        )

    async def expire_dead_local_workers(self, me: WorkerInfo) -> int:
        rows = self._read(
            "SELECT worker_id, boot_id, pid, pid_start FROM workers WHERE host = ?", (me.host,)
        )
        dead = _procs.dead_workers(me, rows)
        if not dead:
            return 0

        def op(conn: sqlite3.Connection) -> int:
            expired = 0
            for worker_id in dead:
                expired += conn.execute(
                    "UPDATE runs SET lease_expires_at = 0 "
                    "WHERE lease_owner = ? AND status = 'running'",
                    (worker_id,),
                ).rowcount
                conn.execute("DELETE FROM workers WHERE worker_id = ?", (worker_id,))
            return expired

        return await self._write(op)

    async def pending_workflows(self) -> set[str]:
        rows = self._read("SELECT DISTINCT workflow FROM runs WHERE status = 'pending'")
        return {row[0] for row in rows}

    async def claim_runs(
        self, worker_id: str, limit: int, lease_seconds: float, workflows: frozenset[str]
    ) -> list[Fence]:
        if not workflows:
            return []
        names = sorted(workflows)
        marks = ", ".join("?" * len(names))

        def op(conn: sqlite3.Connection) -> list[Fence]:
            now = time.time()
            rows = conn.execute(
                "UPDATE runs SET status = 'running', lease_owner = ?, lease_expires_at = ?, "
                "fence = fence + 1, attempts = attempts + 1, wake_at = NULL, updated_at = ? "
                "WHERE run_id IN ("
                " SELECT run_id FROM ("
                "  SELECT run_id, workflow, created_at FROM runs WHERE status = 'pending'"
                "  UNION ALL SELECT run_id, workflow, created_at FROM runs"
                "   WHERE status = 'waiting' AND wake_at <= ?"
                "  UNION ALL SELECT run_id, workflow, created_at FROM runs"
                "   WHERE status = 'running' AND lease_expires_at < ?"
                f" ) WHERE workflow IN ({marks}) ORDER BY created_at LIMIT ?) "
                "RETURNING run_id, fence",
                (worker_id, now + lease_seconds, now, now, now, *names, limit),
            ).fetchall()
            return [Fence(row[0], worker_id, row[1]) for row in rows]

        return await self._write(op)

    async def heartbeat(self, worker_id: str, run_ids: list[str], lease_seconds: float) -> set[str]:
        def op(conn: sqlite3.Connection) -> set[str]:
            now = time.time()
            conn.execute(
                "UPDATE workers SET heartbeat_at = ? WHERE worker_id = ?", (now, worker_id)
            )
            held: set[str] = set()
            for run_id in run_ids:
                row = conn.execute(
                    "UPDATE runs SET lease_expires_at = ? WHERE run_id = ? "
                    "AND lease_owner = ? AND status = 'running' RETURNING run_id",
                    (now + lease_seconds, run_id, worker_id),
                ).fetchone()
                if row is not None:
                    held.add(row[0])
            return held

        return await self._write(op)

    async def release_runs(self, worker_id: str, run_ids: list[str]) -> None:
        def op(conn: sqlite3.Connection) -> None:
            now = time.time()
            conn.executemany(
                "UPDATE runs SET status = 'pending', lease_owner = NULL, "
                "lease_expires_at = NULL, updated_at = ? "
                "WHERE run_id = ? AND lease_owner = ? AND status = 'running'",
                [(now, run_id, worker_id) for run_id in run_ids],
            )

        if run_ids:
            await self._write(op)

    async def next_wake_at(self, workflows: frozenset[str]) -> float | None:
        if not workflows:
            return None
        names = sorted(workflows)
        marks = ", ".join("?" * len(names))
        rows = self._read(
            "SELECT min(t) FROM ("
            " SELECT min(wake_at) AS t FROM runs WHERE status = 'waiting'"
            f"  AND workflow IN ({marks})"
            " UNION ALL SELECT min(lease_expires_at) FROM runs WHERE status = 'running'"
            f"  AND workflow IN ({marks}))",
            (*names, *names),
        )
        return rows[0][0] if rows else None

    # -- journal writes -----------------------------------------------------------------
    @staticmethod
    def _check(conn: sqlite3.Connection, fence: Fence) -> None:
        if conn.execute(_OWNED, (fence.run_id, fence.worker_id, fence.fence)).fetchone() is None:
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
        # A stale writer must write nothing, not even a blob: check the fence first
        # whenever the first write below does not check it itself.
        checked = consume_signal is None and start_child is None and not has_blob(entry)
        if checked and effect is None:
            if entry.replaces:
                await self._seal_in_place(fence, entry)
                return
            # A plain step: one statement, its fence check included, every value inline.
            sql, params = _plain_write(fence, entry)

            def plain(conn: sqlite3.Connection) -> None:
                if conn.execute(sql, params).rowcount != 1:
                    self._check(conn, fence)  # raises LeaseLostError

            await self._write(plain)
            return

        def op(conn: sqlite3.Connection) -> None:
            if not checked:
                self._check(conn, fence)
            if effect is not None:
                cur = conn.execute(
                    _EFFECT_UPSERT,
                    (
                        *effect_params(fence, effect, time.time()),
                        fence.run_id,
                        fence.worker_id,
                        fence.fence,
                        effect.event_json,
                    ),
                )
                if cur.rowcount != 1:
                    self._check(conn, fence)  # raises LeaseLostError
            if start_child is not None and not self._insert_run(conn, start_child, time.time()):
                # Insert the child first: a conflict must leave no waiting entry behind, or
                # the parent would replay into a wait on a run that is not its child.
                raise child_run_id_taken(start_child.run_id)
            if entry.blobs:
                conn.executemany(
                    "INSERT OR IGNORE INTO blobs (hash, data, size) VALUES (?, ?, ?)",
                    [(digest, text, len(text)) for digest, text in entry.blobs],
                )
            input_inline, input_ref = self._value(conn, entry.input_json)
            output_inline, output_ref = self._value(conn, entry.output_json)
            # The fence check is part of the insert, as for a plain step.
            cur = conn.execute(
                _JOURNAL_UPSERT,
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
                self._check(conn, fence)  # raises LeaseLostError
            if consume_signal is not None:
                conn.execute(
                    "UPDATE signals SET consumed_seq = ? WHERE id = ? AND consumed_seq IS NULL",
                    (entry.seq, consume_signal),
                )

        await self._write(op)

    async def _seal_in_place(self, fence: Fence, entry: NewEntry) -> None:
        params = (
            entry.status,
            entry.output_json,
            None,
            entry.error_json,
            entry.finished_at,
            entry.attempts,
            entry.delivery,
            fence.run_id,
            entry.seq,
            fence.run_id,
            fence.worker_id,
            fence.fence,
        )

        def op(conn: sqlite3.Connection) -> None:
            if conn.execute(_SEAL_IN_PLACE, params).rowcount != 1:
                self._check(conn, fence)  # raises LeaseLostError
                raise StorageError(f"run {fence.run_id!r}: no entry at seq {entry.seq} to seal")

        await self._write(op)

    async def finish_run(
        self,
        fence: Fence,
        status: RunStatus,
        *,
        result_json: str | None = None,
        error_json: str | None = None,
        in_doubt: InDoubt | None = None,
    ) -> None:
        def op(conn: sqlite3.Connection) -> None:
            now = time.time()
            if in_doubt is not None:
                self._check(conn, fence)
                conn.execute(
                    f"UPDATE effects SET in_doubt = 1, resolution = NULL, {_APPEND_EVENT} "
                    "WHERE run_id = ? AND seq = ?",
                    (in_doubt.event_json, fence.run_id, in_doubt.seq),
                )
            cur = conn.execute(
                "UPDATE runs SET status = ?, result = ?, error = ?, lease_owner = NULL, "
                "lease_expires_at = NULL, wake_at = NULL, updated_at = ? "
                "WHERE run_id = ? AND lease_owner = ? AND fence = ? AND status = 'running'",
                (
                    str(status),
                    result_json,
                    error_json,
                    now,
                    fence.run_id,
                    fence.worker_id,
                    fence.fence,
                ),
            )
            if cur.rowcount != 1:
                self._check(conn, fence)
            if status.is_terminal:
                self._wake_parent(conn, fence.run_id, now)

        await self._write(op)

    async def suspend_run(
        self,
        fence: Fence,
        *,
        wake_at: float | None,
        signal_names: frozenset[str],
        child_ids: frozenset[str],
    ) -> None:
        def op(conn: sqlite3.Connection) -> None:
            now = time.time()
            ready = False
            # Within this write transaction no signal or child can slip in between the
            # check and the status change, so a wake-up is never lost.
            for name in signal_names:
                if conn.execute(
                    "SELECT 1 FROM signals WHERE run_id = ? AND name = ? "
                    "AND consumed_seq IS NULL LIMIT 1",
                    (fence.run_id, name),
                ).fetchone():
                    ready = True
                    break
            if not ready:
                for child_id in child_ids:
                    if conn.execute(
                        f"SELECT 1 FROM runs WHERE run_id = ? AND status IN {_TERMINAL}",
                        (child_id,),
                    ).fetchone():
                        ready = True
                        break
            cur = conn.execute(
                "UPDATE runs SET status = 'waiting', wake_at = ?, lease_owner = NULL, "
                "lease_expires_at = NULL, updated_at = ? "
                "WHERE run_id = ? AND lease_owner = ? AND fence = ? AND status = 'running'",
                (now if ready else wake_at, now, fence.run_id, fence.worker_id, fence.fence),
            )
            if cur.rowcount != 1:
                self._check(conn, fence)

        await self._write(op)
