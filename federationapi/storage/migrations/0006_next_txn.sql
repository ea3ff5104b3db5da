-- The transaction taken to follow the one in flight to a destination
-- ('' when none): the queue takes it while the one before is on the wire,
-- so a restart sends txn_id, then this one, each under its own ID.
ALTER TABLE federationapi_destinations ADD COLUMN next_txn_id TEXT NOT NULL DEFAULT '';
