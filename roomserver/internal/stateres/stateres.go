// Package stateres resolves the state of a room from the states of its forks:
// state resolution v1 (room version 1, through gomatrixserverlib), v2 (room
// versions 2 to 11) and v2.1 (MSC4297, room version 12) in our own code,
// because gomatrixserverlib's v2.1 path runs plain v2 or panics on a
// privileged-creator room (docs gmsl-guide §7, pitfall 3).
//
// It holds no storage: the caller passes the state sets and a function that
// loads events by ID, from which the auth chains are walked. Only the
// roomserver imports it.
package stateres

import (
	"context"
	"errors"
	"fmt"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
)

// StateSet is the state of a room at one fork: (type, state_key) -> event.
type StateSet map[gmsl.StateKeyTuple]gmsl.PDU

// EventLoader returns the events it has among ids, in any order. An ID it
// does not know is left out of the answer; only a failure to look is an error.
type EventLoader func(ctx context.Context, ids []string) ([]gmsl.PDU, error)

// DefaultMaxEvents bounds how many events (state sets and auth chains
// together) one resolution may touch when Params.MaxEvents is 0.
const DefaultMaxEvents = 1_000_000

// loadBatch is how many IDs are asked of the loader at once.
const loadBatch = 1000

var (
	// ErrMalformed reports input that cannot be resolved: an event under the
	// wrong key, from another room or room version, a non-state auth event,
	// a cycle in auth events.
	ErrMalformed = errors.New("malformed state resolution input")
	// ErrMissingAuthEvent reports an auth event the loader does not have:
	// resolving without it would give another answer than other servers.
	ErrMissingAuthEvent = errors.New("auth event missing")
	// ErrTooLarge reports auth chains above the bound.
	ErrTooLarge = errors.New("state resolution input too large")
)

// Params is one resolution's input.
type Params struct {
	// Version is the room's version; it picks the algorithm.
	Version gmsl.RoomVersion
	// StateSets are the states of the forks; at least one.
	StateSets []StateSet
	// Load loads auth events by ID.
	Load EventLoader
	// IsRejected reports a rejected event; nil means none is.
	IsRejected func(eventID string) bool
	// UserIDForSender maps sender IDs to user IDs; nil means sender IDs
	// are user IDs (every room version Myelin serves).
	UserIDForSender spec.UserIDForSender
	// MaxEvents bounds the events touched; 0 means DefaultMaxEvents.
	MaxEvents int

	gmslCompat bool // tests only: see resolver.gmslCompat
}

// Resolve returns the resolved state of p.StateSets, as every server in the
// room computes it. It never panics and refuses malformed input with an
// error wrapping one of the errors above.
func Resolve(ctx context.Context, p Params) (res StateSet, err error) {
	// Auth rules run inside gomatrixserverlib, which panics on some inputs;
	// they are recovered where they run, this is the last net.
	defer func() {
		if r := recover(); r != nil {
			res, err = nil, fmt.Errorf("%w: state resolution panicked: %v", ErrMalformed, r)
		}
	}()
	verImpl, err := gmsl.GetRoomVersion(p.Version)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if len(p.StateSets) == 0 {
		return nil, fmt.Errorf("%w: no state sets", ErrMalformed)
	}
	if p.Load == nil {
		return nil, fmt.Errorf("%w: no event loader", ErrMalformed)
	}
	if p.MaxEvents <= 0 {
		p.MaxEvents = DefaultMaxEvents
	}
	if p.IsRejected == nil {
		p.IsRejected = func(string) bool { return false }
	}
	if p.UserIDForSender == nil {
		p.UserIDForSender = senderIsUserID
	}
	if err := checkSets(p.Version, p.StateSets); err != nil {
		return nil, err
	}
	unconflicted, conflicted := split(p.StateSets)
	if len(conflicted) == 0 {
		return unconflicted, nil
	}
	algo := verImpl.StateResAlgorithm()
	if algo == gmsl.StateResV1 {
		return resolveV1(p, unconflicted, conflicted)
	}
	g, err := loadGraph(ctx, p)
	if err != nil {
		return nil, err
	}
	switch algo {
	case gmsl.StateResV2:
		return resolveV2(g, p, verImpl, unconflicted, conflicted, false)
	case gmsl.StateResV2_1:
		return resolveV2(g, p, verImpl, unconflicted, conflicted, true)
	default:
		return nil, fmt.Errorf("%w: unknown state resolution algorithm for room version %s", ErrMalformed, p.Version)
	}
}

// senderIsUserID is the UserIDForSender of room versions without pseudo IDs.
// It never answers (nil, nil), which gomatrixserverlib would dereference.
func senderIsUserID(_ spec.RoomID, s spec.SenderID) (*spec.UserID, error) {
	u, err := spec.NewUserID(string(s), true)
	if err != nil {
		return nil, fmt.Errorf("sender %q: %w", s, err)
	}
	return u, nil
}

// checkSets refuses events under the wrong key, of another version or room.
func checkSets(ver gmsl.RoomVersion, sets []StateSet) error {
	var roomID string
	// The sets of a big room share most events: check each once.
	checked := map[gmsl.PDU]gmsl.StateKeyTuple{}
	for i, set := range sets {
		for k, ev := range set {
			if ev == nil {
				return fmt.Errorf("%w: state set %d: nil event at %v", ErrMalformed, i, k)
			}
			if ck, ok := checked[ev]; ok && ck == k {
				continue
			}
			checked[ev] = k
			if ev.Version() != ver {
				return fmt.Errorf("%w: event %s is of room version %s, not %s", ErrMalformed, ev.EventID(), ev.Version(), ver)
			}
			if sk := ev.StateKey(); sk == nil || *sk != k.StateKey || ev.Type() != k.EventType {
				return fmt.Errorf("%w: event %s under key %v", ErrMalformed, ev.EventID(), k)
			}
			rid := ev.RoomID().String()
			if roomID == "" {
				roomID = rid
			} else if rid != roomID {
				return fmt.Errorf("%w: event %s of room %s, not %s", ErrMalformed, ev.EventID(), rid, roomID)
			}
		}
	}
	return nil
}

// split returns the unconflicted state (keys with the same event in every
// set) and the conflicted state set (every event of the other keys).
func split(sets []StateSet) (StateSet, map[string]gmsl.PDU) {
	unconflicted := StateSet{}
	conflicted := map[string]gmsl.PDU{}
	keys := map[gmsl.StateKeyTuple]struct{}{}
	for _, s := range sets {
		for k := range s {
			keys[k] = struct{}{}
		}
	}
	for k := range keys {
		first, same := sets[0][k], true
		for _, s := range sets[1:] {
			if ev := s[k]; ev == nil || first == nil || ev.EventID() != first.EventID() {
				same = false
				break
			}
		}
		if same {
			unconflicted[k] = first
			continue
		}
		for _, s := range sets {
			if ev := s[k]; ev != nil {
				conflicted[ev.EventID()] = ev
			}
		}
	}
	return unconflicted, conflicted
}

// graph is every event of the state sets and of their auth chains, by ID.
type graph struct {
	events map[string]gmsl.PDU
}

// loadGraph walks the auth chains of every state set, breadth first,
// loading a batch of IDs at a time, within p.MaxEvents.
func loadGraph(ctx context.Context, p Params) (*graph, error) {
	g := &graph{events: map[string]gmsl.PDU{}}
	var todo []string
	want := map[string]bool{}
	add := func(ev gmsl.PDU) {
		g.events[ev.EventID()] = ev
		for _, a := range ev.AuthEventIDs() {
			if _, ok := g.events[a]; !ok && !want[a] {
				want[a] = true
				todo = append(todo, a)
			}
		}
	}
	var roomID string
	for _, s := range p.StateSets {
		for _, ev := range s {
			if roomID == "" {
				roomID = ev.RoomID().String() // checkSets saw they agree
			}
			if _, ok := g.events[ev.EventID()]; !ok {
				delete(want, ev.EventID())
				add(ev)
			}
		}
	}
	for len(todo) > 0 {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		batch := todo
		if len(batch) > loadBatch {
			batch = batch[:loadBatch]
		}
		todo = todo[len(batch):]
		var ask []string
		for _, id := range batch {
			if want[id] {
				ask = append(ask, id)
			}
		}
		if len(ask) == 0 {
			continue
		}
		if len(g.events)+len(ask) > p.MaxEvents {
			return nil, fmt.Errorf("%w: more than %d events in the auth chains", ErrTooLarge, p.MaxEvents)
		}
		got, err := p.Load(ctx, ask)
		if err != nil {
			return nil, fmt.Errorf("load auth events: %w", err)
		}
		for _, ev := range got {
			if ev == nil || !want[ev.EventID()] {
				continue // not asked for, or already in: ignore it
			}
			if ev.Version() != p.Version || ev.RoomID().String() != roomID {
				return nil, fmt.Errorf("%w: auth event %s not of this room", ErrMalformed, ev.EventID())
			}
			if ev.StateKey() == nil {
				return nil, fmt.Errorf("%w: auth event %s is not a state event", ErrMalformed, ev.EventID())
			}
			delete(want, ev.EventID())
			add(ev)
		}
		for _, id := range ask {
			if want[id] {
				return nil, fmt.Errorf("%w: %s", ErrMissingAuthEvent, id)
			}
		}
	}
	return g, nil
}

// resolveV1 runs gomatrixserverlib's state resolution v1, which is correct
// for room version 1, and adds the unconflicted state it leaves out. As the
// v1 algorithm says, the conflicted auth events are checked against the
// unconflicted state, not against auth chains.
func resolveV1(p Params, unconflicted StateSet, conflicted map[string]gmsl.PDU) (res StateSet, err error) {
	defer func() {
		if r := recover(); r != nil {
			res, err = nil, fmt.Errorf("%w: state resolution v1 panicked: %v", ErrMalformed, r)
		}
	}()
	confl := make([]gmsl.PDU, 0, len(conflicted))
	for _, ev := range conflicted {
		confl = append(confl, ev)
	}
	base := make([]gmsl.PDU, 0, len(unconflicted))
	for _, ev := range unconflicted {
		base = append(base, ev)
	}
	res = StateSet{}
	for _, ev := range gmsl.ResolveStateConflicts(confl, base, p.UserIDForSender) {
		if sk := ev.StateKey(); sk != nil {
			res[gmsl.StateKeyTuple{EventType: ev.Type(), StateKey: *sk}] = ev
		}
	}
	for k, ev := range unconflicted {
		res[k] = ev
	}
	return res, nil
}
