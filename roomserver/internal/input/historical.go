package input

import (
	"context"
	"encoding/json"
	"errors"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/nats-io/nats.go/jetstream"

	rsapi "myelin/roomserver/api"
	"myelin/roomserver/storage"
)

// maxHistoricalGaps bounds the prev events one backfilled batch may fetch
// the state after: a batch is normally one chain with one gap at its
// oldest end, more when the answering server left out events this server
// may not see.
const maxHistoricalGaps = 8

// inputHistorical is the input of backfilled events (req.Historical):
// events older than what the room has here. Like any PDU each gets the
// state before it (the state after its prev events) and the auth checks
// against its auth events and that state, but it changes neither the
// room's current state nor its forward extremities, nor memberships, and
// it is not soft-failed against the current state (it is history, not
// news). Its output is marked Historical, with no state delta.
//
// Their prev events are older still, so mostly missing here: the state
// after each prev event outside the batch that this server lacks (or holds
// only as an outlier) is fetched (the event and GET /state before it)
// and stored as outliers, as the fetch step does at a gap; in a linear
// room that is one gap per batch, at its oldest event. An event whose
// prev events cannot all be placed is left out, with the events after it.
func (in *Inputer) inputHistorical(ctx context.Context, a *actor, reqID string, req *rsapi.InputRequest, room *storage.Room, verImpl gmsl.IRoomVersion, pdus []gmsl.PDU, waiting []jetstream.Msg, down *outage, out *result) error {
	if room == nil || len(room.Latest) == 0 {
		return refuse(0, "M_NOT_FOUND", "unknown room %s", req.RoomID)
	}
	pdus = ordered(pdus, gmsl.PDU.PrevEventIDs)
	outliers, prevStates, gapEvents, placed, err := in.fetchHistorical(ctx, a, req, room, pdus, waiting)
	if err != nil {
		return err
	}
	if len(outliers) > 0 {
		if err := in.inputOutliers(ctx, outliers, down); err != nil {
			return err
		}
	}
	if err := in.addGapEvents(ctx, prevStates, gapEvents); err != nil {
		return err
	}
	log := in.log.WithField("room_id", room.ID)
	for _, pdu := range pdus {
		ready := true
		for _, p := range pdu.PrevEventIDs() {
			_, filled := prevStates[p]
			ready = ready && (placed[p] || filled)
		}
		if !ready {
			log.WithField("event_id", pdu.EventID()).Debug("backfilled event left out: the state after its prev events is unknown")
			continue
		}
		o, err := in.inputPDUAs(ctx, reqID, verImpl, pdu, prevStates, down, true)
		var ref *refusal
		if errors.As(err, &ref) {
			log.WithField("event_id", pdu.EventID()).WithError(err).Debug("backfilled event left out")
			continue
		}
		if err != nil {
			return err
		}
		placed[pdu.EventID()] = true
		out.Response.RoomID = room.ID
		// The events stored and accepted now: those already here or
		// rejected are nothing new for the caller to read.
		if o != nil {
			out.Response.EventIDs = append(out.Response.EventIDs, pdu.EventID())
			out.Outputs = append(out.Outputs, *o)
		}
	}
	return nil
}

// fetchHistorical is the fetch step of backfilled events (ordered, each
// after its prev events among them): it fetches the state after each prev
// event outside the batch this server lacks or holds only as an outlier,
// and the auth chains of events whose auth events it lacks. It returns the
// events to store as outliers, the states after the gaps by prev event ID,
// and the events already placed here (stored with their state).
func (in *Inputer) fetchHistorical(ctx context.Context, a *actor, req *rsapi.InputRequest, room *storage.Room, pdus []gmsl.PDU, waiting []jetstream.Msg) (outliers []gmsl.PDU, prevStates map[string]stateRef, gapEvents map[string]gmsl.PDU, placed map[string]bool, err error) {
	stored, err := in.store.EventNIDs(ctx, refsOf(pdus))
	if err != nil {
		return nil, nil, nil, nil, err
	}
	loaded, err := in.store.EventsByNID(ctx, nidList(stored))
	if err != nil {
		return nil, nil, nil, nil, err
	}
	placed = map[string]bool{}
	for _, e := range loaded {
		if !e.Outlier {
			placed[e.ID] = true
		}
	}
	among := make(map[string]bool, len(pdus))
	for _, p := range pdus {
		among[p.EventID()] = true
	}
	var gaps []string
	seen := map[string]bool{}
	for _, p := range pdus {
		for _, id := range p.PrevEventIDs() {
			if !among[id] && !placed[id] && !seen[id] {
				seen[id] = true
				gaps = append(gaps, id)
			}
		}
	}
	if (len(gaps) == 0 && len(missingAuth(pdus, stored)) == 0) || in.cfg.Fetcher == nil {
		return nil, nil, nil, placed, nil
	}

	fctx, done, err := in.startFetch(ctx, a, waiting, 0)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	defer done()
	scope := rsapi.FetchScope{RoomID: room.ID, RoomVersion: room.Version, Servers: serversOf(req.Origin, pdus)}
	log := in.log.WithField("room_id", room.ID)

	prevStates, gapEvents = map[string]stateRef{}, map[string]gmsl.PDU{}
	for i, id := range gaps {
		if i >= maxHistoricalGaps || fctx.Err() != nil {
			break
		}
		st, evs, err := in.stateBeforeByIDs(fctx, scope, room.ID, id)
		if err != nil {
			log.WithError(err).WithField("event_id", id).Debug("fetching the state at a backfilled gap")
			continue
		}
		outliers = addFetched(outliers, evs, room.ID, stored, pdus, maxStateFetched-len(outliers))
		prevStates[id], gapEvents[id] = st, evs[len(evs)-1]
	}
	outliers = in.fetchAuthChains(fctx, scope, pdus, stored, outliers, maxAuthFetched)
	if ctx.Err() != nil {
		return nil, nil, nil, nil, ctx.Err() // shutting down: the message is redelivered
	}
	return ordered(outliers, gmsl.PDU.AuthEventIDs), prevStates, gapEvents, placed, nil
}

// maxStateByID is the most events of a state fetched one by one (GET
// /event) at a gap; with more missing, the whole state is
// fetched (GET /state).
const maxStateByID = 50

// stateBeforeByIDs is fetchStateBefore done cheaply, for a gap of live or
// backfilled events. This server mostly has most of the state at a gap
// already (the current state, or going back through history the state at
// its join and the batches before), so it asks for the state's IDs (GET
// /state_ids, as Synapse and Dendrite do first) and fetches only the
// events it lacks, one by one; with many missing, or one whose auth
// events it lacks, it fetches the whole state (GET /state) instead. A
// room of 10,000 members thus costs a list of IDs, not 10,000 events to
// check again.
func (in *Inputer) stateBeforeByIDs(ctx context.Context, scope rsapi.FetchScope, roomID, eventID string) (stateRef, []gmsl.PDU, error) {
	ids, err := in.cfg.Fetcher.StateIDsBefore(ctx, scope, eventID)
	if err != nil {
		return in.fetchStateBefore(ctx, scope, roomID, eventID)
	}
	ev, err := in.fetchEvent(ctx, scope, roomID, eventID)
	if err != nil {
		return stateRef{}, nil, err
	}
	known, err := in.store.EventsByID(ctx, ids)
	if err != nil {
		return stateRef{}, nil, err
	}
	have := make(map[string]gmsl.PDU, len(known))
	for _, e := range known {
		have[e.ID] = e.PDU
	}
	var missing []string
	for _, id := range ids {
		if have[id] == nil {
			missing = append(missing, id)
		}
	}
	if len(missing) > maxStateByID {
		return in.fetchStateBefore(ctx, scope, roomID, eventID)
	}
	fetched := make([]gmsl.PDU, 0, len(missing)+1)
	for _, id := range missing {
		p, err := in.cfg.Fetcher.Event(ctx, scope, id)
		if err != nil || p.EventID() != id {
			return in.fetchStateBefore(ctx, scope, roomID, eventID)
		}
		fetched = append(fetched, p)
		have[id] = p
	}
	// What is fetched is stored as outliers, checked against their own
	// auth events: those must be here.
	var auth []string
	for _, p := range append(fetched, ev) {
		for _, a := range p.AuthEventIDs() {
			if have[a] == nil {
				auth = append(auth, a)
			}
		}
	}
	if len(auth) > 0 {
		stored, err := in.store.EventNIDs(ctx, auth)
		if err != nil {
			return stateRef{}, nil, err
		}
		if len(stored) < len(dedup(auth)) {
			return in.fetchStateBefore(ctx, scope, roomID, eventID)
		}
	}
	before := make([]gmsl.PDU, 0, len(ids))
	for _, id := range ids {
		before = append(before, have[id])
	}
	return stateOf(roomID, before), append(fetched, ev), nil
}

func dedup(ids []string) map[string]bool {
	out := make(map[string]bool, len(ids))
	for _, id := range ids {
		out[id] = true
	}
	return out
}

// storeHistorical writes a backfilled event with the state before it:
// the room's row (current state, extremities, depth) is not touched, so
// nothing written here depends on what prepare read of it. A rejected
// event is stored (so it is not fetched again) without an output.
func storeHistorical(ctx context.Context, w *storage.Writer, p *prepared) (*rsapi.OutputEvent, error) {
	pdu := p.pdu
	room := p.room
	before, err := snapshotOf(ctx, w, room.NID, p.before)
	if err != nil {
		return nil, err
	}
	ev := &storage.Event{RoomNID: room.NID, ID: pdu.EventID(), StateBefore: before, Rejected: p.rejected, PDU: pdu}
	if sk := pdu.StateKey(); sk != nil {
		if ev.Tuple, err = w.Tuple(ctx, tupleOf(pdu)); err != nil {
			return nil, err
		}
	}
	if p.outlier != 0 {
		ev.NID = p.outlier
		if err := w.SetStateBefore(ctx, ev); err != nil {
			return nil, err
		}
	} else if stored, err := w.StoreEvent(ctx, ev, pdu.Depth()); err != nil || !stored {
		return nil, err
	}
	if p.rejected {
		return nil, nil
	}
	return &rsapi.OutputEvent{
		RoomID: room.ID, RoomVersion: string(room.Version), EventID: ev.ID,
		Event: json.RawMessage(pdu.JSON()), HistoryVisibility: p.histVis, Historical: true,
	}, nil
}
