package input

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/sirupsen/logrus"

	"myelin/internal/fanout"
	"myelin/internal/sqldb"
	rsapi "myelin/roomserver/api"
	"myelin/roomserver/internal/stateres"
	"myelin/roomserver/storage"
)

func isUnique(err error) bool { return sqldb.IsUniqueViolation(err) }

// errStale is a store step that found the room changed since its event was
// prepared; the event is prepared again. Only the room's own actor writes
// its events, so this is a safety net, not a path taken.
var errStale = errors.New("room changed since the event was prepared")

// processPDURequest handles one request of complete events (from
// federation, whose signatures the federation API has checked, or built
// elsewhere), then publishes, replies and acks. It reports false if it
// gave up (shutdown) without acking.
func (in *Inputer) processPDURequest(ctx context.Context, a *actor, m jetstream.Msg, waiting []jetstream.Msg) bool {
	start := time.Now()
	key := requestKey(m)
	var res *result
	var req rsapi.InputRequest
	switch {
	case in.isPoisoned(key):
		res = poisonedResult()
	case json.Unmarshal(m.Data(), &req) != nil:
		res = &result{Response: rsapi.InputResponse{Error: "malformed input request", ErrCode: "M_BAD_JSON"}}
	default:
		var down outage
		answered, ok := in.untilStored(ctx, []jetstream.Msg{m}, &down, func() (err error) {
			out := &result{Response: rsapi.InputResponse{RoomID: req.RoomID}, timing: &pduTiming{}}
			res = out
			defer func() {
				// gomatrixserverlib has known panics on odd input: refuse
				// the request instead of crashing, and still publish what
				// was stored before.
				if p := recover(); p != nil {
					in.poison(key, p)
					out.Response.Error, out.Response.ErrCode = poisonedResult().Response.Error, poisonedResult().Response.ErrCode
					err = nil
				}
			}()
			return in.inputPDUs(ctx, a, requestID(m), &req, waiting, &down, out)
		})
		if !ok || answered {
			return ok
		}
	}
	stored := time.Now()
	ok := in.publishAndAnswer(ctx, []jetstream.Msg{m}, []*result{res}, req.AnswerOnCommit)
	if t := res.timing; t != nil && in.log.Logger.IsLevelEnabled(logrus.DebugLevel) {
		ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
		in.log.WithFields(logrus.Fields{
			"room_id": req.RoomID, "events": len(req.Events), "outputs": len(res.Outputs),
			"parse_ms": ms(t.parse), "fetch_ms": ms(t.fetch), "writes": t.writes,
			"gate_ms": ms(t.gate), "body_ms": ms(t.body), "commit_ms": ms(t.commit),
			"total_ms": ms(stored.Sub(start)), "publish_ms": ms(time.Since(stored)),
		}).Debug("PDU request stored")
	}
	return ok
}

// inputPDUs runs the checks on receipt of a PDU for each event of req,
// reporting in out (refusals too; an error is a failure to retry). It
// fetches what they need first (fetch.go), then takes the events through
// prepare (reads) and store (writes): a run of events that needs no state
// resolution in one write transaction (storeRun), an event that needs one
// prepared outside any transaction and stored alone. Each event keeps its
// own result, as each PDU of a federation transaction does; a refusal
// found before anything is stored (bad JSON, missing prev events) stores
// nothing, and one found later stores the events before the refused one.
// An event that fails the auth rules against its auth events or
// the state before it is stored as rejected; one that fails against the
// current state is soft-failed: stored, but neither current nor sent to
// clients.
func (in *Inputer) inputPDUs(ctx context.Context, a *actor, reqID string, req *rsapi.InputRequest, waiting []jetstream.Msg, down *outage, out *result) error {
	start := time.Now()
	refused := func(err error) error {
		var ref *refusal
		if !errors.As(err, &ref) {
			return err
		}
		out.Response.Error, out.Response.ErrCode, out.Response.ErrIndex = ref.msg, ref.code, ref.index
		out.Response.Unavailable = ref.busy
		return nil
	}
	var room *storage.Room
	if req.RoomID != "" {
		r, err := in.store.Room(ctx, req.RoomID)
		if err == nil {
			room = r
		} else if !errors.Is(err, storage.ErrNotFound) {
			return err
		}
	}
	version := req.RoomVersion
	if room != nil {
		version = string(room.Version)
	}
	verImpl, err := gmsl.GetRoomVersion(gmsl.RoomVersion(version))
	if err != nil {
		return refused(refuse(0, "M_UNSUPPORTED_ROOM_VERSION", "unsupported room version %q", version))
	}
	if len(req.Events) == 0 {
		return refused(refuse(0, "M_BAD_JSON", "no events"))
	}
	pdus := make([]gmsl.PDU, len(req.Events))
	// Each event is parsed alone (its checks, its reference hash): on
	// all cores, then looked at in order.
	parseErrs := make([]error, len(req.Events))
	fanout.Each(len(req.Events), func(i int) {
		if req.Events[i].PDU != nil {
			pdus[i], parseErrs[i] = verImpl.NewEventFromUntrustedJSON(req.Events[i].PDU)
		}
	})
	for i, ie := range req.Events {
		if ie.PDU == nil {
			return refused(refuse(i, "M_BAD_JSON", "event %d is not a PDU", i))
		}
		pdu, err := pdus[i], parseErrs[i]
		if err != nil {
			return refused(refuse(i, "M_BAD_JSON", "bad event: %v", err))
		}
		if req.RoomID != "" && pdu.RoomID().String() != req.RoomID {
			return refused(refuse(i, "M_BAD_JSON", "event %s is not in room %s", pdu.EventID(), req.RoomID))
		}
		pdus[i] = pdu
	}

	parsed := time.Now()
	if out.timing != nil {
		out.timing.parse = parsed.Sub(start)
	}
	if req.Historical {
		return refused(in.inputHistorical(ctx, a, reqID, req, room, verImpl, pdus, waiting, down, out))
	}
	// Step 1: fetch what the events need and this server lacks; for a
	// join through another server, take in the room state it sent.
	var outliers, fetched []gmsl.PDU
	var prevStates map[string]stateRef
	var gapEvents map[string]gmsl.PDU
	stateless := room == nil || len(room.Latest) == 0
	if stateless && len(req.State) == 0 && isOutOfRoomMember(pdus) {
		o, err := in.takeInOutOfRoomMember(ctx, verImpl, req, pdus[0], down)
		if err != nil {
			return refused(err)
		}
		out.Response.RoomID, out.Response.EventIDs = pdus[0].RoomID().String(), []string{pdus[0].EventID()}
		if o != nil {
			out.Outputs = append(out.Outputs, *o)
		}
		return nil
	}
	if stateless && len(req.State) > 0 {
		prevStates, err = in.takeInJoin(ctx, verImpl, req, pdus, down)
	} else {
		outliers, fetched, prevStates, gapEvents, err = in.fetch(ctx, a, req, room, pdus, waiting)
	}
	if err != nil {
		return refused(err)
	}
	if len(outliers) > 0 {
		if err := in.inputOutliers(ctx, outliers, down); err != nil {
			return err
		}
	}
	if err := in.addGapEvents(ctx, prevStates, gapEvents); err != nil {
		return err
	}
	if out.timing != nil {
		out.timing.fetch = time.Since(parsed)
	}
	// Step 2: prepare and store. A run of events whose states need no
	// resolution is prepared and stored in one write transaction, each
	// reading what the ones before it wrote; an event that needs a state
	// resolution ends the run and is prepared alone, outside any
	// transaction, then stored.
	all := append(fetched, pdus...)
	took := func(i int, o *rsapi.OutputEvent) {
		if i >= len(fetched) {
			out.Response.RoomID = all[i].RoomID().String()
			out.Response.EventIDs = append(out.Response.EventIDs, all[i].EventID())
		}
		if o != nil {
			out.Outputs = append(out.Outputs, *o)
		}
	}
	for i := 0; i < len(all); {
		outs, err := in.storeRun(ctx, reqID, verImpl, all[i:], prevStates, down, out.timing)
		for _, o := range outs {
			took(i, o)
			i++
		}
		if err != nil {
			var ref *refusal
			if errors.As(err, &ref) {
				ref.index = max(0, i-len(fetched))
			}
			return refused(err)
		}
		if i == len(all) {
			break
		}
		o, err := in.inputPDU(ctx, reqID, verImpl, all[i], prevStates, down)
		if err != nil {
			var ref *refusal
			if errors.As(err, &ref) {
				ref.index = max(0, i-len(fetched))
			}
			return refused(err)
		}
		took(i, o)
		i++
	}
	return nil
}

// errResolve ends a run of events stored in one transaction at an event
// whose state needs a resolution, which runs outside any transaction.
var errResolve = errors.New("state resolution needed")

// storeRun prepares and stores events from the start of pdus in one write
// transaction, as inputPDU does each alone, until one needs a state
// resolution or is refused. It returns the outputs of those it took in,
// in order (nil for an event that brings none); the refusal of the event
// after them, if that is what ended the run; or an error, with nothing
// taken in. Each event keeps its own result: one stored as rejected or
// soft-failed does not end the run.
func (in *Inputer) storeRun(ctx context.Context, reqID string, verImpl gmsl.IRoomVersion, pdus []gmsl.PDU, prevStates map[string]stateRef, down *outage, tm *pduTiming) ([]*rsapi.OutputEvent, error) {
	var outs []*rsapi.OutputEvent
	var refused error
	write := in.write
	if tm != nil {
		write = func(ctx context.Context, f func(w *storage.Writer) error) error { return tm.write(ctx, in, f) }
	}
	err := write(ctx, func(w *storage.Writer) error {
		outs, refused = outs[:0], nil
		// What a redelivered request stored already, in one look-up
		// for the run rather than one per event.
		var logged map[string]string
		if reqID != "" {
			keys := make([]string, len(pdus))
			for i, pdu := range pdus {
				keys[i] = pduLogKey(reqID, pdu)
			}
			var err error
			if logged, err = w.InputLoggedAll(ctx, keys); err != nil {
				return err
			}
		}
		// Whether each is stored already, in one look-up too: the
		// writer remembers what it did not find.
		ids := make([]string, len(pdus))
		for i, pdu := range pdus {
			ids[i] = pdu.EventID()
		}
		if _, err := w.EventNIDs(ctx, ids); err != nil {
			return err
		}
		for _, pdu := range pdus {
			o, err := in.storeInRun(ctx, w, reqID, logged, verImpl, pdu, prevStates)
			var ref *refusal
			switch {
			case errors.Is(err, errResolve):
				return nil
			case errors.As(err, &ref):
				refused = err
				return nil
			case err != nil:
				return err
			}
			outs = append(outs, o)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(outs) > 0 {
		down.mayBeStored = true
	}
	return outs, refused
}

// storeInRun is one event of storeRun, in its transaction: answered from
// the input log when a redelivered request stored it already (logged,
// by log key), else prepared reading through w and stored, its output
// logged.
func (in *Inputer) storeInRun(ctx context.Context, w *storage.Writer, reqID string, logged map[string]string, verImpl gmsl.IRoomVersion, pdu gmsl.PDU, prevStates map[string]stateRef) (*rsapi.OutputEvent, error) {
	logKey := pduLogKey(reqID, pdu)
	if logKey != "" {
		if l := logged[logKey]; l != "" {
			var o *rsapi.OutputEvent
			if err := json.Unmarshal([]byte(l), &o); err == nil {
				return o, nil
			}
		}
	}
	p, err := in.prepareWith(ctx, w, true, verImpl, pdu, prevStates, false)
	if err != nil || p.known {
		return nil, err
	}
	o, err := in.storePrepared(ctx, w, p)
	if err != nil || logKey == "" {
		return o, err
	}
	enc, err := json.Marshal(o)
	if err != nil {
		return nil, fmt.Errorf("encode output of %s: %w", pdu.EventID(), err)
	}
	return o, w.LogInput(ctx, logKey, string(enc))
}

// inputPDU takes one complete event through prepare (reads, outside any
// transaction: the state before it, auth, state resolution of forks) and
// store (one short transaction writing what prepare found). Its output is
// logged under reqID/eventID in that transaction, so a redelivered request
// publishes it again.
func (in *Inputer) inputPDU(ctx context.Context, reqID string, verImpl gmsl.IRoomVersion, pdu gmsl.PDU, prevStates map[string]stateRef, down *outage) (*rsapi.OutputEvent, error) {
	return in.inputPDUAs(ctx, reqID, verImpl, pdu, prevStates, down, false)
}

// pduLogKey is the input log's key of pdu in request reqID: reqID/eventID,
// "" for a request that is not logged (reqID "").
func pduLogKey(reqID string, pdu gmsl.PDU) string {
	if reqID == "" {
		return ""
	}
	return reqID + "/" + pdu.EventID()
}

// inputPDUAs is inputPDU; a historical (backfilled) event is prepared
// and stored as history (historical.go).
func (in *Inputer) inputPDUAs(ctx context.Context, reqID string, verImpl gmsl.IRoomVersion, pdu gmsl.PDU, prevStates map[string]stateRef, down *outage, historical bool) (*rsapi.OutputEvent, error) {
	logKey := pduLogKey(reqID, pdu)
	if logKey != "" {
		logged, err := in.store.InputResponse(ctx, logKey)
		if err != nil {
			return nil, err
		}
		if logged != "" {
			var o *rsapi.OutputEvent
			if err := json.Unmarshal([]byte(logged), &o); err == nil {
				return o, nil
			}
		}
	}
	for attempt := 0; ; attempt++ {
		p, err := in.prepareWith(ctx, in.store, false, verImpl, pdu, prevStates, historical)
		if err != nil || p.known {
			return nil, err
		}
		var o *rsapi.OutputEvent
		err = in.write(ctx, func(w *storage.Writer) error {
			var err error
			if historical {
				o, err = storeHistorical(ctx, w, p)
			} else {
				o, err = in.storePrepared(ctx, w, p)
			}
			if err != nil {
				return err
			}
			if logKey == "" {
				return nil
			}
			enc, err := json.Marshal(o)
			if err != nil {
				return fmt.Errorf("encode output of %s: %w", pdu.EventID(), err)
			}
			return w.LogInput(ctx, logKey, string(enc))
		})
		if errors.Is(err, errStale) && attempt < 3 {
			continue
		}
		if err == nil {
			down.mayBeStored = true
		}
		return o, err
	}
}

// inputOutliers stores fetched auth events as outliers, in one
// transaction: events known without the state before them, each checked
// against its own auth events only (they come ordered so that those are
// stored first).
func (in *Inputer) inputOutliers(ctx context.Context, pdus []gmsl.PDU, down *outage) error {
	err := in.write(ctx, func(w *storage.Writer) error {
		for _, pdu := range pdus {
			known, err := w.EventNIDs(ctx, []string{pdu.EventID()})
			if err != nil {
				return err
			}
			if _, ok := known[pdu.EventID()]; ok {
				continue
			}
			room, err := w.Room(ctx, pdu.RoomID().String())
			if err != nil {
				return err
			}
			ev := &storage.Event{RoomNID: room.NID, ID: pdu.EventID(), Outlier: true, PDU: pdu}
			reason, err := checkAuthEvents(ctx, w, pdu)
			if err != nil {
				return err
			}
			ev.Rejected = reason != nil
			if sk := pdu.StateKey(); sk != nil {
				if ev.Tuple, err = w.Tuple(ctx, gmsl.StateKeyTuple{EventType: pdu.Type(), StateKey: *sk}); err != nil {
					return err
				}
			}
			if _, err := w.StoreEvent(ctx, ev, pdu.Depth()); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil {
		down.mayBeStored = true
	}
	return err
}

// addGapEvents turns the states before the gap events fetched into the
// states after them, for prepare. What the remote sent is checked as it
// was stored: an event of that state stored rejected (failing its own
// auth events, as a power levels event forged on an empty set of them)
// is left out, and a gap event stored rejected (say, with an auth event
// of another room) leaves the state as it was before it.
func (in *Inputer) addGapEvents(ctx context.Context, prevStates map[string]stateRef, gapEvents map[string]gmsl.PDU) error {
	for id, ev := range gapEvents {
		st, ok := prevStates[id]
		if !ok {
			continue
		}
		ids := make([]string, 0, len(st.adds)+1)
		for _, p := range st.adds {
			ids = append(ids, p.EventID())
		}
		evs, err := in.store.EventsByID(ctx, append(ids, id))
		if err != nil {
			return err
		}
		rejected := map[string]bool{}
		for _, e := range evs {
			if e.Rejected {
				rejected[e.ID] = true
			}
		}
		adds := make([]gmsl.PDU, 0, len(st.adds)+1)
		for _, p := range st.adds {
			if !rejected[p.EventID()] {
				adds = append(adds, p)
			}
		}
		after := stateRef{base: st.base, adds: adds}
		if !rejected[id] {
			after = after.with(ev)
		}
		prevStates[id] = after
	}
	return nil
}

// stateRef is a room state that prepare names without writing it: a stored
// snapshot with state events layered on it in order (for the result of a
// state resolution, no snapshot and the whole state). The store step
// writes it as a snapshot.
type stateRef struct {
	base int64
	adds []gmsl.PDU
}

func tupleOf(p gmsl.PDU) gmsl.StateKeyTuple {
	return gmsl.StateKeyTuple{EventType: p.Type(), StateKey: *p.StateKey()}
}

func (r stateRef) same(o stateRef) bool {
	if r.base != o.base || len(r.adds) != len(o.adds) {
		return false
	}
	for i := range r.adds {
		if r.adds[i].EventID() != o.adds[i].EventID() {
			return false
		}
	}
	return true
}

// with is the state after ev, r being the state before it and ev accepted.
func (r stateRef) with(ev gmsl.PDU) stateRef {
	if ev.StateKey() == nil {
		return r
	}
	return stateRef{base: r.base, adds: append(append([]gmsl.PDU(nil), r.adds...), ev)}
}

func (r stateRef) view(rd reader) *view {
	v := &view{w: rd, snapshot: r.base, overlay: make(map[gmsl.StateKeyTuple]gmsl.PDU, len(r.adds))}
	for _, p := range r.adds {
		v.overlay[tupleOf(p)] = p
	}
	return v
}

// after is the state after a stored event.
func after(ev *storage.Event) stateRef {
	r := stateRef{base: ev.StateBefore}
	if ev.Tuple != 0 && !ev.Rejected {
		r.adds = []gmsl.PDU{ev.PDU}
	}
	return r
}

// prepared is what the prepare step found out about one event.
type prepared struct {
	pdu     gmsl.PDU
	verImpl gmsl.IRoomVersion
	// room is the room's row as prepare read it; nil for the create event
	// of a room this server does not have.
	room       *storage.Room
	known      bool  // already stored: nothing to do
	outlier    int64 // NID of the event when stored as an outlier: taken in now
	prevs      map[int64]bool
	before     stateRef
	rejected   bool
	softFailed bool
	keep       []int64 // forward extremities the event does not replace
	// current is the room's new current state when forward extremities
	// were resolved; nil when it is the state after the event.
	current *stateRef
	histVis string
	// redacts is the NID of the event this redaction applies to (0: none)
	// and redactsID its ID.
	redacts   int64
	redactsID string
}

// prepareReader is what prepare reads: the store, or the write
// transaction of a run of events (storeRun), which sees what the events
// before in the run wrote.
type prepareReader interface {
	reader
	Room(ctx context.Context, roomID string) (*storage.Room, error)
}

// prepareWith is the read-only step of a complete event: the state before
// it (resolving its prev events' states when they differ), the auth checks
// against its auth events, that state and the current state, and the
// room's new current state (resolving forward extremities when the event
// does not replace them all). It writes nothing. Reading the store (s), it
// holds no transaction, so on SQLite the process's one writer is free
// while it resolves state; inRun, s is a write transaction and a needed
// resolution is errResolve instead, to be done outside it.
// prevStates holds the states after prev events fetched across a gap
// (stored as outliers), by ID. A historical (backfilled) event stops at
// the state before it and the auth checks against it: history is not
// soft-failed against the current state, nor resolved into it.
func (in *Inputer) prepareWith(ctx context.Context, s prepareReader, inRun bool, verImpl gmsl.IRoomVersion, pdu gmsl.PDU, prevStates map[string]stateRef, historical bool) (*prepared, error) {
	p := &prepared{pdu: pdu, verImpl: verImpl}
	known, err := s.EventNIDs(ctx, []string{pdu.EventID()})
	if err != nil {
		return nil, err
	}
	if nid, ok := known[pdu.EventID()]; ok {
		evs, err := s.EventsByNID(ctx, []int64{nid})
		if err != nil {
			return nil, err
		}
		if !evs[0].Outlier {
			p.known = true // input is idempotent
			return p, nil
		}
		// Known without its state (an auth event, or the state at a
		// gap): it comes now with its prev events, so it takes its place.
		p.outlier = nid
	}
	room, err := s.Room(ctx, pdu.RoomID().String())
	switch {
	case errors.Is(err, storage.ErrNotFound):
		if pdu.Type() != spec.MRoomCreate || !pdu.StateKeyEquals("") {
			return nil, refuse(0, "M_NOT_FOUND", "unknown room %s", pdu.RoomID().String())
		}
	case err != nil:
		return nil, err
	default:
		p.room = room
	}
	if historical && p.room == nil {
		return nil, refuse(0, "M_NOT_FOUND", "unknown room %s", pdu.RoomID().String())
	}

	// The state before the event: the state after its prev events.
	states := make([]stateRef, 0, len(pdu.PrevEventIDs()))
	lookup := make([]string, 0, len(pdu.PrevEventIDs()))
	seen := make(map[string]bool, len(pdu.PrevEventIDs()))
	for _, id := range pdu.PrevEventIDs() {
		// An event may name a prev event twice (sytest's do): once is
		// enough, and the count below compares distinct IDs.
		if seen[id] {
			continue
		}
		seen[id] = true
		if st, ok := prevStates[id]; ok {
			states = append(states, st)
		} else {
			lookup = append(lookup, id)
		}
	}
	prevNIDs, err := s.EventNIDs(ctx, lookup)
	if err != nil {
		return nil, err
	}
	if len(prevNIDs) != len(lookup) {
		return nil, refuse(0, "M_UNKNOWN", "event %s has prev events this server does not have", pdu.EventID())
	}
	prevs, err := s.EventsByNID(ctx, nidList(prevNIDs))
	if err != nil {
		return nil, err
	}
	p.prevs = make(map[int64]bool, len(prevs))
	for _, e := range prevs {
		if e.Outlier {
			return nil, refuse(0, "M_UNKNOWN", "state at prev event %s is unknown", e.ID)
		}
		p.prevs[e.NID] = true
		states = append(states, after(e))
	}
	if p.before, err = in.resolveStates(ctx, s, inRun, verImpl, pdu.RoomID().String(), states); err != nil {
		return nil, err
	}

	v := p.before.view(s)
	reason, err := checkAuthEvents(ctx, s, pdu)
	if err != nil {
		return nil, err
	}
	if reason == nil {
		if reason, err = allowedAt(ctx, v, pdu); err != nil {
			return nil, err
		}
	}
	if reason == nil && pdu.Type() == spec.MRoomRedaction {
		if reason, err = planPDURedaction(ctx, v, pdu, p); err != nil {
			return nil, err
		}
	}
	p.rejected = reason != nil
	if !p.rejected && !historical && room != nil && !sameNIDs(room.Latest, p.prevs) {
		// Soft fail: allowed by its own history, not by the room's now.
		if reason, err = allowedAt(ctx, &view{w: s, snapshot: room.Snapshot}, pdu); err != nil {
			return nil, err
		}
		p.softFailed = reason != nil
	}
	if p.rejected || p.softFailed {
		p.redacts, p.redactsID = 0, ""
		return p, nil
	}
	if historical {
		// A backfilled redaction is history: the syncapi's copy of its
		// target is not touched from here.
		p.redacts, p.redactsID = 0, ""
	}
	if p.histVis, err = v.historyVisibility(ctx); err != nil {
		return nil, err
	}
	if room == nil || historical {
		return p, nil
	}
	for _, l := range room.Latest {
		if !p.prevs[l] {
			p.keep = append(p.keep, l)
		}
	}
	if len(p.keep) > 0 {
		kept, err := s.EventsByNID(ctx, p.keep)
		if err != nil {
			return nil, err
		}
		states := []stateRef{p.before.with(pdu)}
		for _, e := range kept {
			states = append(states, after(e))
		}
		cur, err := in.resolveStates(ctx, s, inRun, verImpl, room.ID, states)
		if err != nil {
			return nil, err
		}
		p.current = &cur
	}
	return p, nil
}

// sameNIDs reports whether list holds exactly the NIDs of set.
func sameNIDs(list []int64, set map[int64]bool) bool {
	if len(list) != len(set) {
		return false
	}
	for _, n := range list {
		if !set[n] {
			return false
		}
	}
	return true
}

// storePrepared is the store step of a complete event: in the caller's
// transaction it writes what prepare found, and resolves nothing.
func (in *Inputer) storePrepared(ctx context.Context, w *storage.Writer, p *prepared) (*rsapi.OutputEvent, error) {
	pdu := p.pdu
	room, err := w.Room(ctx, pdu.RoomID().String())
	if errors.Is(err, storage.ErrNotFound) {
		room = nil
	} else if err != nil {
		return nil, err
	}
	if !sameRoom(room, p.room) {
		return nil, errStale
	}
	if room == nil {
		if room, err = w.CreateRoom(ctx, pdu.RoomID().String(), p.verImpl.Version()); err != nil {
			return nil, err
		}
	}
	before, err := snapshotOf(ctx, w, room.NID, p.before)
	if err != nil {
		return nil, err
	}
	ev := &storage.Event{RoomNID: room.NID, ID: pdu.EventID(), StateBefore: before, Rejected: p.rejected, PDU: pdu}
	if sk := pdu.StateKey(); sk != nil {
		if ev.Tuple, err = w.Tuple(ctx, gmsl.StateKeyTuple{EventType: pdu.Type(), StateKey: *sk}); err != nil {
			return nil, err
		}
	}
	depth := pdu.Depth()
	if p.outlier != 0 {
		ev.NID = p.outlier
		if err := w.SetStateBefore(ctx, ev); err != nil {
			return nil, err
		}
	} else if stored, err := w.StoreEvent(ctx, ev, depth); err != nil || !stored {
		return nil, err
	}
	if p.rejected || p.softFailed {
		in.log.WithField("event_id", ev.ID).WithField("rejected", ev.Rejected).Info("event not accepted into the room's state")
		return nil, nil
	}
	var newCurrent int64
	if p.current != nil {
		newCurrent, err = snapshotOf(ctx, w, room.NID, *p.current)
	} else {
		newCurrent, err = stateAfter(ctx, w, room.NID, ev)
	}
	if err != nil {
		return nil, err
	}
	out := &rsapi.OutputEvent{
		RoomID: room.ID, RoomVersion: string(room.Version), EventID: ev.ID,
		Event: json.RawMessage(pdu.JSON()), HistoryVisibility: p.histVis,
	}
	if err := in.applyStateChange(ctx, w, room, newCurrent, ev, out); err != nil {
		return nil, err
	}
	if p.redacts != 0 {
		if err := w.Redact(ctx, p.redacts, ev.ID); err != nil {
			return nil, err
		}
		out.Redacts = p.redactsID
	}
	room.Latest = append([]int64{ev.NID}, p.keep...)
	room.MaxDepth = max(room.MaxDepth, depth)
	if pdu.Type() == spec.MRoomMember {
		if m, _ := pdu.Membership(); m == spec.Invite || m == spec.Knock {
			if out.InviteRoomState, err = (&view{w: w, snapshot: room.Snapshot}).strippedState(ctx, pdu); err != nil {
				return nil, err
			}
		}
	}
	if err := w.UpdateRoom(ctx, room); err != nil {
		return nil, err
	}
	return out, nil
}

func sameRoom(a, b *storage.Room) bool {
	if a == nil || b == nil {
		return a == b
	}
	if a.NID != b.NID || a.Snapshot != b.Snapshot || len(a.Latest) != len(b.Latest) {
		return false
	}
	for i := range a.Latest {
		if a.Latest[i] != b.Latest[i] {
			return false
		}
	}
	return true
}

// snapshotOf writes a state prepare named as a snapshot (its base when
// nothing is layered on it).
func snapshotOf(ctx context.Context, w *storage.Writer, roomNID int64, r stateRef) (int64, error) {
	if len(r.adds) == 0 {
		return r.base, nil
	}
	ids := make([]string, len(r.adds))
	for i, p := range r.adds {
		ids[i] = p.EventID()
	}
	nids, err := w.EventNIDs(ctx, ids)
	if err != nil {
		return 0, err
	}
	// Later events replace earlier ones of the same tuple.
	at := make(map[int64]int, len(r.adds))
	entries := make([]storage.Entry, 0, len(r.adds))
	for _, p := range r.adds {
		nid, ok := nids[p.EventID()]
		if !ok {
			return 0, fmt.Errorf("state event %s is not stored", p.EventID())
		}
		t, err := w.Tuple(ctx, tupleOf(p))
		if err != nil {
			return 0, err
		}
		if i, ok := at[t]; ok {
			entries[i].Event = nid
			continue
		}
		at[t] = len(entries)
		entries = append(entries, storage.Entry{Tuple: t, Event: nid})
	}
	return w.NewSnapshot(ctx, roomNID, r.base, entries)
}

func nidList(m map[string]int64) []int64 {
	out := make([]int64, 0, len(m))
	for _, n := range m {
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
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
// none rejected, no duplicates, only those the auth rules ask for. It
// returns why the event fails them, or err when it could not check (the
// database failed: not a reason to reject the event for good).
func checkAuthEvents(ctx context.Context, rd reader, pdu gmsl.PDU) (reason, err error) {
	ids := pdu.AuthEventIDs()
	nids, err := rd.EventNIDs(ctx, ids)
	if err != nil {
		return nil, err
	}
	if len(nids) != len(ids) {
		return errors.New("unknown auth events"), nil
	}
	evs, err := rd.EventsByNID(ctx, nidList(nids))
	if err != nil {
		return nil, err
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
			return fmt.Errorf("bad auth event %s", e.ID), nil
		}
		if e.PDU.RoomID().String() != pdu.RoomID().String() {
			return fmt.Errorf("auth event %s is of another room", e.ID), nil
		}
		t := gmsl.StateKeyTuple{EventType: e.PDU.Type(), StateKey: *sk}
		if seen[t] || !want[t] {
			return fmt.Errorf("unexpected auth event %s", e.ID), nil
		}
		seen[t] = true
		pdus = append(pdus, e.PDU)
	}
	auth, err := gmsl.NewAuthEvents(pdus)
	if err != nil {
		return err, nil
	}
	return Allowed(pdu, auth), nil
}

// allowedAt checks an event against the state v; like checkAuthEvents it
// tells a failed check (reason) from one it could not make (err).
func allowedAt(ctx context.Context, v *view, pdu gmsl.PDU) (reason, err error) {
	m, err := v.get(ctx, gmsl.StateNeededForAuth([]gmsl.PDU{pdu}).Tuples())
	if err != nil {
		return nil, err
	}
	pdus := make([]gmsl.PDU, 0, len(m))
	for _, p := range m {
		pdus = append(pdus, p)
	}
	auth, err := gmsl.NewAuthEvents(pdus)
	if err != nil {
		return err, nil
	}
	return Allowed(pdu, auth), nil
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

// resolveStates returns the resolution of the given states: the state
// itself when they agree, else the room version's state resolution. It
// only reads (through the storage, never a transaction).
func (in *Inputer) resolveStates(ctx context.Context, rd reader, inRun bool, verImpl gmsl.IRoomVersion, roomID string, states []stateRef) (stateRef, error) {
	if len(states) == 0 {
		return stateRef{}, nil
	}
	agree := true
	for _, st := range states[1:] {
		agree = agree && st.same(states[0])
	}
	if agree {
		return states[0], nil
	}
	rejected := map[string]bool{}
	full := make([]map[gmsl.StateKeyTuple]gmsl.PDU, len(states))
	for i, st := range states {
		var err error
		if full[i], err = materialize(ctx, rd, st, rejected); err != nil {
			return stateRef{}, err
		}
	}
	if sameStates(full) {
		return states[0], nil
	}
	if inRun {
		return stateRef{}, errResolve
	}
	if in.cfg.OnResolve != nil {
		in.cfg.OnResolve()
	}
	sets := make([]stateres.StateSet, len(full))
	for i, m := range full {
		sets[i] = m
	}
	resolved, err := stateres.Resolve(ctx, stateres.Params{
		Version:    verImpl.Version(),
		StateSets:  sets,
		Load:       loadAuthEvents(rd, rejected),
		IsRejected: func(id string) bool { return rejected[id] },
	})
	switch {
	case errors.Is(err, stateres.ErrMalformed), errors.Is(err, stateres.ErrMissingAuthEvent), errors.Is(err, stateres.ErrTooLarge):
		// The same input fails the same way every time: refuse the event
		// rather than retry it for ever.
		return stateRef{}, refuse(0, "M_UNKNOWN", "the state at an event in %s cannot be resolved: %v", roomID, err)
	case err != nil:
		return stateRef{}, fmt.Errorf("state resolution in %s: %w", roomID, err)
	}
	out := stateRef{adds: make([]gmsl.PDU, 0, len(resolved))}
	for _, p := range resolved {
		if p.StateKey() != nil {
			out.adds = append(out.adds, p)
		}
	}
	return out, nil
}

// materialize loads a whole state, noting its rejected events.
func materialize(ctx context.Context, rd reader, st stateRef, rejected map[string]bool) (map[gmsl.StateKeyTuple]gmsl.PDU, error) {
	m := map[gmsl.StateKeyTuple]gmsl.PDU{}
	if st.base != 0 {
		entries, err := rd.StateEntries(ctx, st.base)
		if err != nil {
			return nil, err
		}
		nids := make([]int64, len(entries))
		for i, e := range entries {
			nids[i] = e.Event
		}
		evs, err := rd.EventsByNID(ctx, nids)
		if err != nil {
			return nil, err
		}
		for _, e := range evs {
			if e.PDU.StateKey() == nil {
				continue
			}
			if e.Rejected {
				rejected[e.ID] = true
			}
			m[tupleOf(e.PDU)] = e.PDU
		}
	}
	for _, p := range st.adds {
		m[tupleOf(p)] = p
	}
	return m, nil
}

func sameStates(states []map[gmsl.StateKeyTuple]gmsl.PDU) bool {
	for _, s := range states[1:] {
		if len(s) != len(states[0]) {
			return false
		}
		for t, p := range s {
			if q, ok := states[0][t]; !ok || q.EventID() != p.EventID() {
				return false
			}
		}
	}
	return true
}

// loadAuthEvents loads the events of an auth chain for state resolution
// from the store, noting the rejected ones. An event the store lacks is
// left out: stateres then refuses with ErrMissingAuthEvent.
func loadAuthEvents(rd reader, rejected map[string]bool) stateres.EventLoader {
	return func(ctx context.Context, ids []string) ([]gmsl.PDU, error) {
		nids, err := rd.EventNIDs(ctx, ids)
		if err != nil {
			return nil, err
		}
		loaded, err := rd.EventsByNID(ctx, nidList(nids))
		if err != nil {
			return nil, err
		}
		pdus := make([]gmsl.PDU, len(loaded))
		for i, e := range loaded {
			if e.Rejected {
				rejected[e.ID] = true
			}
			pdus[i] = e.PDU
		}
		return pdus, nil
	}
}

// planPDURedaction decides what a federated redaction does (spec: client-
// server API, "Redactions", and the room versions' notes on them): the
// auth rules of v3 and later accept it whatever it names, so whether it
// applies is checked here, against the state before it. It applies to a
// stored, accepted event of its room not yet redacted (a redaction too,
// as a local one does), when its sender is of the target sender's server
// or has the power to redact. One naming an event of another room is
// rejected (as Synapse does); one naming itself, an unknown event or an
// event it may not redact is kept and applies nothing. A target arriving
// after its redaction is not redacted.
func planPDURedaction(ctx context.Context, v *view, pdu gmsl.PDU, p *prepared) (reason, err error) {
	target := pdu.Redacts()
	if target == "" || target == pdu.EventID() {
		return nil, nil
	}
	nids, err := v.w.EventNIDs(ctx, []string{target})
	if err != nil {
		return nil, err
	}
	nid, ok := nids[target]
	if !ok {
		return nil, nil
	}
	evs, err := v.w.EventsByNID(ctx, []int64{nid})
	if err != nil {
		return nil, err
	}
	t := evs[0]
	if t.PDU.RoomID().String() != pdu.RoomID().String() {
		return fmt.Errorf("redaction %s names event %s of another room", pdu.EventID(), target), nil
	}
	if t.Rejected || t.RedactedBy != "" {
		return nil, nil
	}
	if serverOf(string(t.PDU.SenderID())) != serverOf(string(pdu.SenderID())) {
		ok, err := v.mayRedactOthers(ctx, pdu.SenderID())
		if err != nil || !ok {
			return nil, err
		}
	}
	p.redacts, p.redactsID = nid, target
	return nil, nil
}

// serverOf is the server name of a user ID ("" when it has none).
func serverOf(userID string) string {
	if _, server, ok := strings.Cut(userID, ":"); ok {
		return server
	}
	return ""
}
