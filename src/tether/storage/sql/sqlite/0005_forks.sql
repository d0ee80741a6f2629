-- Forks (DESIGN section 7): a run made from another at a journal position. Its journal is
-- the origin's entries below fork_seq, read by reference (never copied), then its own.
ALTER TABLE runs ADD COLUMN forked_from TEXT;
ALTER TABLE runs ADD COLUMN fork_seq INTEGER;
CREATE INDEX runs_forked_from ON runs (forked_from) WHERE forked_from IS NOT NULL;
