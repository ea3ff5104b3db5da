package input

import (
	"context"
	"fmt"
	"sort"
	"time"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/nats-io/nats.go/jetstream"

	"myelin/internal/eventsig"
	rsapi "myelin/roomserver/api"
	"myelin/roomserver/storage"
)

// maxAuthFetched bounds the auth events one request may fetch.
const maxAuthFetched = 500

// maxGaps bounds the prev events one request may fetch the state of, and
// maxStateFetched the events it may fetch so.
const (
	maxGaps         = 4
	maxStateFetched = 20000
)

// fetch is the fetch step of a request of complete events: it finds the
// prev events and auth events they need and this server has not stored,
// and gets them through the Fetcher, bounded in count (MaxMissing,
// maxAuthFetched) and time (FetchTimeout). It returns the auth events to
// store as outliers, and the missing prev events in an order where each
// comes after its own prev events. A prev event of the events the walk
// brought that it cannot reach is fetched with the state before it (both
// stored as outliers); that state is returned in prevStates and the event
// in gapEvents, by its ID (addGapEvents makes the state after it). It
// refuses the request, storing nothing, when a prev event is still
// missing, as it does with no Fetcher.
//
// While it waits on a remote, the room's actor holds none of the write
// slots other rooms need, keeps the messages waiting on it from being
// redelivered (InProgress), and is marked fetching, so that dispatch
// bounds what queues behind it.
func (in *Inputer) fetch(ctx context.Context, a *actor, req *rsapi.InputRequest, room *storage.Room, pdus []gmsl.PDU, waiting []jetstream.Msg) (outliers, fetched []gmsl.PDU, prevStates map[string]stateRef, gapEvents map[string]gmsl.PDU, err error) {
	stored, err := in.store.EventNIDs(ctx, refsOf(pdus))
	if err != nil {
		return nil, nil, nil, nil, err
	}
	idx := missingPrev(pdus, stored)
	needAuth, needState := false, false
	if in.cfg.Fetcher != nil && room != nil {
		needAuth = len(missingAuth(pdus, stored)) > 0
		outlierPrevs, err := in.outliersAmong(ctx, pdus, stored)
		if err != nil {
			return nil, nil, nil, nil, err
		}
		needState = len(outlierPrevs) > 0
	}
	if idx < 0 && !needAuth && !needState {
		return nil, nil, nil, nil, nil
	}
	if room == nil {
		// Only a create event starts a room, and it has no prev events;
		// taking in a room from a join's answer is the fetch step's to do.
		return nil, nil, nil, nil, refuse(idx, "M_NOT_FOUND", "unknown room %s", pdus[idx].RoomID().String())
	}
	if in.cfg.Fetcher == nil {
		return nil, nil, nil, nil, refuse(idx, "M_UNKNOWN", "event %s has prev events this server does not have", pdus[idx].EventID())
	}

	fctx, done, err := in.startFetch(ctx, a, waiting, max(idx, 0))
	if err != nil {
		return nil, nil, nil, nil, err
	}
	defer done()
	scope := rsapi.FetchScope{RoomID: room.ID, RoomVersion: room.Version, Servers: serversOf(req.Origin, pdus)}
	log := in.log.WithField("room_id", room.ID)

	if idx >= 0 && fctx.Err() == nil {
		latestEvs, err := in.store.EventsByNID(ctx, room.Latest)
		if err != nil {
			return nil, nil, nil, nil, err
		}
		earliest := make([]string, len(latestEvs))
		for i, e := range latestEvs {
			earliest[i] = e.ID
		}
		var wanted []string
		for _, i := range withMissingPrevs(pdus, stored) {
			wanted = append(wanted, pdus[i].EventID())
		}
		got, err := in.cfg.Fetcher.MissingEvents(fctx, scope, earliest, wanted, in.cfg.MaxMissing)
		if err != nil {
			log.WithError(err).Debug("fetching missing events")
		}
		fetched = fresh(got, room.ID, stored, pdus, nil, in.cfg.MaxMissing)
		fetched = ordered(fetched, gmsl.PDU.PrevEventIDs)
	}
	if ctx.Err() != nil {
		return nil, nil, nil, nil, ctx.Err() // shutting down: the message is redelivered
	}
	// What the fetched events refer to.
	more, err := in.store.EventNIDs(ctx, refsOf(fetched))
	if err != nil {
		return nil, nil, nil, nil, err
	}
	for id, nid := range more {
		stored[id] = nid
	}
	all := append(append([]gmsl.PDU(nil), fetched...), pdus...)
	// Gaps the walk could not close: the state before each missing prev
	// event (or one known only as an outlier), and the event itself. Only
	// at the far end of what the walk brought, as Synapse does: an event
	// sent whose own prev events the origin would not give is refused,
	// not taken in on a state that origin alone vouches for.
	gaps := missingPrevIDs(fetched, all, stored)
	outlierPrevs, err := in.outliersAmong(ctx, all, stored)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	gaps = append(gaps, outlierPrevs...)
	if len(gaps) > 0 && len(gaps) <= maxGaps && fctx.Err() == nil {
		prevStates, gapEvents = map[string]stateRef{}, map[string]gmsl.PDU{}
		for _, id := range gaps {
			st, evs, err := in.stateBeforeByIDs(fctx, scope, room.ID, id)
			if err != nil {
				log.WithError(err).WithField("event_id", id).Debug("fetching state at a gap")
				continue
			}
			outliers = addFetched(outliers, evs, room.ID, stored, all, maxStateFetched-len(outliers))
			prevStates[id], gapEvents[id] = st, evs[len(evs)-1]
		}
		if ctx.Err() != nil {
			return nil, nil, nil, nil, ctx.Err()
		}
	}
	if i := missingPrevFilled(all, stored, prevStates); i >= 0 {
		i = max(0, i-len(fetched))
		return nil, nil, nil, nil, refuse(i, "M_UNKNOWN", "prev events of event %s are missing and could not be fetched", pdus[i].EventID())
	}

	// Auth events: fetched whole chains, stored as outliers first.
	outliers = in.fetchAuthChains(fctx, scope, all, stored, outliers, maxAuthFetched-len(outliers))
	if ctx.Err() != nil {
		return nil, nil, nil, nil, ctx.Err()
	}
	// Events still lacking auth events are stored rejected, as before.
	return ordered(outliers, gmsl.PDU.AuthEventIDs), fetched, prevStates, gapEvents, nil
}

// startFetch begins the fetch step of the request at the head of a's
// batch (waiting, the rest of it): the room is marked fetching, its
// messages are kept from redelivery, and a fetch slot is taken, within
// FetchTimeout (fctx); done ends all that. Past the slow rooms' budget the
// request is refused as busy (event idx), since a remote that hangs for
// many rooms at once must not take the whole ack budget either.
func (in *Inputer) startFetch(ctx context.Context, a *actor, waiting []jetstream.Msg, idx int) (fctx context.Context, done func(), err error) {
	held := 1 + len(waiting) // this message and the rest of its batch
	if !in.beginFetch(a, held) {
		ref := refuse(idx, "M_UNKNOWN", "too many rooms fetching missing events; try again later")
		ref.busy = true
		return nil, nil, ref
	}
	stopKeepAlive := in.keepAlive(ctx, a, waiting)
	fctx, cancel := context.WithTimeout(ctx, in.cfg.FetchTimeout)
	slot := false
	select {
	case in.fetches <- struct{}{}:
		slot = true
	case <-fctx.Done():
	}
	return fctx, func() {
		if slot {
			<-in.fetches
		}
		cancel()
		stopKeepAlive()
		in.endFetch(a, held)
	}, nil
}

// fetchAuthChains fetches the auth chains of the events of evs whose auth
// events are neither stored nor among evs, and returns outliers with what
// came that is new, at most budget more events.
func (in *Inputer) fetchAuthChains(ctx context.Context, scope rsapi.FetchScope, evs []gmsl.PDU, stored map[string]int64, outliers []gmsl.PDU, budget int) []gmsl.PDU {
	limit := len(outliers) + budget
	for _, i := range missingAuth(evs, stored) {
		if ctx.Err() != nil || len(outliers) >= limit {
			break
		}
		if !lacksAuth(evs[i], stored, evs) {
			continue // an earlier chain brought them
		}
		chain, err := in.cfg.Fetcher.AuthChain(ctx, scope, evs[i].EventID())
		if err != nil {
			in.log.WithField("room_id", scope.RoomID).WithError(err).Debug("fetching auth chain")
			continue
		}
		outliers = addFetched(outliers, chain, scope.RoomID, stored, evs, limit-len(outliers))
	}
	return outliers
}

// addFetched appends to outliers the fetched events that are new (see
// fresh), at most limit, and marks them known in stored: they are stored
// before the events that need them.
func addFetched(outliers, got []gmsl.PDU, roomID string, stored map[string]int64, have []gmsl.PDU, limit int) []gmsl.PDU {
	got = fresh(got, roomID, stored, have, outliers, limit)
	for _, o := range got {
		stored[o.EventID()] = 0
	}
	return append(outliers, got...)
}

// fetchStateBefore fetches a prev event this server cannot reach by
// walking back, and the state before it; it returns that state and every
// event to store as an outlier (the state, their auth chain, and last the
// event).
func (in *Inputer) fetchStateBefore(ctx context.Context, scope rsapi.FetchScope, roomID, eventID string) (stateRef, []gmsl.PDU, error) {
	ev, err := in.fetchEvent(ctx, scope, roomID, eventID)
	if err != nil {
		return stateRef{}, nil, err
	}
	state, chain, err := in.cfg.Fetcher.StateBefore(ctx, scope, eventID)
	if err != nil {
		return stateRef{}, nil, err
	}
	if len(state)+len(chain) > maxStateFetched {
		return stateRef{}, nil, fmt.Errorf("state at %s has more than %d events", eventID, maxStateFetched)
	}
	all := append(append(append([]gmsl.PDU(nil), chain...), state...), ev)
	return stateOf(roomID, state), all, nil
}

// fetchEvent fetches one event of roomID.
func (in *Inputer) fetchEvent(ctx context.Context, scope rsapi.FetchScope, roomID, eventID string) (gmsl.PDU, error) {
	ev, err := in.cfg.Fetcher.Event(ctx, scope, eventID)
	if err != nil {
		return nil, err
	}
	if ev == nil || ev.EventID() != eventID || ev.RoomID().String() != roomID {
		return nil, fmt.Errorf("remote sent another event for %s", eventID)
	}
	return ev, nil
}

// stateOf is a state as a remote sent it: one event per tuple, of this
// room (a remote may send anything).
func stateOf(roomID string, before []gmsl.PDU) stateRef {
	byTuple := map[gmsl.StateKeyTuple]gmsl.PDU{}
	for _, p := range before {
		if p != nil && p.StateKey() != nil && p.RoomID().String() == roomID {
			byTuple[tupleOf(p)] = p
		}
	}
	st := stateRef{adds: make([]gmsl.PDU, 0, len(byTuple))}
	for _, p := range byTuple {
		st.adds = append(st.adds, p)
	}
	return st
}

// outliersAmong lists the prev events of evs stored only as outliers
// (known without the state after them).
func (in *Inputer) outliersAmong(ctx context.Context, evs []gmsl.PDU, stored map[string]int64) ([]string, error) {
	var nids []int64
	seen := map[int64]bool{}
	for _, e := range evs {
		for _, p := range e.PrevEventIDs() {
			if nid, ok := stored[p]; ok && nid != 0 && !seen[nid] {
				seen[nid] = true
				nids = append(nids, nid)
			}
		}
	}
	loaded, err := in.store.EventsByNID(ctx, nids)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range loaded {
		if e.Outlier {
			out = append(out, e.ID)
		}
	}
	return out, nil
}

// missingPrevIDs lists the prev events of evs neither stored nor in all.
func missingPrevIDs(evs, all []gmsl.PDU, stored map[string]int64) []string {
	among := make(map[string]bool, len(all))
	for _, e := range all {
		among[e.EventID()] = true
	}
	var out []string
	seen := map[string]bool{}
	for _, e := range evs {
		for _, p := range e.PrevEventIDs() {
			if _, ok := stored[p]; !ok && !among[p] && !seen[p] {
				seen[p] = true
				out = append(out, p)
			}
		}
	}
	return out
}

// missingPrevFilled is missingPrev where a prev event whose state was
// fetched counts as present.
func missingPrevFilled(evs []gmsl.PDU, stored map[string]int64, prevStates map[string]stateRef) int {
	seen := map[string]bool{}
	for i, e := range evs {
		for _, p := range e.PrevEventIDs() {
			_, isStored := stored[p]
			_, filled := prevStates[p]
			if !isStored && !filled && !seen[p] {
				return i
			}
		}
		seen[e.EventID()] = true
	}
	return -1
}

// refsOf lists the prev and auth events evs refer to, once each.
func refsOf(evs []gmsl.PDU) []string {
	seen := map[string]bool{}
	var out []string
	for _, e := range evs {
		for _, ids := range [][]string{e.PrevEventIDs(), e.AuthEventIDs()} {
			for _, id := range ids {
				if !seen[id] {
					seen[id] = true
					out = append(out, id)
				}
			}
		}
	}
	return out
}

// missingPrev returns the index of the first event with a prev event
// neither stored nor earlier in evs, -1 if there is none.
func missingPrev(evs []gmsl.PDU, stored map[string]int64) int {
	if is := withMissingPrevs(evs, stored); len(is) > 0 {
		return is[0]
	}
	return -1
}

// withMissingPrevs lists the events with a prev event neither stored nor
// earlier in evs.
func withMissingPrevs(evs []gmsl.PDU, stored map[string]int64) []int {
	var out []int
	seen := map[string]bool{}
	for i, e := range evs {
		for _, p := range e.PrevEventIDs() {
			if _, ok := stored[p]; !ok && !seen[p] {
				out = append(out, i)
				break
			}
		}
		seen[e.EventID()] = true
	}
	return out
}

// missingAuth lists the events with an auth event neither stored nor in evs.
func missingAuth(evs []gmsl.PDU, stored map[string]int64) []int {
	var out []int
	for i, e := range evs {
		if lacksAuth(e, stored, evs) {
			out = append(out, i)
		}
	}
	return out
}

// lacksAuth reports whether an auth event of e is neither stored nor in evs.
func lacksAuth(e gmsl.PDU, stored map[string]int64, evs []gmsl.PDU) bool {
	for _, a := range e.AuthEventIDs() {
		if _, ok := stored[a]; ok {
			continue
		}
		found := false
		for _, o := range evs {
			if o.EventID() == a {
				found = true
				break
			}
		}
		if !found {
			return true
		}
	}
	return false
}

// fresh keeps the fetched events of roomID not stored and not already in
// have or also, once each, at most limit of them: a remote may send
// anything.
func fresh(got []gmsl.PDU, roomID string, stored map[string]int64, have, also []gmsl.PDU, limit int) []gmsl.PDU {
	seen := map[string]bool{}
	for _, l := range [][]gmsl.PDU{have, also} {
		for _, e := range l {
			seen[e.EventID()] = true
		}
	}
	var out []gmsl.PDU
	for _, e := range got {
		if len(out) >= limit {
			break
		}
		if e == nil || e.RoomID().String() != roomID || seen[e.EventID()] {
			continue
		}
		if _, ok := stored[e.EventID()]; ok {
			continue
		}
		seen[e.EventID()] = true
		out = append(out, e)
	}
	return out
}

// ordered sorts events so that each comes after those it refers to (by
// refs) among them; depth breaks ties, and orders what a forged cycle
// leaves.
func ordered(evs []gmsl.PDU, refs func(gmsl.PDU) []string) []gmsl.PDU {
	sort.SliceStable(evs, func(i, j int) bool {
		if evs[i].Depth() != evs[j].Depth() {
			return evs[i].Depth() < evs[j].Depth()
		}
		return evs[i].EventID() < evs[j].EventID()
	})
	among := make(map[string]bool, len(evs))
	for _, e := range evs {
		among[e.EventID()] = true
	}
	done := make(map[string]bool, len(evs))
	out := make([]gmsl.PDU, 0, len(evs))
	for len(out) < len(evs) {
		progressed := false
		for _, e := range evs {
			if done[e.EventID()] {
				continue
			}
			ready := true
			for _, r := range refs(e) {
				if among[r] && !done[r] {
					ready = false
					break
				}
			}
			if ready {
				done[e.EventID()] = true
				out = append(out, e)
				progressed = true
			}
		}
		if !progressed {
			for _, e := range evs {
				if !done[e.EventID()] {
					done[e.EventID()] = true
					out = append(out, e)
				}
			}
		}
	}
	return out
}

// serversOf lists the servers to ask: origin, then the senders' servers.
func serversOf(origin spec.ServerName, evs []gmsl.PDU) []spec.ServerName {
	var out []spec.ServerName
	seen := map[spec.ServerName]bool{}
	add := func(s spec.ServerName) {
		if s != "" && !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	add(origin)
	for _, e := range evs {
		if u, err := eventsig.UserIDForSender(e.RoomID(), e.SenderID()); err == nil {
			add(u.Domain())
		}
	}
	return out
}

// beginFetch marks a's room as fetching, unless the slow rooms' budget is
// spent: the held messages, its queue and what queues on it from now count
// against the budget (see dispatch) until endFetch.
func (in *Inputer) beginFetch(a *actor, held int) bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.slowQueued >= in.cfg.SlowBudget {
		return false
	}
	a.fetching = true
	in.slowQueued += held + len(a.queue)
	return true
}

func (in *Inputer) endFetch(a *actor, held int) {
	in.mu.Lock()
	defer in.mu.Unlock()
	a.fetching = false
	in.slowQueued -= held + len(a.queue)
}

// keepAlive tells JetStream, until the returned function is called, that
// the messages waiting on a room's fetch (the rest of its batch and its
// queue) are in progress, so that none is redelivered while the fetch
// runs: a fetch may outlast the ack wait.
func (in *Inputer) keepAlive(ctx context.Context, a *actor, waiting []jetstream.Msg) func() {
	kctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(ackWait / 3)
		defer t.Stop()
		for {
			select {
			case <-kctx.Done():
				return
			case <-t.C:
			}
			in.mu.Lock()
			queued := append([]jetstream.Msg(nil), a.queue...)
			in.mu.Unlock()
			for _, m := range append(queued, waiting...) {
				_ = m.InProgress()
			}
		}
	}()
	return func() { cancel(); <-done }
}
