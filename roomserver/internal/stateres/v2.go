package stateres

import (
	"container/heap"
	"encoding/json"
	"fmt"
	"math"
	"sort"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
)

// infinitePower is the power of a privileged creator (room version 12): above
// any power level, which canonical JSON bounds to 2^53-1.
const infinitePower = math.MaxInt64

// resolver holds one v2 or v2.1 resolution.
type resolver struct {
	g          *graph
	p          Params
	ver        gmsl.IRoomVersion
	rejected   map[string]bool
	powerCache map[string]int64
	// gmslCompat, set only by tests, reproduces three deviations of
	// gomatrixserverlib's v2 from the spec, so that a cross-check can show
	// they are the only differences (see crosscheck_test.go).
	gmslCompat bool
}

func (r *resolver) isRejected(id string) bool {
	rej, ok := r.rejected[id]
	if !ok {
		rej = r.p.IsRejected(id)
		r.rejected[id] = rej
	}
	return rej
}

// resolveV2 is state resolution v2 (spec, "Room version 2", state
// resolution) and, with v21, v2.1 (MSC4297): the full conflicted set also
// holds the conflicted state subgraph, and the power events are replayed on
// an empty state instead of the unconflicted state.
func resolveV2(g *graph, p Params, ver gmsl.IRoomVersion, unconflicted StateSet, conflicted map[string]gmsl.PDU, v21 bool) (StateSet, error) {
	r := &resolver{g: g, p: p, ver: ver, rejected: map[string]bool{}, powerCache: map[string]int64{}, gmslCompat: p.gmslCompat}

	full, err := r.fullConflictedSet(unconflicted, conflicted, v21)
	if err != nil {
		return nil, err
	}

	// Step 1: the power events of the full conflicted set and the events of
	// their auth chains within it, in reverse topological power order.
	power := map[string]bool{}
	var stack []string
	for id := range full {
		if isPowerEvent(g.events[id]) {
			power[id] = true
			stack = append(stack, id)
		}
	}
	// Like Synapse, follow auth events only while they stay in the full
	// conflicted set.
	for len(stack) > 0 {
		id := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		for _, a := range g.events[id].AuthEventIDs() {
			if r.gmslCompat && conflicted[a] == nil {
				continue // gmsl follows the conflicted state set only
			}
			if full[a] && !power[a] {
				power[a] = true
				stack = append(stack, a)
			}
		}
	}
	ordered, err := r.powerOrder(power)
	if err != nil {
		return nil, err
	}

	// Step 2: iterative auth checks, from the unconflicted state (v2) or
	// from nothing (v2.1, MSC4297 modification 1).
	state := StateSet{}
	if !v21 {
		for k, ev := range unconflicted {
			state[k] = ev
		}
	}
	r.authCheckAndApply(state, ordered)

	// Step 3: the rest, in mainline order of the resolved power levels.
	var others []string
	for id := range full {
		if !power[id] {
			others = append(others, id)
		}
	}
	others = r.mainlineOrder(state[gmsl.StateKeyTuple{EventType: spec.MRoomPowerLevels}], others)

	// Step 4: iterative auth checks on top of the partial state.
	r.authCheckAndApply(state, others)

	// Step 5: the unconflicted state wins.
	for k, ev := range unconflicted {
		state[k] = ev
	}
	return state, nil
}

// fullConflictedSet is the conflicted state set, the auth difference and,
// for v2.1, the conflicted state subgraph: every event on an auth path
// between two conflicted events.
func (r *resolver) fullConflictedSet(unconflicted StateSet, conflicted map[string]gmsl.PDU, v21 bool) (map[string]bool, error) {
	g := r.g
	full := map[string]bool{}
	for id := range conflicted {
		full[id] = true
	}

	// Auth difference: the union of the sets' auth chains minus their
	// intersection. A set's chain includes its own events (as Synapse has
	// it), so the unconflicted state is in every chain and never in the
	// difference; and whatever the unconflicted state's chain holds is in
	// every set's chain too, so only the chains of the conflicted events
	// of each set need a walk of their own.
	common := g.ancestors(unconflictedIDs(unconflicted), nil)
	counts := map[string]int{}
	for _, set := range r.p.StateSets {
		var roots []string
		for _, ev := range set {
			if conflicted[ev.EventID()] != nil {
				roots = append(roots, ev.EventID())
			}
		}
		for id := range g.ancestors(roots, common) {
			counts[id]++
		}
	}
	for id, n := range counts {
		if n < len(r.p.StateSets) {
			full[id] = true
		}
	}

	if v21 {
		// Conflicted state subgraph: events reachable from a conflicted
		// event by auth edges, from which a conflicted event is reachable.
		roots := make([]string, 0, len(conflicted))
		for id := range conflicted {
			roots = append(roots, id)
		}
		below := g.ancestors(roots, nil)
		children := map[string][]string{}
		for id := range below {
			for _, a := range g.events[id].AuthEventIDs() {
				if below[a] {
					children[a] = append(children[a], id)
				}
			}
		}
		seen := map[string]bool{}
		queue := append([]string(nil), roots...)
		for _, id := range roots {
			seen[id] = true
		}
		for len(queue) > 0 {
			id := queue[0]
			queue = queue[1:]
			full[id] = true
			for _, c := range children[id] {
				if !seen[c] {
					seen[c] = true
					queue = append(queue, c)
				}
			}
		}
	}

	// Events the auth rules cannot place (rejected ones) stay in: the
	// iterative auth checks drop what fails. Unconflicted events are never
	// replayed.
	for _, ev := range unconflicted {
		delete(full, ev.EventID())
	}
	return full, nil
}

func unconflictedIDs(s StateSet) []string {
	ids := make([]string, 0, len(s))
	for _, ev := range s {
		ids = append(ids, ev.EventID())
	}
	return ids
}

// ancestors returns roots and every event reachable from them by auth
// edges, not walking into stop.
func (g *graph) ancestors(roots []string, stop map[string]bool) map[string]bool {
	out := map[string]bool{}
	stack := make([]string, 0, len(roots))
	for _, id := range roots {
		if !out[id] && !stop[id] {
			out[id] = true
			stack = append(stack, id)
		}
	}
	for len(stack) > 0 {
		id := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		ev := g.events[id]
		if ev == nil {
			continue
		}
		for _, a := range ev.AuthEventIDs() {
			if !out[a] && !stop[a] {
				out[a] = true
				stack = append(stack, a)
			}
		}
	}
	return out
}

// isPowerEvent: power levels, join rules, create, and a kick or ban
// (spec: "power events").
func isPowerEvent(ev gmsl.PDU) bool {
	if ev == nil || ev.StateKey() == nil {
		return false
	}
	switch ev.Type() {
	case spec.MRoomPowerLevels, spec.MRoomJoinRules, spec.MRoomCreate:
		return ev.StateKeyEquals("")
	case spec.MRoomMember:
		if ev.StateKeyEquals(string(ev.SenderID())) {
			return false
		}
		m, err := ev.Membership()
		return err == nil && (m == spec.Leave || m == spec.Ban)
	}
	return false
}

// sortKey orders events: the power order uses (-power, ts, ID), the
// mainline order (position, ts, ID).
type sortKey struct {
	first int64
	ts    spec.Timestamp
	id    string
}

func (a sortKey) less(b sortKey) bool {
	if a.first != b.first {
		return a.first < b.first
	}
	if a.ts != b.ts {
		return a.ts < b.ts
	}
	return a.id < b.id
}

type keyHeap []sortKey

func (h keyHeap) Len() int           { return len(h) }
func (h keyHeap) Less(i, j int) bool { return h[i].less(h[j]) }
func (h keyHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *keyHeap) Push(x any)        { *h = append(*h, x.(sortKey)) }
func (h *keyHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// powerOrder is the reverse topological power ordering of set: an event
// after its auth events, else higher sender power first, then older
// origin_server_ts, then smaller event ID (Kahn's algorithm, smallest first).
func (r *resolver) powerOrder(set map[string]bool) ([]string, error) {
	parents := map[string]int{}
	children := map[string][]string{}
	for id := range set {
		parents[id] = 0
	}
	for id := range set {
		seen := map[string]bool{}
		for _, a := range r.g.events[id].AuthEventIDs() {
			if set[a] && !seen[a] {
				seen[a] = true
				parents[id]++
				children[a] = append(children[a], id)
			}
		}
	}
	key := func(id string) sortKey {
		ev := r.g.events[id]
		return sortKey{first: -r.senderPower(ev), ts: ev.OriginServerTS(), id: id}
	}
	h := &keyHeap{}
	for id, n := range parents {
		if n == 0 {
			*h = append(*h, key(id))
		}
	}
	heap.Init(h)
	out := make([]string, 0, len(set))
	for h.Len() > 0 {
		k := heap.Pop(h).(sortKey)
		out = append(out, k.id)
		for _, c := range children[k.id] {
			parents[c]--
			if parents[c] == 0 {
				heap.Push(h, key(c))
			}
		}
	}
	if len(out) != len(set) {
		return nil, fmt.Errorf("%w: cycle in auth events", ErrMalformed)
	}
	if r.gmslCompat {
		return r.gmslPowerOrder(set, key), nil
	}
	return out, nil
}

// gmslPowerOrder is gomatrixserverlib's order: Kahn's algorithm from the
// events nothing in set cites, taking the largest key each time and
// putting it first. It is a topological order, but not the smallest one
// the spec asks for.
func (r *resolver) gmslPowerOrder(set map[string]bool, key func(string) sortKey) []string {
	cited := map[string]int{}
	for id := range set {
		seen := map[string]bool{}
		for _, a := range r.g.events[id].AuthEventIDs() {
			if set[a] && !seen[a] {
				seen[a] = true
				cited[a]++
			}
		}
	}
	var ready []sortKey
	for id := range set {
		if cited[id] == 0 {
			ready = append(ready, key(id))
		}
	}
	out := make([]string, len(set))
	n := len(set)
	for len(ready) > 0 {
		sort.Slice(ready, func(i, j int) bool { return ready[i].less(ready[j]) })
		k := ready[len(ready)-1]
		ready = ready[:len(ready)-1]
		n--
		out[n] = k.id
		seen := map[string]bool{}
		for _, a := range r.g.events[k.id].AuthEventIDs() {
			if set[a] && !seen[a] {
				seen[a] = true
				cited[a]--
				if cited[a] == 0 {
					ready = append(ready, key(a))
				}
			}
		}
	}
	return out
}

// senderPower is the sender's power level by the event's own auth events:
// infinite for a privileged creator (room version 12), else the power
// levels event's, else 100 for the room's creator and 0 for anyone else.
func (r *resolver) senderPower(ev gmsl.PDU) int64 {
	if p, ok := r.powerCache[ev.EventID()]; ok {
		return p
	}
	var create, pl gmsl.PDU
	for _, a := range ev.AuthEventIDs() {
		ae := r.g.events[a]
		if ae == nil || ae.StateKey() == nil || !ae.StateKeyEquals("") {
			continue
		}
		switch ae.Type() {
		case spec.MRoomCreate:
			create = ae
		case spec.MRoomPowerLevels:
			pl = ae
		}
	}
	p := r.powerFrom(ev.SenderID(), create, pl)
	r.powerCache[ev.EventID()] = p
	return p
}

func (r *resolver) powerFrom(sender spec.SenderID, create, pl gmsl.PDU) int64 {
	if create != nil && r.ver.PrivilegedCreators() {
		for _, c := range creators(create, true) {
			if c == string(sender) {
				return infinitePower
			}
		}
	}
	if pl != nil {
		c, err := gmsl.NewPowerLevelContentFromEvent(pl)
		if err == nil {
			return c.UserLevel(sender)
		}
		return 0
	}
	if create != nil {
		for _, c := range creators(create, false) {
			if c == string(sender) {
				return 100
			}
		}
	}
	return 0
}

// creators are the room's creators by its create event: its sender (room
// versions 11 and up) or content.creator (older ones), and, with
// additional, content.additional_creators (room version 12). Unlike
// gmsl.CreatorsFromCreateEvent it does not panic on bad content.
func creators(create gmsl.PDU, additional bool) []string {
	var content struct {
		Creator            string   `json:"creator"`
		AdditionalCreators []string `json:"additional_creators"`
	}
	_ = json.Unmarshal(create.Content(), &content)
	var out []string
	if ver, err := gmsl.GetRoomVersion(create.Version()); err == nil && ver.CreatorInCreateEvent() {
		out = append(out, content.Creator)
	} else {
		out = append(out, string(create.SenderID()))
	}
	if additional {
		out = append(out, content.AdditionalCreators...)
	}
	return out
}

// mainlineOrder sorts ids by the position of their closest mainline event
// (the chain of power levels events from the resolved one back through
// their auth events), then origin_server_ts, then event ID. Events with no
// mainline event come first.
func (r *resolver) mainlineOrder(resolvedPL gmsl.PDU, ids []string) []string {
	var mainline []string
	seen := map[string]bool{}
	for ev := resolvedPL; ev != nil && !seen[ev.EventID()]; ev = r.authPL(ev) {
		seen[ev.EventID()] = true
		mainline = append(mainline, ev.EventID())
	}
	depth := make(map[string]int64, len(mainline))
	for i, id := range mainline {
		depth[id] = int64(len(mainline) - i) // the oldest is 1
	}
	depthOf := func(ev gmsl.PDU) int64 {
		var walked []string
		d := int64(0)
		visited := map[string]bool{}
		for cur := ev; cur != nil && !visited[cur.EventID()]; cur = r.authPL(cur) {
			visited[cur.EventID()] = true
			if md, ok := depth[cur.EventID()]; ok {
				d = md
				break
			}
			walked = append(walked, cur.EventID())
		}
		// Remember the answer for the power levels events walked, so
		// many events sharing them walk once.
		for _, id := range walked {
			if r.g.events[id].Type() == spec.MRoomPowerLevels {
				depth[id] = d
			}
		}
		return d
	}
	keys := make([]sortKey, len(ids))
	for i, id := range ids {
		ev := r.g.events[id]
		keys[i] = sortKey{first: depthOf(ev), ts: ev.OriginServerTS(), id: id}
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].less(keys[j]) })
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = k.id
	}
	return out
}

// authPL is the power levels event among ev's auth events, or nil.
func (r *resolver) authPL(ev gmsl.PDU) gmsl.PDU {
	for _, a := range ev.AuthEventIDs() {
		if ae := r.g.events[a]; ae != nil && ae.Type() == spec.MRoomPowerLevels && ae.StateKeyEquals("") {
			return ae
		}
	}
	return nil
}

// authCheckAndApply is the iterative auth checks algorithm: each event is
// checked against the state for the keys its auth needs, falling back to
// its own (not rejected) auth events, and applied when allowed.
func (r *resolver) authCheckAndApply(state StateSet, ids []string) {
	for _, id := range ids {
		ev := r.g.events[id]
		if ev == nil || ev.StateKey() == nil || r.isRejected(id) {
			continue
		}
		own := map[gmsl.StateKeyTuple]gmsl.PDU{}
		for _, a := range ev.AuthEventIDs() {
			ae := r.g.events[a]
			if ae == nil || ae.StateKey() == nil || r.isRejected(a) {
				continue
			}
			own[gmsl.StateKeyTuple{EventType: ae.Type(), StateKey: *ae.StateKey()}] = ae
		}
		prov, _ := gmsl.NewAuthEvents(nil)
		for _, t := range gmsl.StateNeededForAuth([]gmsl.PDU{ev}).Tuples() {
			if se := state[t]; se != nil && !r.isRejected(se.EventID()) {
				_ = prov.AddEvent(se)
			} else if ae := own[t]; ae != nil {
				if r.gmslCompat {
					// gmsl adds the event under test instead of its
					// auth event (guide, pitfall 3f).
					ae = ev
				}
				_ = prov.AddEvent(ae)
			}
		}
		if r.allowed(ev, prov) {
			state[gmsl.StateKeyTuple{EventType: ev.Type(), StateKey: *ev.StateKey()}] = ev
		}
	}
}

// allowed runs the auth rules; a panic in them (known for odd content)
// means not allowed.
func (r *resolver) allowed(ev gmsl.PDU, prov gmsl.AuthEventProvider) (ok bool) {
	defer func() {
		if recover() != nil {
			ok = false
		}
	}()
	return gmsl.Allowed(ev, prov, r.p.UserIDForSender) == nil
}
