-- The full-text index of /search (spec: "Server Side Search"): one row per
-- room event with a searchable key, filled as events are appended and
-- deleted when an event is redacted. Keyed by the event's stream
-- position. The text is the key's value: content.body of m.room.message,
-- content.name of m.room.name, content.topic of m.room.topic.
CREATE TABLE syncapi_search (
    pos {{sqlite}}INTEGER{{end}}{{postgres}}BIGINT{{end}} PRIMARY KEY,
    room_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    text TEXT NOT NULL
    {{postgres}}, tsv TSVECTOR GENERATED ALWAYS AS (to_tsvector('simple', text)) STORED{{end}}
);
CREATE INDEX syncapi_search_room ON syncapi_search (room_id, pos);
{{postgres}}
CREATE INDEX syncapi_search_tsv ON syncapi_search USING GIN (tsv);
{{end}}
{{sqlite}}
-- FTS5 over syncapi_search (external content: the text is stored once),
-- kept in step by triggers (sqldb.FullText).
CREATE VIRTUAL TABLE syncapi_search_fts USING fts5(text, content='syncapi_search', content_rowid='pos',
    tokenize='unicode61 remove_diacritics 2');
CREATE TRIGGER syncapi_search_ai AFTER INSERT ON syncapi_search BEGIN
    INSERT INTO syncapi_search_fts (rowid, text) VALUES (new.pos, new.text);
END;
CREATE TRIGGER syncapi_search_ad AFTER DELETE ON syncapi_search BEGIN
    INSERT INTO syncapi_search_fts (syncapi_search_fts, rowid, text) VALUES ('delete', old.pos, old.text);
END;
{{end}}
-- Events appended before this index existed: index them once.
{{sqlite}}
INSERT INTO syncapi_search (pos, room_id, event_type, text)
    SELECT pos, room_id, event_type, json_extract(event_json, path) FROM (
        SELECT pos, room_id, event_type, event_json,
            '$.content.' || CASE event_type WHEN 'm.room.message' THEN 'body' WHEN 'm.room.name' THEN 'name' ELSE 'topic' END AS path
        FROM syncapi_events
        WHERE redacted_because = '' AND json_valid(event_json)
          AND ((event_type = 'm.room.message' AND state_key IS NULL) OR (event_type IN ('m.room.name', 'm.room.topic') AND state_key = ''))
    ) x
    WHERE json_type(event_json, path) = 'text';
{{end}}
{{postgres}}
INSERT INTO syncapi_search (pos, room_id, event_type, text)
    SELECT pos, room_id, event_type, v #>> '{}' FROM (
        -- JSONB refuses an escaped NUL: such an event stays out of the index.
        SELECT pos, room_id, event_type,
            (CASE WHEN strpos(event_json, '\u0000') = 0 THEN CAST(event_json AS JSONB) END) -> 'content'
                -> (CASE event_type WHEN 'm.room.message' THEN 'body' WHEN 'm.room.name' THEN 'name' ELSE 'topic' END) AS v
        FROM syncapi_events
        WHERE redacted_because = ''
          AND ((event_type = 'm.room.message' AND state_key IS NULL) OR (event_type IN ('m.room.name', 'm.room.topic') AND state_key = ''))
    ) x
    WHERE jsonb_typeof(v) = 'string';
{{end}}
