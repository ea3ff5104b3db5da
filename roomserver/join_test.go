package roomserver_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"myelin/internal/sqldb/sqldbtest"
	"myelin/roomserver"
	rsapi "myelin/roomserver/api"
)

// keysOf is a KeyRing that knows the keys of a few servers, as the
// federationapi's would once it fetched them.
type keysOf map[spec.ServerName]ed25519.PublicKey

func (k keysOf) VerifyJSONs(_ context.Context, reqs []gmsl.VerifyJSONRequest) ([]gmsl.VerifyJSONResult, error) {
	out := make([]gmsl.VerifyJSONResult, len(reqs))
	for i, r := range reqs {
		pub, ok := k[r.ServerName]
		if !ok {
			out[i].Error = fmt.Errorf("no key of %s", r.ServerName)
			continue
		}
		out[i].Error = gmsl.VerifyJSON(string(r.ServerName), "ed25519:test", pub, r.Message)
	}
	return out, nil
}

// TestInputTakesInAJoinedRoom: the join of a room this server is not in
// comes with the state and auth chain the resident server answered; the
// input checks them (signatures, auth) and stores the room with that
// state, or refuses the join and stores nothing.
func TestInputTakesInAJoinedRoom(t *testing.T) {
	tests := []struct {
		name     string
		noKeys   bool
		forge    bool   // the state is signed with a key the KeyRing does not know
		joinRule string // of the room the resident server describes
		wantErr  string
	}{
		{name: "a public room", joinRule: "public"},
		{name: "forged state", joinRule: "public", forge: true, wantErr: "M_BAD_JSON"},
		{name: "an invite-only room", joinRule: "invite", wantErr: "M_FORBIDDEN"},
		{name: "no KeyRing", joinRule: "public", noKeys: true, wantErr: "M_UNKNOWN"},
	}
	for _, d := range sqldbtest.Dialects {
		for i, tt := range tests {
			t.Run(d+"/"+tt.name, func(t *testing.T) {
				ctx := context.Background()
				r := newRemote(t, i)
				_, forged, _ := ed25519.GenerateKey(rand.Reader)
				if tt.forge {
					r.priv = forged
				}
				if tt.joinRule != "public" {
					empty := ""
					r.state[gmsl.StateKeyTuple{EventType: spec.MRoomJoinRules}] = r.build(spec.MRoomJoinRules, &empty,
						map[string]any{"join_rule": tt.joinRule}, r.state, r.base[len(r.base)-1])
				}
				keys := keysOf{remoteName: r.priv.Public().(ed25519.PublicKey)}
				if tt.forge {
					keys[remoteName] = ed25519.PublicKey(make([]byte, ed25519.PublicKeySize))
				}
				var in roomserver.InputConfig
				if !tt.noKeys {
					in.KeyRing = keys
				}
				rs, _ := startRoomserverWith(t, d, in)

				// The join of bob, a user of the joining server, after the
				// last event of the state.
				var last gmsl.PDU
				for _, ev := range r.state {
					if last == nil || ev.Depth() > last.Depth() {
						last = ev
					}
				}
				join, req := buildJoin(t, r, keys, last)
				bob := *join.StateKey()
				_, err := rs.Input(ctx, req)
				if tt.wantErr != "" {
					var bad *rsapi.BadEventError
					var na *rsapi.NotAllowedError
					switch {
					case tt.wantErr == "M_FORBIDDEN" && errors.As(err, &na):
					case errors.As(err, &bad) && bad.Code == tt.wantErr:
					default:
						t.Fatalf("got %v, want %s", err, tt.wantErr)
					}
					if _, err := rs.RoomVersion(ctx, r.roomID); !errors.Is(err, rsapi.ErrRoomNotFound) {
						t.Fatalf("a refused join stored the room (%v)", err)
					}
					return
				}
				if err != nil {
					t.Fatalf("join: %v", err)
				}
				if m, err := rs.Membership(ctx, r.roomID, bob); err != nil || m.Membership != "join" || m.EventID != join.EventID() {
					t.Fatalf("bob's membership: %+v %v", m, err)
				}
				cur, err := rs.CurrentState(ctx, r.roomID)
				if err != nil || len(cur) != len(r.state)+1 {
					t.Fatalf("current state: %d events (%v), want %d", len(cur), err, len(r.state)+1)
				}
				// The room is the server's own now: a local event follows.
				if _, err := rs.Input(ctx, &rsapi.InputRequest{RoomID: r.roomID, Events: []rsapi.InputEvent{
					proto(bob, "m.room.message", nil, map[string]any{"body": "hello"}),
				}}); err != nil {
					t.Fatalf("a message after the join: %v", err)
				}
			})
		}
	}
}

// buildJoin builds the join of bob, a user of the joining server (which
// signs it with its own key, added to keys), to r's room after last, and
// the input request of a join through r: the event with r's state and
// auth chain, as send_join answers them.
func buildJoin(t *testing.T, r *remote, keys keysOf, last gmsl.PDU) (gmsl.PDU, *rsapi.InputRequest) {
	t.Helper()
	bob := "@bob:joiner.test"
	_, bobKey, _ := ed25519.GenerateKey(rand.Reader)
	keys["joiner.test"] = bobKey.Public().(ed25519.PublicKey)
	var state, chain []json.RawMessage
	pdus := make([]gmsl.PDU, 0, len(r.state))
	for _, ev := range r.state {
		state = append(state, json.RawMessage(ev.JSON()))
		pdus = append(pdus, ev)
	}
	for _, ev := range r.base {
		chain = append(chain, json.RawMessage(ev.JSON()))
	}
	b := r.ver.NewEventBuilderFromProtoEvent(&gmsl.ProtoEvent{
		SenderID: bob, RoomID: r.roomID, Type: spec.MRoomMember, StateKey: &bob,
		PrevEvents: []string{last.EventID()}, Depth: last.Depth() + 1, Content: []byte(`{"membership":"join"}`),
	})
	auth, _ := gmsl.NewAuthEvents(pdus)
	if err := b.AddAuthEvents(auth); err != nil {
		t.Fatal(err)
	}
	join, err := b.Build(time.Now(), "joiner.test", "ed25519:test", bobKey)
	if err != nil {
		t.Fatal(err)
	}
	return join, &rsapi.InputRequest{
		RoomID: r.roomID, RoomVersion: string(r.ver.Version()), Origin: remoteName,
		Events: []rsapi.InputEvent{{PDU: json.RawMessage(join.JSON())}},
		State:  state, AuthChain: chain,
	}
}
