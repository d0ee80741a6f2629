-- The control plane (issue 6); the same tables as sql/sqlite/0004_control_plane.sql.
ALTER TABLE runs ADD COLUMN tags TEXT;
CREATE TABLE run_tags (
    tag     TEXT NOT NULL,
    run_id  TEXT NOT NULL,
    PRIMARY KEY (tag, run_id)
);
ALTER TABLE effects ADD COLUMN deadline DOUBLE PRECISION;
ALTER TABLE effects ADD COLUMN on_timeout TEXT;
CREATE INDEX effects_unauthorized ON effects (created_at) WHERE attempt = 0;
CREATE TABLE api_tokens (
    token_id      TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    role          TEXT NOT NULL,
    secret_hash   TEXT NOT NULL UNIQUE,
    created_at    DOUBLE PRECISION NOT NULL,
    created_by    TEXT,
    last_used_at  DOUBLE PRECISION,
    revoked_at    DOUBLE PRECISION
);
