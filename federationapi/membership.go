package federationapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/gorilla/mux"
	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"myelin/internal/eventsig"
	"myelin/internal/mxhttp"
	"myelin/internal/mxid"
	rsapi "myelin/roomserver/api"
	"myelin/setup/config"
)

// MemberRooms is what the membership endpoints ask of the roomserver,
// besides what Rooms serves other servers.
type MemberRooms interface {
	Rooms
	rsapi.Inputter
	Membership(ctx context.Context, roomID, userID string) (*rsapi.Membership, error)
	BuildEventTemplate(ctx context.Context, proto *gmsl.ProtoEvent) (gmsl.PDU, []gmsl.PDU, error)
	ResolveAlias(ctx context.Context, alias string) (string, error)
	// UserRooms finds the rooms of a local user, whose servers hear of its
	// presence and device list changes.
	UserRooms(ctx context.Context, userID string, memberships ...string) ([]string, error)
	PublicRooms(ctx context.Context, q rsapi.PublicRoomsQuery) (*rsapi.PublicRoomsPage, error)
	RoomSummary(ctx context.Context, roomID string) (*rsapi.RoomSummary, error)
	EventNearTime(ctx context.Context, roomID string, ts int64, backward bool) (*rsapi.TimeEvent, error)
	PerformThirdPartyInvite(ctx context.Context, req *rsapi.ThirdPartyInviteRequest) error
}

// membershipRoutes registers the membership dances a resident server
// serves (spec: "Joining Rooms", "Leaving Rooms", "Knocking upon a room",
// "Inviting to a room").
func (f *FederationAPI) membershipRoutes(v1, v2 *mux.Router) {
	v1.Handle("/make_join/{roomId}/{userId}", f.authed(f.roomACL(f.makeJoin))).Methods(http.MethodGet)
	v2.Handle("/send_join/{roomId}/{pduEventId}", f.authed(f.roomACL(f.sendJoin))).Methods(http.MethodPut)
	// The v1 send_join, send_leave and invite are deprecated but still
	// in the spec and still used by older servers: the same handlers,
	// with v1's [200, body] answer (MSC1802) and v1's invite body.
	v1.Handle("/send_join/{roomId}/{pduEventId}", f.authed(f.roomACL(v1Answer(f.sendJoin)))).Methods(http.MethodPut)
	v1.Handle("/send_leave/{roomId}/{pduEventId}", f.authed(f.roomACL(v1Answer(f.sendLeave)))).Methods(http.MethodPut)
	v1.Handle("/invite/{roomId}/{pduEventId}", f.authed(f.roomACL(v1Answer(f.inviteV1)))).Methods(http.MethodPut)
	v1.Handle("/make_leave/{roomId}/{userId}", f.authed(f.roomACL(f.makeLeave))).Methods(http.MethodGet)
	v2.Handle("/send_leave/{roomId}/{pduEventId}", f.authed(f.roomACL(f.sendLeave))).Methods(http.MethodPut)
	v1.Handle("/make_knock/{roomId}/{userId}", f.authed(f.roomACL(f.makeKnock))).Methods(http.MethodGet)
	v1.Handle("/send_knock/{roomId}/{pduEventId}", f.authed(f.roomACL(f.sendKnock))).Methods(http.MethodPut)
	v2.Handle("/invite/{roomId}/{pduEventId}", f.authed(f.roomACL(f.invite))).Methods(http.MethodPut)
	v1.Handle("/exchange_third_party_invite/{roomId}", f.authed(f.roomACL(f.exchangeThirdPartyInvite))).Methods(http.MethodPut)
	v1.Handle("/query/directory", f.authed(f.queryDirectory)).Methods(http.MethodGet)
	v1.Handle("/publicRooms", f.authed(f.publicRoomsGet)).Methods(http.MethodGet)
	v1.Handle("/publicRooms", f.authed(f.publicRoomsPost)).Methods(http.MethodPost)
	v1.Handle("/hierarchy/{roomId}", f.authed(f.roomACL(f.hierarchy))).Methods(http.MethodGet)
	v1.Handle("/timestamp_to_event/{roomId}", f.authed(f.roomACL(f.timestampToEvent))).Methods(http.MethodGet)
}

// queryDirectory is GET /_matrix/federation/v1/query/directory: which
// room an alias of this server names, and servers that may be in it.
func (f *FederationAPI) queryDirectory(r *http.Request) (any, error) {
	alias := r.URL.Query().Get("room_alias")
	if alias == "" {
		return nil, mxhttp.MissingParam("room_alias is required")
	}
	if err := mxhttp.CheckParam("room_alias", alias, mxid.RoomAlias); err != nil {
		return nil, err
	}
	rs, err := f.memberRooms()
	if err != nil {
		return nil, err
	}
	if _, server, _ := strings.Cut(alias, ":"); spec.ServerName(server) != f.key.ServerName {
		return nil, mxhttp.NotFound("Room alias %s is not of this server", alias)
	}
	roomID, err := rs.ResolveAlias(r.Context(), alias)
	if errors.Is(err, rsapi.ErrAliasNotFound) {
		return nil, mxhttp.NotFound("Room alias %s not found", alias)
	}
	if err != nil {
		return nil, err
	}
	return map[string]any{"room_id": roomID, "servers": []spec.ServerName{f.key.ServerName}}, nil
}

// domainOf is the server part of a user ID ("" if it is not one).
func domainOf(userID string) spec.ServerName {
	u, err := spec.NewUserID(userID, true)
	if err != nil {
		return ""
	}
	return u.Domain()
}

func (f *FederationAPI) memberRooms() (MemberRooms, error) {
	if f.rs == nil {
		return nil, mxhttp.NotFound("This server serves no rooms")
	}
	return f.rs, nil
}

// memberRoomVersion is the version of a room this server is in (M_NOT_FOUND).
func (f *FederationAPI) memberRoomVersion(ctx context.Context, roomID string) (gmsl.IRoomVersion, error) {
	rs, err := f.memberRooms()
	if err != nil {
		return nil, err
	}
	v, err := rs.RoomVersion(ctx, roomID)
	if errors.Is(err, rsapi.ErrRoomNotFound) {
		return nil, mxhttp.NotFound("Unknown room %s", roomID)
	}
	if err != nil {
		return nil, err
	}
	verImpl, err := gmsl.GetRoomVersion(v)
	if err != nil {
		return nil, fmt.Errorf("room %s: %w", roomID, err)
	}
	return verImpl, nil
}

func (f *FederationAPI) makeJoin(r *http.Request) (any, error) {
	return f.makeMember(r, spec.Join, "event")
}

func (f *FederationAPI) makeLeave(r *http.Request) (any, error) {
	return f.makeMember(r, spec.Leave, "event")
}

func (f *FederationAPI) makeKnock(r *http.Request) (any, error) {
	return f.makeMember(r, spec.Knock, "event")
}

// makeMember answers make_join, make_leave and make_knock: a member event
// of the user about itself, built on the room's current state and checked
// against the auth rules, for the user's server to sign.
func (f *FederationAPI) makeMember(r *http.Request, membership, field string) (any, error) {
	ctx := r.Context()
	roomID, userID := mxhttp.Var(r, "roomId"), mxhttp.Var(r, "userId")
	if domainOf(userID) != Origin(ctx) {
		return nil, mxhttp.Forbidden("The user %s is not of the requesting server", userID)
	}
	verImpl, err := f.memberRoomVersion(ctx, roomID)
	if err != nil {
		return nil, err
	}
	if membership != spec.Leave {
		// Only a server with a member in the room can vouch for its
		// state: a room all our users left is not ours to join through
		// (spec: make_join, 404 when the room is unknown here).
		joined, err := f.rs.ServerJoined(ctx, roomID, f.key.ServerName)
		if err != nil {
			return nil, err
		}
		if !joined {
			return nil, mxhttp.NotFound("This server has no users in room %s", roomID)
		}
		// The joining (knocking) server must support the room's version
		// (spec: ver, the versions it supports; v1 when none is given).
		vers := r.URL.Query()["ver"]
		if len(vers) == 0 {
			vers = []string{"1"}
		}
		ok := false
		for _, v := range vers {
			ok = ok || v == string(verImpl.Version())
		}
		if !ok {
			return nil, mxhttp.New("M_INCOMPATIBLE_ROOM_VERSION", "Your server does not support room version %s", verImpl.Version()).
				With("room_version", string(verImpl.Version()))
		}
	}
	content, _ := json.Marshal(map[string]string{"membership": membership})
	proto := &gmsl.ProtoEvent{SenderID: userID, RoomID: roomID, Type: spec.MRoomMember, StateKey: &userID, Content: content}
	ev, state, err := f.rs.BuildEventTemplate(ctx, proto)
	if errors.Is(err, rsapi.ErrRoomNotFound) {
		return nil, mxhttp.NotFound("Unknown room %s", roomID)
	}
	if coded := mxhttp.ToError(err); err != nil && coded.Code == "M_UNABLE_TO_GRANT_JOIN" {
		// 400 here (spec: make_join), though a client joining through
		// this server is told 502.
		return nil, coded.WithStatus(http.StatusBadRequest)
	}
	if err != nil {
		return nil, err
	}
	if reason := allowed(ev, state); reason != nil {
		return nil, mxhttp.Forbidden("You may not %s this room: %v", membership, reason)
	}
	return map[string]any{field: proto, "room_version": string(verImpl.Version())}, nil
}

// allowed runs the auth rules on ev against state; nil when they allow it.
func allowed(ev gmsl.PDU, state []gmsl.PDU) error {
	auth, err := gmsl.NewAuthEvents(state)
	if err != nil {
		return err
	}
	return gmsl.Allowed(ev, auth, eventsig.UserIDForSender)
}

func (f *FederationAPI) sendJoin(r *http.Request) (any, error) {
	ev, verImpl, err := f.receiveMember(r, spec.Join)
	if err != nil {
		return nil, err
	}
	ctx := r.Context()
	state, chain, err := f.stateAndChain(ctx, ev.EventID())
	if err != nil {
		return nil, err
	}
	res := map[string]any{
		"origin":          f.key.ServerName,
		"state":           rawJSONs(state),
		"auth_chain":      rawJSONs(chain),
		"members_omitted": false,
	}
	if via, err := verImpl.RestrictedJoinServername(ev.Content()); err == nil && via == f.key.ServerName {
		res["event"] = json.RawMessage(ev.JSON()) // the join with our signature
	}
	return res, nil
}

// v1Answer wraps a v2 handler's answer in the [200, body] array of the v1
// endpoints.
func v1Answer(h mxhttp.Handler) mxhttp.Handler {
	return func(r *http.Request) (any, error) {
		res, err := h(r)
		if err != nil {
			return nil, err
		}
		return []any{http.StatusOK, res}, nil
	}
}

func (f *FederationAPI) sendLeave(r *http.Request) (any, error) {
	if _, _, err := f.receiveMember(r, spec.Leave); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

func (f *FederationAPI) sendKnock(r *http.Request) (any, error) {
	ev, _, err := f.receiveMember(r, spec.Knock)
	if err != nil {
		return nil, err
	}
	state, err := f.rs.StateBefore(r.Context(), ev.EventID(), strippedTuples()...)
	if err != nil {
		return nil, err
	}
	return map[string]any{"knock_room_state": stripped(state)}, nil
}

// receiveMember takes in the member event a send_join, send_leave or
// send_knock carries: checked against the path and the origin, its
// signatures verified, allowed by the room's current state, and input as
// a PDU. gomatrixserverlib's HandleSendJoin runs no auth rules, and there
// is no such helper for leave and knock: all three are checked here alike.
func (f *FederationAPI) receiveMember(r *http.Request, membership string) (gmsl.PDU, gmsl.IRoomVersion, error) {
	ctx := r.Context()
	roomID, eventID := mxhttp.Var(r, "roomId"), mxhttp.Var(r, "pduEventId")
	verImpl, err := f.memberRoomVersion(ctx, roomID)
	if err != nil {
		return nil, nil, err
	}
	body, err := mxhttp.ReadBody(r)
	if err != nil {
		return nil, nil, err
	}
	if err := signedByOrigin(body, Origin(ctx)); err != nil {
		return nil, nil, err
	}
	ev, err := verImpl.NewEventFromUntrustedJSON(body)
	if err != nil {
		return nil, nil, mxhttp.BadJSON("Bad event: %v", err)
	}
	if ev.Redacted() {
		// gomatrixserverlib redacts an event whose content hash is wrong.
		return nil, nil, mxhttp.BadJSON("The event's content hash does not match")
	}
	switch {
	case ev.EventID() != eventID:
		return nil, nil, mxhttp.BadJSON("The event ID is %s, not %s", ev.EventID(), eventID)
	case ev.RoomID().String() != roomID:
		return nil, nil, mxhttp.BadJSON("The event is not in room %s", roomID)
	case ev.Type() != spec.MRoomMember || ev.StateKey() == nil:
		return nil, nil, mxhttp.BadJSON("The event is not a member event")
	case *ev.StateKey() != string(ev.SenderID()):
		return nil, nil, mxhttp.BadJSON("The event's state_key is not its sender")
	}
	if m, err := ev.Membership(); err != nil || m != membership {
		return nil, nil, mxhttp.BadJSON("The event's membership is not %s", membership)
	}
	if domainOf(string(ev.SenderID())) != Origin(ctx) {
		return nil, nil, mxhttp.Forbidden("The event's sender is not of the requesting server")
	}
	if membership == spec.Join {
		// A restricted join one of our users vouches for must carry our
		// signature too (spec: send_join, "Restricted rooms"); the auth
		// rules below check that the user may vouch.
		if via, err := verImpl.RestrictedJoinServername(ev.Content()); err == nil && via == f.key.ServerName {
			signed := ev.Sign(string(f.key.ServerName), f.key.KeyID, f.key.Private)
			if ev, err = verImpl.NewEventFromTrustedJSON(signed.JSON(), false); err != nil {
				return nil, nil, fmt.Errorf("re-parse the signed join: %w", err)
			}
		}
	}
	if err := eventsig.Verify(ctx, ev, f.keys.ring); err != nil {
		return nil, nil, mxhttp.Forbidden("The event's signatures are not valid: %v", err)
	}
	// Already the user's membership: answer as if it were new (a retry).
	if m, err := f.rs.Membership(ctx, roomID, string(ev.SenderID())); err == nil && m.EventID == ev.EventID() {
		return ev, verImpl, nil
	}
	state, err := f.rs.CurrentState(ctx, roomID, gmsl.StateNeededForAuth([]gmsl.PDU{ev}).Tuples()...)
	if err != nil {
		return nil, nil, err
	}
	if reason := allowed(ev, state); reason != nil {
		return nil, nil, mxhttp.Forbidden("The room does not allow this event: %v", reason)
	}
	if _, err := f.rs.Input(ctx, &rsapi.InputRequest{
		RoomID: roomID,
		Events: []rsapi.InputEvent{{PDU: json.RawMessage(ev.JSON())}},
		Origin: Origin(ctx),
	}); err != nil {
		return nil, nil, err
	}
	// The input stores an event that fails the auth rules as rejected,
	// with no error: what counts is whether it took effect.
	if m, err := f.rs.Membership(ctx, roomID, string(ev.SenderID())); err != nil {
		return nil, nil, err
	} else if m.EventID != ev.EventID() {
		return nil, nil, mxhttp.Forbidden("The event was not accepted into the room")
	}
	return ev, verImpl, nil
}

// signedByOrigin refuses an event that does not even claim a signature of
// the origin and a content hash, which gomatrixserverlib would refuse as
// malformed: an unsigned event is a forbidden one (403), as Synapse
// answers it, whatever else is wrong with it. Claimed signatures are
// verified later, once the event is parsed.
func signedByOrigin(raw []byte, origin spec.ServerName) error {
	var ev struct {
		Hashes     map[string]json.RawMessage            `json:"hashes"`
		Signatures map[string]map[string]json.RawMessage `json:"signatures"`
	}
	if err := json.Unmarshal(raw, &ev); err != nil {
		return mxhttp.BadJSON("Bad event: %v", err)
	}
	if len(ev.Signatures[string(origin)]) == 0 || len(ev.Hashes) == 0 {
		return mxhttp.Forbidden("The event is not signed by %s", origin)
	}
	return nil
}

// stateAndChain is the room state before eventID and the auth chain of
// that state and of the event, as send_join answers them.
func (f *FederationAPI) stateAndChain(ctx context.Context, eventID string) (state, chain []gmsl.PDU, err error) {
	state, err = f.rs.StateBefore(ctx, eventID)
	if err != nil {
		return nil, nil, fmt.Errorf("state before %s: %w", eventID, err)
	}
	evs, err := f.rs.Events(ctx, []string{eventID})
	if err != nil {
		return nil, nil, err
	}
	chain, err = f.authChain(ctx, append(append([]gmsl.PDU(nil), state...), evs...))
	return state, chain, err
}

func rawJSONs(evs []gmsl.PDU) []json.RawMessage {
	out := make([]json.RawMessage, len(evs))
	for i, e := range evs {
		out[i] = json.RawMessage(e.JSON())
	}
	return out
}

// strippedTuples are the state events an invite or a knock shows (spec:
// "stripped state").
func strippedTuples() []gmsl.StateKeyTuple {
	var out []gmsl.StateKeyTuple
	for _, t := range []string{spec.MRoomCreate, spec.MRoomJoinRules, spec.MRoomCanonicalAlias, "m.room.avatar", spec.MRoomName, spec.MRoomEncryption, spec.MRoomTopic} {
		out = append(out, gmsl.StateKeyTuple{EventType: t})
	}
	return out
}

func stripped(evs []gmsl.PDU) []gmsl.InviteStrippedState {
	out := make([]gmsl.InviteStrippedState, 0, len(evs))
	for _, e := range evs {
		out = append(out, gmsl.NewInviteStrippedState(e))
	}
	return out
}

// inviteRequest is the body of PUT /v2/invite.
type inviteRequest struct {
	Event           json.RawMessage   `json:"event"`
	RoomVersion     string            `json:"room_version"`
	InviteRoomState []json.RawMessage `json:"invite_room_state"`
}

// invite is PUT /_matrix/federation/v2/invite: another server's user
// invites one of ours. gomatrixserverlib's HandleInvite checks neither that
// the invitee is ours nor the event's shape, so this does, signs the
// event, and inputs it with its stripped state so the invitee sees it.
func (f *FederationAPI) invite(r *http.Request) (any, error) {
	var req inviteRequest
	if err := mxhttp.ReadJSON(r, &req); err != nil {
		return nil, err
	}
	return f.takeInvite(r, req)
}

// inviteV1 is PUT /_matrix/federation/v1/invite: the body is the event
// itself, of room version 1 or 2 (the spec tells the receiver to assume
// either; both share an event format), its stripped state in the
// event's unsigned invite_room_state.
func (f *FederationAPI) inviteV1(r *http.Request) (any, error) {
	var ev struct {
		Unsigned struct {
			InviteRoomState []json.RawMessage `json:"invite_room_state"`
		} `json:"unsigned"`
	}
	body, err := mxhttp.ReadBody(r)
	if err != nil {
		return nil, err
	}
	if err := mxhttp.DecodeJSON(body, &ev); err != nil {
		return nil, err
	}
	return f.takeInvite(r, inviteRequest{Event: body, RoomVersion: "1", InviteRoomState: ev.Unsigned.InviteRoomState})
}

// takeInvite is the invite of either version.
func (f *FederationAPI) takeInvite(r *http.Request, req inviteRequest) (any, error) {
	ctx := r.Context()
	roomID, eventID := mxhttp.Var(r, "roomId"), mxhttp.Var(r, "pduEventId")
	if len(req.Event) == 0 {
		return nil, mxhttp.BadJSON("event is required")
	}
	if req.RoomVersion == "" {
		req.RoomVersion = "1"
	}
	if !config.SupportedRoomVersion(req.RoomVersion) {
		return nil, mxhttp.New("M_INCOMPATIBLE_ROOM_VERSION", "Room version %s is not supported", req.RoomVersion).
			With("room_version", req.RoomVersion)
	}
	verImpl, err := gmsl.GetRoomVersion(gmsl.RoomVersion(req.RoomVersion))
	if err != nil {
		return nil, mxhttp.New("M_INCOMPATIBLE_ROOM_VERSION", "Room version %s is not supported", req.RoomVersion).
			With("room_version", req.RoomVersion)
	}
	ev, err := verImpl.NewEventFromUntrustedJSON(req.Event)
	if err != nil {
		return nil, mxhttp.BadJSON("Bad event: %v", err)
	}
	if ev.Redacted() {
		return nil, mxhttp.BadJSON("The event's content hash does not match")
	}
	switch {
	case ev.EventID() != eventID:
		return nil, mxhttp.BadJSON("The event ID is %s, not %s", ev.EventID(), eventID)
	case ev.RoomID().String() != roomID:
		return nil, mxhttp.BadJSON("The event is not in room %s", roomID)
	case ev.Type() != spec.MRoomMember || ev.StateKey() == nil:
		return nil, mxhttp.BadJSON("The event is not a member event")
	}
	if m, err := ev.Membership(); err != nil || m != spec.Invite {
		return nil, mxhttp.BadJSON("The event's membership is not invite")
	}
	if domainOf(*ev.StateKey()) != f.key.ServerName {
		return nil, mxhttp.Forbidden("The invited user is not of this server")
	}
	if domainOf(string(ev.SenderID())) != Origin(ctx) {
		return nil, mxhttp.Forbidden("The event's sender is not of the requesting server")
	}
	rs, err := f.memberRooms()
	if err != nil {
		return nil, err
	}
	if m, err := rs.Membership(ctx, roomID, *ev.StateKey()); err == nil && m.Membership == spec.Join {
		return nil, mxhttp.Forbidden("The user is already in the room")
	}
	// Sign as this server; Sign rewrites the event and, for v12, returns
	// it re-typed: re-parse the signed JSON (gmsl guide, pitfall 11).
	signed := ev.Sign(string(f.key.ServerName), f.key.KeyID, f.key.Private)
	ev, err = verImpl.NewEventFromTrustedJSON(signed.JSON(), false)
	if err != nil {
		return nil, fmt.Errorf("re-parse the signed invite: %w", err)
	}
	// Checked once signed: an invite must carry the invitee's server's
	// signature as well as the sender's.
	if err := eventsig.Verify(ctx, ev, f.keys.ring); err != nil {
		return nil, mxhttp.Forbidden("The event's signatures are not valid: %v", err)
	}
	if _, err := rs.Input(ctx, &rsapi.InputRequest{
		RoomID:        roomID,
		RoomVersion:   string(verImpl.Version()),
		Events:        []rsapi.InputEvent{{PDU: json.RawMessage(ev.JSON())}},
		StrippedState: strippedOnly(req.InviteRoomState),
		Origin:        Origin(ctx),
	}); err != nil {
		return nil, err
	}
	return map[string]any{"event": json.RawMessage(ev.JSON())}, nil
}

// strippedOnly keeps the entries of an invite_room_state that are stripped
// state events (type, state_key, sender, content), re-encoded with those
// fields alone: the invitee's client sees them as they are.
func strippedOnly(raws []json.RawMessage) []json.RawMessage {
	out := make([]json.RawMessage, 0, len(raws))
	for _, raw := range raws {
		var s gmsl.InviteStrippedState
		if json.Unmarshal(raw, &s) != nil || s.Type() == "" || s.StateKey() == nil {
			continue
		}
		if b, err := json.Marshal(s); err == nil {
			out = append(out, b)
		}
	}
	return out
}
