-- Transactions received from other servers (PUT /send/{txnId}), with the
-- response each got: a retried transaction gets that response again
-- instead of being processed twice. Rows older than a day are pruned.
CREATE TABLE federationapi_inbound_txns (
    origin TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    -- the JSON response sent for the transaction
    response TEXT NOT NULL,
    -- when it was processed (ms)
    received_ts BIGINT NOT NULL,
    PRIMARY KEY (origin, txn_id)
);
CREATE INDEX federationapi_inbound_txns_received ON federationapi_inbound_txns (received_ts);
