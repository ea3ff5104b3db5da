-- Delayed events (MSC4140): events a user asked to be sent later, kept so
-- that they survive a restart and are sent after it. send_at is
-- running_since + delay_ms; a restart moves both.
CREATE TABLE roomserver_delayed_events (
	delay_id TEXT NOT NULL PRIMARY KEY,
	user_id TEXT NOT NULL,
	room_id TEXT NOT NULL,
	event_type TEXT NOT NULL,
	state_key TEXT,
	content TEXT NOT NULL,
	delay_ms BIGINT NOT NULL,
	running_since BIGINT NOT NULL,
	-- created_ts: when it was scheduled; a state event of another user
	-- with the same key set after it cancels it.
	created_ts BIGINT NOT NULL,
	send_at BIGINT NOT NULL
);
CREATE INDEX roomserver_delayed_events_user ON roomserver_delayed_events (user_id);
CREATE INDEX roomserver_delayed_events_due ON roomserver_delayed_events (send_at);
