-- Cross-signing keys (spec: "Cross-signing"): the master, self-signing and
-- user-signing keys of local users as uploaded, and the master and
-- self-signing keys of the remote users whose device lists are cached.
CREATE TABLE userapi_cross_signing_keys (
	user_id TEXT NOT NULL,
	-- master, self_signing or user_signing
	key_type TEXT NOT NULL,
	key_json TEXT NOT NULL,
	PRIMARY KEY (user_id, key_type)
);
