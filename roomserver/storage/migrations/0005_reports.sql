-- Reports of events, rooms and users that local users made for the
-- server's admins (spec: "Reporting content"). kind is 'event', 'room'
-- or 'user'; room_id and event_id are empty where they do not apply,
-- target_user_id is the reported user (or the reported event's sender).
CREATE TABLE roomserver_reports (
	report_id {{serial}},
	kind TEXT NOT NULL,
	room_id TEXT NOT NULL,
	event_id TEXT NOT NULL,
	target_user_id TEXT NOT NULL,
	reporter TEXT NOT NULL,
	reason TEXT NOT NULL,
	score BIGINT,
	received_ts BIGINT NOT NULL
);
CREATE INDEX roomserver_reports_kind ON roomserver_reports (kind, report_id);
