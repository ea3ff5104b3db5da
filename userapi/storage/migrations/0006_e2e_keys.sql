-- End-to-end encryption keys of local devices (/keys/upload): the signed
-- device keys object as uploaded, one per device.
CREATE TABLE userapi_device_keys (
	user_id TEXT NOT NULL,
	device_id TEXT NOT NULL,
	key_json TEXT NOT NULL,
	PRIMARY KEY (user_id, device_id)
);

-- One-time and fallback keys of local devices. key_id is
-- "<algorithm>:<id>"; a one-time key is deleted when claimed, a fallback
-- key stays until its device uploads another for that algorithm.
CREATE TABLE userapi_one_time_keys (
	user_id TEXT NOT NULL,
	device_id TEXT NOT NULL,
	key_id TEXT NOT NULL,
	algorithm TEXT NOT NULL,
	key_json TEXT NOT NULL,
	fallback BOOLEAN NOT NULL,
	PRIMARY KEY (user_id, device_id, fallback, key_id)
);
CREATE INDEX userapi_one_time_keys_alg ON userapi_one_time_keys (user_id, device_id, algorithm, fallback);

-- The device-list stream: the position of each user's last device list
-- change, local users (keys uploaded, devices deleted) and the remote users
-- whose lists this server tracks alike. For a local user the position is
-- also the stream_id of the m.device_list_update EDUs and of
-- /user/devices (it only grows, which is all the spec asks of it).
CREATE TABLE userapi_device_list_changes (
	user_id TEXT NOT NULL PRIMARY KEY,
	pos BIGINT NOT NULL
);
CREATE INDEX userapi_device_list_changes_pos ON userapi_device_list_changes (pos);
INSERT INTO userapi_stream_positions (stream, pos) VALUES ('device_lists', 0);

-- Device lists of remote users who share a room with a local user, fetched
-- with /user/devices when first needed and kept up to date by
-- m.device_list_update EDUs. stream_id is the origin's last one applied;
-- stale means an update was missed (a gap in prev_id): the list is fetched
-- again before it is used.
CREATE TABLE userapi_remote_device_lists (
	user_id TEXT NOT NULL PRIMARY KEY,
	stream_id BIGINT NOT NULL,
	stale BOOLEAN NOT NULL
);
CREATE TABLE userapi_remote_devices (
	user_id TEXT NOT NULL,
	device_id TEXT NOT NULL,
	display_name TEXT NOT NULL,
	-- The device keys object; '' for a device without keys.
	key_json TEXT NOT NULL,
	PRIMARY KEY (user_id, device_id)
);
