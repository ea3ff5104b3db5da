-- The joined members of a room, from the index alone: the presence of
-- users sharing a room, member counts and heroes read no event JSON.
CREATE INDEX syncapi_current_state_room_members ON syncapi_current_state (room_id, event_type, membership, state_key);
