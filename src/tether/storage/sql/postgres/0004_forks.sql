-- Forks; the same columns as sql/sqlite/0005_forks.sql.
ALTER TABLE runs ADD COLUMN forked_from TEXT;
ALTER TABLE runs ADD COLUMN fork_seq INTEGER;
CREATE INDEX runs_forked_from ON runs (forked_from) WHERE forked_from IS NOT NULL;
