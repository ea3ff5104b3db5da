-- One row per media item, local or a cached copy of a remote one. The
-- bytes live on disk under their SHA-256 (content_hash), shared by every
-- row with the same content.
CREATE TABLE mediaapi_media (
	server_name TEXT NOT NULL,
	media_id TEXT NOT NULL,
	-- the uploader; empty for cached remote media
	user_id TEXT NOT NULL DEFAULT '',
	content_type TEXT NOT NULL DEFAULT '',
	upload_name TEXT NOT NULL DEFAULT '',
	size BIGINT NOT NULL DEFAULT 0,
	content_hash TEXT NOT NULL DEFAULT '',
	created_ts BIGINT NOT NULL,
	-- an ID made by /create and not uploaded yet expires then; 0 once
	-- the content is there
	pending_until BIGINT NOT NULL DEFAULT 0,
	-- the admin who quarantined it; empty when it is served
	quarantined_by TEXT NOT NULL DEFAULT '',
	PRIMARY KEY (server_name, media_id)
);
CREATE INDEX mediaapi_media_user ON mediaapi_media (user_id, created_ts);
CREATE INDEX mediaapi_media_hash ON mediaapi_media (content_hash);

-- Thumbnails made on request, one per configured size and method.
CREATE TABLE mediaapi_thumbnails (
	server_name TEXT NOT NULL,
	media_id TEXT NOT NULL,
	width INTEGER NOT NULL,
	height INTEGER NOT NULL,
	method TEXT NOT NULL,
	content_type TEXT NOT NULL,
	size BIGINT NOT NULL,
	content_hash TEXT NOT NULL,
	created_ts BIGINT NOT NULL,
	PRIMARY KEY (server_name, media_id, width, height, method)
);
CREATE INDEX mediaapi_thumbnails_hash ON mediaapi_thumbnails (content_hash);
