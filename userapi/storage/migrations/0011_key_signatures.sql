-- Signatures a local user made with its user-signing key on other users'
-- master keys (POST /keys/signatures/upload). They are shown to the signer
-- alone (spec: "Cross-signing"), so they are kept apart from the keys;
-- a user's signatures of its own keys are merged into the keys instead.
CREATE TABLE userapi_key_signatures (
	signer_user_id TEXT NOT NULL,
	target_user_id TEXT NOT NULL,
	-- the signed master key's public key (its key ID without "ed25519:")
	target_key_id TEXT NOT NULL,
	signer_key_id TEXT NOT NULL,
	signature TEXT NOT NULL,
	PRIMARY KEY (signer_user_id, target_user_id, target_key_id, signer_key_id)
);
