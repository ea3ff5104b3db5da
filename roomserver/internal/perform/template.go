package perform

import (
	"context"
	"encoding/json"
	"fmt"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"
)

// BuildEventTemplate completes proto, an event another server's user asks
// this server to prepare (make_join, make_leave, make_knock), from the
// room's current state: prev_events are the room's latest events, depth
// one more than theirs, auth_events what the auth rules need. It returns
// the event built and signed here, and the state it was authorised
// against, as gomatrixserverlib's HandleMakeJoin and HandleMakeLeave take
// it (BuildEventTemplate). Nothing is stored: the other server sends the
// event back, signed, through the input.
func (p *Performer) BuildEventTemplate(ctx context.Context, proto *gmsl.ProtoEvent) (gmsl.PDU, []gmsl.PDU, error) {
	version, err := p.rooms.RoomVersion(ctx, proto.RoomID)
	if err != nil {
		return nil, nil, fmt.Errorf("template in %s: %w", proto.RoomID, err)
	}
	verImpl, err := gmsl.GetRoomVersion(version)
	if err != nil {
		return nil, nil, refuse("M_UNSUPPORTED_ROOM_VERSION", "room version %q is not supported", version)
	}
	if proto.Type == spec.MRoomMember && proto.StateKey != nil && *proto.StateKey == proto.SenderID &&
		gjson.GetBytes(proto.Content, "membership").String() == spec.Join {
		// A join of a restricted room names the member of this server
		// who vouches for it (make_join; spec: "Restricted rooms").
		via, err := p.joinAuthoriser(ctx, proto.RoomID, proto.SenderID)
		if err != nil {
			return nil, nil, err
		}
		if via != "" {
			content, err := withAuthoriser(json.RawMessage(proto.Content), via)
			if err != nil {
				return nil, nil, err
			}
			proto.Content = spec.RawJSON(content)
		}
	}
	prev, depth, err := p.rooms.LatestEvents(ctx, proto.RoomID)
	if err != nil {
		return nil, nil, fmt.Errorf("latest events of %s: %w", proto.RoomID, err)
	}
	proto.PrevEvents = prev
	proto.Depth = min(depth, 1<<63-2) + 1
	needed, err := gmsl.StateNeededForProtoEvent(proto)
	if err != nil {
		return nil, nil, refuse("M_BAD_JSON", "%v", err)
	}
	tuples := needed.Tuples()
	if len(tuples) == 0 {
		return nil, nil, refuse("M_BAD_JSON", "event %s needs no auth events", proto.Type) // only a create event does
	}
	state, err := p.rooms.CurrentState(ctx, proto.RoomID, tuples...)
	if err != nil {
		return nil, nil, fmt.Errorf("auth state of %s: %w", proto.RoomID, err)
	}
	auth, err := gmsl.NewAuthEvents(state)
	if err != nil {
		return nil, nil, fmt.Errorf("auth state of %s: %w", proto.RoomID, err)
	}
	b := verImpl.NewEventBuilderFromProtoEvent(proto)
	if err := b.AddAuthEvents(auth); err != nil {
		return nil, nil, refuse("M_BAD_JSON", "%v", err)
	}
	// The template the other server gets is proto: it must name the auth
	// events the builder chose.
	proto.AuthEvents = b.AuthEvents
	ev, err := b.Build(p.now(), p.key.ServerName, p.key.KeyID, p.key.Private)
	if err != nil {
		return nil, nil, refuse("M_BAD_JSON", "%v", err)
	}
	if verImpl.EventFormat() == gmsl.EventFormatV1 {
		// Rooms v1 and v2 name prev and auth events as [id, hashes]
		// pairs: the template must carry them so, as the event built
		// here does, or the other server's event will not parse.
		var refs struct {
			Prev json.RawMessage `json:"prev_events"`
			Auth json.RawMessage `json:"auth_events"`
		}
		if err := json.Unmarshal(ev.JSON(), &refs); err != nil {
			return nil, nil, fmt.Errorf("template in %s: %w", proto.RoomID, err)
		}
		proto.PrevEvents, proto.AuthEvents = refs.Prev, refs.Auth
	}
	return ev, state, nil
}
