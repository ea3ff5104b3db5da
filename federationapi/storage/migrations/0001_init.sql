-- Signing keys of other servers, as each server published them: the whole
-- signed key response is kept, so it can be served again as a notary with
-- the origin's signature intact.
CREATE TABLE federationapi_server_keys (
    server_name TEXT NOT NULL,
    key_id TEXT NOT NULL,
    -- the key response (/_matrix/key/v2/server) that lists this key
    response TEXT NOT NULL,
    valid_until_ts BIGINT NOT NULL,
    fetched_ts BIGINT NOT NULL,
    PRIMARY KEY (server_name, key_id)
);
