-- The effect log (DESIGN section 4); the same table as sql/sqlite/0003_effects.sql.
CREATE TABLE effects (
    run_id           TEXT NOT NULL,
    seq              INTEGER NOT NULL,
    kind             TEXT NOT NULL,
    idempotency_key  TEXT NOT NULL,
    blast_radius     TEXT,
    approval         TEXT NOT NULL,
    decision         TEXT NOT NULL,
    tainted          BOOLEAN NOT NULL DEFAULT FALSE,
    attempt          INTEGER NOT NULL,
    in_doubt         BOOLEAN NOT NULL DEFAULT FALSE,
    resolution       TEXT,
    history          TEXT NOT NULL,
    created_at       DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (run_id, seq)
);
CREATE INDEX effects_in_doubt ON effects (created_at) WHERE in_doubt;
CREATE INDEX effects_created ON effects (created_at DESC);
