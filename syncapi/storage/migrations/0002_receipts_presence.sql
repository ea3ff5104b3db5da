-- The latest receipt of each user, type and thread in each room. A new
-- receipt replaces the row (delete and insert), so pos is the receipts
-- stream position of the latest change and MAX(pos) the stream's head.
CREATE TABLE syncapi_receipts (
    pos {{serial}},
    room_id TEXT NOT NULL,
    receipt_type TEXT NOT NULL,
    user_id TEXT NOT NULL,
    -- '' for an unthreaded receipt
    thread_id TEXT NOT NULL DEFAULT '',
    event_id TEXT NOT NULL,
    -- when the user read it, Unix milliseconds
    ts BIGINT NOT NULL,
    UNIQUE (room_id, receipt_type, user_id, thread_id)
);
CREATE INDEX syncapi_receipts_room_pos ON syncapi_receipts (room_id, pos);

-- The presence of every user whose presence is known; like receipts, a
-- change replaces the row, so pos is the presence stream position.
CREATE TABLE syncapi_presence (
    pos {{serial}},
    user_id TEXT NOT NULL UNIQUE,
    presence TEXT NOT NULL,
    -- NULL when the user set none
    status_msg TEXT,
    last_active_ts BIGINT NOT NULL,
    currently_active BOOLEAN NOT NULL DEFAULT FALSE
);
