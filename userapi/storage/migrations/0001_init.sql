-- Local accounts. The profile lives here too: every local user has exactly
-- one, and it goes when the account is deactivated.
CREATE TABLE userapi_accounts (
	user_id TEXT NOT NULL PRIMARY KEY,
	localpart TEXT NOT NULL,
	-- bcrypt hash; empty means the account cannot log in with a password.
	password_hash TEXT NOT NULL DEFAULT '',
	is_admin BOOLEAN NOT NULL DEFAULT FALSE,
	deactivated BOOLEAN NOT NULL DEFAULT FALSE,
	created_ts BIGINT NOT NULL,
	display_name TEXT NOT NULL DEFAULT '',
	avatar_url TEXT NOT NULL DEFAULT ''
);

-- Devices, each with its one access token, stored as a SHA-256 hash.
-- session_id is never reused, unlike device IDs, so that what is scoped to a
-- device (transaction IDs) does not leak into a later device of that name.
CREATE TABLE userapi_devices (
	session_id {{serial}},
	user_id TEXT NOT NULL,
	device_id TEXT NOT NULL,
	token_hash TEXT NOT NULL,
	display_name TEXT NOT NULL DEFAULT '',
	created_ts BIGINT NOT NULL,
	last_seen_ts BIGINT NOT NULL DEFAULT 0,
	last_seen_ip TEXT NOT NULL DEFAULT '',
	user_agent TEXT NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX userapi_devices_user_device ON userapi_devices (user_id, device_id);
CREATE UNIQUE INDEX userapi_devices_token ON userapi_devices (token_hash);

-- Account data, global (room_id '') and per room. pos is the account-data
-- stream position of the row's last change.
CREATE TABLE userapi_account_data (
	user_id TEXT NOT NULL,
	room_id TEXT NOT NULL,
	data_type TEXT NOT NULL,
	content TEXT NOT NULL,
	pos BIGINT NOT NULL,
	PRIMARY KEY (user_id, room_id, data_type)
);
CREATE INDEX userapi_account_data_user_pos ON userapi_account_data (user_id, pos);

-- The heads of the streams this component numbers.
CREATE TABLE userapi_stream_positions (
	stream TEXT NOT NULL PRIMARY KEY,
	pos BIGINT NOT NULL
);
INSERT INTO userapi_stream_positions (stream, pos) VALUES ('account_data', 0);
