-- The media each room's events refer to (content.url, the thumbnail of
-- content.info, and their encrypted forms), recorded as the roomserver's
-- output goes by: what the admin API's room-wide quarantine acts on.
CREATE TABLE mediaapi_room_media (
	room_id TEXT NOT NULL,
	server_name TEXT NOT NULL,
	media_id TEXT NOT NULL,
	PRIMARY KEY (room_id, server_name, media_id)
);
