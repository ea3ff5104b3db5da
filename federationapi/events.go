package federationapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strconv"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"myelin/internal/mxhttp"
	"myelin/internal/mxid"
	rsapi "myelin/roomserver/api"
)

// Rooms is what the federation API reads of the roomserver to serve
// events to other servers.
type Rooms interface {
	RoomVersion(ctx context.Context, roomID string) (gmsl.RoomVersion, error)
	CurrentState(ctx context.Context, roomID string, tuples ...gmsl.StateKeyTuple) ([]gmsl.PDU, error)
	Events(ctx context.Context, eventIDs []string) ([]gmsl.PDU, error)
	StateBefore(ctx context.Context, eventID string, tuples ...gmsl.StateKeyTuple) ([]gmsl.PDU, error)
	ServerJoined(ctx context.Context, roomID string, server spec.ServerName) (bool, error)
}

// Bounds of what one request may make the server read and answer.
const (
	// maxEventsLimit clamps the limit of /get_missing_events and
	// /backfill (Synapse clamps backfill to 100 too).
	maxEventsLimit = 100
	// maxAuthChain bounds an auth chain walk (a room's auth chain grows
	// with its members, power level and join rule changes).
	maxAuthChain = 20000
	// maxRequestIDs bounds the event IDs a request may name.
	maxRequestIDs = 50
	// idsPerQuery is how many IDs one storage query looks up.
	idsPerQuery = 500
)

// eventsByID loads the stored events among ids, in batches.
func (f *FederationAPI) eventsByID(ctx context.Context, ids []string) ([]gmsl.PDU, error) {
	var out []gmsl.PDU
	for len(ids) > 0 {
		n := min(len(ids), idsPerQuery)
		evs, err := f.rooms.Events(ctx, ids[:n])
		if err != nil {
			return nil, fmt.Errorf("load %d events: %w", n, err)
		}
		out = append(out, evs...)
		ids = ids[n:]
	}
	return out, nil
}

// event loads one event of roomID: an unknown room or event, or an
// event of another room, is M_NOT_FOUND.
func (f *FederationAPI) event(ctx context.Context, roomID, eventID string) (gmsl.PDU, error) {
	evs, err := f.rooms.Events(ctx, []string{eventID})
	if err != nil {
		return nil, err
	}
	if len(evs) == 0 || (roomID != "" && evs[0].RoomID().String() != roomID) {
		return nil, mxhttp.NotFound("Event not found")
	}
	return evs[0], nil
}

// visible reports whether origin may see ev (spec, "Server behaviour" of
// history visibility, as Synapse applies it to servers): a world_readable
// event anyone may; otherwise origin needs a member joined at the event
// (invited too when the visibility is "invited"); with "shared" it is
// enough that origin's server is in the room now, which is how we know
// it was in the room before (a stricter reading would need every past
// membership of the server).
func (f *FederationAPI) visible(ctx context.Context, origin spec.ServerName, ev gmsl.PDU) (bool, error) {
	// The origin's own join is visible to it, though not in the state
	// before it.
	if ev.Type() == spec.MRoomMember && ev.StateKey() != nil && serverOf(*ev.StateKey()) == origin {
		if m, _ := ev.Membership(); m == spec.Join {
			return true, nil
		}
	}
	// The history visibility alone first: a world_readable room needs
	// no look at its members.
	hv, err := f.rooms.StateBefore(ctx, ev.EventID(), gmsl.StateKeyTuple{EventType: spec.MRoomHistoryVisibility, StateKey: ""})
	if err != nil {
		return false, fmt.Errorf("history visibility before %s: %w", ev.EventID(), err)
	}
	visibility := gmsl.HistoryVisibilityShared
	for _, s := range hv {
		if v, err := s.HistoryVisibility(); err == nil {
			visibility = v
		}
	}
	if visibility == gmsl.HistoryVisibilityWorldReadable {
		return true, nil
	}
	// Then, for shared history, the one-row question before the whole
	// state: a server in the room now is the common case.
	if visibility == gmsl.HistoryVisibilityShared {
		joined, err := f.rooms.ServerJoined(ctx, ev.RoomID().String(), origin)
		if err != nil {
			return false, fmt.Errorf("is %s in %s: %w", origin, ev.RoomID().String(), err)
		}
		if joined {
			return true, nil
		}
	}
	state, err := f.rooms.StateBefore(ctx, ev.EventID())
	if err != nil {
		return false, fmt.Errorf("state before %s: %w", ev.EventID(), err)
	}
	return hasMember(state, origin, spec.Join) || (visibility == gmsl.HistoryVisibilityInvited && hasMember(state, origin, spec.Invite)), nil
}

// visibleFilter keeps the events origin may see.
type visibleFilter struct {
	f      *FederationAPI
	origin spec.ServerName
}

func (v visibleFilter) keep(ctx context.Context, evs []gmsl.PDU) ([]gmsl.PDU, error) {
	out := evs[:0:0]
	for _, ev := range evs {
		ok, err := v.f.visible(ctx, v.origin, ev)
		if err != nil {
			return nil, err
		}
		if ok {
			out = append(out, ev)
		}
	}
	return out, nil
}

func hasMember(state []gmsl.PDU, server spec.ServerName, membership string) bool {
	for _, s := range state {
		if s.Type() != spec.MRoomMember || s.StateKey() == nil || serverOf(*s.StateKey()) != server {
			continue
		}
		if m, err := s.Membership(); err == nil && m == membership {
			return true
		}
	}
	return false
}

// serverOf is the server name of a user ID, "" when it has none.
func serverOf(userID string) spec.ServerName {
	s, _ := mxid.Server(userID)
	return spec.ServerName(s)
}

// mayRead checks that origin may see ev: 403 otherwise.
func (f *FederationAPI) mayRead(ctx context.Context, origin spec.ServerName, ev gmsl.PDU) error {
	ok, err := f.visible(ctx, origin, ev)
	if err != nil {
		return err
	}
	if !ok {
		return mxhttp.Forbidden("Server %s may not see event %s", origin, ev.EventID())
	}
	return nil
}

// roomVersion checks that roomID is known here (404 otherwise).
func (f *FederationAPI) roomVersion(ctx context.Context, roomID string) (gmsl.RoomVersion, error) {
	v, err := f.rooms.RoomVersion(ctx, roomID)
	if errors.Is(err, rsapi.ErrRoomNotFound) {
		return "", mxhttp.NotFound("Room not found")
	}
	return v, err
}

// authChain walks the auth events of from, breadth first, and returns
// every event reached, at most maxAuthChain: the events of from too when
// another reaches them (the create event is in the auth chain of the
// state it is part of).
func (f *FederationAPI) authChain(ctx context.Context, from []gmsl.PDU) ([]gmsl.PDU, error) {
	seen := map[string]bool{}
	var chain []gmsl.PDU
	var next []string
	queue := func(evs []gmsl.PDU) {
		for _, ev := range evs {
			for _, id := range ev.AuthEventIDs() {
				if !seen[id] {
					seen[id] = true
					next = append(next, id)
				}
			}
		}
	}
	queue(from)
	for len(next) > 0 {
		ids := next
		next = nil
		evs, err := f.eventsByID(ctx, ids)
		if err != nil {
			return nil, err
		}
		chain = append(chain, evs...)
		if len(chain) > maxAuthChain {
			// Not a fault of ours (a 500) but more than we answer.
			return nil, mxhttp.New("M_TOO_LARGE", "Auth chain longer than %d events", maxAuthChain)
		}
		queue(evs)
	}
	return chain, nil
}

func pdusJSON(evs []gmsl.PDU) []json.RawMessage {
	out := make([]json.RawMessage, len(evs))
	for i, ev := range evs {
		out[i] = ev.JSON()
	}
	return out
}

func eventIDs(evs []gmsl.PDU) []string {
	out := make([]string, len(evs))
	for i, ev := range evs {
		out[i] = ev.EventID()
	}
	return out
}

// transaction is the spec's Transaction shape, as /event and /backfill
// answer it.
type transaction struct {
	Origin         spec.ServerName   `json:"origin"`
	OriginServerTS int64             `json:"origin_server_ts"`
	PDUs           []json.RawMessage `json:"pdus"`
}

func (f *FederationAPI) transaction(ctx context.Context, evs []gmsl.PDU) *transaction {
	return &transaction{Origin: f.key.ServerName, OriginServerTS: f.now().UnixMilli(), PDUs: pdusJSON(f.forErased(ctx, evs))}
}

// forErased redacts the events of this server's erased users (spec:
// "Account deactivation" with erase: what they sent is served to others
// as if redacted, which leaves the events' hashes and signatures valid).
// Other servers' users are theirs to erase.
func (f *FederationAPI) forErased(ctx context.Context, evs []gmsl.PDU) []gmsl.PDU {
	if f.profiles == nil {
		return evs
	}
	erased := map[string]bool{}
	out, cloned := evs, false
	for i, ev := range evs {
		sender := string(ev.SenderID())
		if serverOf(sender) != f.key.ServerName {
			continue
		}
		e, seen := erased[sender]
		if !seen {
			a, err := f.profiles.Account(ctx, sender)
			e = err == nil && a != nil && a.Erased
			erased[sender] = e
		}
		if !e {
			continue
		}
		verImpl, err := gmsl.GetRoomVersion(ev.Version())
		if err != nil {
			continue
		}
		redacted, err := verImpl.NewEventFromTrustedJSON(ev.JSON(), false)
		if err != nil {
			continue
		}
		redacted.Redact()
		if !cloned {
			out, cloned = slices.Clone(evs), true // the caller's slice is left as it was
		}
		out[i] = redacted
	}
	return out
}

// getEvent is GET /_matrix/federation/v1/event/{eventId}.
func (f *FederationAPI) getEvent(r *http.Request) (any, error) {
	ctx := r.Context()
	ev, err := f.event(ctx, "", mxhttp.Var(r, "eventId"))
	if err != nil {
		return nil, err
	}
	if err := f.checkACL(ctx, ev.RoomID().String()); err != nil {
		return nil, err
	}
	if err := f.mayRead(ctx, Origin(ctx), ev); err != nil {
		return nil, err
	}
	return f.transaction(ctx, []gmsl.PDU{ev}), nil
}

// stateAt reads the event_id query parameter of /state and /state_ids,
// and returns the state before that event of roomId and its auth chain.
func (f *FederationAPI) stateAt(r *http.Request) (state, chain []gmsl.PDU, err error) {
	ctx := r.Context()
	roomID := mxhttp.Var(r, "roomId")
	eventID := r.URL.Query().Get("event_id")
	if eventID == "" {
		return nil, nil, mxhttp.MissingParam("event_id is required")
	}
	if err := mxhttp.CheckParam("event_id", eventID, mxid.EventID); err != nil {
		return nil, nil, err
	}
	if _, err := f.roomVersion(ctx, roomID); err != nil {
		return nil, nil, err
	}
	ev, err := f.event(ctx, roomID, eventID)
	if err != nil {
		return nil, nil, err
	}
	if err := f.mayRead(ctx, Origin(ctx), ev); err != nil {
		return nil, nil, err
	}
	state, err = f.rooms.StateBefore(ctx, eventID)
	if errors.Is(err, rsapi.ErrEventNotFound) {
		return nil, nil, mxhttp.NotFound("Event not found")
	}
	if err != nil {
		return nil, nil, err
	}
	// Only the create event has no state before it; any other event
	// without one is an outlier, whose state this server does not know
	// (Synapse answers the same).
	if len(state) == 0 && !(ev.Type() == spec.MRoomCreate && ev.StateKeyEquals("")) {
		return nil, nil, mxhttp.NotFound("No state known at event %s", eventID)
	}
	// What our own Fetcher would refuse we do not send either.
	if len(state) > maxFetchedState {
		return nil, nil, mxhttp.New("M_TOO_LARGE", "State of more than %d events", maxFetchedState)
	}
	chain, err = f.authChain(ctx, state)
	if err != nil {
		return nil, nil, err
	}
	return state, chain, nil
}

// getState is GET /_matrix/federation/v1/state/{roomId}.
func (f *FederationAPI) getState(r *http.Request) (any, error) {
	state, chain, err := f.stateAt(r)
	if err != nil {
		return nil, err
	}
	return map[string]any{"pdus": pdusJSON(state), "auth_chain": pdusJSON(chain)}, nil
}

// getStateIDs is GET /_matrix/federation/v1/state_ids/{roomId}.
func (f *FederationAPI) getStateIDs(r *http.Request) (any, error) {
	state, chain, err := f.stateAt(r)
	if err != nil {
		return nil, err
	}
	return map[string]any{"pdu_ids": eventIDs(state), "auth_chain_ids": eventIDs(chain)}, nil
}

// getEventAuth is GET /_matrix/federation/v1/event_auth/{roomId}/{eventId}.
func (f *FederationAPI) getEventAuth(r *http.Request) (any, error) {
	ctx := r.Context()
	roomID := mxhttp.Var(r, "roomId")
	if _, err := f.roomVersion(ctx, roomID); err != nil {
		return nil, err
	}
	ev, err := f.event(ctx, roomID, mxhttp.Var(r, "eventId"))
	if err != nil {
		return nil, err
	}
	if err := f.mayRead(ctx, Origin(ctx), ev); err != nil {
		return nil, err
	}
	chain, err := f.authChain(ctx, []gmsl.PDU{ev})
	if err != nil {
		return nil, err
	}
	return map[string]any{"auth_chain": pdusJSON(chain)}, nil
}

// missingEventsRequest is the body of POST /get_missing_events.
type missingEventsRequest struct {
	Limit    *int     `json:"limit"`
	MinDepth int64    `json:"min_depth"`
	Earliest []string `json:"earliest_events"`
	Latest   []string `json:"latest_events"`
}

func checkIDs(name string, ids []string) error {
	if len(ids) > maxRequestIDs {
		return mxhttp.InvalidParam("%s names more than %d events", name, maxRequestIDs)
	}
	for _, id := range ids {
		if err := mxhttp.CheckParam(name, id, mxid.EventID); err != nil {
			return err
		}
	}
	return nil
}

// clampLimit keeps a requested limit within 1..maxEventsLimit.
func clampLimit(n int) int { return max(1, min(n, maxEventsLimit)) }

// getMissingEvents is POST /_matrix/federation/v1/get_missing_events/{roomId}:
// the events before latest_events, walking prev_events back breadth
// first, not past earliest_events nor below min_depth, the oldest first.
func (f *FederationAPI) getMissingEvents(r *http.Request) (any, error) {
	ctx := r.Context()
	var req missingEventsRequest
	if err := mxhttp.ReadJSON(r, &req); err != nil {
		return nil, err
	}
	// The spec requires both lists; Synapse takes a missing one as empty
	// (sytest's ACL checks send {}), and so does this server: an empty
	// walk finds nothing.
	if err := checkIDs("earliest_events", req.Earliest); err != nil {
		return nil, err
	}
	if err := checkIDs("latest_events", req.Latest); err != nil {
		return nil, err
	}
	limit := 10
	if req.Limit != nil {
		limit = clampLimit(*req.Limit)
	}
	roomID := mxhttp.Var(r, "roomId")
	if _, err := f.roomVersion(ctx, roomID); err != nil {
		return nil, err
	}
	stop := map[string]bool{}
	for _, id := range req.Earliest {
		stop[id] = true
	}
	latest, err := f.inRoom(ctx, roomID, req.Latest)
	if err != nil {
		return nil, err
	}
	for _, id := range req.Latest {
		stop[id] = true
	}
	found, err := f.walkPrev(ctx, roomID, latest, stop, req.MinDepth, limit)
	if err != nil {
		return nil, err
	}
	found, err = visibleFilter{f, Origin(ctx)}.keep(ctx, found)
	if err != nil {
		return nil, err
	}
	sort.SliceStable(found, func(i, j int) bool { return found[i].Depth() < found[j].Depth() })
	return map[string]any{"events": pdusJSON(f.forErased(ctx, found))}, nil
}

// inRoom loads the events among ids that are of roomID.
func (f *FederationAPI) inRoom(ctx context.Context, roomID string, ids []string) ([]gmsl.PDU, error) {
	evs, err := f.rooms.Events(ctx, ids)
	if err != nil {
		return nil, err
	}
	out := evs[:0:0]
	for _, ev := range evs {
		if ev.RoomID().String() == roomID {
			out = append(out, ev)
		}
	}
	return out, nil
}

// walkPrev walks prev_events back from from, breadth first, and returns
// at most limit events reached (from excluded), none in stop, none of
// another room and none below minDepth.
func (f *FederationAPI) walkPrev(ctx context.Context, roomID string, from []gmsl.PDU, stop map[string]bool, minDepth int64, limit int) ([]gmsl.PDU, error) {
	seen := map[string]bool{}
	for id := range stop {
		seen[id] = true
	}
	for _, ev := range from {
		seen[ev.EventID()] = true
	}
	var found []gmsl.PDU
	level := from
	for len(level) > 0 && len(found) < limit {
		var ids []string
		for _, ev := range level {
			for _, id := range ev.PrevEventIDs() {
				if !seen[id] {
					seen[id] = true
					ids = append(ids, id)
				}
			}
		}
		if len(ids) == 0 {
			break
		}
		evs, err := f.eventsByID(ctx, ids)
		if err != nil {
			return nil, err
		}
		level = level[:0:0]
		for _, ev := range evs {
			if ev.RoomID().String() != roomID || ev.Depth() < minDepth {
				continue
			}
			level = append(level, ev)
			if len(found) < limit {
				found = append(found, ev)
			}
		}
	}
	return found, nil
}

// backfill is GET /_matrix/federation/v1/backfill/{roomId}?v=...&limit=:
// the events named by v and those before them, at most limit, walking
// prev_events back breadth first.
func (f *FederationAPI) backfill(r *http.Request) (any, error) {
	ctx := r.Context()
	q := r.URL.Query()
	from := q["v"]
	if len(from) == 0 {
		return nil, mxhttp.MissingParam("v is required")
	}
	if err := checkIDs("v", from); err != nil {
		return nil, err
	}
	ls := q.Get("limit")
	if ls == "" {
		return nil, mxhttp.MissingParam("limit is required")
	}
	n, err := strconv.Atoi(ls)
	if err != nil {
		return nil, mxhttp.InvalidParam("limit must be an integer")
	}
	limit := clampLimit(n)
	roomID := mxhttp.Var(r, "roomId")
	if _, err := f.roomVersion(ctx, roomID); err != nil {
		return nil, err
	}
	start, err := f.inRoom(ctx, roomID, from)
	if err != nil {
		return nil, err
	}
	if len(start) > limit {
		start = start[:limit]
	}
	more, err := f.walkPrev(ctx, roomID, start, nil, 0, limit-len(start))
	if err != nil {
		return nil, err
	}
	evs, err := visibleFilter{f, Origin(ctx)}.keep(ctx, append(start, more...))
	if err != nil {
		return nil, err
	}
	sort.SliceStable(evs, func(i, j int) bool { return evs[i].Depth() > evs[j].Depth() })
	return f.transaction(ctx, evs), nil
}
