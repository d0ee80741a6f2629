-- Forks (DESIGN section 7): a run made from another at a journal position. Its journal is
-- the origin's entries below fork_seq, read by reference (never copied), then its own.
ALTER TABLE runs ADD COLUMN forked_from TEXT;
ALTER TABLE runs ADD COLUMN fork_seq INTEGER;
-- The fork was made with its entry at fork_seq replaced (app.fork(..., replace=)).
ALTER TABLE runs ADD COLUMN fork_replaced INTEGER NOT NULL DEFAULT 0;
CREATE INDEX runs_forked_from ON runs (forked_from) WHERE forked_from IS NOT NULL;

-- Retries in place (tether retry RUN_ID --from SEQ): each restart of a run from a seq, and
-- the journal entries it set aside (kept for the audit, never replayed).
CREATE TABLE run_restarts (
    run_id      TEXT NOT NULL,
    restart     INTEGER NOT NULL,          -- 1, 2, ... per run
    from_seq    INTEGER NOT NULL,
    at          REAL NOT NULL,
    by_whom     TEXT,
    reason      TEXT,
    status      TEXT NOT NULL,             -- the run's status before the restart
    error       TEXT,                      -- and its error
    PRIMARY KEY (run_id, restart)
) WITHOUT ROWID;
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
    started_at   REAL,
    finished_at  REAL,
    attempts     INTEGER NOT NULL,
    PRIMARY KEY (run_id, restart, seq)
) WITHOUT ROWID;
