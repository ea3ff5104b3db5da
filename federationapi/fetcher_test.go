package federationapi

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	rsapi "myelin/roomserver/api"
)

// oneKey verifies signatures of remote.test with one key.
type oneKey struct {
	id  gmsl.KeyID
	pub ed25519.PublicKey
}

func (k oneKey) VerifyJSONs(_ context.Context, reqs []gmsl.VerifyJSONRequest) ([]gmsl.VerifyJSONResult, error) {
	out := make([]gmsl.VerifyJSONResult, len(reqs))
	for i, r := range reqs {
		if r.ServerName != "remote.test" {
			out[i].Error = errors.New("unknown server")
			continue
		}
		out[i].Error = gmsl.VerifyJSON(string(r.ServerName), k.id, k.pub, r.Message)
	}
	return out, nil
}

// TestFetcherCheck: what a server answers reaches the roomserver only when
// every event parses in the room's version, is unchanged, of the room and
// signed by its sender's server, and there are no more than asked for.
func TestFetcherCheck(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	_, other, _ := ed25519.GenerateKey(rand.Reader)
	const keyID = "ed25519:k"
	x := &Fetcher{self: "local.test", keys: oneKey{keyID, pub}}
	for _, version := range []gmsl.RoomVersion{gmsl.RoomVersionV10, gmsl.RoomVersionV12} {
		t.Run(string(version), func(t *testing.T) {
			ver := gmsl.MustGetRoomVersion(version)
			roomID := "!room:remote.test"
			if version == gmsl.RoomVersionV12 {
				roomID = "!" + strings.Repeat("A", 43)
			}
			build := func(body string, key ed25519.PrivateKey) json.RawMessage {
				b := ver.NewEventBuilderFromProtoEvent(&gmsl.ProtoEvent{
					SenderID: "@alice:remote.test", RoomID: roomID, Type: "m.room.message",
					PrevEvents: []string{}, AuthEvents: []string{}, Depth: 3,
				})
				if err := b.SetContent(map[string]string{"body": body}); err != nil {
					t.Fatal(err)
				}
				ev, err := b.Build(time.Now(), "remote.test", keyID, key)
				if err != nil {
					t.Fatal(err)
				}
				return ev.JSON()
			}
			good := build("hello", priv)
			changed := func() json.RawMessage {
				var m map[string]any
				_ = json.Unmarshal(good, &m)
				m["content"] = map[string]string{"body": "forged"}
				b, _ := json.Marshal(m)
				return b
			}()
			scope := rsapi.FetchScope{RoomID: roomID, RoomVersion: version}
			tests := []struct {
				name  string
				raws  []json.RawMessage
				scope rsapi.FetchScope
				max   int
				ok    bool
			}{
				{"signed and unchanged", []json.RawMessage{good, build("again", priv)}, scope, 2, true},
				{"content changed", []json.RawMessage{good, changed}, scope, 2, false},
				{"signed with another key", []json.RawMessage{build("x", other)}, scope, 2, false},
				{"not JSON", []json.RawMessage{json.RawMessage(`{"type":`)}, scope, 2, false},
				{"more than asked", []json.RawMessage{good, good}, scope, 1, false},
				{"another room", []json.RawMessage{good}, rsapi.FetchScope{RoomID: "!other:remote.test", RoomVersion: version}, 2, false},
				{"unknown room version", []json.RawMessage{good}, rsapi.FetchScope{RoomID: roomID, RoomVersion: "nope"}, 2, false},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					raws := make([]spec.RawJSON, len(tt.raws))
					for i, r := range tt.raws {
						raws[i] = spec.RawJSON(r)
					}
					evs, err := x.check(context.Background(), tt.scope, raws, tt.max)
					if tt.ok != (err == nil) {
						t.Fatalf("got %d events, %v; want ok=%v", len(evs), err, tt.ok)
					}
					if tt.ok && len(evs) != len(raws) {
						t.Fatalf("got %d events of %d", len(evs), len(raws))
					}
				})
			}
		})
	}
}
