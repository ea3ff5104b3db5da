-- Rooms: one row per room, pointing at its current state snapshot and
-- forward extremities.
CREATE TABLE roomserver_rooms (
    room_nid {{serial}},
    room_id TEXT NOT NULL UNIQUE,
    room_version TEXT NOT NULL,
    -- snapshot of the current state (0: none yet)
    state_snapshot_nid BIGINT NOT NULL DEFAULT 0,
    -- forward extremities, as comma-separated event NIDs
    latest_event_nids TEXT NOT NULL DEFAULT '',
    -- the greatest depth of any event in the room
    max_depth BIGINT NOT NULL DEFAULT 0
);

-- (event type, state key) pairs, numbered so that state blocks hold numbers.
CREATE TABLE roomserver_state_keys (
    tuple_nid {{serial}},
    event_type TEXT NOT NULL,
    state_key TEXT NOT NULL,
    UNIQUE (event_type, state_key)
);

-- Every event stored, once. Rejected events are kept (so they are not
-- fetched again) but never served.
CREATE TABLE roomserver_events (
    event_nid {{serial}},
    room_nid BIGINT NOT NULL,
    event_id TEXT NOT NULL UNIQUE,
    event_type TEXT NOT NULL,
    -- tuple of a state event, 0 for other events
    tuple_nid BIGINT NOT NULL DEFAULT 0,
    sender TEXT NOT NULL,
    depth BIGINT NOT NULL,
    -- snapshot of the state before this event (0: unknown, e.g. outliers)
    state_before_nid BIGINT NOT NULL DEFAULT 0,
    rejected SMALLINT NOT NULL DEFAULT 0,
    outlier SMALLINT NOT NULL DEFAULT 0,
    -- the event ID of the redaction applied to this event, if any
    redacted_by TEXT NOT NULL DEFAULT '',
    received_ts BIGINT NOT NULL,
    event_json TEXT NOT NULL
);
CREATE INDEX roomserver_events_room ON roomserver_events (room_nid, event_nid);

-- A state snapshot is a list of state blocks; blocks are shared between
-- snapshots, so a state change writes one small block, not a copy of the
-- room's state.
CREATE TABLE roomserver_state_snapshots (
    snapshot_nid {{serial}},
    room_nid BIGINT NOT NULL,
    -- encoded list of block NIDs (0 = empty block); its length is a power of two
    block_nids {{blob}} NOT NULL,
    entry_count BIGINT NOT NULL
);

CREATE TABLE roomserver_state_blocks (
    block_nid {{serial}},
    -- encoded sorted (tuple NID, event NID) pairs
    entries {{blob}} NOT NULL
);

-- Current membership of every user in every room, for membership queries.
CREATE TABLE roomserver_memberships (
    room_nid BIGINT NOT NULL,
    user_id TEXT NOT NULL,
    membership TEXT NOT NULL,
    event_nid BIGINT NOT NULL,
    PRIMARY KEY (room_nid, user_id)
);
CREATE INDEX roomserver_memberships_user ON roomserver_memberships (user_id, membership);

-- Client transactions, stored with their event so a retry after a crash
-- gets the same event back.
CREATE TABLE roomserver_txns (
    session_id BIGINT NOT NULL,
    txn_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (session_id, txn_id)
);

-- Input messages already processed, so a redelivered message is answered
-- from here instead of building its events again.
CREATE TABLE roomserver_input_log (
    request_id TEXT PRIMARY KEY,
    response TEXT NOT NULL,
    created_ts BIGINT NOT NULL
);
CREATE INDEX roomserver_input_log_created ON roomserver_input_log (created_ts);

CREATE TABLE roomserver_aliases (
    alias TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    creator TEXT NOT NULL
);
CREATE INDEX roomserver_aliases_room ON roomserver_aliases (room_id);
