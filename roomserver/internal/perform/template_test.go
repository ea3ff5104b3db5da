package perform_test

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"testing"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"myelin/internal/eventsig"
	"myelin/internal/sqldb/sqldbtest"
	rsapi "myelin/roomserver/api"
)

// TestBuildEventTemplate prepares member events for a user of another
// server, as make_join, make_knock and make_leave ask: the template
// follows the room's latest event, names the auth events the rules need,
// and is allowed (or not) against the state returned. The remote server's
// signed join, sent back as a PDU, is stored as the user's join.
func TestBuildEventTemplate(t *testing.T) {
	zed := "@zed:remote.test"
	_, remoteKey, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range sqldbtest.Dialects {
		t.Run(d, func(t *testing.T) {
			rs := startRoomserver(t, d)
			ctx := context.Background()
			public := createRoom(t, rs, "public", "10", "public")
			private := createRoom(t, rs, "private", "10", "invite")
			knock := createRoom(t, rs, "knock", "11", "knock")
			cases := []struct {
				name        string
				room        string
				membership  string
				wantErr     error // from BuildEventTemplate
				wantAllowed bool
				wantAuth    []string // types of the auth events named
				store       bool     // sign as the remote server and input the event
			}{
				{name: "join a public room", room: public, membership: spec.Join, wantAllowed: true,
					wantAuth: []string{spec.MRoomCreate, spec.MRoomJoinRules, spec.MRoomPowerLevels}, store: true},
				{name: "leave after joining", room: public, membership: spec.Leave, wantAllowed: true,
					wantAuth: []string{spec.MRoomCreate, spec.MRoomMember, spec.MRoomPowerLevels}},
				{name: "join an invite-only room", room: private, membership: spec.Join, wantAllowed: false},
				{name: "knock", room: knock, membership: spec.Knock, wantAllowed: true,
					wantAuth: []string{spec.MRoomCreate, spec.MRoomJoinRules, spec.MRoomPowerLevels}},
				{name: "a room not known here", room: "!nowhere:" + server, membership: spec.Join, wantErr: rsapi.ErrRoomNotFound},
			}
			for _, c := range cases {
				t.Run(c.name, func(t *testing.T) {
					content, _ := json.Marshal(map[string]string{"membership": c.membership})
					proto := &gmsl.ProtoEvent{SenderID: zed, RoomID: c.room, Type: spec.MRoomMember, StateKey: &zed, Content: content}
					ev, state, err := rs.BuildEventTemplate(ctx, proto)
					if c.wantErr != nil || err != nil {
						if !errors.Is(err, c.wantErr) {
							t.Fatalf("error %v, want %v", err, c.wantErr)
						}
						return
					}
					latest, depth, err := rs.LatestEvents(ctx, c.room)
					if err != nil {
						t.Fatal(err)
					}
					if prev := ev.PrevEventIDs(); len(prev) != 1 || prev[0] != latest[0] || ev.Depth() != depth+1 {
						t.Errorf("template follows %v at depth %d, want %v at %d", prev, ev.Depth(), latest, depth+1)
					}
					auth, err := gmsl.NewAuthEvents(state)
					if err != nil {
						t.Fatal(err)
					}
					allowed := gmsl.Allowed(ev, auth, eventsig.UserIDForSender) == nil
					if allowed != c.wantAllowed {
						t.Fatalf("allowed %v, want %v", allowed, c.wantAllowed)
					}
					if !allowed {
						return
					}
					named := map[string]bool{}
					for _, s := range state {
						for _, id := range proto.AuthEvents.([]string) {
							if s.EventID() == id {
								named[s.Type()] = true
							}
						}
					}
					for _, typ := range c.wantAuth {
						if !named[typ] {
							t.Errorf("the template's auth events %v do not name the %s event", proto.AuthEvents, typ)
						}
					}
					if !c.store {
						return
					}
					// What the remote server does with the template: build
					// and sign it as itself, and send it back.
					verImpl := gmsl.MustGetRoomVersion("10")
					signed, err := verImpl.NewEventBuilderFromProtoEvent(proto).Build(ev.OriginServerTS().Time(), "remote.test", "ed25519:1", remoteKey)
					if err != nil {
						t.Fatal(err)
					}
					if _, err := rs.Input(ctx, &rsapi.InputRequest{RoomID: c.room, Events: []rsapi.InputEvent{{PDU: signed.JSON()}}}); err != nil {
						t.Fatalf("input the remote join: %v", err)
					}
					if m, _ := membership(t, rs, c.room, zed); m != spec.Join {
						t.Fatalf("zed is %q after its join was stored", m)
					}
				})
			}
		})
	}
}
