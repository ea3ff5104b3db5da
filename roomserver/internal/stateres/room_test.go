package stateres

import (
	"context"
	"crypto/ed25519"
	"testing"
	"time"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
)

// testRoom builds and signs events with gomatrixserverlib like a server
// would, each with the auth events its auth rules need from the state of
// its fork, and keeps every event for the loader.
type testRoom struct {
	tb     testing.TB
	ver    gmsl.IRoomVersion
	roomID string
	key    ed25519.PrivateKey
	now    time.Time
	events map[string]gmsl.PDU
	names  map[string]string // event ID -> test name
	loads  int
	last   string // the previous event built, for prev_events
}

var testSeed = []byte("myelin-stateres-test-signing-key") // 32 bytes

func newTestRoom(tb testing.TB, ver gmsl.RoomVersion) *testRoom {
	tb.Helper()
	return &testRoom{
		tb:     tb,
		ver:    gmsl.MustGetRoomVersion(ver),
		key:    ed25519.NewKeyFromSeed(testSeed),
		now:    time.Unix(1_700_000_000, 0),
		events: map[string]gmsl.PDU{},
		names:  map[string]string{},
	}
}

func user(name string) string { return "@" + name + ":test" }

// create makes the create event by creator and returns the first state.
func (r *testRoom) create(creator string, content map[string]any) StateSet {
	r.tb.Helper()
	if content == nil {
		content = map[string]any{}
	}
	content["room_version"] = string(r.ver.Version())
	if r.ver.CreatorInCreateEvent() {
		content["creator"] = creator
	}
	roomID := ""
	if !r.ver.DomainlessRoomIDs() {
		roomID = "!room:test"
		r.roomID = roomID
	}
	ev, err := r.build(StateSet{}, creator, spec.MRoomCreate, "", content, roomID)
	if err != nil {
		r.tb.Fatalf("create: %v", err)
	}
	r.roomID = ev.RoomID().String()
	r.names[ev.EventID()] = "CREATE"
	return StateSet{{EventType: spec.MRoomCreate}: ev}
}

// send builds an event on state; it must pass the auth rules there.
func (r *testRoom) send(name string, state StateSet, sender, typ, sk string, content any) (gmsl.PDU, StateSet) {
	r.tb.Helper()
	ev, next, err := r.try(name, state, sender, typ, sk, content)
	if err != nil {
		r.tb.Fatalf("%s: %v", name, err)
	}
	return ev, next
}

// try builds an event on state and answers an error if the auth rules
// refuse it there.
func (r *testRoom) try(name string, state StateSet, sender, typ, sk string, content any) (gmsl.PDU, StateSet, error) {
	ev, err := r.build(state, sender, typ, sk, content, r.roomID)
	if err != nil {
		return nil, nil, err
	}
	if err := gmsl.Allowed(ev, stateProvider(state), senderIsUserID); err != nil {
		return nil, nil, err
	}
	r.names[ev.EventID()] = name
	next := StateSet{}
	for k, v := range state {
		next[k] = v
	}
	next[gmsl.StateKeyTuple{EventType: typ, StateKey: sk}] = ev
	return ev, next, nil
}

// sendInPlace is send for big rooms: it adds the event to state itself
// instead of to a copy.
func (r *testRoom) sendInPlace(name string, state StateSet, sender, typ, sk string, content any) {
	r.tb.Helper()
	ev, err := r.build(state, sender, typ, sk, content, r.roomID)
	if err == nil {
		err = gmsl.Allowed(ev, stateProvider(state), senderIsUserID)
	}
	if err != nil {
		r.tb.Fatalf("%s: %v", name, err)
	}
	r.names[ev.EventID()] = name
	state[gmsl.StateKeyTuple{EventType: typ, StateKey: sk}] = ev
}

// stateProvider serves the auth rules from a state without copying it.
type stateProvider StateSet

func (s stateProvider) get(typ, sk string) (gmsl.PDU, error) {
	return s[gmsl.StateKeyTuple{EventType: typ, StateKey: sk}], nil
}
func (s stateProvider) Create() (gmsl.PDU, error)      { return s.get(spec.MRoomCreate, "") }
func (s stateProvider) JoinRules() (gmsl.PDU, error)   { return s.get(spec.MRoomJoinRules, "") }
func (s stateProvider) PowerLevels() (gmsl.PDU, error) { return s.get(spec.MRoomPowerLevels, "") }
func (s stateProvider) Member(u spec.SenderID) (gmsl.PDU, error) {
	return s.get(spec.MRoomMember, string(u))
}
func (s stateProvider) ThirdPartyInvite(k string) (gmsl.PDU, error) {
	return s.get(spec.MRoomThirdPartyInvite, k)
}
func (s stateProvider) Valid() bool { return true }

func (r *testRoom) build(state StateSet, sender, typ, sk string, content any, roomID string) (gmsl.PDU, error) {
	prev := []string{}
	if r.last != "" {
		// The creator's first join is allowed only right after the
		// create event; other events' prev_events play no part here.
		prev = []string{r.last}
	}
	b := r.ver.NewEventBuilderFromProtoEvent(&gmsl.ProtoEvent{
		SenderID:   sender,
		RoomID:     roomID,
		Type:       typ,
		StateKey:   &sk,
		PrevEvents: prev,
		AuthEvents: []string{},
		Depth:      int64(len(r.events) + 1),
	})
	if err := b.SetContent(content); err != nil {
		return nil, err
	}
	if typ != spec.MRoomCreate {
		if err := b.AddAuthEvents(stateProvider(state)); err != nil {
			return nil, err
		}
	}
	r.now = r.now.Add(time.Second)
	ev, err := b.Build(r.now, "test", "ed25519:1", r.key)
	if err != nil {
		return nil, err
	}
	// Re-parse as a server would after receiving it.
	ev, err = r.ver.NewEventFromTrustedJSON(ev.JSON(), false)
	if err != nil {
		return nil, err
	}
	r.events[ev.EventID()] = ev
	r.last = ev.EventID()
	return ev, nil
}

func stateList(s StateSet) []gmsl.PDU {
	out := make([]gmsl.PDU, 0, len(s))
	for _, ev := range s {
		out = append(out, ev)
	}
	return out
}

// load is the EventLoader over the room's events.
func (r *testRoom) load(_ context.Context, ids []string) ([]gmsl.PDU, error) {
	r.loads++
	out := make([]gmsl.PDU, 0, len(ids))
	for _, id := range ids {
		if ev, ok := r.events[id]; ok {
			out = append(out, ev)
		}
	}
	return out, nil
}

func (r *testRoom) resolve(sets ...StateSet) (StateSet, error) {
	return Resolve(context.Background(), Params{Version: r.ver.Version(), StateSets: sets, Load: r.load})
}

// describe renders a state by test names, for failure messages.
func (r *testRoom) describe(s StateSet) map[string]string {
	out := map[string]string{}
	for k, ev := range s {
		out[k.EventType+"|"+k.StateKey] = r.nameOf(ev)
	}
	return out
}

func (r *testRoom) nameOf(ev gmsl.PDU) string {
	if n, ok := r.names[ev.EventID()]; ok {
		return n
	}
	return ev.EventID()
}

// initial is the usual start: alice creates and joins, sets power levels
// (more), public join rules, and bob and charlie join.
func (r *testRoom) initial(users map[string]int64) StateSet {
	alice := user("alice")
	s := r.create(alice, nil)
	_, s = r.send("IMA", s, alice, spec.MRoomMember, alice, member("join"))
	pl := map[string]int64{}
	if !r.ver.PrivilegedCreators() {
		pl[alice] = 100
	}
	for u, l := range users {
		pl[u] = l
	}
	_, s = r.send("IPOWER", s, alice, spec.MRoomPowerLevels, "", powerLevels(pl))
	_, s = r.send("IJR", s, alice, spec.MRoomJoinRules, "", map[string]any{"join_rule": "public"})
	for _, n := range []string{"bob", "charlie"} {
		_, s = r.send("IM"+n, s, user(n), spec.MRoomMember, user(n), member("join"))
	}
	return s
}

func member(m string) map[string]any { return map[string]any{"membership": m} }

func powerLevels(users map[string]int64) map[string]any {
	return map[string]any{"users": users, "users_default": 0, "state_default": 50, "events_default": 0,
		"ban": 50, "kick": 50, "redact": 50, "invite": 0,
		"events": map[string]int64{spec.MRoomPowerLevels: 50, spec.MRoomTopic: 50}}
}

func topic(t string) map[string]any { return map[string]any{"topic": t} }
