-- HTTP pushers (POST /pushers/set). session_id is the device session that
-- set the pusher: the pusher goes with that device.
CREATE TABLE userapi_pushers (
	pusher_id {{serial}},
	user_id TEXT NOT NULL,
	session_id BIGINT NOT NULL,
	kind TEXT NOT NULL,
	app_id TEXT NOT NULL,
	pushkey TEXT NOT NULL,
	app_display_name TEXT NOT NULL,
	device_display_name TEXT NOT NULL,
	profile_tag TEXT NOT NULL,
	lang TEXT NOT NULL,
	data TEXT NOT NULL,
	pushkey_ts BIGINT NOT NULL
);
CREATE UNIQUE INDEX userapi_pushers_key ON userapi_pushers (app_id, pushkey, user_id);
CREATE INDEX userapi_pushers_user ON userapi_pushers (user_id);

-- Events that notified a local user, kept for GET /notifications and the
-- unread counts of /sync. depth orders them against read receipts; thread_id
-- is the thread root of an event in a thread, '' on the main timeline.
CREATE TABLE userapi_notifications (
	notification_id {{serial}},
	user_id TEXT NOT NULL,
	room_id TEXT NOT NULL,
	event_id TEXT NOT NULL,
	thread_id TEXT NOT NULL,
	depth BIGINT NOT NULL,
	ts BIGINT NOT NULL,
	actions TEXT NOT NULL,
	highlight BOOLEAN NOT NULL,
	is_read BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE UNIQUE INDEX userapi_notifications_event ON userapi_notifications (user_id, event_id);
CREATE INDEX userapi_notifications_unread ON userapi_notifications (user_id, room_id, is_read);
CREATE INDEX userapi_notifications_ts ON userapi_notifications (ts);

-- The userapi's view of room membership, from the state deltas of the
-- OutputRoomEvent stream: who may be notified of an event, the member
-- count and display names that push rules ask about.
CREATE TABLE userapi_room_members (
	room_id TEXT NOT NULL,
	user_id TEXT NOT NULL,
	membership TEXT NOT NULL,
	display_name TEXT NOT NULL,
	event_id TEXT NOT NULL,
	is_local BOOLEAN NOT NULL,
	PRIMARY KEY (room_id, user_id)
);
CREATE INDEX userapi_room_members_event ON userapi_room_members (event_id);
CREATE INDEX userapi_room_members_local ON userapi_room_members (room_id, is_local, membership);
