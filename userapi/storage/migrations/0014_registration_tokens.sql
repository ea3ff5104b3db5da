-- Registration tokens (spec: "Token-authenticated registration"), made by
-- admins. uses_allowed NULL is unlimited, expiry_time NULL never expires;
-- pending counts registrations that passed the token stage but have not
-- finished, completed those that did.
CREATE TABLE userapi_registration_tokens (
    token TEXT PRIMARY KEY,
    uses_allowed BIGINT,
    pending BIGINT NOT NULL DEFAULT 0,
    completed BIGINT NOT NULL DEFAULT 0,
    expiry_time BIGINT
);

-- Accounts deactivated with erase: true (their events are to be shown
-- without content to users who join later; Synapse's "erased users").
ALTER TABLE userapi_accounts ADD COLUMN erased BOOLEAN NOT NULL DEFAULT FALSE;
