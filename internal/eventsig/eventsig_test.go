package eventsig

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"testing"
	"time"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
)

// keys verifies signatures of the servers it knows.
type keys map[string]ed25519.PublicKey

const keyID = "ed25519:k"

func (k keys) VerifyJSONs(_ context.Context, reqs []gmsl.VerifyJSONRequest) ([]gmsl.VerifyJSONResult, error) {
	out := make([]gmsl.VerifyJSONResult, len(reqs))
	for i, r := range reqs {
		pub, ok := k[string(r.ServerName)]
		if !ok {
			out[i].Error = errors.New("unknown server")
			continue
		}
		out[i].Error = gmsl.VerifyJSON(string(r.ServerName), keyID, pub, r.Message)
	}
	return out, nil
}

// TestVerifyThirdPartyInvite: an invite built from a third-party invite
// needs the invited user's server's signature, not its sender's; every
// other event still needs its sender's.
func TestVerifyThirdPartyInvite(t *testing.T) {
	pubInviter, privInviter, _ := ed25519.GenerateKey(rand.Reader)
	pubInvitee, privInvitee, _ := ed25519.GenerateKey(rand.Reader)
	ring := keys{"inviter.test": pubInviter, "invitee.test": pubInvitee}
	ver := gmsl.MustGetRoomVersion(gmsl.RoomVersionV10)
	build := func(t *testing.T, content map[string]any, signer string, key ed25519.PrivateKey) gmsl.PDU {
		t.Helper()
		stateKey := "@bob:invitee.test"
		b := ver.NewEventBuilderFromProtoEvent(&gmsl.ProtoEvent{
			SenderID: "@alice:inviter.test", RoomID: "!r:inviter.test", Type: "m.room.member", StateKey: &stateKey,
			PrevEvents: []string{}, AuthEvents: []string{}, Depth: 3,
		})
		if err := b.SetContent(content); err != nil {
			t.Fatal(err)
		}
		// Build signs as the server it is given.
		ev, err := b.Build(time.Now(), spec.ServerName(signer), keyID, key)
		if err != nil {
			t.Fatal(err)
		}
		pdu, err := ver.NewEventFromTrustedJSON(ev.JSON(), false)
		if err != nil {
			t.Fatal(err)
		}
		return pdu
	}
	thirdParty := map[string]any{"membership": "invite", "third_party_invite": map[string]any{
		"display_name": "b...@example.com", "signed": map[string]any{"mxid": "@bob:invitee.test", "token": "t"},
	}}
	plain := map[string]any{"membership": "invite"}
	tests := []struct {
		name    string
		content map[string]any
		signer  string
		key     ed25519.PrivateKey
		ok      bool
	}{
		{"third-party invite signed by the invitee's server", thirdParty, "invitee.test", privInvitee, true},
		{"plain invite signed by the invitee's server only", plain, "invitee.test", privInvitee, false},
		{"third-party invite signed by the inviter's server only", thirdParty, "inviter.test", privInviter, false},
		{"third-party invite with a forged signature", thirdParty, "invitee.test", privInviter, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev := build(t, tt.content, tt.signer, tt.key)
			err := Verify(context.Background(), ev, ring)
			if (err == nil) != tt.ok {
				t.Fatalf("Verify: %v, want ok %v", err, tt.ok)
			}
			if all := VerifyAll(context.Background(), []gmsl.PDU{ev}, ring); (all[0] == nil) != tt.ok {
				t.Fatalf("VerifyAll: %v, want ok %v", all[0], tt.ok)
			}
		})
	}
}

// TestVerifyAllOrder: checked on several goroutines, each event's result
// is still its own, in its place, for every count of events.
func TestVerifyAllOrder(t *testing.T) {
	pubGood, privGood, _ := ed25519.GenerateKey(rand.Reader)
	_, privForger, _ := ed25519.GenerateKey(rand.Reader)
	ring := keys{"good.test": pubGood}
	ver := gmsl.MustGetRoomVersion(gmsl.RoomVersionV10)
	msg := func(t *testing.T, i int, key ed25519.PrivateKey) gmsl.PDU {
		t.Helper()
		b := ver.NewEventBuilderFromProtoEvent(&gmsl.ProtoEvent{
			SenderID: "@alice:good.test", RoomID: "!r:good.test", Type: "m.room.message",
			PrevEvents: []string{}, AuthEvents: []string{}, Depth: int64(i + 1),
		})
		if err := b.SetContent(map[string]any{"body": i}); err != nil {
			t.Fatal(err)
		}
		ev, err := b.Build(time.Now(), "good.test", keyID, key)
		if err != nil {
			t.Fatal(err)
		}
		return ev
	}
	for _, n := range []int{0, 1, 3, 8, 50} {
		t.Run(fmt.Sprintf("%d events", n), func(t *testing.T) {
			evs := make([]gmsl.PDU, n)
			forged := make([]bool, n)
			for i := range evs {
				// A forged signature now and then, at places no split
				// of the work lines up with.
				forged[i] = i%3 == 1 || i%7 == 0
				key := privGood
				if forged[i] {
					key = privForger
				}
				evs[i] = msg(t, i, key)
			}
			errs := VerifyAll(context.Background(), evs, ring)
			if len(errs) != n {
				t.Fatalf("%d results, want %d", len(errs), n)
			}
			for i, err := range errs {
				if (err != nil) != forged[i] {
					t.Errorf("event %d: %v, forged %v", i, err, forged[i])
				}
			}
		})
	}
}
