-- The journal entries that wait (the approvals inbox starts from them); see
-- sql/sqlite/0006_read_indexes.sql.
CREATE INDEX journal_waiting ON journal (run_id, seq) WHERE status = 'waiting';
-- Tool calls in flight (intent recorded, completion not): with journal_waiting, the
-- unfinished entries a fork must not share, found without reading the whole journal.
CREATE INDEX journal_intent ON journal (run_id, seq) WHERE status = 'intent';
