package input

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"myelin/internal/sqldb"
	rsapi "myelin/roomserver/api"
	"myelin/roomserver/storage"
)

func isUnique(err error) bool { return sqldb.IsUniqueViolation(err) }

// storePDUs accepts complete events (from federation, whose signatures the
// federation API has checked, or built elsewhere): the checks on receipt of
// a PDU. An event that fails the auth rules against its auth events or the
// state before it is stored as rejected; one that fails against the current
// state is soft-failed: stored, but neither current nor sent to clients.
func (in *Inputer) storePDUs(ctx context.Context, w *storage.Writer, room *storage.Room, verImpl gmsl.IRoomVersion, req *rsapi.InputRequest) (*result, error) {
	out := &result{Response: rsapi.InputResponse{RoomID: req.RoomID}}
	for i, ie := range req.Events {
		if ie.PDU == nil {
			return nil, refuse(i, "M_BAD_JSON", "event %d is not a PDU", i)
		}
		pdu, err := verImpl.NewEventFromUntrustedJSON(ie.PDU)
		if err != nil {
			return nil, refuse(i, "M_BAD_JSON", "bad event: %v", err)
		}
		if req.RoomID != "" && pdu.RoomID().String() != req.RoomID {
			return nil, refuse(i, "M_BAD_JSON", "event %s is not in room %s", pdu.EventID(), req.RoomID)
		}
		o, r, err := in.storePDU(ctx, w, room, verImpl, pdu)
		if err != nil {
			var ref *refusal
			if errors.As(err, &ref) {
				ref.index = i
			}
			return nil, err
		}
		room = r
		out.Response.RoomID = room.ID
		out.Response.EventIDs = append(out.Response.EventIDs, pdu.EventID())
		if o != nil {
			out.Outputs = append(out.Outputs, *o)
		}
	}
	if room != nil {
		if err := w.UpdateRoom(ctx, room); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func (in *Inputer) storePDU(ctx context.Context, w *storage.Writer, room *storage.Room, verImpl gmsl.IRoomVersion, pdu gmsl.PDU) (*rsapi.OutputEvent, *storage.Room, error) {
	known, err := w.EventNIDs(ctx, []string{pdu.EventID()})
	if err != nil {
		return nil, room, err
	}
	if _, ok := known[pdu.EventID()]; ok {
		return nil, room, nil // already stored: input is idempotent
	}
	if room == nil {
		if pdu.Type() != spec.MRoomCreate || !pdu.StateKeyEquals("") {
			return nil, nil, refuse(0, "M_NOT_FOUND", "unknown room %s", pdu.RoomID().String())
		}
		if room, err = w.CreateRoom(ctx, pdu.RoomID().String(), verImpl.Version()); err != nil {
			return nil, nil, err
		}
	}

	// The state before the event: the state after its prev events.
	prevNIDs, err := w.EventNIDs(ctx, pdu.PrevEventIDs())
	if err != nil {
		return nil, room, err
	}
	if len(prevNIDs) != len(pdu.PrevEventIDs()) {
		return nil, room, refuse(0, "M_UNKNOWN", "event %s has prev events this server does not have", pdu.EventID())
	}
	prevs, err := w.EventsByNID(ctx, nidList(prevNIDs))
	if err != nil {
		return nil, room, err
	}
	var before int64
	if len(prevs) > 0 {
		afters := make([]int64, 0, len(prevs))
		for _, p := range prevs {
			if p.Outlier {
				return nil, room, refuse(0, "M_UNKNOWN", "state at prev event %s is unknown", p.ID)
			}
			a, err := stateAfter(ctx, w, room.NID, p)
			if err != nil {
				return nil, room, err
			}
			afters = append(afters, a)
		}
		if before, err = in.resolve(ctx, w, room, verImpl, afters); err != nil {
			return nil, room, err
		}
	}

	ev := &storage.Event{RoomNID: room.NID, ID: pdu.EventID(), StateBefore: before, PDU: pdu}
	v := &view{w: w, snapshot: before}
	if err := checkAuthEvents(ctx, w, pdu); err != nil {
		ev.Rejected = true
	} else if err := allowedAt(ctx, v, pdu); err != nil {
		ev.Rejected = true
	}
	softFailed := false
	if !ev.Rejected && room.Snapshot != before {
		if err := allowedAt(ctx, &view{w: w, snapshot: room.Snapshot}, pdu); err != nil {
			softFailed = true
		}
	}
	if sk := pdu.StateKey(); sk != nil {
		if ev.Tuple, err = w.Tuple(ctx, gmsl.StateKeyTuple{EventType: pdu.Type(), StateKey: *sk}); err != nil {
			return nil, room, err
		}
	}
	depth := pdu.Depth()
	if _, err := w.StoreEvent(ctx, ev, depth); err != nil {
		return nil, room, err
	}
	if ev.Rejected || softFailed {
		in.log.WithField("event_id", ev.ID).WithField("rejected", ev.Rejected).Info("event not accepted into the room's state")
		return nil, room, nil
	}

	histVis, err := v.historyVisibility(ctx)
	if err != nil {
		return nil, room, err
	}
	// New forward extremities: the old ones this event does not point at, plus it.
	latest := []int64{ev.NID}
	for _, l := range room.Latest {
		if _, isPrev := prevNIDsSet(prevNIDs)[l]; !isPrev {
			latest = append(latest, l)
		}
	}
	afterEv, err := stateAfter(ctx, w, room.NID, ev)
	if err != nil {
		return nil, room, err
	}
	newCurrent := afterEv
	if len(latest) > 1 {
		latestEvs, err := w.EventsByNID(ctx, latest)
		if err != nil {
			return nil, room, err
		}
		afters := make([]int64, len(latestEvs))
		for i, l := range latestEvs {
			if afters[i], err = stateAfter(ctx, w, room.NID, l); err != nil {
				return nil, room, err
			}
		}
		if newCurrent, err = in.resolve(ctx, w, room, verImpl, afters); err != nil {
			return nil, room, err
		}
	}
	out := &rsapi.OutputEvent{
		RoomID: room.ID, RoomVersion: string(room.Version), EventID: ev.ID,
		Event: json.RawMessage(pdu.JSON()), HistoryVisibility: histVis,
	}
	if err := in.applyStateChange(ctx, w, room, newCurrent, ev, out); err != nil {
		return nil, room, err
	}
	room.Latest = latest
	room.MaxDepth = max(room.MaxDepth, depth)
	if pdu.Type() == spec.MRoomMember {
		if m, _ := pdu.Membership(); m == spec.Invite || m == spec.Knock {
			if out.InviteRoomState, err = (&view{w: w, snapshot: room.Snapshot}).strippedState(ctx, pdu); err != nil {
				return nil, room, err
			}
		}
	}
	return out, room, nil
}

func nidList(m map[string]int64) []int64 {
	out := make([]int64, 0, len(m))
	for _, n := range m {
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

func prevNIDsSet(m map[string]int64) map[int64]struct{} {
	s := make(map[int64]struct{}, len(m))
	for _, n := range m {
		s[n] = struct{}{}
	}
	return s
}

// stateAfter is the snapshot after ev: the state before it, plus ev itself
// if it is an accepted state event.
func stateAfter(ctx context.Context, w *storage.Writer, roomNID int64, ev *storage.Event) (int64, error) {
	if ev.Tuple == 0 || ev.Rejected {
		return ev.StateBefore, nil
	}
	return w.NewSnapshot(ctx, roomNID, ev.StateBefore, []storage.Entry{{Tuple: ev.Tuple, Event: ev.NID}})
}

// checkAuthEvents checks an event against its own auth_events: all known,
// none rejected, no duplicates, only those the auth rules ask for.
func checkAuthEvents(ctx context.Context, w *storage.Writer, pdu gmsl.PDU) error {
	ids := pdu.AuthEventIDs()
	nids, err := w.EventNIDs(ctx, ids)
	if err != nil {
		return err
	}
	if len(nids) != len(ids) {
		return errors.New("unknown auth events")
	}
	evs, err := w.EventsByNID(ctx, nidList(nids))
	if err != nil {
		return err
	}
	want := map[gmsl.StateKeyTuple]bool{}
	for _, t := range gmsl.StateNeededForAuth([]gmsl.PDU{pdu}).Tuples() {
		want[t] = true
	}
	seen := map[gmsl.StateKeyTuple]bool{}
	pdus := make([]gmsl.PDU, 0, len(evs))
	for _, e := range evs {
		sk := e.PDU.StateKey()
		if e.Rejected || sk == nil {
			return fmt.Errorf("bad auth event %s", e.ID)
		}
		t := gmsl.StateKeyTuple{EventType: e.PDU.Type(), StateKey: *sk}
		if seen[t] || !want[t] {
			return fmt.Errorf("unexpected auth event %s", e.ID)
		}
		seen[t] = true
		pdus = append(pdus, e.PDU)
	}
	auth, err := gmsl.NewAuthEvents(pdus)
	if err != nil {
		return err
	}
	return gmsl.Allowed(pdu, auth, UserIDForSender)
}

func allowedAt(ctx context.Context, v *view, pdu gmsl.PDU) error {
	auth, err := v.authEvents(ctx, gmsl.StateNeededForAuth([]gmsl.PDU{pdu}))
	if err != nil {
		return err
	}
	return gmsl.Allowed(pdu, auth, UserIDForSender)
}

// applyStateChange makes newCurrent the room's current state, recording the
// difference in out and in the membership table.
func (in *Inputer) applyStateChange(ctx context.Context, w *storage.Writer, room *storage.Room, newCurrent int64, ev *storage.Event, out *rsapi.OutputEvent) error {
	if newCurrent == room.Snapshot {
		return nil
	}
	var added, removed []int64
	if ev.Tuple != 0 && newCurrent != 0 && room.Snapshot == ev.StateBefore {
		// The common, linear case: only the event's own tuple changed.
		old, err := w.StateLookup(ctx, room.Snapshot, []int64{ev.Tuple})
		if err != nil {
			return err
		}
		added = []int64{ev.NID}
		if o := old[ev.Tuple]; o != 0 {
			removed = []int64{o}
		}
	} else {
		oldEntries, err := w.StateEntries(ctx, room.Snapshot)
		if err != nil {
			return err
		}
		newEntries, err := w.StateEntries(ctx, newCurrent)
		if err != nil {
			return err
		}
		oldMap := make(map[int64]int64, len(oldEntries))
		for _, e := range oldEntries {
			oldMap[e.Tuple] = e.Event
		}
		for _, e := range newEntries {
			if o, ok := oldMap[e.Tuple]; !ok || o != e.Event {
				added = append(added, e.Event)
				if ok {
					removed = append(removed, o)
				}
			}
			delete(oldMap, e.Tuple)
		}
		for _, o := range oldMap {
			removed = append(removed, o)
		}
	}
	room.Snapshot = newCurrent
	addEvs, err := w.EventsByNID(ctx, added)
	if err != nil {
		return err
	}
	for _, a := range addEvs {
		out.AddsState = append(out.AddsState, a.ID)
		if a.ID != ev.ID {
			out.AddsStateJSON = append(out.AddsStateJSON, json.RawMessage(a.PDU.JSON()))
		}
		if a.PDU.Type() == spec.MRoomMember && a.PDU.StateKey() != nil {
			m, err := a.PDU.Membership()
			if err != nil {
				continue
			}
			if err := w.SetMembership(ctx, room.NID, *a.PDU.StateKey(), m, a.NID); err != nil {
				return err
			}
		}
	}
	remEvs, err := w.EventsByNID(ctx, removed)
	if err != nil {
		return err
	}
	for _, r := range remEvs {
		out.RemovesState = append(out.RemovesState, r.ID)
	}
	return nil
}

// resolve returns a snapshot of the resolution of the given states: the
// state itself when they agree, else the room version's state resolution.
func (in *Inputer) resolve(ctx context.Context, w *storage.Writer, room *storage.Room, verImpl gmsl.IRoomVersion, snaps []int64) (int64, error) {
	uniq := snaps[:0:0]
	seen := map[int64]bool{}
	for _, s := range snaps {
		if !seen[s] {
			seen[s] = true
			uniq = append(uniq, s)
		}
	}
	if len(uniq) == 1 {
		return uniq[0], nil
	}
	sets := make([]map[int64]int64, len(uniq))
	all := map[int64]bool{}
	for i, s := range uniq {
		es, err := w.StateEntries(ctx, s)
		if err != nil {
			return 0, err
		}
		sets[i] = make(map[int64]int64, len(es))
		for _, e := range es {
			sets[i][e.Tuple] = e.Event
			all[e.Event] = true
		}
	}
	evNIDs := make([]int64, 0, len(all))
	for n := range all {
		evNIDs = append(evNIDs, n)
	}
	evs, err := w.EventsByNID(ctx, evNIDs)
	if err != nil {
		return 0, err
	}
	byID := map[string]*storage.Event{}
	pdus := make([]gmsl.PDU, 0, len(evs))
	for _, e := range evs {
		byID[e.ID] = e
		pdus = append(pdus, e.PDU)
	}
	chain, err := authChain(ctx, w, evs, byID)
	if err != nil {
		return 0, err
	}
	resolved, err := safeResolve(verImpl.Version(), pdus, chain, func(id string) bool {
		e, ok := byID[id]
		return ok && e.Rejected
	})
	if err != nil {
		return 0, fmt.Errorf("state resolution in %s: %w", room.ID, err)
	}
	entries := make([]storage.Entry, 0, len(resolved))
	for _, p := range resolved {
		e, ok := byID[p.EventID()]
		if !ok || p.StateKey() == nil {
			continue
		}
		t := e.Tuple
		if t == 0 {
			if t, err = w.Tuple(ctx, gmsl.StateKeyTuple{EventType: p.Type(), StateKey: *p.StateKey()}); err != nil {
				return 0, err
			}
		}
		entries = append(entries, storage.Entry{Tuple: t, Event: e.NID})
	}
	return w.NewSnapshotFromEntries(ctx, room.NID, entries)
}

// authChain loads the full auth chains of evs (adding them to byID).
func authChain(ctx context.Context, w *storage.Writer, evs []*storage.Event, byID map[string]*storage.Event) ([]gmsl.PDU, error) {
	var chain []gmsl.PDU
	inChain := map[string]bool{}
	todo := map[string]bool{}
	for _, e := range evs {
		for _, a := range e.PDU.AuthEventIDs() {
			todo[a] = true
		}
	}
	for len(todo) > 0 {
		ids := make([]string, 0, len(todo))
		for id := range todo {
			if !inChain[id] {
				ids = append(ids, id)
			}
		}
		todo = map[string]bool{}
		if len(ids) == 0 {
			break
		}
		nids, err := w.EventNIDs(ctx, ids)
		if err != nil {
			return nil, err
		}
		loaded, err := w.EventsByNID(ctx, nidList(nids))
		if err != nil {
			return nil, err
		}
		for _, e := range loaded {
			if inChain[e.ID] {
				continue
			}
			inChain[e.ID] = true
			byID[e.ID] = e
			chain = append(chain, e.PDU)
			for _, a := range e.PDU.AuthEventIDs() {
				if !inChain[a] {
					todo[a] = true
				}
			}
		}
	}
	return chain, nil
}

// safeResolve runs gomatrixserverlib's state resolution, turning its panics
// (known for some inputs) into errors.
func safeResolve(ver gmsl.RoomVersion, events, authEvents []gmsl.PDU, isRejected func(string) bool) (res []gmsl.PDU, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("state resolution panicked: %v", p)
		}
	}()
	res, err = gmsl.ResolveConflicts(ver, events, authEvents, UserIDForSender, isRejected)
	if err == nil && res == nil {
		err = errors.New("state resolution returned no state")
	}
	return res, err
}
