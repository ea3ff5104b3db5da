-- OpenID tokens a user asked for (POST /user/{userId}/openid/request_token),
-- which other services check with GET /_matrix/federation/v1/openid/userinfo.
-- Stored as a hash, as access tokens are.
CREATE TABLE userapi_openid_tokens (
    token_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    expires_ts BIGINT NOT NULL
);
CREATE INDEX userapi_openid_tokens_expiry ON userapi_openid_tokens (expires_ts);
