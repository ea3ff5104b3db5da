-- The outbound queue. What is to be sent is stored once, whoever it goes
-- to; each destination's queue is a list of references to it, in order.
CREATE TABLE federationapi_queue_json (
    json_nid {{serial}},
    -- 'pdu' or 'edu'
    kind TEXT NOT NULL,
    -- the event ID of a PDU (unique: a redelivered output event is queued
    -- once), '' for an EDU
    event_id TEXT NOT NULL,
    -- the room of a PDU, '' for an EDU
    room_id TEXT NOT NULL,
    json TEXT NOT NULL
);
CREATE UNIQUE INDEX federationapi_queue_json_event ON federationapi_queue_json (event_id) WHERE event_id <> '';

CREATE TABLE federationapi_queue (
    -- the order of a destination's queue
    seq {{serial}},
    destination TEXT NOT NULL,
    json_nid BIGINT NOT NULL,
    kind TEXT NOT NULL,
    room_id TEXT NOT NULL,
    -- the transaction the entry went into ('' until it is put in one): a
    -- transaction retried is sent again with the same ID and entries
    txn_id TEXT NOT NULL DEFAULT ''
);
CREATE INDEX federationapi_queue_destination ON federationapi_queue (destination, seq);
CREATE INDEX federationapi_queue_json_ref ON federationapi_queue (json_nid);

-- The state of each destination this server has failed to reach.
CREATE TABLE federationapi_destinations (
    server_name TEXT NOT NULL PRIMARY KEY,
    -- consecutive failed attempts since the last success
    failures BIGINT NOT NULL DEFAULT 0,
    -- when the first of them happened (ms), 0 when not failing
    failing_since BIGINT NOT NULL DEFAULT 0,
    -- no attempt before this time (ms)
    retry_at BIGINT NOT NULL DEFAULT 0,
    -- given up on: nothing is tried until the server contacts us
    blacklisted BOOLEAN NOT NULL DEFAULT FALSE,
    -- the transaction being sent, '' when none
    txn_id TEXT NOT NULL DEFAULT ''
);

-- The servers of each room's joined members, from the membership events
-- in the room's current state: one row per join event, so that the state
-- delta's removed event IDs delete exactly what they replace.
CREATE TABLE federationapi_joined_hosts (
    room_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    server_name TEXT NOT NULL,
    PRIMARY KEY (room_id, event_id)
);
CREATE INDEX federationapi_joined_hosts_event ON federationapi_joined_hosts (event_id);
