-- Replay order for concurrent branches (see engine/_order.py).
-- delivery: the order in which the run resumed from its completed calls (1, 2, ...).
-- after_delivery: how many completions had been handed back when the call was made.
-- after_seq: where the seq counter stood when the last of those resumed the run.
ALTER TABLE journal ADD COLUMN delivery INTEGER;
ALTER TABLE journal ADD COLUMN after_delivery INTEGER;
ALTER TABLE journal ADD COLUMN after_seq INTEGER;
