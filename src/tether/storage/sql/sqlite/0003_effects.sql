-- The effect log (DESIGN section 4): one row per tool call, keyed like its journal entry,
-- which holds the arguments (secrets as keyed hashes), the result or error and the times.
-- The row is written with the intent, before the call, in the same transaction.
CREATE TABLE effects (
    run_id           TEXT NOT NULL,
    seq              INTEGER NOT NULL,
    kind             TEXT NOT NULL,             -- read | idempotent | irreversible
    idempotency_key  TEXT NOT NULL,             -- stable for (run_id, seq)
    blast_radius     TEXT,
    approval         TEXT NOT NULL,             -- declared: auto | notify | approve | deny
    decision         TEXT NOT NULL,             -- decided by the policy for this call
    tainted          INTEGER NOT NULL DEFAULT 0, -- the run had read untrusted content
    attempt          INTEGER NOT NULL,          -- calls authorized so far
    in_doubt         INTEGER NOT NULL DEFAULT 0, -- irreversible, outcome unknown: a person decides
    resolution       TEXT,                      -- JSON: a person's decision not yet carried out
    history          TEXT NOT NULL,             -- JSON list of events (intents, doubts, decisions)
    created_at       REAL NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
CREATE INDEX effects_in_doubt ON effects (created_at) WHERE in_doubt = 1;
CREATE INDEX effects_created ON effects (created_at);
