-- Indexes for the control plane's reads at scale (benchmarks/control_plane.py):
-- the newest runs first (every unfiltered list; PostgreSQL has runs_created since 0001),
-- and the few journal entries that wait (the approvals inbox starts from them).
CREATE INDEX runs_created ON runs (created_at DESC, run_id);
CREATE INDEX journal_waiting ON journal (run_id, seq) WHERE status = 'waiting';
-- Tool calls in flight (intent recorded, completion not): with journal_waiting, the
-- unfinished entries a fork must not share, found without reading the whole journal.
CREATE INDEX journal_intent ON journal (run_id, seq) WHERE status = 'intent';
