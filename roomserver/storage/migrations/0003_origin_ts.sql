-- Each event's origin_server_ts, for /timestamp_to_event. Events stored
-- before this migration take the time they were received, the nearest
-- known without parsing every stored event.
ALTER TABLE roomserver_events ADD COLUMN origin_server_ts BIGINT NOT NULL DEFAULT 0;
UPDATE roomserver_events SET origin_server_ts = received_ts;
CREATE INDEX roomserver_events_room_ts ON roomserver_events (room_nid, origin_server_ts);
