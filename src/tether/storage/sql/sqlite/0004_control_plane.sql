-- The control plane (issue 6): run tags, approval deadlines, API tokens.

-- Labels given at start (JSON array of strings; NULL: none), matched by policy rules and
-- filtered on; run_tags indexes them by tag.
ALTER TABLE runs ADD COLUMN tags TEXT;
CREATE TABLE run_tags (
    tag     TEXT NOT NULL,
    run_id  TEXT NOT NULL,
    PRIMARY KEY (tag, run_id)
) WITHOUT ROWID;

-- An approval's deadline (epoch seconds) and what then happens: approve | reject.
ALTER TABLE effects ADD COLUMN deadline REAL;
ALTER TABLE effects ADD COLUMN on_timeout TEXT;
-- Calls never authorized (awaiting approval, rejected, denied): the approvals inbox.
CREATE INDEX effects_unauthorized ON effects (created_at) WHERE attempt = 0;

-- Bearer tokens of the HTTP API and web UI; only the SHA-256 of the secret is kept.
CREATE TABLE api_tokens (
    token_id      TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    role          TEXT NOT NULL,             -- viewer | approver | admin
    secret_hash   TEXT NOT NULL UNIQUE,
    created_at    REAL NOT NULL,
    created_by    TEXT,
    last_used_at  REAL,
    revoked_at    REAL
);
