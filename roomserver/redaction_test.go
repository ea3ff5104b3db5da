package roomserver_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"myelin/internal/sqldb/sqldbtest"
	"myelin/roomserver"
)

// redaction builds a redaction of target by sender after prev, as the
// remote's server signs it.
func (r *remote) redaction(sender, target string, prev gmsl.PDU) gmsl.PDU {
	r.t.Helper()
	pdus := make([]gmsl.PDU, 0, len(r.state))
	for _, p := range r.state {
		pdus = append(pdus, p)
	}
	auth, err := gmsl.NewAuthEvents(pdus)
	if err != nil {
		r.t.Fatal(err)
	}
	b := r.ver.NewEventBuilderFromProtoEvent(&gmsl.ProtoEvent{
		SenderID: sender, RoomID: r.roomID, Type: spec.MRoomRedaction, Redacts: target,
		PrevEvents: []string{prev.EventID()}, Depth: prev.Depth() + 1, Content: spec.RawJSON(`{}`),
	})
	if err := b.AddAuthEvents(auth); err != nil {
		r.t.Fatal(err)
	}
	ev, err := b.Build(time.Now(), remoteName, "ed25519:test", r.priv)
	if err != nil {
		r.t.Fatal(err)
	}
	r.events[ev.EventID()] = ev
	return ev
}

// TestInputAppliesFederatedRedactions: a redaction that comes as a PDU
// is applied when the auth rules of its version leave it to the server
// (its sender of the target's server, or with the power to redact), and
// only then; one naming an event of another room is rejected.
func TestInputAppliesFederatedRedactions(t *testing.T) {
	tests := []struct {
		name string
		// run inputs the events of the case after the room's base and a
		// join of bob (another server, power 0); it returns the event
		// that should or should not end redacted.
		run      func(t *testing.T, ctx context.Context, rs *roomserver.Roomserver, r *remote, last gmsl.PDU) (target gmsl.PDU, redaction gmsl.PDU)
		redacted bool
		// stored reports whether the redaction itself is accepted.
		stored bool
	}{
		{
			name: "own message", redacted: true, stored: true,
			run: func(t *testing.T, ctx context.Context, rs *roomserver.Roomserver, r *remote, last gmsl.PDU) (gmsl.PDU, gmsl.PDU) {
				m := r.message("hello", last)
				red := r.redaction(r.user, m.EventID(), m)
				mustInput(t, ctx, rs, r, m, red)
				return m, red
			},
		},
		{
			name: "another server's user without power", redacted: false, stored: true,
			run: func(t *testing.T, ctx context.Context, rs *roomserver.Roomserver, r *remote, last gmsl.PDU) (gmsl.PDU, gmsl.PDU) {
				m := r.message("hello", last)
				red := r.redaction(bobOther, m.EventID(), m)
				mustInput(t, ctx, rs, r, m, red)
				return m, red
			},
		},
		{
			name: "a user with the power to redact", redacted: true, stored: true,
			run: func(t *testing.T, ctx context.Context, rs *roomserver.Roomserver, r *remote, last gmsl.PDU) (gmsl.PDU, gmsl.PDU) {
				m := r.buildAs(bobOther, "m.room.message", nil, map[string]any{"body": "spam"}, r.state, last)
				red := r.redaction(r.user, m.EventID(), m)
				mustInput(t, ctx, rs, r, m, red)
				return m, red
			},
		},
		{
			name: "a redaction of a redaction", redacted: true, stored: true,
			run: func(t *testing.T, ctx context.Context, rs *roomserver.Roomserver, r *remote, last gmsl.PDU) (gmsl.PDU, gmsl.PDU) {
				m := r.message("hello", last)
				first := r.redaction(r.user, "$unknown:"+remoteName, m)
				second := r.redaction(r.user, first.EventID(), first)
				mustInput(t, ctx, rs, r, m, first, second)
				return first, second
			},
		},
		{
			name: "an event of another room", redacted: false, stored: false,
			run: func(t *testing.T, ctx context.Context, rs *roomserver.Roomserver, r *remote, last gmsl.PDU) (gmsl.PDU, gmsl.PDU) {
				other := newRemote(t, 1)
				other.priv = r.priv
				if err := other.input(ctx, rs, other.base...); err != nil {
					t.Fatalf("second room: %v", err)
				}
				m := other.message("elsewhere", other.base[len(other.base)-1])
				if err := other.input(ctx, rs, m); err != nil {
					t.Fatalf("message of the second room: %v", err)
				}
				red := r.redaction(r.user, m.EventID(), last)
				mustInput(t, ctx, rs, r, red)
				return m, red
			},
		},
	}
	for _, d := range sqldbtest.Dialects {
		for _, tc := range tests {
			t.Run(d+"/"+tc.name, func(t *testing.T) {
				ctx := context.Background()
				r := newRemote(t, 0)
				rs, _ := startRoomserverWith(t, d, roomserver.InputConfig{})
				if err := r.input(ctx, rs, r.base...); err != nil {
					t.Fatalf("room from the remote: %v", err)
				}
				bob := bobOther
				join := r.buildAs(bob, spec.MRoomMember, &bob, map[string]any{"membership": "join"}, r.state, r.base[len(r.base)-1])
				r.state[gmsl.StateKeyTuple{EventType: spec.MRoomMember, StateKey: bob}] = join
				if err := r.input(ctx, rs, join); err != nil {
					t.Fatalf("bob's join: %v", err)
				}
				target, red := tc.run(t, ctx, rs, r, join)

				evs, err := rs.Events(ctx, []string{target.EventID()})
				if err != nil || len(evs) != 1 {
					t.Fatalf("target: %d events (%v)", len(evs), err)
				}
				if evs[0].Redacted() != tc.redacted {
					t.Fatalf("target redacted %v, want %v (content %s)", evs[0].Redacted(), tc.redacted, evs[0].Content())
				}
				if tc.redacted {
					var c map[string]any
					if err := json.Unmarshal(evs[0].Content(), &c); err != nil || len(c) != 0 {
						t.Fatalf("redacted target keeps content %s", evs[0].Content())
					}
				}
				got, err := rs.Events(ctx, []string{red.EventID()})
				if err != nil {
					t.Fatal(err)
				}
				if (len(got) == 1) != tc.stored {
					t.Fatalf("redaction accepted %v, want %v", len(got) == 1, tc.stored)
				}
			})
		}
	}
}

const bobOther = "@bob:other.test"

func mustInput(t *testing.T, ctx context.Context, rs *roomserver.Roomserver, r *remote, evs ...gmsl.PDU) {
	t.Helper()
	for _, ev := range evs {
		if err := r.input(ctx, rs, ev); err != nil {
			t.Fatalf("input %s: %v", ev.Type(), err)
		}
	}
}
