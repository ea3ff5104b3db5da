-- The oldest events of a room, for backfill: where its timeline here starts.
CREATE INDEX roomserver_events_room_depth ON roomserver_events (room_nid, outlier, depth);
