package perform

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/matrix-org/gomatrixserverlib/spec"

	rsapi "myelin/roomserver/api"
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
	servers := p.servers(req.RoomID, nil)
	if p.fed == nil || len(servers) == 0 {
		return forbidden("You are not in this room")
	}
	var errs []error
	for _, s := range servers {
		err := p.leaveVia(ctx, s, req, content)
		if err == nil {
			return nil
		}
		errs = append(errs, err)
	}
	return remoteError("leave", req.RoomID, errs)
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
// invitee's profile when this server knows it.
//
// An invitee on another server gets the invite from the federationapi,
// which sends it on from the output stream; asking its server to sign the
// invite first (Federation.Invite) needs the input to hand back an event
// before storing it, which it does not yet.
func (p *Performer) PerformInvite(ctx context.Context, req *rsapi.InviteRequest) error {
	var extra map[string]any
	if req.IsDirect {
		extra = map[string]any{"is_direct": true}
	}
	content, err := p.memberContent(ctx, spec.Invite, req.Invitee, req.Reason, extra)
	if err != nil {
		return err
	}
	_, err = p.sendMember(ctx, req.RoomID, req.Sender, req.Invitee, content, false)
	return err
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
