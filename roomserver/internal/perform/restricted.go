package perform

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	rsapi "myelin/roomserver/api"
)

// Restricted joins (room versions 8 and later; spec: client-server API
// "Restricted rooms", server-server API "Restricted rooms"): a join rule
// of restricted or knock_restricted lets in a user who is joined to one of
// the rooms its allow list names, once a joined member with the power to
// invite vouches for the join by name in join_authorised_via_users_server.
// The server of that member signs the join too.

// joinRules is the content of m.room.join_rules as restricted joins read it.
type joinRules struct {
	JoinRule string `json:"join_rule"`
	Allow    []struct {
		Type   string `json:"type"`
		RoomID string `json:"room_id"`
	} `json:"allow"`
}

// joinAuthoriser returns the local user who vouches for userID's join of
// roomID, a room known here, or "" when the join needs no one (the join
// rule is not restricted, the room's version has no restricted joins, or
// the user is invited or joined already). A user in none of the allowed
// rooms is refused (M_FORBIDDEN); one whose allowed rooms this server does
// not know, M_UNABLE_TO_AUTHORISE_JOIN; with no local member who may
// invite, M_UNABLE_TO_GRANT_JOIN (another server may).
func (p *Performer) joinAuthoriser(ctx context.Context, roomID, userID string) (string, error) {
	version, err := p.rooms.RoomVersion(ctx, roomID)
	if err != nil {
		return "", fmt.Errorf("restricted join of %s: %w", roomID, err)
	}
	verImpl, err := gmsl.GetRoomVersion(version)
	if err != nil || verImpl.CheckRestrictedJoinsAllowed() != nil {
		return "", nil
	}
	state, err := p.rooms.CurrentState(ctx, roomID,
		gmsl.StateKeyTuple{EventType: spec.MRoomJoinRules},
		gmsl.StateKeyTuple{EventType: spec.MRoomMember, StateKey: userID})
	if err != nil {
		return "", fmt.Errorf("restricted join of %s: %w", roomID, err)
	}
	var rules joinRules
	for _, ev := range state {
		switch ev.Type() {
		case spec.MRoomJoinRules:
			_ = json.Unmarshal(ev.Content(), &rules)
		case spec.MRoomMember:
			if m, _ := ev.Membership(); m == spec.Join || m == spec.Invite {
				return "", nil
			}
		}
	}
	if rules.JoinRule != spec.Restricted && rules.JoinRule != spec.KnockRestricted {
		return "", nil
	}
	known, allowed := false, false
	for _, a := range rules.Allow {
		if a.Type != spec.MRoomMembership || a.RoomID == "" {
			continue
		}
		if k, err := p.roomKnown(ctx, a.RoomID); err != nil {
			return "", err
		} else if !k {
			continue
		}
		known = true
		m, err := p.rooms.Membership(ctx, a.RoomID, userID)
		if err != nil && !errors.Is(err, rsapi.ErrRoomNotFound) {
			return "", fmt.Errorf("membership of %s in %s: %w", userID, a.RoomID, err)
		}
		if err == nil && m.Membership == spec.Join {
			allowed = true
			break
		}
	}
	switch {
	case allowed:
	case !known:
		return "", refuse("M_UNABLE_TO_AUTHORISE_JOIN", "This server knows none of the rooms that would let %s in", userID)
	default:
		return "", forbidden("You are not in any of the rooms this room lets in")
	}
	// The whole state, for its members: a cost in proportion to the
	// room's size, paid once per join of a restricted room.
	all, err := p.rooms.CurrentState(ctx, roomID)
	if err != nil {
		return "", fmt.Errorf("members of %s: %w", roomID, err)
	}
	var pl *gmsl.PowerLevelContent
	var create gmsl.PDU
	for _, ev := range all {
		switch {
		case ev.Type() == spec.MRoomPowerLevels && ev.StateKeyEquals(""):
			if c, err := gmsl.NewPowerLevelContentFromEvent(ev); err == nil {
				pl = &c
			}
		case ev.Type() == spec.MRoomCreate && ev.StateKeyEquals(""):
			create = ev
		}
	}
	if pl == nil && create != nil {
		// No power levels yet: the creator alone has power (spec: auth
		// rules, default power levels).
		auth, err := gmsl.NewAuthEvents([]gmsl.PDU{create})
		if err == nil {
			if c, err := gmsl.NewPowerLevelContentFromAuthEvents(auth, string(create.SenderID())); err == nil {
				pl = &c
			}
		}
	}
	if pl == nil {
		return "", refuse("M_UNABLE_TO_GRANT_JOIN", "No member of this server may invite to %s", roomID)
	}
	best, bestLevel := "", int64(0)
	for _, ev := range all {
		if ev.Type() != spec.MRoomMember || ev.StateKey() == nil {
			continue
		}
		u, err := spec.NewUserID(*ev.StateKey(), true)
		if err != nil || u.Domain() != p.key.ServerName {
			continue
		}
		if m, _ := ev.Membership(); m != spec.Join {
			continue
		}
		// The most powerful, so that a later demotion is least likely
		// to leave the join without a voucher.
		if lvl := pl.UserLevel(spec.SenderID(*ev.StateKey())); lvl >= pl.Invite && (best == "" || lvl > bestLevel) {
			best, bestLevel = *ev.StateKey(), lvl
		}
	}
	if best == "" {
		return "", refuse("M_UNABLE_TO_GRANT_JOIN", "No member of this server may invite to %s", roomID)
	}
	return best, nil
}

// withAuthoriser adds join_authorised_via_users_server to a join's content.
func withAuthoriser(content json.RawMessage, via string) (json.RawMessage, error) {
	var c map[string]any
	if err := json.Unmarshal(content, &c); err != nil {
		return nil, fmt.Errorf("join content: %w", err)
	}
	if c == nil {
		c = map[string]any{}
	}
	c["join_authorised_via_users_server"] = via
	return json.Marshal(c)
}
