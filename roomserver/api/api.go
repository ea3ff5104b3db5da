// Package rsapi is what the roomserver offers the other components: input of
// events (built and signed by the roomserver from a proto-event, or complete
// PDUs), membership and room operations (join, leave, invite, knock, kick,
// ban, unban, upgrade), queries of room state and membership, and room
// aliases. It also defines the OutputRoomEvent message that syncapi and
// federationapi consume, and the Fetcher through which the roomserver's
// input asks other servers for what federated events lack (the
// federationapi implements it).
package rsapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strconv"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
)

// Errors the roomserver returns. NotAllowedError carries the auth rule that
// refused an event.
var (
	ErrRoomNotFound         = codedError{"M_NOT_FOUND", "Room not found"}
	ErrEventNotFound        = codedError{"M_NOT_FOUND", "Event not found"}
	ErrStateNotFound        = codedError{"M_NOT_FOUND", "State event not found"}
	ErrAliasNotFound        = codedError{"M_NOT_FOUND", "Room alias not found"}
	ErrReportNotFound       = codedError{"M_NOT_FOUND", "Report not found"}
	ErrDelayedEventNotFound = codedError{"M_NOT_FOUND", "Delayed event not found"}
	ErrAliasInUse           = codedError{"M_UNKNOWN", "Room alias already exists"}
	ErrRoomInUse            = codedError{"M_ROOM_IN_USE", "Room alias already taken"}
	ErrBadSince             = codedError{"M_INVALID_PARAM", "Bad pagination token"}
)

type codedError struct{ code, msg string }

func (e codedError) Error() string         { return e.msg }
func (e codedError) MatrixErrCode() string { return e.code }

// NotAllowedError is an event refused by the auth rules or by a roomserver
// policy.
type NotAllowedError struct{ Reason string }

func (e *NotAllowedError) Error() string         { return e.Reason }
func (e *NotAllowedError) MatrixErrCode() string { return "M_FORBIDDEN" }

// BadEventError is an event that cannot be built or parsed (bad content,
// too large, unsupported room version).
type BadEventError struct {
	Code   string // Matrix errcode, e.g. M_BAD_JSON, M_TOO_LARGE
	Reason string
}

func (e *BadEventError) Error() string         { return e.Reason }
func (e *BadEventError) MatrixErrCode() string { return e.Code }

// UnavailableError is a request the roomserver could not store for now
// (its database is down or full): nothing was stored, and the same
// request may succeed when retried. It implements mxhttp.Unavailable.
type UnavailableError struct{ Reason string }

func (e *UnavailableError) Error() string     { return "roomserver unavailable: " + e.Reason }
func (e *UnavailableError) Unavailable() bool { return true }

// IsNotAllowed reports whether err is a refusal by the auth rules.
func IsNotAllowed(err error) bool {
	var na *NotAllowedError
	return errors.As(err, &na)
}

// ProtoEvent is an event for the roomserver to complete: it picks
// prev_events, auth_events and depth from the room's current state, signs
// it, and runs the auth rules, all in the room's input order.
type ProtoEvent struct {
	Sender   string          `json:"sender"`
	Type     string          `json:"type"`
	StateKey *string         `json:"state_key,omitempty"`
	Content  json.RawMessage `json:"content"`
	Redacts  string          `json:"redacts,omitempty"`
}

// TxnID identifies a client's transaction; the event it made is returned
// again when the same device retries it. As in Synapse, a transaction is
// scoped to the request: the same txn ID in another room or on another
// endpoint is another transaction.
type TxnID struct {
	SessionID int64  `json:"session_id"`
	DeviceID  string `json:"device_id"`
	TxnID     string `json:"txn_id"`
	// Scope is the rest of the request path: room and endpoint.
	Scope string `json:"scope"`
}

// Key is what the transaction is stored under (length-prefixed, so that
// no scope and ID pair collides with another).
func (t TxnID) Key() string { return strconv.Itoa(len(t.Scope)) + ":" + t.Scope + t.TxnID }

// InputEvent is one event of an InputRequest: a proto-event to build, or a
// complete PDU.
type InputEvent struct {
	Proto *ProtoEvent     `json:"proto,omitempty"`
	PDU   json.RawMessage `json:"pdu,omitempty"`
	Txn   *TxnID          `json:"txn,omitempty"`
	// DedupState returns the existing event instead of storing a state
	// event whose sender and content equal the current one's.
	DedupState bool `json:"dedup_state,omitempty"`
}

// InputRequest is one message on InputRoomEvent.<room>. Its events are
// processed in order, atomically: all are stored or none.
type InputRequest struct {
	// RoomID is empty for a new room whose first event is a create proto.
	RoomID string `json:"room_id,omitempty"`
	// RoomVersion is required for a new room.
	RoomVersion string       `json:"room_version,omitempty"`
	Events      []InputEvent `json:"events"`
	// NewRoomID is the ID for a new room of a version whose room IDs are
	// not derived from the create event (v1-v11).
	NewRoomID string `json:"new_room_id,omitempty"`
	// State and AuthChain come with the join event of a room this server
	// joined through another (send_join): the state before the event and
	// its auth chain, as the resident server sent them: the input checks
	// them and stores them as the room's state before the join.
	// StrippedState comes with an invite to, or a knock on, a room this
	// server is not in: the invitee's (knocker's) /sync shows it.
	State         []json.RawMessage `json:"state,omitempty"`
	AuthChain     []json.RawMessage `json:"auth_chain,omitempty"`
	StrippedState []json.RawMessage `json:"stripped_state,omitempty"`
	// Origin, for PDUs, is the server that sent them: the first asked for
	// what they need and this server lacks (see Fetcher).
	Origin spec.ServerName `json:"origin,omitempty"`
	// Historical marks PDUs older than what the room has (backfill, from
	// Origin): each is stored with the state before it, but changes
	// neither the current state nor the forward extremities, and its
	// output is marked Historical. One that cannot be placed (a prev event
	// this server cannot get the state after) is left out, not refused.
	Historical bool `json:"historical,omitempty"`
	// AnswerOnCommit asks for the answer once the events are committed,
	// before their outputs are published (they are, before the request
	// is acked: after a crash, again from the input log). For a producer
	// that reads none of its own writes through the outputs (another
	// server's transaction): the publishing then lies between no two of
	// its requests. Others are answered once the outputs are in the
	// stream, so a client's next read (syncapi waits for what the stream
	// holds) sees its write.
	AnswerOnCommit bool `json:"answer_on_commit,omitempty"`
}

// InputResponse reports the outcome of an InputRequest.
type InputResponse struct {
	RoomID   string   `json:"room_id"`
	EventIDs []string `json:"event_ids"`
	// Error, when set, says why the request's event at ErrIndex was
	// refused; ErrCode is its Matrix code (M_FORBIDDEN for auth failures).
	// Nothing of a request of proto-events was stored then; of a request
	// of PDUs, the events before ErrIndex may have been (EventIDs names
	// those that were), none after it.
	Error   string `json:"error,omitempty"`
	ErrCode string `json:"errcode,omitempty"`
	// ErrIndex is the event that failed.
	ErrIndex int `json:"err_index,omitempty"`
	// Unavailable says that nothing was stored because the roomserver
	// cannot store anything right now, and never will from this request:
	// the producer may send it again.
	Unavailable bool `json:"unavailable,omitempty"`
}

// Err turns a failed response back into a Go error.
func (r *InputResponse) Err() error {
	if r.Error == "" {
		return nil
	}
	if r.Unavailable {
		return &UnavailableError{Reason: r.Error}
	}
	switch r.ErrCode {
	case "M_FORBIDDEN":
		return &NotAllowedError{Reason: r.Error}
	case "":
		return fmt.Errorf("roomserver: %s", r.Error)
	default:
		return &BadEventError{Code: r.ErrCode, Reason: r.Error}
	}
}

// FetchScope says which room a Fetcher fetches for and whom it asks.
type FetchScope struct {
	RoomID      string
	RoomVersion gmsl.RoomVersion
	// Servers to ask, in order: the origin of the event first, then the
	// senders' servers.
	Servers []spec.ServerName
}

// Fetcher gets from other servers what the input of a federated event
// needs and this server has not stored. The federationapi implements it
// over the Server-Server API. Every call is bounded by ctx (the roomserver
// gives each fetch a deadline) and returns events parsed in the room's
// version (NewEventFromUntrustedJSON) whose signatures it has checked; the
// roomserver checks the rest (room, hashes, auth rules).
type Fetcher interface {
	// MissingEvents returns at most limit events of the room between
	// earliest (events this server has) and latest (events it wants to
	// store), walking prev_events back from latest, as
	// POST /_matrix/federation/v1/get_missing_events does. Order is free.
	MissingEvents(ctx context.Context, scope FetchScope, earliest, latest []string, limit int) ([]gmsl.PDU, error)
	// AuthChain returns the auth chain of eventID (GET /event_auth).
	AuthChain(ctx context.Context, scope FetchScope, eventID string) ([]gmsl.PDU, error)
	// Event returns one event (GET /event).
	Event(ctx context.Context, scope FetchScope, eventID string) (gmsl.PDU, error)
	// StateBefore returns the state before eventID and its auth chain, as
	// GET /_matrix/federation/v1/state does: used when prev events cannot
	// be walked back to events this server has.
	StateBefore(ctx context.Context, scope FetchScope, eventID string) (state, authChain []gmsl.PDU, err error)
	// StateIDsBefore returns the IDs of the state before eventID, as GET
	// /_matrix/federation/v1/state_ids does: what this server has of it
	// need not be fetched again.
	StateIDsBefore(ctx context.Context, scope FetchScope, eventID string) ([]string, error)
	// Backfill returns at most limit events of the room from the events
	// named by from back, as GET /_matrix/federation/v1/backfill does
	// (the events of from among them), and the server that answered.
	// Order is free; an answer with no event is no answer, and the next
	// server is asked.
	Backfill(ctx context.Context, scope FetchScope, from []string, limit int) ([]gmsl.PDU, spec.ServerName, error)
}

// Membership is a user's membership of a room.
type Membership struct {
	RoomID     string `json:"room_id"`
	UserID     string `json:"user_id"`
	Membership string `json:"membership"` // join, invite, leave, ban, knock
	EventID    string `json:"event_id"`
}

// PublicRoom is a room as the public room directory shows it
// (spec: PublishedRoomsChunk).
type PublicRoom struct {
	RoomID           string `json:"room_id"`
	Name             string `json:"name,omitempty"`
	Topic            string `json:"topic,omitempty"`
	CanonicalAlias   string `json:"canonical_alias,omitempty"`
	AvatarURL        string `json:"avatar_url,omitempty"`
	NumJoinedMembers int    `json:"num_joined_members"`
	WorldReadable    bool   `json:"world_readable"`
	GuestCanJoin     bool   `json:"guest_can_join"`
	JoinRule         string `json:"join_rule,omitempty"`
	RoomType         string `json:"room_type,omitempty"`
}

// PublicRoomsQuery asks for one page of the public room directory, as a
// client or another server asks it (spec: POST /publicRooms).
type PublicRoomsQuery struct {
	Limit  int               `json:"limit,omitempty"`
	Since  string            `json:"since,omitempty"`
	Filter PublicRoomsFilter `json:"filter"`
	// IncludeAllNetworks and ThirdPartyInstanceID choose application
	// services' networks; this server bridges none.
	IncludeAllNetworks   bool   `json:"include_all_networks,omitempty"`
	ThirdPartyInstanceID string `json:"third_party_instance_id,omitempty"`
}

// PublicRoomsQueryOf reads the query parameters of GET /publicRooms
// (client and federation): limit, since, include_all_networks,
// third_party_instance_id. A bad value is M_INVALID_PARAM.
func PublicRoomsQueryOf(q url.Values) (PublicRoomsQuery, error) {
	req := PublicRoomsQuery{Since: q.Get("since"), ThirdPartyInstanceID: q.Get("third_party_instance_id")}
	if l := q.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 0 {
			return req, codedError{"M_INVALID_PARAM", "limit must be a non-negative integer"}
		}
		req.Limit = n
	}
	if v := q.Get("include_all_networks"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return req, codedError{"M_INVALID_PARAM", "include_all_networks must be true or false"}
		}
		req.IncludeAllNetworks = b
	}
	return req, nil
}

// PublicRoomsFilter narrows the directory: a search in names, topics and
// aliases, and room types (a nil entry: rooms without a type).
type PublicRoomsFilter struct {
	GenericSearchTerm string    `json:"generic_search_term,omitempty"`
	RoomTypes         []*string `json:"room_types,omitempty"`
}

// PublicRoomsPage is one page of the directory (spec: the answer of
// /publicRooms, client and federation alike).
type PublicRoomsPage struct {
	Chunk     []PublicRoom `json:"chunk"`
	NextBatch string       `json:"next_batch,omitempty"`
	PrevBatch string       `json:"prev_batch,omitempty"`
	Total     int          `json:"total_room_count_estimate"`
}

// RoomSummary is a room as the space hierarchy shows it (spec:
// SpaceHierarchyParentRoom and SpaceHierarchyChildRoomsChunk).
type RoomSummary struct {
	PublicRoom
	RoomVersion    string   `json:"room_version,omitempty"`
	Encryption     string   `json:"encryption,omitempty"`
	AllowedRoomIDs []string `json:"allowed_room_ids,omitempty"`
	// ChildrenState are the room's m.space.child events naming servers,
	// stripped, with their origin_server_ts.
	ChildrenState []json.RawMessage `json:"children_state"`
}

// Hierarchy is a space and its children as one server knows them (spec:
// the answer of GET /_matrix/federation/v1/hierarchy).
type Hierarchy struct {
	Room         RoomSummary   `json:"room"`
	Children     []RoomSummary `json:"children"`
	Inaccessible []string      `json:"inaccessible_children"`
}

// DelayedEvent is an event a user asked to be sent after Delay
// milliseconds, counted from RunningSince (MSC4140).
type DelayedEvent struct {
	DelayID      string          `json:"delay_id"`
	Sender       string          `json:"sender"`
	RoomID       string          `json:"room_id"`
	Type         string          `json:"type"`
	StateKey     *string         `json:"state_key,omitempty"`
	Content      json.RawMessage `json:"content"`
	Delay        int64           `json:"delay"`
	RunningSince int64           `json:"running_since"`
	// Created is when it was scheduled: a state event of another user
	// with the same key set since cancels a delayed state event.
	Created int64 `json:"created_ts"`
}

// Actions on a delayed event.
const (
	DelayedCancel  = "cancel"
	DelayedRestart = "restart"
	DelayedSend    = "send"
)

// Report kinds.
const (
	ReportEvent = "event"
	ReportRoom  = "room"
	ReportUser  = "user"
)

// Report is a report a local user made of an event, a room or a user
// (spec: "Reporting content"). RoomID and EventID are empty where they do
// not apply; TargetUserID is the reported user, or the reported event's
// sender.
type Report struct {
	ID           int64  `json:"id"`
	Kind         string `json:"kind"`
	RoomID       string `json:"room_id,omitempty"`
	EventID      string `json:"event_id,omitempty"`
	TargetUserID string `json:"target_user_id,omitempty"`
	Reporter     string `json:"user_id"`
	Reason       string `json:"reason"`
	// Score is the deprecated score of an event report (-100 to 0).
	Score      *int64 `json:"score,omitempty"`
	ReceivedTS int64  `json:"received_ts"`
}

// ReportsQuery asks for a page of reports of one kind, newest first unless
// Forwards, optionally of one room, reporter or reported user.
type ReportsQuery struct {
	Kind                           string
	From, Limit                    int
	Forwards                       bool
	RoomID, Reporter, TargetUserID string
}

// TimeEvent is an event found by its time (spec: the answer of
// /timestamp_to_event, client and federation alike).
type TimeEvent struct {
	EventID        string `json:"event_id"`
	OriginServerTS int64  `json:"origin_server_ts"`
}

// DirectoryUser is a user directory search result.
type DirectoryUser struct {
	UserID      string `json:"user_id"`
	DisplayName string `json:"display_name,omitempty"`
	AvatarURL   string `json:"avatar_url,omitempty"`
}

// Inputter submits events and waits until the roomserver committed them.
type Inputter interface {
	Input(ctx context.Context, req *InputRequest) (*InputResponse, error)
}

// API is the roomserver component as the other components see it.
type API interface {
	Inputter
	Performer

	// RoomVersion of a known room (ErrRoomNotFound otherwise).
	RoomVersion(ctx context.Context, roomID string) (gmsl.RoomVersion, error)
	// CurrentState returns the room's current state, all of it when
	// tuples is empty.
	CurrentState(ctx context.Context, roomID string, tuples ...gmsl.StateKeyTuple) ([]gmsl.PDU, error)
	// StateEvent returns one current state event (ErrStateNotFound).
	StateEvent(ctx context.Context, roomID, evType, stateKey string) (gmsl.PDU, error)
	// StateBefore returns the state before eventID (all of it when tuples is empty).
	StateBefore(ctx context.Context, eventID string, tuples ...gmsl.StateKeyTuple) ([]gmsl.PDU, error)
	// Events returns the stored events among eventIDs, with redactions
	// applied. Unknown and rejected events are left out.
	Events(ctx context.Context, eventIDs []string) ([]gmsl.PDU, error)
	// Membership returns userID's current membership of roomID, "leave"
	// with an empty EventID when there is none.
	Membership(ctx context.Context, roomID, userID string) (*Membership, error)
	// ServerJoined reports whether a user of server is joined to roomID
	// now (ErrRoomNotFound for an unknown room).
	ServerJoined(ctx context.Context, roomID string, server spec.ServerName) (bool, error)
	// UserRooms lists the rooms where userID's membership is one of memberships.
	UserRooms(ctx context.Context, userID string, memberships ...string) ([]string, error)
	// EventNearTime returns the room's event sent nearest to ts (a Unix
	// time in milliseconds) at or after it, or at or before it when
	// backward (ErrRoomNotFound, ErrEventNotFound when none).
	EventNearTime(ctx context.Context, roomID string, ts int64, backward bool) (*TimeEvent, error)
	// TxnEvent returns the event a device's transaction made, "" if none.
	TxnEvent(ctx context.Context, txn TxnID) (string, error)

	// The public room directory.
	SetPublished(ctx context.Context, roomID string, published bool) error
	IsPublished(ctx context.Context, roomID string) (bool, error)
	// RoomSummary summarises a room for the space hierarchy
	// (ErrRoomNotFound).
	RoomSummary(ctx context.Context, roomID string) (*RoomSummary, error)
	// PublicRooms answers one page of the published rooms, most joined
	// first (ErrBadSince for a token it did not give).
	PublicRooms(ctx context.Context, q PublicRoomsQuery) (*PublicRoomsPage, error)

	// SearchUsers finds users searcher may see in the user directory
	// (those sharing a room with it or in a room anyone may join) whose ID
	// or display name contains term, case-insensitively.
	SearchUsers(ctx context.Context, searcher, term string, limit int) (results []DirectoryUser, limited bool, err error)

	// Reports of events, rooms and users, for the server's admins.
	AddReport(ctx context.Context, r Report) (int64, error)
	// Reports returns a page of the reports of q.Kind and how many match.
	Reports(ctx context.Context, q ReportsQuery) ([]Report, int, error)
	// Report returns one (ErrReportNotFound).
	Report(ctx context.Context, id int64) (*Report, error)
	// DeleteReport deletes one (ErrReportNotFound).
	DeleteReport(ctx context.Context, id int64) error

	// Delayed events (MSC4140), sent by the roomserver when due.
	// ScheduleDelayedEvent stores d (its Sender, RoomID, Type, StateKey,
	// Content and Delay) and returns its delay ID.
	ScheduleDelayedEvent(ctx context.Context, d DelayedEvent) (string, error)
	// DelayedEvents lists a user's delayed events.
	DelayedEvents(ctx context.Context, userID string) ([]DelayedEvent, error)
	// UpdateDelayedEvent cancels, restarts or sends at once one of a
	// user's delayed events (ErrDelayedEventNotFound).
	UpdateDelayedEvent(ctx context.Context, userID, delayID, action string) error

	// Room aliases.
	SetAlias(ctx context.Context, alias, roomID, creator string) error
	ResolveAlias(ctx context.Context, alias string) (string, error)
	AliasCreator(ctx context.Context, alias string) (string, error)
	RemoveAlias(ctx context.Context, alias string) error
	RoomAliases(ctx context.Context, roomID string) ([]string, error)
}

// OutputEvent is one message on the OutputRoomEvent stream: an event the
// roomserver accepted, with what it changed in the room's current state, so
// consumers never recompute state.
type OutputEvent struct {
	RoomID      string          `json:"room_id"`
	RoomVersion string          `json:"room_version"`
	EventID     string          `json:"event_id"`
	Event       json.RawMessage `json:"event"`
	// AddsState lists the state events now current because of this event;
	// AddsStateJSON holds those other than the event itself.
	AddsState     []string          `json:"adds_state,omitempty"`
	AddsStateJSON []json.RawMessage `json:"adds_state_json,omitempty"`
	// RemovesState lists the event IDs no longer in current state.
	RemovesState []string `json:"removes_state,omitempty"`
	// HistoryVisibility in force for this event (from the state before it).
	HistoryVisibility string `json:"history_visibility,omitempty"`
	// Txn is set for events a local client sent with a transaction ID.
	Txn *TxnID `json:"txn,omitempty"`
	// Redacts, for an applied redaction, is the event it redacted.
	Redacts string `json:"redacts,omitempty"`
	// InviteRoomState is the stripped state sent with an invite.
	InviteRoomState []json.RawMessage `json:"invite_room_state,omitempty"`
	// Historical marks an event older than what the room had (backfill):
	// it belongs before the room's timeline, changes no state (AddsState
	// and RemovesState are empty) and is nothing new to notify or send.
	Historical bool `json:"historical,omitempty"`
}

// AddedStateJSON returns the JSON of each event of AddsState, in its
// order: the event's own, or the one of AddsStateJSON with that ID (the
// roomserver leaves the event itself out of AddsStateJSON); "" where the
// output lacks it.
func (o *OutputEvent) AddedStateJSON() []string {
	byID := make(map[string]string, len(o.AddsStateJSON))
	for _, raw := range o.AddsStateJSON {
		if id := o.StateEventID(raw); id != "" {
			byID[id] = string(raw)
		}
	}
	out := make([]string, len(o.AddsState))
	for i, id := range o.AddsState {
		if id == o.EventID {
			out[i] = string(o.Event)
		} else {
			out[i] = byID[id]
		}
	}
	return out
}

// StateEventID returns the ID of raw, one of AddsStateJSON, or "" if it
// cannot be read in the room's version.
func (o *OutputEvent) StateEventID(raw json.RawMessage) string {
	verImpl, err := gmsl.GetRoomVersion(gmsl.RoomVersion(o.RoomVersion))
	if err != nil {
		return ""
	}
	pdu, err := verImpl.NewEventFromTrustedJSON(raw, false)
	if err != nil {
		return ""
	}
	return pdu.EventID()
}

// CurrentStater reads a room's current state (the roomserver does).
type CurrentStater interface {
	CurrentState(ctx context.Context, roomID string, tuples ...gmsl.StateKeyTuple) ([]gmsl.PDU, error)
}

// Predecessor returns the room that roomID replaced (its create event's
// predecessor), "" when it replaced none or its state cannot be read.
func Predecessor(ctx context.Context, rooms CurrentStater, roomID string) string {
	create, err := rooms.CurrentState(ctx, roomID, gmsl.StateKeyTuple{EventType: spec.MRoomCreate})
	if err != nil || len(create) == 0 {
		return ""
	}
	var c struct {
		Predecessor *struct {
			RoomID string `json:"room_id"`
		} `json:"predecessor"`
	}
	if json.Unmarshal(create[0].Content(), &c) != nil || c.Predecessor == nil {
		return ""
	}
	return c.Predecessor.RoomID
}
