-- The full-text index of /search (spec: "Server Side Search"), one row per
-- room event with a searchable text, keyed by the event's stream position
-- (rowid = syncapi_events.pos), filled as events are appended and deleted
-- when an event is redacted: content.body of m.room.message, content.name
-- of m.room.name, content.topic of m.room.topic. Only the index is kept
-- (the text is in the event): on SQLite a contentless FTS5 table, on
-- PostgreSQL a tsvector with a GIN index (sqldb.FullText).
{{sqlite}}
CREATE VIRTUAL TABLE syncapi_search USING fts5(text, content='', contentless_delete=1,
    tokenize='unicode61 remove_diacritics 2');
{{end}}
{{postgres}}
CREATE TABLE syncapi_search (
    rowid BIGINT PRIMARY KEY,
    tsv TSVECTOR NOT NULL
);
CREATE INDEX syncapi_search_tsv ON syncapi_search USING GIN (tsv);
{{end}}
-- Events appended before this index existed: index them once.
{{sqlite}}
INSERT INTO syncapi_search (rowid, text)
    SELECT pos, json_extract(event_json, path) FROM (
        SELECT pos, event_json,
            '$.content.' || CASE event_type WHEN 'm.room.message' THEN 'body' WHEN 'm.room.name' THEN 'name' ELSE 'topic' END AS path
        FROM syncapi_events
        WHERE redacted_because = '' AND json_valid(event_json)
          AND ((event_type = 'm.room.message' AND state_key IS NULL) OR (event_type IN ('m.room.name', 'm.room.topic') AND state_key = ''))
    ) x
    WHERE json_type(event_json, path) = 'text';
{{end}}
{{postgres}}
INSERT INTO syncapi_search (rowid, tsv)
    SELECT pos, to_tsvector('simple', v #>> '{}') FROM (
        -- JSONB refuses an escaped NUL: such an event stays out of the index.
        SELECT pos,
            (CASE WHEN strpos(event_json, '\u0000') = 0 THEN CAST(event_json AS JSONB) END) -> 'content'
                -> (CASE event_type WHEN 'm.room.message' THEN 'body' WHEN 'm.room.name' THEN 'name' ELSE 'topic' END) AS v
        FROM syncapi_events
        WHERE redacted_because = ''
          AND ((event_type = 'm.room.message' AND state_key IS NULL) OR (event_type IN ('m.room.name', 'm.room.topic') AND state_key = ''))
    ) x
    WHERE jsonb_typeof(v) = 'string';
{{end}}
