package roomserver_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"myelin/internal/poll"
	"myelin/internal/sqldb"
	"myelin/internal/sqldb/sqldbtest"
	"myelin/roomserver"
	rsapi "myelin/roomserver/api"
	"myelin/roomserver/storage"
)

const remoteName = "remote.test"

// remote is a fake remote homeserver: it builds and signs the events of
// one room with its own key, as a real server would, and keeps every
// event it built so that a testFetcher can serve them.
type remote struct {
	t      testing.TB
	ver    gmsl.IRoomVersion
	priv   ed25519.PrivateKey
	roomID string
	user   string
	events map[string]gmsl.PDU
	before map[string][]gmsl.PDU           // the state before each event
	base   []gmsl.PDU                      // create, join, power levels, join rules
	state  map[gmsl.StateKeyTuple]gmsl.PDU // the state after base
}

func newRemote(t testing.TB, n int) *remote {
	t.Helper()
	return newRemoteIn(t, n, gmsl.RoomVersionV10)
}

// newRemoteIn is newRemote for a room of the version given.
func newRemoteIn(t testing.TB, n int, version gmsl.RoomVersion) *remote {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	r := &remote{
		t: t, ver: gmsl.MustGetRoomVersion(version), priv: priv,
		roomID: fmt.Sprintf("!fed%d:%s", n, remoteName), user: "@alice:" + remoteName,
		events: map[string]gmsl.PDU{}, before: map[string][]gmsl.PDU{}, state: map[gmsl.StateKeyTuple]gmsl.PDU{},
	}
	empty := ""
	var prev []gmsl.PDU
	for _, e := range []struct {
		typ     string
		sk      *string
		content any
	}{
		{spec.MRoomCreate, &empty, map[string]any{"creator": r.user, "room_version": string(version)}},
		{spec.MRoomMember, &r.user, map[string]any{"membership": "join"}},
		{spec.MRoomPowerLevels, &empty, map[string]any{"users": map[string]int{r.user: 100}}},
		{spec.MRoomJoinRules, &empty, map[string]any{"join_rule": "public"}},
	} {
		ev := r.build(e.typ, e.sk, e.content, r.state, prev...)
		r.state[gmsl.StateKeyTuple{EventType: e.typ, StateKey: *e.sk}] = ev
		r.base = append(r.base, ev)
		prev = []gmsl.PDU{ev}
	}
	return r
}

// build signs an event of r.user after prevs, authorised by state.
func (r *remote) build(typ string, sk *string, content any, state map[gmsl.StateKeyTuple]gmsl.PDU, prevs ...gmsl.PDU) gmsl.PDU {
	r.t.Helper()
	return r.buildAs(r.user, typ, sk, content, state, prevs...)
}

// buildAs is build for another sender of the remote's server.
func (r *remote) buildAs(sender, typ string, sk *string, content any, state map[gmsl.StateKeyTuple]gmsl.PDU, prevs ...gmsl.PDU) gmsl.PDU {
	r.t.Helper()
	var depth int64
	prevIDs := []string{}
	for _, p := range prevs {
		prevIDs = append(prevIDs, p.EventID())
		depth = max(depth, p.Depth())
	}
	raw, err := json.Marshal(content)
	if err != nil {
		r.t.Fatal(err)
	}
	b := r.ver.NewEventBuilderFromProtoEvent(&gmsl.ProtoEvent{
		SenderID: sender, RoomID: r.roomID, Type: typ, StateKey: sk,
		PrevEvents: prevIDs, Depth: depth + 1, Content: raw,
	})
	pdus := make([]gmsl.PDU, 0, len(state))
	for _, p := range state {
		pdus = append(pdus, p)
	}
	auth, err := gmsl.NewAuthEvents(pdus)
	if err != nil {
		r.t.Fatal(err)
	}
	if err := b.AddAuthEvents(auth); err != nil {
		r.t.Fatal(err)
	}
	ev, err := b.Build(time.Now(), remoteName, "ed25519:test", r.priv)
	if err != nil {
		r.t.Fatal(err)
	}
	r.events[ev.EventID()] = ev
	r.before[ev.EventID()] = pdus
	return ev
}

func (r *remote) message(body string, prevs ...gmsl.PDU) gmsl.PDU {
	return r.build("m.room.message", nil, map[string]any{"msgtype": "m.text", "body": body}, r.state, prevs...)
}

// input sends complete events to rs, as the federationapi will.
func (r *remote) input(ctx context.Context, rs *roomserver.Roomserver, evs ...gmsl.PDU) error {
	req := &rsapi.InputRequest{RoomID: r.roomID, RoomVersion: string(r.ver.Version()), Origin: remoteName}
	for _, e := range evs {
		req.Events = append(req.Events, rsapi.InputEvent{PDU: json.RawMessage(e.JSON())})
	}
	_, err := rs.Input(ctx, req)
	return err
}

// sendLocal sends a message into the remote's room as a local event of
// the roomserver, as clientapi does once the room is here.
func (r *remote) sendLocal(ctx context.Context, rs *roomserver.Roomserver, body string) error {
	_, err := rs.Input(ctx, &rsapi.InputRequest{RoomID: r.roomID, Events: []rsapi.InputEvent{
		proto(r.user, "m.room.message", nil, map[string]any{"body": body}),
	}})
	return err
}

// testFetcher serves the events of remotes, as the federationapi will
// serve those of real servers. While block is open, calls wait for it.
type testFetcher struct {
	remotes   map[string]*remote
	block     chan struct{}
	calls     atomic.Int32
	backfills atomic.Int32
	stateIDs  atomic.Int32
	states    atomic.Int32 // full states (StateBefore)
}

func (f *testFetcher) wait(ctx context.Context) error {
	f.calls.Add(1)
	if f.block == nil {
		return nil
	}
	select {
	case <-f.block:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// MissingEvents walks prev_events back from latest, stopping at earliest,
// as /get_missing_events does.
func (f *testFetcher) MissingEvents(ctx context.Context, scope rsapi.FetchScope, earliest, latest []string, limit int) ([]gmsl.PDU, error) {
	if err := f.wait(ctx); err != nil {
		return nil, err
	}
	r := f.remotes[scope.RoomID]
	if r == nil {
		return nil, errors.New("unknown room")
	}
	seen := map[string]bool{}
	for _, id := range append(earliest, latest...) {
		seen[id] = true
	}
	var out []gmsl.PDU
	todo := append([]string(nil), latest...)
	for len(todo) > 0 && len(out) < limit {
		ev := r.events[todo[0]]
		todo = todo[1:]
		if ev == nil {
			continue
		}
		for _, p := range ev.PrevEventIDs() {
			if !seen[p] && r.events[p] != nil {
				seen[p] = true
				out = append(out, r.events[p])
				todo = append(todo, p)
			}
		}
	}
	return out, nil
}

// AuthChain walks auth_events back from eventID.
func (f *testFetcher) AuthChain(ctx context.Context, scope rsapi.FetchScope, eventID string) ([]gmsl.PDU, error) {
	if err := f.wait(ctx); err != nil {
		return nil, err
	}
	r := f.remotes[scope.RoomID]
	if r == nil || r.events[eventID] == nil {
		return nil, errors.New("unknown event")
	}
	seen := map[string]bool{}
	var out []gmsl.PDU
	todo := r.events[eventID].AuthEventIDs()
	for len(todo) > 0 {
		id := todo[0]
		todo = todo[1:]
		if seen[id] || r.events[id] == nil {
			continue
		}
		seen[id] = true
		out = append(out, r.events[id])
		todo = append(todo, r.events[id].AuthEventIDs()...)
	}
	return out, nil
}

// Event serves one event.
func (f *testFetcher) Event(ctx context.Context, scope rsapi.FetchScope, eventID string) (gmsl.PDU, error) {
	if err := f.wait(ctx); err != nil {
		return nil, err
	}
	r := f.remotes[scope.RoomID]
	if r == nil || r.events[eventID] == nil {
		return nil, errors.New("unknown event")
	}
	return r.events[eventID], nil
}

// StateBefore serves the state the remote built eventID on, with its
// auth chain.
func (f *testFetcher) StateBefore(ctx context.Context, scope rsapi.FetchScope, eventID string) ([]gmsl.PDU, []gmsl.PDU, error) {
	f.states.Add(1)
	r := f.remotes[scope.RoomID]
	if r == nil || r.events[eventID] == nil {
		return nil, nil, errors.New("unknown event")
	}
	state := r.before[eventID]
	var chain []gmsl.PDU
	seen := map[string]bool{}
	for _, p := range state {
		c, err := f.AuthChain(ctx, scope, p.EventID())
		if err != nil {
			return nil, nil, err
		}
		for _, e := range c {
			if !seen[e.EventID()] {
				seen[e.EventID()] = true
				chain = append(chain, e)
			}
		}
	}
	return state, chain, nil
}

// TestInputFetchesMissingPrevEvents: an event whose prev events this
// server lacks is refused with no Fetcher, as before federation; with one,
// the gap is fetched from the remote and every event stored in order.
func TestInputFetchesMissingPrevEvents(t *testing.T) {
	tests := []struct {
		name    string
		fetcher bool
	}{
		{"no fetcher: refused", false},
		{"fetcher: gap filled", true},
	}
	for _, d := range sqldbtest.Dialects {
		for _, tc := range tests {
			t.Run(d+"/"+tc.name, func(t *testing.T) {
				ctx := context.Background()
				r := newRemote(t, 0)
				f := &testFetcher{remotes: map[string]*remote{r.roomID: r}}
				var opts roomserver.InputConfig
				if tc.fetcher {
					opts.Fetcher = f
				}
				rs, db := startRoomserverWith(t, d, opts)
				if err := r.input(ctx, rs, r.base...); err != nil {
					t.Fatalf("room from the remote: %v", err)
				}
				m1 := r.message("one", r.base[len(r.base)-1])
				m2 := r.message("two", m1)
				m3 := r.message("three", m2)
				err := r.input(ctx, rs, m3)
				if !tc.fetcher {
					var bad *rsapi.BadEventError
					if !errors.As(err, &bad) || bad.Code != "M_UNKNOWN" {
						t.Fatalf("event with missing prev events: %v, want M_UNKNOWN", err)
					}
					if evs, _ := rs.Events(ctx, []string{m3.EventID()}); len(evs) != 0 {
						t.Fatal("the refused event was stored")
					}
					return
				}
				if err != nil {
					t.Fatalf("event with missing prev events: %v", err)
				}
				ids := []string{m1.EventID(), m2.EventID(), m3.EventID()}
				evs, err := rs.Events(ctx, ids)
				if err != nil || len(evs) != 3 {
					t.Fatalf("stored %d of the 3 events (%v)", len(evs), err)
				}
				st, err := storage.Open(ctx, db, 0)
				if err != nil {
					t.Fatal(err)
				}
				nids, err := st.EventNIDs(ctx, ids)
				if err != nil {
					t.Fatal(err)
				}
				if !(nids[ids[0]] < nids[ids[1]] && nids[ids[1]] < nids[ids[2]]) {
					t.Fatalf("stored out of order: %v", nids)
				}
				// The room moved on: a local event follows the fetched ones.
				if err := r.sendLocal(ctx, rs, "after"); err != nil {
					t.Fatalf("event after the gap: %v", err)
				}
			})
		}
	}
}

// TestInputResolvesForksOutsideTheWriteTransaction: a fork whose states
// conflict is resolved in the prepare step. During each resolution the
// test takes the database's write lock itself (on SQLite the process has
// one writer): it would wait forever if the input held it.
func TestInputResolvesForksOutsideTheWriteTransaction(t *testing.T) {
	for _, d := range sqldbtest.Dialects {
		t.Run(d, func(t *testing.T) {
			ctx := context.Background()
			r := newRemote(t, 0)
			var db *sqldb.DB
			var resolutions atomic.Int32
			var mu sync.Mutex
			var held []error
			opts := roomserver.InputConfig{OnResolve: func() {
				resolutions.Add(1)
				wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				defer cancel()
				err := db.WithTx(wctx, func(*sqldb.Tx) error { return nil })
				mu.Lock()
				held = append(held, err)
				mu.Unlock()
			}}
			var rs *roomserver.Roomserver
			rs, db = startRoomserverWith(t, d, opts)
			if err := r.input(ctx, rs, r.base...); err != nil {
				t.Fatalf("room from the remote: %v", err)
			}
			jr := r.base[len(r.base)-1]
			empty := ""
			x := r.build(spec.MRoomTopic, &empty, map[string]any{"topic": "x"}, r.state, jr)
			y := r.build(spec.MRoomTopic, &empty, map[string]any{"topic": "y"}, r.state, jr)
			z := r.message("joins the fork", x, y)
			for _, ev := range []gmsl.PDU{x, y, z} {
				if err := r.input(ctx, rs, ev); err != nil {
					t.Fatalf("input %s: %v", ev.EventID(), err)
				}
			}
			// y forks the room (current state resolved), z joins the fork
			// (the state before it resolved).
			if n := resolutions.Load(); n < 2 {
				t.Fatalf("%d state resolutions, want 2", n)
			}
			mu.Lock()
			for _, err := range held {
				if err != nil {
					t.Errorf("the write lock was held during state resolution: %v", err)
				}
			}
			mu.Unlock()

			// The outcome is the room version's resolution of the fork.
			want, err := gmsl.ResolveConflicts(r.ver.Version(), append(append([]gmsl.PDU(nil), r.base...), x, y), r.base,
				func(_ spec.RoomID, s spec.SenderID) (*spec.UserID, error) { return spec.NewUserID(string(s), true) },
				func(string) bool { return false })
			if err != nil {
				t.Fatal(err)
			}
			var wantTopic string
			for _, ev := range want {
				if ev.Type() == spec.MRoomTopic {
					wantTopic = ev.EventID()
				}
			}
			got, err := rs.StateEvent(ctx, r.roomID, spec.MRoomTopic, "")
			if err != nil {
				t.Fatal(err)
			}
			if got.EventID() != wantTopic {
				t.Fatalf("current topic %s, want the resolution's %s", got.EventID(), wantTopic)
			}
		})
	}
}

// TestSlowRoomDoesNotStallOthers: rooms whose fetches hang on a remote
// that never answers (more of them than the input has write slots) do not
// hold up local sends to other rooms; once the remote answers, their
// events are stored too.
func TestSlowRoomDoesNotStallOthers(t *testing.T) {
	for _, d := range sqldbtest.Dialects {
		t.Run(d, func(t *testing.T) {
			ctx := context.Background()
			f := &testFetcher{remotes: map[string]*remote{}, block: make(chan struct{})}
			var wg sync.WaitGroup
			defer wg.Wait()
			var once sync.Once
			release := func() { once.Do(func() { close(f.block) }) }
			defer release() // before wg.Wait: the slow sends wait on it
			rs, _ := startRoomserverWith(t, d, roomserver.InputConfig{Fetcher: f, FetchTimeout: time.Minute})

			slow := max(4, 2*runtime.GOMAXPROCS(0)) + 1 // more than the write slots
			slowErrs := make([]error, slow)
			var slowDone atomic.Int32
			for i := range slow {
				r := newRemote(t, i)
				f.remotes[r.roomID] = r
				if err := r.input(ctx, rs, r.base...); err != nil {
					t.Fatalf("room from the remote: %v", err)
				}
				gap := r.message("missing", r.base[len(r.base)-1])
				ev := r.message("after the gap", gap)
				wg.Add(1)
				go func() {
					defer wg.Done()
					slowErrs[i] = r.input(ctx, rs, ev)
					slowDone.Add(1)
				}()
			}
			poll.True(t, 30*time.Second, "every slow room fetching", func() bool { return f.calls.Load() >= int32(slow) })

			const local, sends = 3, 5
			var localDone atomic.Int32
			localErrs := make(chan error, local*sends)
			for i := range local {
				room := createRoom(t, rs, i)
				for range sends {
					wg.Add(1)
					go func() {
						defer wg.Done()
						_, err := rs.Input(ctx, &rsapi.InputRequest{RoomID: room, Events: []rsapi.InputEvent{
							proto("@creator:bench.test", "m.room.message", nil, map[string]any{"body": "hi"}),
						}})
						if err != nil {
							localErrs <- err
						}
						localDone.Add(1)
					}()
				}
			}
			poll.True(t, 30*time.Second, "every local send answered", func() bool { return localDone.Load() == local*sends })
			close(localErrs)
			for err := range localErrs {
				t.Errorf("local send: %v", err)
			}
			if n := slowDone.Load(); n != 0 {
				t.Fatalf("%d slow rooms finished while their remote hung", n)
			}

			release()
			poll.True(t, 30*time.Second, "every slow room done", func() bool { return slowDone.Load() == int32(slow) })
			for i, err := range slowErrs {
				if err != nil {
					t.Errorf("slow room %d: %v", i, err)
				}
			}
		})
	}
}

// TestFetchingRoomQueueIsBounded: what queues on a room while it waits on
// a remote is bounded; past the bound its producers are told to retry
// (503), and what was queued is processed once the fetch ends.
func TestFetchingRoomQueueIsBounded(t *testing.T) {
	for _, d := range sqldbtest.Dialects {
		t.Run(d, func(t *testing.T) {
			ctx := context.Background()
			r := newRemote(t, 0)
			f := &testFetcher{remotes: map[string]*remote{r.roomID: r}, block: make(chan struct{})}
			var wg sync.WaitGroup
			defer wg.Wait()
			var once sync.Once
			release := func() { once.Do(func() { close(f.block) }) }
			defer release() // before wg.Wait: the sends wait on it
			rs, _ := startRoomserverWith(t, d, roomserver.InputConfig{
				Fetcher: f, FetchTimeout: time.Minute, MaxFetchingQueue: 1,
			})
			if err := r.input(ctx, rs, r.base...); err != nil {
				t.Fatalf("room from the remote: %v", err)
			}
			gap := r.message("missing", r.base[len(r.base)-1])
			ev := r.message("after the gap", gap)
			wg.Add(1)
			go func() {
				defer wg.Done()
				_ = r.input(ctx, rs, ev)
			}()
			poll.True(t, 30*time.Second, "the room fetching", func() bool { return f.calls.Load() >= 1 })

			// Three sends behind the fetch: the first to arrive queues,
			// the other two find the queue full.
			const sends = 3
			var done, busy atomic.Int32
			errs := make(chan error, sends)
			for range sends {
				wg.Add(1)
				go func() {
					defer wg.Done()
					err := r.sendLocal(ctx, rs, "behind the fetch")
					var un *rsapi.UnavailableError
					if errors.As(err, &un) {
						busy.Add(1)
					} else if err != nil {
						errs <- err
					}
					done.Add(1)
				}()
			}
			poll.True(t, 30*time.Second, "two sends answered busy", func() bool { return busy.Load() == sends-1 })
			if n := done.Load(); n != sends-1 {
				t.Fatalf("%d sends answered while the room was fetching, want %d", n, sends-1)
			}
			release()
			poll.True(t, 30*time.Second, "the queued send done", func() bool { return done.Load() == sends })
			close(errs)
			for err := range errs {
				t.Errorf("queued send: %v", err)
			}
		})
	}
}

// TestInputFetchesMissingAuthEvents: an event citing an auth event this
// server lacks (not among its prev events) is rejected with no Fetcher;
// with one, the auth chain is fetched, stored as outliers, and the event
// accepted.
func TestInputFetchesMissingAuthEvents(t *testing.T) {
	tests := []struct {
		name     string
		fetcher  bool
		accepted bool
	}{
		{"no fetcher: rejected", false, false},
		{"fetcher: auth chain fetched", true, true},
	}
	for _, d := range sqldbtest.Dialects {
		for _, tc := range tests {
			t.Run(d+"/"+tc.name, func(t *testing.T) {
				ctx := context.Background()
				r := newRemote(t, 0)
				f := &testFetcher{remotes: map[string]*remote{r.roomID: r}}
				var opts roomserver.InputConfig
				if tc.fetcher {
					opts.Fetcher = f
				}
				rs, _ := startRoomserverWith(t, d, opts)
				if err := r.input(ctx, rs, r.base...); err != nil {
					t.Fatalf("room from the remote: %v", err)
				}
				// New power levels on a branch this server never sees,
				// then a message on the main line that cites them.
				jr := r.base[len(r.base)-1]
				empty := ""
				pl := r.build(spec.MRoomPowerLevels, &empty, map[string]any{"users": map[string]int{r.user: 100}, "events_default": 10}, r.state, jr)
				r.state[gmsl.StateKeyTuple{EventType: spec.MRoomPowerLevels}] = pl
				msg := r.message("cites unseen power levels", jr)
				if err := r.input(ctx, rs, msg); err != nil {
					t.Fatalf("input: %v", err)
				}
				evs, err := rs.Events(ctx, []string{msg.EventID()})
				if err != nil {
					t.Fatal(err)
				}
				if got := len(evs) == 1; got != tc.accepted {
					t.Fatalf("event accepted: %v, want %v", got, tc.accepted)
				}
			})
		}
	}
}

// TestInputFetchesStateAcrossAGap: when walking back from an event does
// not reach what this server has (the gap is longer than MaxMissing), the
// state at the first missing prev event is fetched, and the room's state
// follows it: here a topic set inside the gap becomes current.
func TestInputFetchesStateAcrossAGap(t *testing.T) {
	for _, d := range sqldbtest.Dialects {
		t.Run(d, func(t *testing.T) {
			ctx := context.Background()
			r := newRemote(t, 0)
			f := &testFetcher{remotes: map[string]*remote{r.roomID: r}}
			rs, _ := startRoomserverWith(t, d, roomserver.InputConfig{Fetcher: f, MaxMissing: 2})
			if err := r.input(ctx, rs, r.base...); err != nil {
				t.Fatalf("room from the remote: %v", err)
			}
			empty := ""
			m1 := r.message("one", r.base[len(r.base)-1])
			topic := r.build(spec.MRoomTopic, &empty, map[string]any{"topic": "set in the gap"}, r.state, m1)
			r.state[gmsl.StateKeyTuple{EventType: spec.MRoomTopic}] = topic
			m2 := r.message("two", topic)
			m3 := r.message("three", m2)
			m4 := r.message("four", m3)
			if err := r.input(ctx, rs, m4); err != nil {
				t.Fatalf("event beyond a long gap: %v", err)
			}
			evs, err := rs.Events(ctx, []string{m2.EventID(), m3.EventID(), m4.EventID()})
			if err != nil || len(evs) != 3 {
				t.Fatalf("stored %d of the 3 events after the gap (%v)", len(evs), err)
			}
			if evs, _ := rs.Events(ctx, []string{m1.EventID()}); len(evs) != 0 {
				t.Fatal("an event beyond the walk was stored")
			}
			got, err := rs.StateEvent(ctx, r.roomID, spec.MRoomTopic, "")
			if err != nil {
				t.Fatalf("topic after the gap: %v", err)
			}
			if got.EventID() != topic.EventID() {
				t.Fatalf("current topic %s, want %s", got.EventID(), topic.EventID())
			}

			// The topic is known only as an outlier: an event built on
			// it gets the state after it fetched ...
			onTopic := r.message("on the topic", topic)
			if err := r.input(ctx, rs, onTopic); err != nil {
				t.Fatalf("event after an outlier: %v", err)
			}
			// ... and the topic itself, sent with what it needs, takes
			// its place in the room.
			if err := r.input(ctx, rs, topic); err != nil {
				t.Fatalf("the outlier itself: %v", err)
			}
			if evs, _ := rs.Events(ctx, []string{m1.EventID()}); len(evs) != 1 {
				t.Fatal("the outlier's prev event was not fetched")
			}
			// An outlier has no state before it; the event taken in has.
			if before, err := rs.StateBefore(ctx, topic.EventID()); err != nil || len(before) == 0 {
				t.Fatalf("state before the former outlier: %d events (%v)", len(before), err)
			}
		})
	}
}

// TestFetchTimesOut: a remote that never answers costs a request its
// FetchTimeout, then the event is refused (nothing stored) and the room
// takes input again.
func TestFetchTimesOut(t *testing.T) {
	for _, d := range sqldbtest.Dialects {
		t.Run(d, func(t *testing.T) {
			ctx := context.Background()
			r := newRemote(t, 0)
			f := &testFetcher{remotes: map[string]*remote{r.roomID: r}, block: make(chan struct{})} // never closed
			rs, _ := startRoomserverWith(t, d, roomserver.InputConfig{Fetcher: f, FetchTimeout: 200 * time.Millisecond})
			if err := r.input(ctx, rs, r.base...); err != nil {
				t.Fatalf("room from the remote: %v", err)
			}
			gap := r.message("missing", r.base[len(r.base)-1])
			ev := r.message("after the gap", gap)
			err := r.input(ctx, rs, ev)
			var bad *rsapi.BadEventError
			if !errors.As(err, &bad) || bad.Code != "M_UNKNOWN" {
				t.Fatalf("event whose fetch timed out: %v, want M_UNKNOWN", err)
			}
			if evs, _ := rs.Events(ctx, []string{ev.EventID()}); len(evs) != 0 {
				t.Fatal("the refused event was stored")
			}
			if err := r.sendLocal(ctx, rs, "still here"); err != nil {
				t.Fatalf("send after the timeout: %v", err)
			}
		})
	}
}

// TestSlowRoomsBudget: past the budget of messages held by rooms waiting
// on remotes, another room that needs a fetch is answered busy (its
// producer may retry), not left to take the ack budget every room shares.
func TestSlowRoomsBudget(t *testing.T) {
	for _, d := range sqldbtest.Dialects {
		t.Run(d, func(t *testing.T) {
			ctx := context.Background()
			f := &testFetcher{remotes: map[string]*remote{}, block: make(chan struct{})}
			var wg sync.WaitGroup
			defer wg.Wait()
			var once sync.Once
			release := func() { once.Do(func() { close(f.block) }) }
			defer release() // before wg.Wait: the first send waits on it
			rs, _ := startRoomserverWith(t, d, roomserver.InputConfig{
				Fetcher: f, FetchTimeout: time.Minute, SlowBudget: 1,
			})
			var gaps []gmsl.PDU
			var rooms []*remote
			for i := range 2 {
				r := newRemote(t, i)
				f.remotes[r.roomID] = r
				if err := r.input(ctx, rs, r.base...); err != nil {
					t.Fatalf("room from the remote: %v", err)
				}
				gap := r.message("missing", r.base[len(r.base)-1])
				gaps = append(gaps, r.message("after the gap", gap))
				rooms = append(rooms, r)
			}
			var firstErr error
			var firstDone atomic.Bool
			wg.Add(1)
			go func() {
				defer wg.Done()
				firstErr = rooms[0].input(ctx, rs, gaps[0])
				firstDone.Store(true)
			}()
			poll.True(t, 30*time.Second, "the first room fetching", func() bool { return f.calls.Load() >= 1 })

			err := rooms[1].input(ctx, rs, gaps[1])
			var un *rsapi.UnavailableError
			if !errors.As(err, &un) {
				t.Fatalf("a second room needing a fetch past the budget: %v, want unavailable", err)
			}
			if firstDone.Load() {
				t.Fatal("the first room finished while its remote hung")
			}
			release()
			poll.True(t, 30*time.Second, "the first room done", firstDone.Load)
			wg.Wait()
			if firstErr != nil {
				t.Fatalf("first room: %v", firstErr)
			}
			// With the budget free again, the second room's retry works.
			if err := rooms[1].input(ctx, rs, gaps[1]); err != nil {
				t.Fatalf("retry of the second room: %v", err)
			}
		})
	}
}

// TestInputDuplicatePrevEvents: an event naming the same prev event twice
// is taken in as if named once.
func TestInputDuplicatePrevEvents(t *testing.T) {
	for _, d := range sqldbtest.Dialects {
		t.Run(d, func(t *testing.T) {
			ctx := context.Background()
			r := newRemote(t, 0)
			rs, _ := startRoomserverWith(t, d, roomserver.InputConfig{})
			if err := r.input(ctx, rs, r.base...); err != nil {
				t.Fatalf("room from the remote: %v", err)
			}
			last := r.base[len(r.base)-1]
			dup := r.message("twice", last, last)
			if err := r.input(ctx, rs, dup); err != nil {
				t.Fatalf("event with a prev event named twice: %v", err)
			}
			if evs, err := rs.Events(ctx, []string{dup.EventID()}); err != nil || len(evs) != 1 {
				t.Fatalf("stored %d (%v)", len(evs), err)
			}
		})
	}
}

// StateIDsBefore serves the IDs of the state the remote built eventID on.
func (f *testFetcher) StateIDsBefore(ctx context.Context, scope rsapi.FetchScope, eventID string) ([]string, error) {
	f.stateIDs.Add(1)
	if err := f.wait(ctx); err != nil {
		return nil, err
	}
	r := f.remotes[scope.RoomID]
	if r == nil || r.events[eventID] == nil {
		return nil, errors.New("unknown event")
	}
	var ids []string
	for _, p := range r.before[eventID] {
		ids = append(ids, p.EventID())
	}
	return ids, nil
}

// Backfill serves the events of from and those before them, walking
// prev_events back, as /backfill does.
func (f *testFetcher) Backfill(ctx context.Context, scope rsapi.FetchScope, from []string, limit int) ([]gmsl.PDU, spec.ServerName, error) {
	f.backfills.Add(1)
	if err := f.wait(ctx); err != nil {
		return nil, "", err
	}
	r := f.remotes[scope.RoomID]
	if r == nil {
		return nil, "", nil // nothing to give, as a server that never was in the room
	}
	seen := map[string]bool{}
	var out []gmsl.PDU
	todo := append([]string(nil), from...)
	for len(todo) > 0 && len(out) < limit {
		id := todo[0]
		todo = todo[1:]
		if seen[id] || r.events[id] == nil {
			continue
		}
		seen[id] = true
		out = append(out, r.events[id])
		todo = append(todo, r.events[id].PrevEventIDs()...)
	}
	return out, remoteName, nil
}

// TestInputGapChecks: at a gap the walk back cannot close, the state is
// asked for by IDs first (GET /state_ids, only the events missing here
// fetched), and only at the far end of what the walk brought: an event
// whose own prev events the origin will not give is refused without
// asking for a state. A gap event rejected (an auth event of another
// room) is no part of the state after it.
func TestInputGapChecks(t *testing.T) {
	for _, d := range sqldbtest.Dialects {
		t.Run(d+"/prev events not given", func(t *testing.T) {
			ctx := context.Background()
			r := newRemote(t, 0)
			f := &testFetcher{remotes: map[string]*remote{r.roomID: r}}
			rs, _ := startRoomserverWith(t, d, roomserver.InputConfig{Fetcher: f})
			if err := r.input(ctx, rs, r.base...); err != nil {
				t.Fatalf("room from the remote: %v", err)
			}
			hidden := r.message("never given", r.base[len(r.base)-1])
			delete(r.events, hidden.EventID())
			sent := r.message("sent", hidden)
			var bad *rsapi.BadEventError
			if err := r.input(ctx, rs, sent); !errors.As(err, &bad) {
				t.Fatalf("event after prev events never given: %v, want refused", err)
			}
			if n, m := f.stateIDs.Load(), f.states.Load(); n != 0 || m != 0 {
				t.Fatalf("asked for the state at a prev event of the event sent (%d state_ids, %d state)", n, m)
			}
		})
		t.Run(d+"/forged power levels in the state at a gap", func(t *testing.T) {
			ctx := context.Background()
			// Room version 1: its state resolution tries the conflicted
			// power levels from the lowest depth up, so a forged event in
			// a state would win.
			r := newRemoteIn(t, 0, gmsl.RoomVersionV1)
			f := &testFetcher{remotes: map[string]*remote{r.roomID: r}}
			rs, _ := startRoomserverWith(t, d, roomserver.InputConfig{Fetcher: f, MaxMissing: 1})
			if err := r.input(ctx, rs, r.base...); err != nil {
				t.Fatalf("room from the remote: %v", err)
			}
			mallory, empty := "@mallory:"+remoteName, ""
			join := r.buildAs(mallory, spec.MRoomMember, &mallory, map[string]any{"membership": "join"}, r.state, r.base[len(r.base)-1])
			r.state[gmsl.StateKeyTuple{EventType: spec.MRoomMember, StateKey: mallory}] = join
			if err := r.input(ctx, rs, join); err != nil {
				t.Fatalf("mallory's join: %v", err)
			}
			// A power levels event authorised by no power levels event at
			// all (mallory would need state_default, 50), claimed to be the
			// room's state at the gap.
			noPL := map[gmsl.StateKeyTuple]gmsl.PDU{
				{EventType: spec.MRoomCreate}:                    r.base[0],
				{EventType: spec.MRoomMember, StateKey: mallory}: join,
			}
			// With no prev events its depth is 1, below the real one's.
			forged := r.buildAs(mallory, spec.MRoomPowerLevels, &empty, map[string]any{"users": map[string]int{mallory: 100, r.user: 0}}, noPL)
			q := r.buildAs(mallory, "m.room.message", nil, map[string]any{"body": "Q"}, r.state, forged)
			claimed := []gmsl.PDU{forged}
			for _, p := range r.base {
				if p.Type() != spec.MRoomPowerLevels {
					claimed = append(claimed, p)
				}
			}
			r.before[q.EventID()] = append(claimed, join)
			rEv := r.buildAs(mallory, "m.room.message", nil, map[string]any{"body": "R"}, r.state, q)
			s := r.buildAs(mallory, "m.room.message", nil, map[string]any{"body": "S"}, r.state, rEv)
			if err := r.input(ctx, rs, s); err != nil {
				t.Fatalf("event beyond the gap: %v", err)
			}
			got, err := rs.StateEvent(ctx, r.roomID, spec.MRoomPowerLevels, "")
			if err != nil {
				t.Fatal(err)
			}
			if got.EventID() != r.base[2].EventID() {
				t.Fatalf("power levels now %s, want %s: the forged event took over the room", got.EventID(), r.base[2].EventID())
			}
		})
		t.Run(d+"/gap event rejected", func(t *testing.T) {
			ctx := context.Background()
			r := newRemote(t, 0)
			other := newRemote(t, 1)
			f := &testFetcher{remotes: map[string]*remote{r.roomID: r, other.roomID: other}}
			rs, _ := startRoomserverWith(t, d, roomserver.InputConfig{Fetcher: f, MaxMissing: 1})
			for _, rm := range []*remote{r, other} {
				if err := rm.input(ctx, rs, rm.base...); err != nil {
					t.Fatalf("room from the remote: %v", err)
				}
			}
			// Q names the member event of the other room as its auth event.
			crossed := map[gmsl.StateKeyTuple]gmsl.PDU{}
			for k, v := range r.state {
				crossed[k] = v
			}
			crossed[gmsl.StateKeyTuple{EventType: spec.MRoomMember, StateKey: other.user}] = other.base[1]
			q := r.build(spec.MRoomMember, &r.user, map[string]any{"membership": "join", "displayname": "Q"}, crossed, r.base[len(r.base)-1])
			r.before[q.EventID()] = r.base
			rEv := r.message("R", q)
			s := r.message("S", rEv)
			if err := r.input(ctx, rs, s); err != nil {
				t.Fatalf("event beyond the gap: %v", err)
			}
			if n, m := f.stateIDs.Load(), f.states.Load(); n != 1 || m != 0 {
				t.Fatalf("state at the gap: %d state_ids and %d state requests, want 1 and 0", n, m)
			}
			if evs, _ := rs.Events(ctx, []string{rEv.EventID(), s.EventID()}); len(evs) != 2 {
				t.Fatalf("%d of the 2 events after the gap stored", len(evs))
			}
			got, err := rs.StateEvent(ctx, r.roomID, spec.MRoomMember, r.user)
			if err != nil {
				t.Fatal(err)
			}
			if got.EventID() != r.base[1].EventID() {
				t.Fatalf("member event now %s, want the join %s: the rejected gap event entered the state", got.EventID(), r.base[1].EventID())
			}
		})
	}
}
