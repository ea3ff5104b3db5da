// Package perform is the roomserver's membership and room operations:
// join, leave, invite, knock, kick, ban, unban and upgrade, and the
// backfill of a room's history from other servers. It decides what
// each does (is the room known here, may the user, which events to make)
// and submits the events through the roomserver's input, so clientapi and
// federationapi only check their own input and call rsapi.Performer.
//
// Rooms this server is in and rooms it is not go through one path: when
// the room is unknown here the operation asks other servers through
// Federation, which the federationapi implements (make/send join, leave
// and knock), and an invitee of another server signs its invite first.
// With no Federation (or no server to ask) a join or knock of an unknown
// room is refused with M_NOT_FOUND, as before federation. The other way
// round, BuildEventTemplate prepares the member event another server's
// user asks for (make_join, make_leave, make_knock).
//
// Only the roomserver package imports it.
package perform

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/sirupsen/logrus"

	"myelin/internal/signing"
	rsapi "myelin/roomserver/api"
)

// Rooms is what perform needs of the roomserver: its input and the
// queries of room state, memberships, aliases and the directory.
type Rooms interface {
	rsapi.Inputter
	RoomVersion(ctx context.Context, roomID string) (gmsl.RoomVersion, error)
	// LatestEvents returns the room's forward extremities and the
	// greatest depth of its events.
	LatestEvents(ctx context.Context, roomID string) (eventIDs []string, depth int64, err error)
	CurrentState(ctx context.Context, roomID string, tuples ...gmsl.StateKeyTuple) ([]gmsl.PDU, error)
	Membership(ctx context.Context, roomID, userID string) (*rsapi.Membership, error)
	Events(ctx context.Context, eventIDs []string) ([]gmsl.PDU, error)
	RoomAliases(ctx context.Context, roomID string) ([]string, error)
	AliasCreator(ctx context.Context, alias string) (string, error)
	RemoveAlias(ctx context.Context, alias string) error
	SetAlias(ctx context.Context, alias, roomID, creator string) error
	IsPublished(ctx context.Context, roomID string) (bool, error)
	SetPublished(ctx context.Context, roomID string, published bool) error
	StateBefore(ctx context.Context, eventID string, tuples ...gmsl.StateKeyTuple) ([]gmsl.PDU, error)
	// BackfillPoint returns the room's backward extremities (the prev
	// events of its oldest events here that it lacks), those oldest
	// events, and whether its history is complete here.
	BackfillPoint(ctx context.Context, roomID string) (from, earliest []string, complete bool, err error)
}

// Federation is what perform asks of other servers for rooms this server
// is not in (spec: server-server API, "Joining Rooms", "Leaving Rooms",
// "Knocking upon a room", "Inviting to a room"). The federationapi
// implements it over signed requests from this server; server is the one
// to ask. Errors that carry a Matrix code (MatrixErrCode) are passed on to
// the client as they are.
type Federation interface {
	MakeJoin(ctx context.Context, server spec.ServerName, roomID, userID string) (fclient.RespMakeJoin, error)
	SendJoin(ctx context.Context, server spec.ServerName, ev gmsl.PDU) (fclient.RespSendJoin, error)
	MakeLeave(ctx context.Context, server spec.ServerName, roomID, userID string) (fclient.RespMakeLeave, error)
	SendLeave(ctx context.Context, server spec.ServerName, ev gmsl.PDU) error
	MakeKnock(ctx context.Context, server spec.ServerName, roomID, userID string, versions []gmsl.RoomVersion) (fclient.RespMakeKnock, error)
	SendKnock(ctx context.Context, server spec.ServerName, ev gmsl.PDU) (fclient.RespSendKnock, error)
	// Invite asks the invitee's server to sign an invite to a room this
	// server is in, and returns the event it signed.
	Invite(ctx context.Context, server spec.ServerName, ev gmsl.PDU, strippedState []gmsl.InviteStrippedState) (gmsl.PDU, error)
}

// ProfileFunc returns a user's display name and avatar, which go into the
// member events of its joins and invites (as Synapse does). An error
// leaves them out.
type ProfileFunc func(ctx context.Context, userID string) (displayName, avatarURL string, err error)

// Performer implements rsapi.Performer.
type Performer struct {
	rooms   Rooms
	key     *signing.Key
	fed     Federation
	fetcher rsapi.Fetcher
	profile ProfileFunc
	log     *logrus.Entry
	now     func() time.Time
	bf      *backfills
	// keyValid confirms an identity server's key (third-party invites).
	keyValid KeyValidityFunc
}

var _ rsapi.Performer = (*Performer)(nil)

// New makes a Performer submitting to rooms and signing as key. fed,
// fetcher and profile may be nil: then only rooms known here can be
// joined, no history is backfilled, and member events carry no profile.
func New(rooms Rooms, key *signing.Key, fed Federation, fetcher rsapi.Fetcher, profile ProfileFunc, log *logrus.Entry) *Performer {
	return &Performer{rooms: rooms, key: key, fed: fed, fetcher: fetcher, profile: profile, log: log, now: time.Now, bf: newBackfills()}
}

func refuse(code, format string, args ...any) error {
	return &rsapi.PerformError{Code: code, Reason: fmt.Sprintf(format, args...)}
}

func forbidden(format string, args ...any) error { return refuse("M_FORBIDDEN", format, args...) }

// memberContent is the content of a member event: membership, reason, the
// extra fields given, and the profile of profileOf (when not empty) for
// the fields extra does not set.
func (p *Performer) memberContent(ctx context.Context, membership, profileOf, reason string, extra map[string]any) (json.RawMessage, error) {
	content := map[string]any{}
	for k, v := range extra {
		content[k] = v
	}
	content["membership"] = membership
	if reason != "" {
		content["reason"] = reason
	}
	if profileOf != "" && p.profile != nil {
		if name, avatar, err := p.profile(ctx, profileOf); err == nil {
			if _, set := content["displayname"]; !set && name != "" {
				content["displayname"] = name
			}
			if _, set := content["avatar_url"]; !set && avatar != "" {
				content["avatar_url"] = avatar
			}
		}
	}
	return json.Marshal(content)
}

// sendMember submits a member event about target from sender, built by
// the roomserver's input on top of the room's current state, and returns
// its event ID. dedup answers with the current event instead when it is
// the same (a repeated join or leave).
func (p *Performer) sendMember(ctx context.Context, roomID, sender, target string, content json.RawMessage, dedup bool) (string, error) {
	// Content that cannot fit in an event (a long reason, large extra
	// fields) is refused before it crosses the bus; the input refuses
	// what is only too large once built.
	if len(content) > maxEventBytes {
		// json.Marshal escapes <, > and &: what counts is the canonical form.
		if canon, err := gmsl.CanonicalJSON(content); err != nil || len(canon) > maxEventBytes {
			return "", refuse("M_TOO_LARGE", "the event would be larger than %d bytes", maxEventBytes)
		}
	}
	resp, err := p.rooms.Input(ctx, &rsapi.InputRequest{RoomID: roomID, Events: []rsapi.InputEvent{{
		Proto:      &rsapi.ProtoEvent{Sender: sender, Type: spec.MRoomMember, StateKey: &target, Content: content},
		DedupState: dedup,
	}}})
	if err != nil {
		return "", inputError(err)
	}
	return resp.EventIDs[0], nil
}

// sendState submits one state event with an empty state key.
func (p *Performer) sendState(ctx context.Context, roomID, sender, evType string, content any) (string, error) {
	raw, err := json.Marshal(content)
	if err != nil {
		return "", err
	}
	empty := ""
	resp, err := p.rooms.Input(ctx, &rsapi.InputRequest{RoomID: roomID, Events: []rsapi.InputEvent{{
		Proto: &rsapi.ProtoEvent{Sender: sender, Type: evType, StateKey: &empty, Content: raw},
	}}})
	if err != nil {
		return "", inputError(err)
	}
	return resp.EventIDs[0], nil
}

// inputError maps the input's refusal of an event in a room it does not
// know to what a client is told: it is not in that room.
func inputError(err error) error {
	var bad *rsapi.BadEventError
	if errors.As(err, &bad) && bad.Code == "M_NOT_FOUND" {
		return forbidden("You are not in this room")
	}
	return err
}

// roomKnown reports whether this server has the room's state. A room it
// holds only an invite, a knock or a leave of (events of a room it is not
// in, kept as outliers) is not known: what its users do there goes
// through another server.
func (p *Performer) roomKnown(ctx context.Context, roomID string) (bool, error) {
	latest, _, err := p.rooms.LatestEvents(ctx, roomID)
	if errors.Is(err, rsapi.ErrRoomNotFound) {
		return false, nil
	}
	return err == nil && len(latest) > 0, err
}

// servers lists the servers to ask about a room this server is not in:
// those given (the client's via, an alias's server), then the room ID's
// own server (room versions before 12 name it), each once and never this
// server.
func (p *Performer) servers(roomID string, given []string) []spec.ServerName {
	seen := map[spec.ServerName]bool{p.key.ServerName: true}
	var out []spec.ServerName
	add := func(s string) {
		sn := spec.ServerName(s)
		if s == "" || seen[sn] {
			return
		}
		if _, _, ok := spec.ParseAndValidateServerName(sn); !ok {
			return
		}
		seen[sn] = true
		out = append(out, sn)
	}
	for _, s := range given {
		add(s)
	}
	// A domainless (v12) room ID names no server; spec.RoomID.Domain
	// panics on one, so read it only when there is a colon.
	if id, err := spec.NewRoomID(roomID); err == nil {
		for i := 0; i < len(roomID); i++ {
			if roomID[i] == ':' {
				add(string(id.Domain()))
				break
			}
		}
	}
	return out
}

// inviterServer is the server of whoever invited userID to roomID, when
// this server holds that invite and the room is not known here: the
// inviter's server is in the room, and a room version 12 room ID names no
// server to ask instead (spec: server-server API, "Joining Rooms").
func (p *Performer) inviterServer(ctx context.Context, roomID, userID string) ([]string, error) {
	m, err := p.rooms.Membership(ctx, roomID, userID)
	if errors.Is(err, rsapi.ErrRoomNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("membership of %s in %s: %w", userID, roomID, err)
	}
	if m.Membership != spec.Invite || m.EventID == "" {
		return nil, nil
	}
	evs, err := p.rooms.Events(ctx, []string{m.EventID})
	if err != nil {
		return nil, fmt.Errorf("invite %s: %w", m.EventID, err)
	}
	if len(evs) != 1 {
		return nil, nil
	}
	sender, err := spec.NewUserID(string(evs[0].SenderID()), true)
	if err != nil {
		return nil, nil // a pseudo-ID sender names no server
	}
	return []string{string(sender.Domain())}, nil
}

// maxEventBytes is the spec's limit on a whole event (client-server API,
// "Size limits").
const maxEventBytes = 65536
