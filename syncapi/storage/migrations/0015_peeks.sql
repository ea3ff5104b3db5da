-- Rooms a device peeks into without joining (MSC2753): /sync gives them
-- in rooms.peek to that device alone. pos is the stream position when the
-- peek began: a sync from before it gets the room whole.
CREATE TABLE syncapi_peeks (
	user_id TEXT NOT NULL,
	device_id TEXT NOT NULL,
	room_id TEXT NOT NULL,
	pos BIGINT NOT NULL,
	PRIMARY KEY (user_id, device_id, room_id)
);
