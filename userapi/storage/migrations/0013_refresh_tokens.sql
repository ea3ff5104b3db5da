-- Refresh tokens (spec: "Refreshing access tokens"). A device asked for
-- one has an access token that expires at token_expires_ts (0: never) and
-- a refresh token, stored as a hash like the access token. After a
-- refresh the previous refresh token stays valid (prev_refresh_hash) until
-- the new access token is first used, so a client that lost the answer to
-- its refresh can refresh again.
ALTER TABLE userapi_devices ADD COLUMN token_expires_ts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE userapi_devices ADD COLUMN refresh_hash TEXT;
ALTER TABLE userapi_devices ADD COLUMN prev_refresh_hash TEXT;
CREATE UNIQUE INDEX userapi_devices_refresh ON userapi_devices (refresh_hash);
CREATE INDEX userapi_devices_prev_refresh ON userapi_devices (prev_refresh_hash);

-- Login tokens from /login/get_token: used once, with m.login.token,
-- within minutes.
CREATE TABLE userapi_login_tokens (
    token_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    expires_ts BIGINT NOT NULL
);
CREATE INDEX userapi_login_tokens_expiry ON userapi_login_tokens (expires_ts);
