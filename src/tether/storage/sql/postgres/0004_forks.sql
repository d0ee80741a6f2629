-- Forks; the same columns as sql/sqlite/0005_forks.sql.
ALTER TABLE runs ADD COLUMN forked_from TEXT;
ALTER TABLE runs ADD COLUMN fork_seq INTEGER;
-- The fork was made with its entry at fork_seq replaced (app.fork(..., replace=)).
ALTER TABLE runs ADD COLUMN fork_replaced BOOLEAN NOT NULL DEFAULT FALSE;
CREATE INDEX runs_forked_from ON runs (forked_from) WHERE forked_from IS NOT NULL;
CREATE TABLE run_restarts (
    run_id      TEXT NOT NULL,
    restart     INTEGER NOT NULL,
    from_seq    INTEGER NOT NULL,
    at          DOUBLE PRECISION NOT NULL,
    by_whom     TEXT,
    reason      TEXT,
    status      TEXT NOT NULL,
    error       TEXT,
    PRIMARY KEY (run_id, restart)
);
CREATE TABLE journal_discarded (
    run_id       TEXT NOT NULL,
    restart      INTEGER NOT NULL,
    seq          INTEGER NOT NULL,
    kind         TEXT NOT NULL,
    name         TEXT NOT NULL,
    status       TEXT NOT NULL,
    input        TEXT,
    input_ref    TEXT,
    output       TEXT,
    output_ref   TEXT,
    error        TEXT,
    started_at   DOUBLE PRECISION,
    finished_at  DOUBLE PRECISION,
    attempts     INTEGER NOT NULL,
    PRIMARY KEY (run_id, restart, seq)
);
