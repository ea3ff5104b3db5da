-- A redelivered batch of notifications is recognised by its events: one
-- row per event that notified anyone, instead of a unique index on
-- (user_id, event_id) over every notification, whose long text keys were
-- the largest part of storing an event's notifications (a quarter to
-- two fifths of the push consumer's CPU per event).
CREATE TABLE userapi_notified_events (
	event_id TEXT NOT NULL PRIMARY KEY,
	ts BIGINT NOT NULL
);
INSERT INTO userapi_notified_events (event_id, ts)
	SELECT event_id, MAX(ts) FROM userapi_notifications GROUP BY event_id;
DROP INDEX userapi_notifications_event;
