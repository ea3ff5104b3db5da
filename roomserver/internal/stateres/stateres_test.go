package stateres

import (
	"context"
	"errors"
	"fmt"
	"testing"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
)

var (
	alice, bob, charlie, eve = user("alice"), user("bob"), user("charlie"), user("eve")
)

func key(typ, sk string) string { return typ + "|" + sk }

// TestResolveExamples runs the worked examples of state resolution v2 (the
// scenarios of the "State Resolution: Reloaded" design the spec's algorithm
// comes from), MSC4297's two problems, and forks the roomserver will meet.
// want names the event expected at each listed key ("" for no event).
func TestResolveExamples(t *testing.T) {
	type build func(r *testRoom) []StateSet
	cases := []struct {
		name     string
		versions map[gmsl.RoomVersion]map[string]string
		build    build
	}{
		{
			// Alice bans Bob while Bob changes the power levels: the ban
			// (higher power) comes first, so Bob's change fails.
			name: "ban vs power levels",
			versions: map[gmsl.RoomVersion]map[string]string{
				"10": {key(spec.MRoomPowerLevels, ""): "PA", key(spec.MRoomMember, bob): "MB"},
				"11": {key(spec.MRoomPowerLevels, ""): "PA", key(spec.MRoomMember, bob): "MB"},
				"12": {key(spec.MRoomPowerLevels, ""): "PA", key(spec.MRoomMember, bob): "MB"},
			},
			build: func(r *testRoom) []StateSet {
				s := r.initial(nil)
				_, s = r.send("PA", s, alice, spec.MRoomPowerLevels, "", powerLevelsWith(r, map[string]int64{bob: 50}))
				_, f1 := r.send("MB", s, alice, spec.MRoomMember, bob, member("ban"))
				_, f2 := r.send("PB", s, bob, spec.MRoomPowerLevels, "", powerLevelsWith(r, map[string]int64{bob: 50, charlie: 50}))
				return []StateSet{f1, f2}
			},
		},
		{
			// Eve joins while Alice makes the room invite-only: the join
			// rules come first and Eve's join fails.
			name: "join rules evasion",
			versions: map[gmsl.RoomVersion]map[string]string{
				"10": {key(spec.MRoomJoinRules, ""): "JR", key(spec.MRoomMember, eve): ""},
				"11": {key(spec.MRoomJoinRules, ""): "JR", key(spec.MRoomMember, eve): ""},
				"12": {key(spec.MRoomJoinRules, ""): "JR", key(spec.MRoomMember, eve): ""},
			},
			build: func(r *testRoom) []StateSet {
				s := r.initial(nil)
				_, f1 := r.send("JR", s, alice, spec.MRoomJoinRules, "", map[string]any{"join_rule": "invite"})
				_, f2 := r.send("ME", s, eve, spec.MRoomMember, eve, member("join"))
				return []StateSet{f1, f2}
			},
		},
		{
			// Alice demotes Bob while Bob, still a moderator, changes the
			// topic: the demotion wins and the older topic stays.
			name: "topic basic",
			versions: map[gmsl.RoomVersion]map[string]string{
				"11": {key(spec.MRoomPowerLevels, ""): "PA2", key(spec.MRoomTopic, ""): "T2"},
				"12": {key(spec.MRoomPowerLevels, ""): "PA2", key(spec.MRoomTopic, ""): "T2"},
			},
			build: func(r *testRoom) []StateSet {
				s := r.initial(nil)
				_, s = r.send("T1", s, alice, spec.MRoomTopic, "", topic("1"))
				_, s = r.send("PA1", s, alice, spec.MRoomPowerLevels, "", powerLevelsWith(r, map[string]int64{bob: 50}))
				f1, f2 := s, s
				_, f1 = r.send("T2", f1, alice, spec.MRoomTopic, "", topic("2"))
				_, f1 = r.send("PA2", f1, alice, spec.MRoomPowerLevels, "", powerLevelsWith(r, nil))
				_, f2 = r.send("T3", f2, bob, spec.MRoomTopic, "", topic("3"))
				return []StateSet{f1, f2}
			},
		},
		{
			// Bob sets the topic while Alice bans him: the topic resets to
			// the one both forks knew before.
			name: "topic reset",
			versions: map[gmsl.RoomVersion]map[string]string{
				"11": {key(spec.MRoomTopic, ""): "T1", key(spec.MRoomMember, bob): "MB"},
				"12": {key(spec.MRoomTopic, ""): "T1", key(spec.MRoomMember, bob): "MB"},
			},
			build: func(r *testRoom) []StateSet {
				s := r.initial(nil)
				_, s = r.send("T1", s, alice, spec.MRoomTopic, "", topic("1"))
				_, s = r.send("PA", s, alice, spec.MRoomPowerLevels, "", powerLevelsWith(r, map[string]int64{bob: 50}))
				_, f1 := r.send("T2", s, bob, spec.MRoomTopic, "", topic("2"))
				_, f2 := r.send("MB", s, alice, spec.MRoomMember, bob, member("ban"))
				return []StateSet{f1, f2}
			},
		},
		{
			// Bob (moderator) bans Charlie while Alice bans Bob; on another
			// fork Alice unbans Charlie's earlier ban: the admin's events
			// come first and Bob's ban fails.
			name: "ban and unban fork",
			versions: map[gmsl.RoomVersion]map[string]string{
				"10": {key(spec.MRoomMember, bob): "ABANB", key(spec.MRoomMember, charlie): "IMcharlie", key(spec.MRoomMember, eve): "UNBAN"},
				"11": {key(spec.MRoomMember, bob): "ABANB", key(spec.MRoomMember, charlie): "IMcharlie", key(spec.MRoomMember, eve): "UNBAN"},
				"12": {key(spec.MRoomMember, bob): "ABANB", key(spec.MRoomMember, charlie): "IMcharlie", key(spec.MRoomMember, eve): "UNBAN"},
			},
			build: func(r *testRoom) []StateSet {
				s := r.initial(map[string]int64{bob: 50})
				_, s = r.send("BANE", s, alice, spec.MRoomMember, eve, member("ban"))
				_, f1 := r.send("ABANB", s, alice, spec.MRoomMember, bob, member("ban"))
				_, f2 := r.send("BBANC", s, bob, spec.MRoomMember, charlie, member("ban"))
				_, f3 := r.send("UNBAN", s, alice, spec.MRoomMember, eve, member("leave"))
				return []StateSet{f1, f2, f3}
			},
		},
		{
			// MSC4297 problem A: both forks agree Alice left, one holds an
			// outdated join rules event. v2 replays the join rules on the
			// unconflicted state, where Alice is gone, and loses them; v2.1
			// replays them on their own auth events and keeps the newer.
			name: "msc4297 problem A",
			versions: map[gmsl.RoomVersion]map[string]string{
				"11": {key(spec.MRoomJoinRules, ""): "", key(spec.MRoomMember, alice): "LEAVE"},
				"12": {key(spec.MRoomJoinRules, ""): "JR2", key(spec.MRoomMember, alice): "LEAVE"},
			},
			build: func(r *testRoom) []StateSet {
				s := r.initial(map[string]int64{bob: 100})
				_, s = r.send("JR1", s, alice, spec.MRoomJoinRules, "", map[string]any{"join_rule": "invite"})
				old := s[gmsl.StateKeyTuple{EventType: spec.MRoomJoinRules}]
				_, s = r.send("JR2", s, alice, spec.MRoomJoinRules, "", map[string]any{"join_rule": "public"})
				_, s = r.send("LEAVE", s, alice, spec.MRoomMember, alice, member("leave"))
				partial := copyState(s)
				partial[gmsl.StateKeyTuple{EventType: spec.MRoomJoinRules}] = old
				return []StateSet{s, partial}
			},
		},
		{
			// MSC4297 problem B: Alice promotes Bob, Bob promotes Charlie,
			// Charlie sets the topic; one fork's state holds the first power
			// levels event while its topic's auth chain holds all three. The
			// auth difference misses the middle one, so v2 resets the power
			// levels; v2.1's conflicted subgraph replays it.
			name: "msc4297 problem B",
			versions: map[gmsl.RoomVersion]map[string]string{
				"11": {key(spec.MRoomPowerLevels, ""): "P0", key(spec.MRoomTopic, ""): "T"},
				"12": {key(spec.MRoomPowerLevels, ""): "P2", key(spec.MRoomTopic, ""): "T"},
			},
			build: func(r *testRoom) []StateSet {
				s := r.initial(nil)
				p0 := s[gmsl.StateKeyTuple{EventType: spec.MRoomPowerLevels}]
				r.names[p0.EventID()] = "P0"
				_, s = r.send("P1", s, alice, spec.MRoomPowerLevels, "", powerLevelsWith(r, map[string]int64{bob: 50}))
				_, s = r.send("P2", s, bob, spec.MRoomPowerLevels, "", powerLevelsWith(r, map[string]int64{bob: 50, charlie: 50}))
				_, s = r.send("T", s, charlie, spec.MRoomTopic, "", topic("charlie's"))
				partial := copyState(s)
				partial[gmsl.StateKeyTuple{EventType: spec.MRoomPowerLevels}] = p0
				return []StateSet{s, partial}
			},
		},
		{
			// Room version 12: the creator (infinite power) and an admin
			// fork the power levels. gomatrixserverlib's v2.1 panics here.
			name: "v12 two-way power levels fork",
			versions: map[gmsl.RoomVersion]map[string]string{
				"12": {key(spec.MRoomPowerLevels, ""): "PALICE", key(spec.MRoomTopic, ""): ""},
			},
			build: func(r *testRoom) []StateSet {
				s := r.initial(map[string]int64{bob: 100})
				_, f1 := r.send("PALICE", s, alice, spec.MRoomPowerLevels, "", powerLevelsWith(r, map[string]int64{bob: 50}))
				_, f2 := r.send("PBOB", s, bob, spec.MRoomPowerLevels, "", powerLevelsWith(r, map[string]int64{bob: 100, charlie: 100}))
				_, f2 = r.send("TBOB", f2, charlie, spec.MRoomTopic, "", topic("charlie was admin"))
				return []StateSet{f1, f2}
			},
		},
		{
			// An additional creator of a v12 room outranks an admin too.
			name: "v12 additional creator",
			versions: map[gmsl.RoomVersion]map[string]string{
				"12": {key(spec.MRoomPowerLevels, ""): "PB", key(spec.MRoomMember, charlie): "KICK"},
			},
			build: func(r *testRoom) []StateSet {
				s := r.create(alice, map[string]any{"additional_creators": []string{bob}})
				_, s = r.send("IMA", s, alice, spec.MRoomMember, alice, member("join"))
				_, s = r.send("IPOWER", s, alice, spec.MRoomPowerLevels, "", powerLevelsWith(r, map[string]int64{charlie: 100}))
				_, s = r.send("IJR", s, alice, spec.MRoomJoinRules, "", map[string]any{"join_rule": "public"})
				_, s = r.send("IMB", s, bob, spec.MRoomMember, bob, member("join"))
				_, s = r.send("IMC", s, charlie, spec.MRoomMember, charlie, member("join"))
				_, f1 := r.send("KICK", s, bob, spec.MRoomMember, charlie, member("leave"))
				_, f1 = r.send("PB", f1, bob, spec.MRoomPowerLevels, "", powerLevelsWith(r, nil))
				_, f2 := r.send("PC", s, charlie, spec.MRoomPowerLevels, "", powerLevelsWith(r, map[string]int64{charlie: 100, eve: 100}))
				return []StateSet{f1, f2}
			},
		},
	}
	for _, c := range cases {
		for ver, want := range c.versions {
			t.Run(fmt.Sprintf("%s/v%s", c.name, ver), func(t *testing.T) {
				r := newTestRoom(t, ver)
				sets := c.build(r)
				got, err := r.resolve(sets...)
				if err != nil {
					t.Fatalf("resolve: %v", err)
				}
				desc := r.describe(got)
				for k, w := range want {
					if g := desc[k]; g != w {
						t.Errorf("%s: got %q, want %q (state %v)", k, g, w, desc)
					}
				}
				// Unconflicted state is always kept.
				for k, ev := range sets[0] {
					same := true
					for _, s := range sets[1:] {
						if o := s[k]; o == nil || o.EventID() != ev.EventID() {
							same = false
						}
					}
					if same && got[k] != ev {
						t.Errorf("unconflicted %v lost", k)
					}
				}
				// The order of the state sets does not matter.
				rev := make([]StateSet, len(sets))
				for i := range sets {
					rev[len(sets)-1-i] = sets[i]
				}
				again, err := r.resolve(rev...)
				if err != nil {
					t.Fatal(err)
				}
				if !sameState(got, again) {
					t.Errorf("reversed sets resolve to %v, not %v", r.describe(again), desc)
				}
			})
		}
	}
}

// powerLevelsWith is the power levels of the tests: alice at 100 unless she
// is a privileged creator, plus users.
func powerLevelsWith(r *testRoom, users map[string]int64) map[string]any {
	u := map[string]int64{}
	if !r.ver.PrivilegedCreators() {
		u[alice] = 100
	}
	for k, v := range users {
		u[k] = v
	}
	return powerLevels(u)
}

func copyState(s StateSet) StateSet {
	out := make(StateSet, len(s))
	for k, v := range s {
		out[k] = v
	}
	return out
}

func sameState(a, b StateSet) bool {
	if len(a) != len(b) {
		return false
	}
	for k, ev := range a {
		if o := b[k]; o == nil || o.EventID() != ev.EventID() {
			return false
		}
	}
	return true
}

// TestGMSLPanicsOnV12PowerFork records why this package exists: the same
// fork makes gomatrixserverlib's v2.1 resolver panic. If it stops
// panicking, compare it with ours again.
func TestGMSLPanicsOnV12PowerFork(t *testing.T) {
	r := newTestRoom(t, gmsl.RoomVersionV12)
	s := r.initial(map[string]int64{bob: 100})
	_, f1 := r.send("PALICE", s, alice, spec.MRoomPowerLevels, "", powerLevelsWith(r, map[string]int64{bob: 50}))
	_, f2 := r.send("PBOB", s, bob, spec.MRoomPowerLevels, "", powerLevelsWith(r, map[string]int64{bob: 100, charlie: 100}))
	panicked := func() (p bool) {
		defer func() { p = recover() != nil }()
		gmsl.ResolveStateConflictsV2New(gmsl.StateResV2_1, [][]gmsl.PDU{stateList(f1), stateList(f2)}, stateList(r.allEvents()), senderIsUserID, func(string) bool { return false })
		return false
	}()
	if !panicked {
		t.Log("gomatrixserverlib no longer panics on a v12 power levels fork")
	}
	if _, err := r.resolve(f1, f2); err != nil {
		t.Fatal(err)
	}
}

func (r *testRoom) allEvents() StateSet {
	out := StateSet{}
	for _, ev := range r.events {
		out[gmsl.StateKeyTuple{EventType: ev.EventID()}] = ev
	}
	return out
}

// TestResolveRefuses checks malformed input is refused with an error.
func TestResolveRefuses(t *testing.T) {
	r := newTestRoom(t, gmsl.RoomVersionV11)
	s := r.initial(nil)
	_, f1 := r.send("T1", s, alice, spec.MRoomTopic, "", topic("1"))
	_, f2 := r.send("T2", s, alice, spec.MRoomTopic, "", topic("2"))
	other := newTestRoom(t, gmsl.RoomVersionV11)
	other.roomID = "!other:test"
	os := other.create(alice, nil)
	v12 := newTestRoom(t, gmsl.RoomVersionV12)
	s12 := v12.initial(nil)

	wrongKey := copyState(f1)
	wrongKey[gmsl.StateKeyTuple{EventType: spec.MRoomName}] = f1[gmsl.StateKeyTuple{EventType: spec.MRoomTopic}]
	mixed := copyState(f1)
	mixed[gmsl.StateKeyTuple{EventType: spec.MRoomCreate, StateKey: "x"}] = nil
	otherRoom := copyState(f2)
	for k, v := range os {
		otherRoom[gmsl.StateKeyTuple{EventType: k.EventType, StateKey: "other"}] = v
	}
	// Topics alone: their auth events must be loaded.
	t1 := StateSet{{EventType: spec.MRoomTopic}: f1[gmsl.StateKeyTuple{EventType: spec.MRoomTopic}]}
	t2 := StateSet{{EventType: spec.MRoomTopic}: f2[gmsl.StateKeyTuple{EventType: spec.MRoomTopic}]}
	missing := func(_ context.Context, ids []string) ([]gmsl.PDU, error) { return nil, nil }
	failing := func(_ context.Context, ids []string) ([]gmsl.PDU, error) { return nil, errors.New("db down") }

	cases := []struct {
		name string
		p    Params
		want error
	}{
		{"no state sets", Params{Version: "11", Load: r.load}, ErrMalformed},
		{"no loader", Params{Version: "11", StateSets: []StateSet{f1, f2}}, ErrMalformed},
		{"unknown room version", Params{Version: "nope", StateSets: []StateSet{f1, f2}, Load: r.load}, ErrMalformed},
		{"event under the wrong key", Params{Version: "11", StateSets: []StateSet{wrongKey, f2}, Load: r.load}, ErrMalformed},
		{"nil event", Params{Version: "11", StateSets: []StateSet{mixed, f2}, Load: r.load}, ErrMalformed},
		{"events of another room", Params{Version: "11", StateSets: []StateSet{f1, otherRoom}, Load: r.load}, ErrMalformed},
		{"events of another version", Params{Version: "11", StateSets: []StateSet{f1, s12}, Load: r.load}, ErrMalformed},
		{"auth events missing", Params{Version: "11", StateSets: []StateSet{t1, t2}, Load: missing}, ErrMissingAuthEvent},
		{"auth chain too large", Params{Version: "11", StateSets: []StateSet{t1, t2}, Load: r.load, MaxEvents: 4}, ErrTooLarge},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Resolve(context.Background(), c.p)
			if !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
		})
	}
	t.Run("loader fails", func(t *testing.T) {
		_, err := Resolve(context.Background(), Params{Version: "11", StateSets: []StateSet{t1, t2}, Load: failing})
		if err == nil || errors.Is(err, ErrMalformed) {
			t.Fatalf("got %v, want the loader's error", err)
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err := Resolve(ctx, Params{Version: "11", StateSets: []StateSet{t1, t2}, Load: r.load})
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("one set or no conflict loads nothing", func(t *testing.T) {
		before := r.loads
		for _, sets := range [][]StateSet{{f1}, {f1, f1}} {
			got, err := r.resolve(sets...)
			if err != nil || !sameState(got, f1) {
				t.Fatalf("got %v, %v", r.describe(got), err)
			}
		}
		if r.loads != before {
			t.Fatalf("loaded %d times", r.loads-before)
		}
	})
}

// TestResolveV1 checks room version 1 goes through gomatrixserverlib's v1:
// the newest topic that passes auth wins, and the unconflicted state stays.
func TestResolveV1(t *testing.T) {
	r := newTestRoom(t, gmsl.RoomVersionV1)
	s := r.initial(map[string]int64{bob: 50})
	_, s = r.send("T1", s, alice, spec.MRoomTopic, "", topic("1"))
	_, f1 := r.send("T2", s, bob, spec.MRoomTopic, "", topic("2"))
	_, f2 := r.send("NAME", s, alice, spec.MRoomName, "", map[string]any{"name": "n"})
	got, err := r.resolve(f1, f2)
	if err != nil {
		t.Fatal(err)
	}
	desc := r.describe(got)
	if desc[key(spec.MRoomTopic, "")] != "T2" || desc[key(spec.MRoomMember, charlie)] != "IMcharlie" {
		t.Fatalf("got %v", desc)
	}
}

// TestResolveRejectedAndPartial checks that a rejected event never enters
// the state, and that state sets without the create event (its auth
// chain comes from the loader) resolve; gomatrixserverlib's deprecated v2
// answers nothing then (guide, pitfall 3a).
func TestResolveRejectedAndPartial(t *testing.T) {
	for _, ver := range []gmsl.RoomVersion{gmsl.RoomVersionV11, gmsl.RoomVersionV12} {
		t.Run("v"+string(ver), func(t *testing.T) {
			r := newTestRoom(t, ver)
			s := r.initial(nil)
			t1, _ := r.send("T1", s, alice, spec.MRoomTopic, "", topic("1"))
			t2, _ := r.send("T2", s, alice, spec.MRoomTopic, "", topic("2"))
			k := gmsl.StateKeyTuple{EventType: spec.MRoomTopic}
			sets := []StateSet{{k: t1}, {k: t2}}
			cases := []struct {
				name     string
				rejected string
				want     string
			}{
				{"newest topic wins", "", "T2"},
				{"rejected newest topic", t2.EventID(), "T1"},
				{"both rejected", "both", ""},
			}
			for _, c := range cases {
				t.Run(c.name, func(t *testing.T) {
					got, err := Resolve(context.Background(), Params{Version: ver, StateSets: sets, Load: r.load,
						IsRejected: func(id string) bool {
							return id == c.rejected || c.rejected == "both" && (id == t1.EventID() || id == t2.EventID())
						}})
					if err != nil {
						t.Fatal(err)
					}
					name := ""
					if ev := got[k]; ev != nil {
						name = r.nameOf(ev)
					}
					if name != c.want || len(got) > 1 {
						t.Fatalf("got %v, want topic %q alone", r.describe(got), c.want)
					}
				})
			}
		})
	}
}
