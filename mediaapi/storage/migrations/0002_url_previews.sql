-- URL previews (GET /preview_url), cached per URL and time bucket (the
-- request's ts divided by media_api.url_preview.cache_duration): the
-- answer as it was sent, whose og:image names media stored here.
CREATE TABLE mediaapi_url_previews (
	url TEXT NOT NULL,
	bucket BIGINT NOT NULL,
	preview TEXT NOT NULL,
	created_ts BIGINT NOT NULL,
	PRIMARY KEY (url, bucket)
);
CREATE INDEX mediaapi_url_previews_created ON mediaapi_url_previews (created_ts);
