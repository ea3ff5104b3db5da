-- Pruning the device-list stream (userapi_device_list_changes holds each
-- user's latest position). Every prune records the stream's head with the
-- time (a mark); rows of remote users at or below the newest mark older
-- than the retention are deleted, and that mark's position becomes the
-- floor: a sync token whose device-list position is below the floor is
-- answered as if every user sharing a room had changed (the spec leaves a
-- server free to over-report device_lists.changed). Local users' rows
-- stay: their position is the stream_id other servers hold of them.
CREATE TABLE userapi_device_list_marks (
	pos BIGINT NOT NULL,
	ts BIGINT NOT NULL
);
INSERT INTO userapi_stream_positions (stream, pos) VALUES ('device_lists_floor', 0);
