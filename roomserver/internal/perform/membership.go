package perform

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	rsapi "myelin/roomserver/api"
	"myelin/roomserver/internal/input"
)

// PerformLeave implements rsapi.Performer: a leave of a room known here,
// or, for a room this server is not in (a remote invite or knock
// rejected), through a server in it (make_leave, send_leave).
func (p *Performer) PerformLeave(ctx context.Context, req *rsapi.LeaveRequest) error {
	known, err := p.roomKnown(ctx, req.RoomID)
	if err != nil {
		return fmt.Errorf("leave %s: %w", req.RoomID, err)
	}
	content, err := p.memberContent(ctx, spec.Leave, "", req.Reason, nil)
	if err != nil {
		return err
	}
	if !known {
		return p.leaveRemote(ctx, req, content)
	}
	// Leaving again the same way answers with the first leave, as in
	// Synapse; any other leave from outside the room is refused by the
	// input.
	_, err = p.sendMember(ctx, req.RoomID, req.UserID, req.UserID, content, true)
	return err
}

// leaveRemote leaves a room this server is not in through its server
// (spec: server-server API, "Leaving Rooms (Rejecting Invites)").
func (p *Performer) leaveRemote(ctx context.Context, req *rsapi.LeaveRequest, content json.RawMessage) error {
	inviter, err := p.inviterServer(ctx, req.RoomID, req.UserID)
	if err != nil {
		return fmt.Errorf("leave %s: %w", req.RoomID, err)
	}
	m, err := p.rooms.Membership(ctx, req.RoomID, req.UserID)
	if errors.Is(err, rsapi.ErrRoomNotFound) {
		m, err = &rsapi.Membership{}, nil
	}
	if err != nil {
		return fmt.Errorf("leave %s: %w", req.RoomID, err)
	}
	pending := (m.Membership == spec.Invite || m.Membership == spec.Knock) && m.EventID != ""
	servers := p.servers(req.RoomID, inviter)
	if !pending && (p.fed == nil || len(servers) == 0) {
		return forbidden("You are not in this room")
	}
	var errs []error
	for _, s := range servers {
		if p.fed == nil {
			break
		}
		err := p.leaveVia(ctx, s, req, content)
		if err == nil {
			return nil
		}
		errs = append(errs, err)
	}
	if pending {
		// No server in the room took the rejection (it refused, failed
		// or is gone): the user must still be able to be rid of the
		// invite, so reject it here alone, as Synapse does.
		p.log.WithError(errors.Join(errs...)).WithField("room_id", req.RoomID).Info("rejecting an invite or knock locally: no server in the room took it")
		return p.leaveLocally(ctx, req, m.EventID, content)
	}
	return remoteError("leave", req.RoomID, errs)
}

// leaveLocally ends an invite or knock to a room this server is not in
// without telling the room: a leave event of the user, signed here, whose
// only prev and auth event is the invite (or knock), stored as an outlier
// like the invite itself so that the user's /sync moves the room to
// "leave". The room never sees it; its servers will when the user next
// joins.
func (p *Performer) leaveLocally(ctx context.Context, req *rsapi.LeaveRequest, pendingID string, content json.RawMessage) error {
	evs, err := p.rooms.Events(ctx, []string{pendingID})
	if err != nil {
		return fmt.Errorf("leave %s: the invite %s: %w", req.RoomID, pendingID, err)
	}
	if len(evs) != 1 {
		return fmt.Errorf("leave %s: the invite %s is not stored", req.RoomID, pendingID)
	}
	pending := evs[0]
	verImpl, err := gmsl.GetRoomVersion(pending.Version())
	if err != nil {
		return fmt.Errorf("leave %s: %w", req.RoomID, err)
	}
	userID := req.UserID
	proto := &gmsl.ProtoEvent{
		SenderID:   userID,
		RoomID:     req.RoomID,
		Type:       spec.MRoomMember,
		StateKey:   &userID,
		Content:    spec.RawJSON(content),
		PrevEvents: []string{pendingID},
		AuthEvents: []string{pendingID},
		Depth:      min(pending.Depth(), 1<<63-2) + 1,
	}
	ev, err := verImpl.NewEventBuilderFromProtoEvent(proto).Build(p.now(), p.key.ServerName, p.key.KeyID, p.key.Private)
	if err != nil {
		return fmt.Errorf("build the local leave of %s: %w", req.RoomID, err)
	}
	if _, err := p.rooms.Input(ctx, &rsapi.InputRequest{
		RoomID: req.RoomID, RoomVersion: string(verImpl.Version()),
		Events: []rsapi.InputEvent{{PDU: json.RawMessage(ev.JSON())}},
	}); err != nil {
		return inputError(err)
	}
	return nil
}

func (p *Performer) leaveVia(ctx context.Context, server spec.ServerName, req *rsapi.LeaveRequest, content json.RawMessage) error {
	ml, err := p.fed.MakeLeave(ctx, server, req.RoomID, req.UserID)
	if err != nil {
		return fmt.Errorf("make_leave via %s: %w", server, err)
	}
	ev, verImpl, err := p.fromTemplate(ml.LeaveEvent, ml.RoomVersion, req.RoomID, req.UserID, spec.Leave, content)
	if err != nil {
		return fmt.Errorf("make_leave via %s: %w", server, err)
	}
	if err := p.fed.SendLeave(ctx, server, ev); err != nil {
		return fmt.Errorf("send_leave via %s: %w", server, err)
	}
	// The leave is stored where the room is known here (an outlier
	// invite's room, once the input keeps those); a room this server has
	// nothing of has nothing to update.
	_, err = p.rooms.Input(ctx, &rsapi.InputRequest{
		RoomID: req.RoomID, RoomVersion: string(verImpl.Version()),
		Events: []rsapi.InputEvent{{PDU: json.RawMessage(ev.JSON())}},
	})
	var bad *rsapi.BadEventError
	if err != nil && !(errors.As(err, &bad) && bad.Code == "M_NOT_FOUND") {
		p.log.WithError(err).WithField("room_id", req.RoomID).Warn("left a remote room but could not store the leave")
	}
	return nil
}

// PerformInvite implements rsapi.Performer. The invite carries the
// invitee's profile when this server knows it. An invitee on another
// server must have its server sign the invite before it enters the room
// (spec: server-server API, "Inviting to a room"); with no Federation the
// invite is stored at once, and the invitee's server hears of it only
// from the output stream, as before federation.
func (p *Performer) PerformInvite(ctx context.Context, req *rsapi.InviteRequest) error {
	var extra map[string]any
	if req.IsDirect {
		extra = map[string]any{"is_direct": true}
	}
	content, err := p.memberContent(ctx, spec.Invite, req.Invitee, req.Reason, extra)
	if err != nil {
		return err
	}
	return p.invite(ctx, req, content)
}

// invite submits an invite of content: a local invitee's at once, another
// server's once that server signed it.
func (p *Performer) invite(ctx context.Context, req *rsapi.InviteRequest, content json.RawMessage) error {
	if invitee, err := spec.NewUserID(req.Invitee, true); err == nil && p.fed != nil && invitee.Domain() != p.key.ServerName {
		return p.inviteRemote(ctx, req, invitee.Domain(), content)
	}
	_, err := p.sendMember(ctx, req.RoomID, req.Sender, req.Invitee, content, false)
	return err
}

// inviteRemote builds the invite on the room's current state, checks it
// against the auth rules, has the invitee's server sign it, and inputs
// the signed event. Should the room move on meanwhile, the invite is a
// fork the input resolves like any federated event.
func (p *Performer) inviteRemote(ctx context.Context, req *rsapi.InviteRequest, server spec.ServerName, content json.RawMessage) error {
	invitee := req.Invitee
	proto := &gmsl.ProtoEvent{SenderID: req.Sender, RoomID: req.RoomID, Type: spec.MRoomMember, StateKey: &invitee, Content: spec.RawJSON(content)}
	ev, state, err := p.BuildEventTemplate(ctx, proto)
	if errors.Is(err, rsapi.ErrRoomNotFound) {
		return forbidden("You are not in this room")
	}
	if err != nil {
		return err
	}
	auth, err := gmsl.NewAuthEvents(state)
	if err != nil {
		return fmt.Errorf("auth state of %s: %w", req.RoomID, err)
	}
	if err := input.Allowed(ev, auth); err != nil {
		var na *gmsl.NotAllowed
		if errors.As(err, &na) {
			return forbidden("%s", na.Message)
		}
		return forbidden("%v", err)
	}
	types := input.StrippedStateTypes()
	tuples := make([]gmsl.StateKeyTuple, 0, len(types)+1)
	for _, t := range types {
		tuples = append(tuples, gmsl.StateKeyTuple{EventType: t})
	}
	tuples = append(tuples, gmsl.StateKeyTuple{EventType: spec.MRoomMember, StateKey: req.Sender})
	current, err := p.rooms.CurrentState(ctx, req.RoomID, tuples...)
	if err != nil {
		return fmt.Errorf("stripped state of %s: %w", req.RoomID, err)
	}
	stripped := make([]gmsl.InviteStrippedState, len(current))
	for i, s := range current {
		stripped[i] = gmsl.NewInviteStrippedState(s)
	}
	signed, err := p.fed.Invite(ctx, server, ev, stripped)
	if err != nil {
		return remoteError("invite to", req.RoomID, []error{fmt.Errorf("invite via %s: %w", server, err)})
	}
	if signed == nil || signed.EventID() != ev.EventID() {
		return &unreachableError{fmt.Errorf("invite via %s: the server answered with another event", server)}
	}
	if _, err := p.rooms.Input(ctx, &rsapi.InputRequest{RoomID: req.RoomID, Events: []rsapi.InputEvent{{PDU: json.RawMessage(signed.JSON())}}}); err != nil {
		return inputError(err)
	}
	return nil
}

// PerformMembership implements rsapi.Performer: kick, ban and unban.
func (p *Performer) PerformMembership(ctx context.Context, req *rsapi.MembershipRequest) error {
	membership := spec.Leave
	switch req.Change {
	case rsapi.Kick:
		// Kicking someone not in the room (or banned: that is an unban)
		// is refused, as in Synapse, though the auth rules would allow
		// the event.
		m, err := p.rooms.Membership(ctx, req.RoomID, req.Target)
		if err != nil {
			return err
		}
		switch m.Membership {
		case spec.Join, spec.Invite, spec.Knock:
		default:
			return forbidden("%s is not in the room", req.Target)
		}
	case rsapi.Ban:
		membership = spec.Ban
	case rsapi.Unban:
		m, err := p.rooms.Membership(ctx, req.RoomID, req.Target)
		if err != nil {
			return err
		}
		if m.Membership != spec.Ban {
			return forbidden("%s is not banned", req.Target)
		}
	default:
		return refuse("M_INVALID_PARAM", "unknown membership change %q", req.Change)
	}
	content, err := p.memberContent(ctx, membership, "", req.Reason, nil)
	if err != nil {
		return err
	}
	_, err = p.sendMember(ctx, req.RoomID, req.Sender, req.Target, content, false)
	return err
}
