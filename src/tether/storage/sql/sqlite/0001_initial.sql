-- Tether schema, SQLite dialect, migration 1.
-- Keep in sync with the PostgreSQL dialect once it exists (sql/postgres/0001_initial.sql).

CREATE TABLE runs (
    run_id            TEXT PRIMARY KEY,
    workflow          TEXT NOT NULL,
    status            TEXT NOT NULL,          -- RunStatus value
    args              TEXT NOT NULL,          -- JSON {"args": [...], "kwargs": {...}}
    result            TEXT,                   -- JSON, when succeeded
    error             TEXT,                   -- JSON {"type", "message", ...}
    parent_run_id     TEXT,
    parent_seq        INTEGER,
    created_at        REAL NOT NULL,
    updated_at        REAL NOT NULL,
    -- A waiting run becomes claimable when wake_at <= now; NULL waits for a signal/child.
    wake_at           REAL,
    -- Lease: the worker that owns a running run, until when, and the fencing token. Every
    -- write that changes a run checks (lease_owner, fence); fence grows on every claim.
    lease_owner       TEXT,
    lease_expires_at  REAL,
    fence             INTEGER NOT NULL DEFAULT 0,
    attempts          INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX runs_pending ON runs (status, created_at);
CREATE INDEX runs_wake ON runs (status, wake_at);
CREATE INDEX runs_lease ON runs (status, lease_expires_at);
CREATE INDEX runs_owner ON runs (lease_owner);
CREATE INDEX runs_parent ON runs (parent_run_id);

-- One row per durable call. input/output hold JSON inline, or NULL with *_ref naming a
-- content-addressed blob when the value is large.
CREATE TABLE journal (
    run_id       TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    kind         TEXT NOT NULL,
    name         TEXT NOT NULL,
    status       TEXT NOT NULL,               -- completed | failed | waiting
    input        TEXT,
    input_ref    TEXT,
    output       TEXT,
    output_ref   TEXT,
    error        TEXT,
    started_at   REAL,
    finished_at  REAL,
    attempts     INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;

-- A run's mailbox: signals are consumed in id order by the wait at consumed_seq.
CREATE TABLE signals (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id        TEXT NOT NULL,
    name          TEXT NOT NULL,
    value         TEXT,
    created_at    REAL NOT NULL,
    consumed_seq  INTEGER
);
CREATE INDEX signals_mailbox ON signals (run_id, consumed_seq, id);

-- Large values, stored once by the SHA-256 of their JSON text.
CREATE TABLE blobs (
    hash  TEXT PRIMARY KEY,
    data  TEXT NOT NULL,
    size  INTEGER NOT NULL
) WITHOUT ROWID;

-- Live workers, so that a lease held by a dead process on this host is taken over at once.
CREATE TABLE workers (
    worker_id     TEXT PRIMARY KEY,
    host          TEXT NOT NULL,
    boot_id       TEXT NOT NULL,
    pid           INTEGER NOT NULL,
    pid_start     TEXT NOT NULL,
    started_at    REAL NOT NULL,
    heartbeat_at  REAL NOT NULL
);
