package roomserver_test

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"myelin/internal/poll"
	"myelin/internal/sqldb/sqldbtest"
	"myelin/roomserver"
	rsapi "myelin/roomserver/api"
)

// joinRemote makes rs take in r's room as a server whose user bob joins
// it now (send_join's state and auth chain), with no history before the
// join; it returns the join.
func joinRemote(t *testing.T, ctx context.Context, rs *roomserver.Roomserver, r *remote, keys keysOf, last gmsl.PDU) gmsl.PDU {
	t.Helper()
	join, req := buildJoin(t, r, keys, last)
	if _, err := rs.Input(ctx, req); err != nil {
		t.Fatalf("join: %v", err)
	}
	return join
}

// TestPerformBackfill: a room joined through another server has no
// history here; each backfill stores a batch of older events, with the
// state before each (fetched at the batch's oldest end), leaving the
// room's current state and forward extremities alone, until the create
// event is reached. A room created here, or whose servers have nothing,
// asks no one (again).
func TestPerformBackfill(t *testing.T) {
	tests := []struct {
		name      string
		served    bool // the remote serves its history
		local     bool // the room was created here
		batch     int
		wantCalls int // backfills until nothing more comes
		wantGaps  int // states fetched at a batch's oldest end
	}{
		{name: "linear history in batches", served: true, batch: 10, wantCalls: 4, wantGaps: 3},
		{name: "one batch", served: true, batch: 100, wantCalls: 1},
		{name: "nothing served", batch: 10, wantCalls: 1},
		{name: "room created here", local: true, batch: 10, wantCalls: 1},
	}
	for _, d := range sqldbtest.Dialects {
		for i, tt := range tests {
			t.Run(d+"/"+tt.name, func(t *testing.T) {
				ctx := context.Background()
				r := newRemote(t, i)
				keys := keysOf{remoteName: r.priv.Public().(ed25519.PublicKey)}
				f := &testFetcher{remotes: map[string]*remote{}}
				if tt.served {
					f.remotes[r.roomID] = r
				}
				rs, _ := startRoomserverWith(t, d, roomserver.InputConfig{Fetcher: f, KeyRing: keys})
				roomID := r.roomID
				if tt.local {
					roomID = createRoom(t, rs, i)
				}

				// History: 25 messages, a topic change every 10, and carol,
				// who joins, speaks and leaves before bob joins: her
				// message fails against the room's state now, not against
				// the state before it, so it is history, not soft-failed.
				empty := ""
				last := r.base[len(r.base)-1]
				var history []gmsl.PDU
				topicAt := map[string]string{} // message -> topic before it
				topic := ""
				carol := "@carol:" + remoteName
				member := func(membership string) {
					last = r.buildAs(carol, spec.MRoomMember, &carol, map[string]any{"membership": membership}, r.state, last)
					r.state[gmsl.StateKeyTuple{EventType: spec.MRoomMember, StateKey: carol}] = last
					history = append(history, last)
				}
				for k := 0; k < 25; k++ {
					switch k {
					case 3:
						member("join")
					case 4:
						last = r.buildAs(carol, "m.room.message", nil, map[string]any{"body": "carol was here"}, r.state, last)
						topicAt[last.EventID()] = topic
						history = append(history, last)
					case 5:
						member("leave")
					}
					if k%10 == 0 {
						topic = fmt.Sprintf("topic %d", k)
						ev := r.build(spec.MRoomTopic, &empty, map[string]any{"topic": topic}, r.state, last)
						r.state[gmsl.StateKeyTuple{EventType: spec.MRoomTopic}] = ev
						history = append(history, ev)
						last = ev
					}
					last = r.message(fmt.Sprintf("msg %d", k), last)
					topicAt[last.EventID()] = topic
					history = append(history, last)
				}
				var join gmsl.PDU
				if !tt.local {
					join = joinRemote(t, ctx, rs, r, keys, last)
				}

				calls, stored := 0, 0
				var res *rsapi.BackfillResponse
				for calls < 10 {
					var err error
					res, err = rs.PerformBackfill(ctx, &rsapi.BackfillRequest{RoomID: roomID, Limit: tt.batch})
					if err != nil {
						t.Fatalf("backfill %d: %v", calls, err)
					}
					calls++
					stored += res.Stored
					if res.Complete || res.Stored == 0 {
						break
					}
				}
				if calls != tt.wantCalls {
					t.Fatalf("%d backfills until nothing more came, want %d", calls, tt.wantCalls)
				}
				// The state at each gap is asked for by IDs: this server
				// has most of it, and fetches the rest one by one.
				if n, full := f.stateIDs.Load(), f.states.Load(); n != int32(tt.wantGaps) || full != 0 {
					t.Fatalf("%d states fetched by IDs and %d whole, want %d and none", n, full, tt.wantGaps)
				}
				fetches := f.calls.Load()
				// Asking again asks no one: the room is complete, or its
				// servers had nothing a moment ago.
				again, err := rs.PerformBackfill(ctx, &rsapi.BackfillRequest{RoomID: roomID, Limit: tt.batch})
				if err != nil || again.Stored != 0 || again.Complete != res.Complete || f.calls.Load() != fetches {
					t.Fatalf("backfill again: %+v %v, %d fetches more", again, err, f.calls.Load()-fetches)
				}
				if !tt.served {
					if res.Complete != tt.local || stored != 0 {
						t.Fatalf("got %+v, stored %d", res, stored)
					}
					if tt.local && fetches != 0 {
						t.Fatalf("a room created here made %d fetches", fetches)
					}
					return
				}
				if !res.Complete {
					t.Fatal("backfill never reached the create event")
				}
				if want := len(r.base) + len(history); stored != want {
					t.Fatalf("stored %d events, want %d", stored, want)
				}
				// History is not news: the room still ends at the join,
				// with its current state.
				latest, _, err := rs.LatestEvents(ctx, roomID)
				if err != nil || len(latest) != 1 || latest[0] != join.EventID() {
					t.Fatalf("forward extremities %v (%v), want the join", latest, err)
				}
				cur, err := rs.StateEvent(ctx, roomID, spec.MRoomTopic, "")
				if err != nil || cur.EventID() != r.state[gmsl.StateKeyTuple{EventType: spec.MRoomTopic}].EventID() {
					t.Fatalf("current topic changed: %v", err)
				}
				if m, err := rs.Membership(ctx, roomID, "@bob:joiner.test"); err != nil || m.Membership != "join" {
					t.Fatalf("bob's membership: %+v %v", m, err)
				}
				// Each historical event has the state before it.
				for _, ev := range history {
					want, ok := topicAt[ev.EventID()]
					if !ok {
						continue
					}
					st, err := rs.StateBefore(ctx, ev.EventID(), gmsl.StateKeyTuple{EventType: spec.MRoomTopic})
					if err != nil || len(st) != 1 {
						t.Fatalf("topic before %s: %v %v", ev.EventID(), st, err)
					}
					var c struct{ Topic string }
					_ = json.Unmarshal(st[0].Content(), &c)
					if c.Topic != want {
						t.Fatalf("topic before %s: %q, want %q", ev.EventID(), c.Topic, want)
					}
				}
			})
		}
	}
}

// TestPerformBackfillOnePerRoom: while a backfill of a room waits on a
// remote, another caller for the same room waits for it (until its own
// context ends) instead of asking the remote again; the first caller
// finishes its backfill.
func TestPerformBackfillOnePerRoom(t *testing.T) {
	for _, d := range sqldbtest.Dialects {
		t.Run(d, func(t *testing.T) {
			ctx := context.Background()
			r := newRemote(t, 0)
			keys := keysOf{remoteName: r.priv.Public().(ed25519.PublicKey)}
			f := &testFetcher{remotes: map[string]*remote{r.roomID: r}, block: make(chan struct{})}
			rs, _ := startRoomserverWith(t, d, roomserver.InputConfig{Fetcher: f, KeyRing: keys})
			last := r.base[len(r.base)-1]
			for k := 0; k < 5; k++ {
				last = r.message(fmt.Sprintf("msg %d", k), last)
			}
			joinRemote(t, ctx, rs, r, keys, last)

			type answer struct {
				res *rsapi.BackfillResponse
				err error
			}
			first := make(chan answer, 1)
			go func() {
				res, err := rs.PerformBackfill(ctx, &rsapi.BackfillRequest{RoomID: r.roomID, Limit: 100})
				first <- answer{res, err}
			}()
			poll.Until(t, 5*time.Second, func() error {
				if f.backfills.Load() == 0 {
					return errors.New("the first backfill has not asked the remote yet")
				}
				return nil
			})
			sctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
			defer cancel()
			second := make(chan answer, 1)
			go func() {
				res, err := rs.PerformBackfill(sctx, &rsapi.BackfillRequest{RoomID: r.roomID, Limit: 100})
				second <- answer{res, err}
			}()
			select {
			case a := <-second:
				if !errors.Is(a.err, context.DeadlineExceeded) {
					t.Fatalf("second caller: %+v %v, want it to wait until its deadline", a.res, a.err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the second caller did not return at its deadline: it is backfilling itself")
			}
			if n := f.backfills.Load(); n != 1 {
				t.Fatalf("%d backfill requests to the remote, want 1", n)
			}
			close(f.block)
			a := <-first
			if a.err != nil || a.res.Stored != len(r.base)+5 || !a.res.Complete {
				t.Fatalf("first caller: %+v %v", a.res, a.err)
			}
		})
	}
}
