-- Every event clients may see, numbered by its position in the sync stream
-- (the order syncapi received it). depth + pos order it topologically for
-- /messages.
CREATE TABLE syncapi_events (
    pos {{serial}},
    room_id TEXT NOT NULL,
    event_id TEXT NOT NULL UNIQUE,
    event_type TEXT NOT NULL,
    sender TEXT NOT NULL,
    -- NULL for non-state events
    state_key TEXT,
    depth BIGINT NOT NULL,
    -- history visibility in force for this event
    history_visibility TEXT NOT NULL,
    -- the sending device's session and transaction, for unsigned.transaction_id
    session_id BIGINT NOT NULL DEFAULT 0,
    txn_id TEXT NOT NULL DEFAULT '',
    -- for state events, what this event replaced (unsigned.prev_content)
    prev_event_id TEXT NOT NULL DEFAULT '',
    prev_content TEXT NOT NULL DEFAULT '',
    prev_sender TEXT NOT NULL DEFAULT '',
    -- stripped state of invites and knocks
    invite_state TEXT NOT NULL DEFAULT '',
    -- the redaction event in client format, once applied
    redacted_because TEXT NOT NULL DEFAULT '',
    event_json TEXT NOT NULL
);
CREATE INDEX syncapi_events_room_pos ON syncapi_events (room_id, pos);
CREATE INDEX syncapi_events_room_topo ON syncapi_events (room_id, depth, pos);

-- The current state of every room.
CREATE TABLE syncapi_current_state (
    room_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    state_key TEXT NOT NULL,
    event_id TEXT NOT NULL,
    -- membership of member events, '' otherwise
    membership TEXT NOT NULL DEFAULT '',
    sender TEXT NOT NULL,
    pos BIGINT NOT NULL,
    -- state may come from state resolution without a timeline row, so the
    -- event is kept here too
    event_json TEXT NOT NULL,
    PRIMARY KEY (room_id, event_type, state_key)
);
CREATE INDEX syncapi_current_state_member ON syncapi_current_state (state_key, event_type, membership);

-- Every membership change of every user, to know what a user could see
-- when, and which rooms to report as joined, left or invited.
CREATE TABLE syncapi_membership_log (
    id {{serial}},
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    membership TEXT NOT NULL,
    pos BIGINT NOT NULL
);
CREATE INDEX syncapi_membership_log_user ON syncapi_membership_log (user_id, pos);
CREATE INDEX syncapi_membership_log_room_user ON syncapi_membership_log (room_id, user_id, pos);

CREATE TABLE syncapi_filters (
    filter_id {{serial}},
    user_id TEXT NOT NULL,
    filter TEXT NOT NULL
);

CREATE TABLE syncapi_forgotten (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    PRIMARY KEY (user_id, room_id)
);
