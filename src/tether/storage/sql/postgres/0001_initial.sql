-- Tether schema, PostgreSQL dialect, migration 1.
-- The same tables as the SQLite dialect (sql/sqlite/0001 + 0002); times are epoch seconds.
-- JSON is kept as text, exactly as the engine encoded it (never reparsed by the server).

CREATE TABLE runs (
    run_id            TEXT PRIMARY KEY,
    workflow          TEXT NOT NULL,
    status            TEXT NOT NULL,
    args              TEXT NOT NULL,
    result            TEXT,
    error             TEXT,
    parent_run_id     TEXT,
    parent_seq        INTEGER,
    created_at        DOUBLE PRECISION NOT NULL,
    updated_at        DOUBLE PRECISION NOT NULL,
    -- A waiting run becomes claimable when wake_at <= now (the workers' clock).
    wake_at           DOUBLE PRECISION,
    -- Lease (the database server's clock): owner, expiry, and the fencing token, which
    -- grows on every claim. Every write that advances a run checks (lease_owner, fence).
    lease_owner       TEXT,
    lease_expires_at  DOUBLE PRECISION,
    fence             BIGINT NOT NULL DEFAULT 0,
    attempts          INTEGER NOT NULL DEFAULT 0
);
-- Claiming reads three small partial indexes, never the whole table.
CREATE INDEX runs_pending ON runs (created_at) WHERE status = 'pending';
CREATE INDEX runs_wake ON runs (wake_at) WHERE status = 'waiting';
CREATE INDEX runs_lease ON runs (lease_expires_at) WHERE status = 'running';
CREATE INDEX runs_owner ON runs (lease_owner) WHERE lease_owner IS NOT NULL;
CREATE INDEX runs_parent ON runs (parent_run_id) WHERE parent_run_id IS NOT NULL;
CREATE INDEX runs_created ON runs (created_at DESC, run_id);
CREATE INDEX runs_status_created ON runs (status, created_at DESC);

CREATE TABLE journal (
    run_id          TEXT NOT NULL,
    seq             INTEGER NOT NULL,
    kind            TEXT NOT NULL,
    name            TEXT NOT NULL,
    status          TEXT NOT NULL,
    input           TEXT,
    input_ref       TEXT,
    output          TEXT,
    output_ref      TEXT,
    error           TEXT,
    started_at      DOUBLE PRECISION,
    finished_at     DOUBLE PRECISION,
    attempts        INTEGER NOT NULL DEFAULT 1,
    delivery        INTEGER,
    after_delivery  INTEGER,
    after_seq       INTEGER,
    PRIMARY KEY (run_id, seq)
);

CREATE TABLE signals (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id        TEXT NOT NULL,
    name          TEXT NOT NULL,
    value         TEXT,
    created_at    DOUBLE PRECISION NOT NULL,
    consumed_seq  INTEGER
);
CREATE INDEX signals_mailbox ON signals (run_id, id) WHERE consumed_seq IS NULL;

CREATE TABLE blobs (
    hash  TEXT PRIMARY KEY,
    data  TEXT NOT NULL,
    size  INTEGER NOT NULL
);

CREATE TABLE workers (
    worker_id     TEXT PRIMARY KEY,
    host          TEXT NOT NULL,
    boot_id       TEXT NOT NULL,
    pid           INTEGER NOT NULL,
    pid_start     TEXT NOT NULL,
    started_at    DOUBLE PRECISION NOT NULL,
    heartbeat_at  DOUBLE PRECISION NOT NULL
);
CREATE INDEX workers_host ON workers (host);
