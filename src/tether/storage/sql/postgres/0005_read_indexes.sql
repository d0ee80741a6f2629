-- The journal entries that wait (the approvals inbox starts from them); see
-- sql/sqlite/0006_read_indexes.sql.
CREATE INDEX journal_waiting ON journal (run_id, seq) WHERE status = 'waiting';
