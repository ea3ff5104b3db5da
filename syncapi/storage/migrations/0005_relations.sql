-- The relations index (spec: "Forming relationships between events"):
-- one row per event whose content has an m.relates_to with a rel_type,
-- written as the event is appended, deleted when the child is redacted
-- (a redacted child breaks its relation). depth and pos are the child's,
-- so /relations pages in the same topological order as /messages.
CREATE TABLE syncapi_relations (
    event_id TEXT NOT NULL PRIMARY KEY,
    room_id TEXT NOT NULL,
    relates_to TEXT NOT NULL,
    rel_type TEXT NOT NULL,
    event_type TEXT NOT NULL,
    sender TEXT NOT NULL,
    depth BIGINT NOT NULL,
    pos BIGINT NOT NULL
);
CREATE INDEX syncapi_relations_parent ON syncapi_relations (relates_to, rel_type, depth, pos);
-- /threads: a room's thread roots by latest activity.
CREATE INDEX syncapi_relations_room ON syncapi_relations (room_id, rel_type, pos);

-- Events stored before this migration are indexed once at the next start
-- (Storage.indexOldRelations), which then deletes this row.
CREATE TABLE syncapi_relations_pending (pending INTEGER NOT NULL);
INSERT INTO syncapi_relations_pending (pending) VALUES (1);
