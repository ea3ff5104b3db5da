package perform

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"

	rsapi "myelin/roomserver/api"
	"myelin/setup/config"
)

// PerformJoin implements rsapi.Performer. A room known here is joined by a
// member event built on its current state; any other room through a
// server in it (make_join, then send_join).
func (p *Performer) PerformJoin(ctx context.Context, req *rsapi.JoinRequest) (*rsapi.JoinResponse, error) {
	known, err := p.roomKnown(ctx, req.RoomID)
	if err != nil {
		return nil, fmt.Errorf("join %s: %w", req.RoomID, err)
	}
	if !known {
		return p.joinRemote(ctx, req)
	}
	if req.IsGuest {
		if err := p.guestMayJoin(ctx, req.RoomID); err != nil {
			return nil, err
		}
	}
	content, err := p.memberContent(ctx, spec.Join, req.UserID, req.Reason, req.Content)
	if err != nil {
		return nil, err
	}
	via, err := p.joinAuthoriser(ctx, req.RoomID, req.UserID)
	if err != nil {
		return nil, err
	}
	if via != "" {
		if content, err = withAuthoriser(content, via); err != nil {
			return nil, err
		}
	}
	// A repeated join with the same profile answers with the current
	// event rather than making another.
	id, err := p.sendMember(ctx, req.RoomID, req.UserID, req.UserID, content, true)
	if err != nil {
		return nil, err
	}
	return &rsapi.JoinResponse{RoomID: req.RoomID, EventID: id}, nil
}

// guestMayJoin refuses a guest's join of a room whose m.room.guest_access
// is not can_join (spec: "Guest Access").
func (p *Performer) guestMayJoin(ctx context.Context, roomID string) error {
	evs, err := p.rooms.CurrentState(ctx, roomID, gmsl.StateKeyTuple{EventType: spec.MRoomGuestAccess})
	if err != nil {
		return fmt.Errorf("guest access of %s: %w", roomID, err)
	}
	for _, ev := range evs {
		var ga struct {
			GuestAccess string `json:"guest_access"`
		}
		if json.Unmarshal(ev.Content(), &ga) == nil && ga.GuestAccess == "can_join" {
			return nil
		}
	}
	return refuse("M_GUEST_ACCESS_FORBIDDEN", "Guest access is not allowed in this room")
}

// guestMayJoinRemote lets a guest join a room of another server only
// when invited to it with stripped state that shows the room's guest
// access as can_join: this server cannot read the room's state before it
// joins, and a guest's join of a room that does not allow guests would
// be accepted by the resident server, which cannot tell guests apart.
func (p *Performer) guestMayJoinRemote(ctx context.Context, roomID, userID string) error {
	refused := refuse("M_GUEST_ACCESS_FORBIDDEN", "Guests may join rooms of other servers only when invited to rooms that allow guests")
	m, err := p.rooms.Membership(ctx, roomID, userID)
	if err != nil || m == nil || m.Membership != spec.Invite || m.EventID == "" {
		return refused
	}
	evs, err := p.rooms.Events(ctx, []string{m.EventID})
	if err != nil || len(evs) != 1 {
		return refused
	}
	var unsigned struct {
		State []struct {
			Type     string `json:"type"`
			StateKey string `json:"state_key"`
			Content  struct {
				GuestAccess string `json:"guest_access"`
			} `json:"content"`
		} `json:"invite_room_state"`
	}
	if json.Unmarshal(evs[0].Unsigned(), &unsigned) != nil {
		return refused
	}
	for _, st := range unsigned.State {
		if st.Type == spec.MRoomGuestAccess && st.StateKey == "" && st.Content.GuestAccess == "can_join" {
			return nil
		}
	}
	return refused
}

// PerformKnock implements rsapi.Performer (spec: client-server API,
// "Knocking on rooms"; room versions 7 and later). Whether the room lets
// the user knock (its join rule, the user's membership, the room version)
// is the auth rules' to say.
func (p *Performer) PerformKnock(ctx context.Context, req *rsapi.KnockRequest) (*rsapi.JoinResponse, error) {
	known, err := p.roomKnown(ctx, req.RoomID)
	if err != nil {
		return nil, fmt.Errorf("knock on %s: %w", req.RoomID, err)
	}
	content, err := p.memberContent(ctx, spec.Knock, req.UserID, req.Reason, nil)
	if err != nil {
		return nil, err
	}
	if !known {
		return p.knockRemote(ctx, req, content)
	}
	id, err := p.sendMember(ctx, req.RoomID, req.UserID, req.UserID, content, true)
	if err != nil {
		return nil, err
	}
	return &rsapi.JoinResponse{RoomID: req.RoomID, EventID: id}, nil
}

// noServers is the answer for a room this server is not in and cannot ask
// anyone about.
func noServers(roomID string) error {
	return refuse("M_NOT_FOUND", "No known servers for room %s", roomID)
}

// joinRemote joins a room this server is not in through the first of its
// servers that answers (spec: server-server API, "Joining Rooms").
func (p *Performer) joinRemote(ctx context.Context, req *rsapi.JoinRequest) (*rsapi.JoinResponse, error) {
	inviter, err := p.inviterServer(ctx, req.RoomID, req.UserID)
	if err != nil {
		return nil, fmt.Errorf("join %s: %w", req.RoomID, err)
	}
	servers := p.servers(req.RoomID, slices.Concat(req.ServerNames, inviter))
	if p.fed == nil || len(servers) == 0 {
		return nil, noServers(req.RoomID)
	}
	if req.IsGuest {
		if err := p.guestMayJoinRemote(ctx, req.RoomID, req.UserID); err != nil {
			return nil, err
		}
	}
	content, err := p.memberContent(ctx, spec.Join, req.UserID, req.Reason, req.Content)
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, s := range servers {
		id, err := p.joinVia(ctx, s, req, content)
		if err == nil {
			p.followPredecessor(ctx, req.RoomID, req.UserID)
			return &rsapi.JoinResponse{RoomID: req.RoomID, EventID: id}, nil
		}
		var stored *storeError
		if errors.As(err, &stored) {
			return nil, stored.err // the remote has the join: asking another would join twice
		}
		p.log.WithError(err).WithField("room_id", req.RoomID).WithField("server", s).Debug("remote join failed")
		errs = append(errs, err)
	}
	return nil, remoteError("join", req.RoomID, errs)
}

// joinVia is one attempt of joinRemote: make_join from server, the join
// event built from its template and signed here, send_join, and the event
// stored with the room state server answered.
func (p *Performer) joinVia(ctx context.Context, server spec.ServerName, req *rsapi.JoinRequest, content json.RawMessage) (string, error) {
	mj, err := p.fed.MakeJoin(ctx, server, req.RoomID, req.UserID)
	if err != nil {
		return "", fmt.Errorf("make_join via %s: %w", server, err)
	}
	ev, verImpl, err := p.fromTemplate(mj.JoinEvent, mj.RoomVersion, req.RoomID, req.UserID, spec.Join, content)
	if err != nil {
		return "", fmt.Errorf("make_join via %s: %w", server, err)
	}
	sj, err := p.fed.SendJoin(ctx, server, ev)
	if err != nil {
		return "", fmt.Errorf("send_join via %s: %w", server, err)
	}
	// For a restricted join the resident server signs the event too
	// (MSC3083) and returns it: the same event, with one more signature.
	if len(sj.Event) > 0 {
		if signed, err := verImpl.NewEventFromUntrustedJSON(sj.Event); err == nil && signed.EventID() == ev.EventID() {
			ev = signed
		}
	}
	resp, err := p.rooms.Input(ctx, &rsapi.InputRequest{
		RoomID:      req.RoomID,
		RoomVersion: string(verImpl.Version()),
		Events:      []rsapi.InputEvent{{PDU: json.RawMessage(ev.JSON())}},
		State:       rawEvents(sj.StateEvents),
		AuthChain:   rawEvents(sj.AuthEvents),
	})
	if err != nil {
		return "", &storeError{fmt.Errorf("store the join of %s via %s: %w", req.RoomID, server, err)}
	}
	return resp.EventIDs[0], nil
}

// knockRemote knocks on a room this server is not in (spec: server-server
// API, "Knocking upon a room").
func (p *Performer) knockRemote(ctx context.Context, req *rsapi.KnockRequest, content json.RawMessage) (*rsapi.JoinResponse, error) {
	servers := p.servers(req.RoomID, req.ServerNames)
	if p.fed == nil || len(servers) == 0 {
		return nil, noServers(req.RoomID)
	}
	var errs []error
	for _, s := range servers {
		id, err := p.knockVia(ctx, s, req, content)
		if err == nil {
			return &rsapi.JoinResponse{RoomID: req.RoomID, EventID: id}, nil
		}
		var stored *storeError
		if errors.As(err, &stored) {
			return nil, stored.err
		}
		p.log.WithError(err).WithField("room_id", req.RoomID).WithField("server", s).Debug("remote knock failed")
		errs = append(errs, err)
	}
	return nil, remoteError("knock on", req.RoomID, errs)
}

func (p *Performer) knockVia(ctx context.Context, server spec.ServerName, req *rsapi.KnockRequest, content json.RawMessage) (string, error) {
	mk, err := p.fed.MakeKnock(ctx, server, req.RoomID, req.UserID, knockVersions())
	if err != nil {
		return "", fmt.Errorf("make_knock via %s: %w", server, err)
	}
	ev, verImpl, err := p.fromTemplate(mk.KnockEvent, mk.RoomVersion, req.RoomID, req.UserID, spec.Knock, content)
	if err != nil {
		return "", fmt.Errorf("make_knock via %s: %w", server, err)
	}
	sk, err := p.fed.SendKnock(ctx, server, ev)
	if err != nil {
		return "", fmt.Errorf("send_knock via %s: %w", server, err)
	}
	stripped := make([]json.RawMessage, 0, len(sk.KnockRoomState))
	for _, s := range sk.KnockRoomState {
		if b, err := json.Marshal(s); err == nil {
			stripped = append(stripped, b)
		}
	}
	// The knock is all this server has of the room: an outlier with the
	// stripped state the room sent, which the knocker's /sync shows.
	resp, err := p.rooms.Input(ctx, &rsapi.InputRequest{
		RoomID:        req.RoomID,
		RoomVersion:   string(verImpl.Version()),
		Events:        []rsapi.InputEvent{{PDU: json.RawMessage(ev.JSON())}},
		StrippedState: stripped,
	})
	if err != nil {
		return "", &storeError{fmt.Errorf("store the knock on %s via %s: %w", req.RoomID, server, err)}
	}
	return resp.EventIDs[0], nil
}

// knockVersions are the room versions this server may knock in: those it
// supports from 7, the first with knocking.
func knockVersions() []gmsl.RoomVersion {
	var out []gmsl.RoomVersion
	for v := 7; v <= 12; v++ {
		if s := fmt.Sprint(v); config.SupportedRoomVersion(s) {
			out = append(out, gmsl.RoomVersion(s))
		}
	}
	return out
}

// storeError is a remote membership change the remote server accepted and
// this server could not store: trying another server would repeat it.
type storeError struct{ err error }

func (e *storeError) Error() string { return e.err.Error() }
func (e *storeError) Unwrap() error { return e.err }

// remoteError is the answer when no server let the user in: the last
// server's refusal if it gave a Matrix error, else that none could be
// reached, which may change (a 503 for the client, as Synapse answers a
// 502: the request was fine).
func remoteError(op, roomID string, errs []error) error {
	last := errs[len(errs)-1]
	var coded interface{ MatrixErrCode() string }
	if errors.As(last, &coded) {
		return last
	}
	return &unreachableError{fmt.Errorf("%s %s: no server in the room answered: %w", op, roomID, errors.Join(errs...))}
}

// unreachableError is a remote operation no server answered.
type unreachableError struct{ err error }

func (e *unreachableError) Error() string     { return e.err.Error() }
func (e *unreachableError) Unwrap() error     { return e.err }
func (e *unreachableError) Unavailable() bool { return true }

// fromTemplate builds and signs the member event a resident server's
// make_join, make_leave or make_knock proposed, after checking the
// template is the one asked for: a member event of userID about itself in
// roomID, in a room version this server supports.
func (p *Performer) fromTemplate(proto gmsl.ProtoEvent, version gmsl.RoomVersion, roomID, userID, membership string, content json.RawMessage) (gmsl.PDU, gmsl.IRoomVersion, error) {
	if version == "" {
		version = impliedVersion(proto)
	}
	verImpl, err := gmsl.GetRoomVersion(version)
	if err != nil || !config.SupportedRoomVersion(string(version)) {
		return nil, nil, &rsapi.PerformError{
			Code:   "M_INCOMPATIBLE_ROOM_VERSION",
			Reason: fmt.Sprintf("room version %q is not supported", version),
			Extra:  map[string]any{"room_version": string(version)},
		}
	}
	switch {
	case proto.Type != spec.MRoomMember,
		proto.StateKey == nil || *proto.StateKey != userID,
		proto.SenderID != userID,
		proto.RoomID != roomID:
		return nil, nil, fmt.Errorf("the %s template is not a member event of %s in %s", membership, userID, roomID)
	}
	// The resident server's voucher for a restricted join stays: the
	// auth rules need it, and that server signs the join for it.
	if via := gjson.GetBytes(proto.Content, "join_authorised_via_users_server"); via.Type == gjson.String && membership == spec.Join {
		var err error
		if content, err = withAuthoriser(content, via.String()); err != nil {
			return nil, nil, err
		}
	}
	proto.Content = spec.RawJSON(content)
	b := verImpl.NewEventBuilderFromProtoEvent(&proto)
	ev, err := b.Build(p.now(), p.key.ServerName, p.key.KeyID, p.key.Private)
	if err != nil {
		return nil, nil, fmt.Errorf("build the %s event: %w", membership, err)
	}
	return ev, verImpl, nil
}

// impliedVersion is the room version of a template that names none. The
// spec's default is "1", whose events reference others as [id, hashes]
// pairs; a template referencing them by bare ID cannot be of version 1 or
// 2, so it is taken as the first version with URL-safe event IDs (4).
// Either way the create event of send_join's answer must then name the
// same version, or the join is refused.
func impliedVersion(proto gmsl.ProtoEvent) gmsl.RoomVersion {
	for _, refs := range []any{proto.AuthEvents, proto.PrevEvents} {
		switch refs := refs.(type) {
		case []string: // as built in Go
			if len(refs) > 0 {
				return gmsl.RoomVersionV4
			}
		case []any: // as decoded from JSON
			if len(refs) > 0 {
				if _, bare := refs[0].(string); bare {
					return gmsl.RoomVersionV4
				}
				return gmsl.RoomVersionV1
			}
		}
	}
	return gmsl.RoomVersionV1
}

func rawEvents(evs gmsl.EventJSONs) []json.RawMessage {
	out := make([]json.RawMessage, len(evs))
	for i, e := range evs {
		out[i] = json.RawMessage(e)
	}
	return out
}
