package input

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"myelin/internal/eventsig"
	rsapi "myelin/roomserver/api"
	"myelin/roomserver/storage"
)

// maxJoinState bounds the events a send_join answer may bring (state and
// auth chain together).
const maxJoinState = 200000

// takeInJoin is the fetch step of a join through another server: the
// room's state before the join event and its auth chain, as the resident
// server answered send_join (req.State, req.AuthChain). Each event is
// parsed in the room's version, its signatures checked with the KeyRing,
// and its auth checked against its own auth events (those failing are
// rejected; those with bad signatures or of another room left out); the
// join must be allowed by the state. They are then stored as outliers,
// with a snapshot of the state, in one transaction, and the returned
// prevStates make that snapshot the state before the join for prepare.
// Nothing is stored when the join is refused.
func (in *Inputer) takeInJoin(ctx context.Context, verImpl gmsl.IRoomVersion, req *rsapi.InputRequest, pdus []gmsl.PDU, down *outage) (map[string]stateRef, error) {
	if len(pdus) != 1 {
		return nil, refuse(0, "M_BAD_JSON", "a join's state comes with the join event alone")
	}
	join := pdus[0]
	if m, err := join.Membership(); err != nil || join.Type() != spec.MRoomMember || m != spec.Join {
		return nil, refuse(0, "M_BAD_JSON", "the room state comes with a join event only")
	}
	if len(req.State)+len(req.AuthChain) > maxJoinState {
		return nil, refuse(0, "M_TOO_LARGE", "the room's state has more than %d events", maxJoinState)
	}
	if in.cfg.KeyRing == nil {
		return nil, refuse(0, "M_UNKNOWN", "this server cannot check other servers' signatures")
	}
	roomID := join.RoomID().String()
	byID := map[string]gmsl.PDU{}
	inState := map[string]bool{}
	parse := func(raws []json.RawMessage, state bool) error {
		for _, raw := range raws {
			ev, err := verImpl.NewEventFromUntrustedJSON(raw)
			if err != nil || ev.Redacted() || ev.RoomID().String() != roomID {
				continue // unparsable, a bad content hash, or another room's
			}
			if state {
				if ev.StateKey() == nil {
					continue
				}
				inState[ev.EventID()] = true
			}
			if byID[ev.EventID()] != nil {
				continue
			}
			if err := eventsig.Verify(ctx, ev, in.cfg.KeyRing); err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				in.log.WithField("event_id", ev.EventID()).WithError(err).Debug("left out of a joined room's state: bad signatures")
				continue
			}
			byID[ev.EventID()] = ev
		}
		return nil
	}
	if err := parse(req.AuthChain, false); err != nil {
		return nil, err
	}
	if err := parse(req.State, true); err != nil {
		return nil, err
	}
	evs := make([]gmsl.PDU, 0, len(byID))
	for _, ev := range byID {
		evs = append(evs, ev)
	}
	evs = ordered(evs, gmsl.PDU.AuthEventIDs)

	// Auth of each event against its own auth events, in memory.
	rejected := map[string]bool{}
	for _, ev := range evs {
		rejected[ev.EventID()] = authAgainstOwn(ev, byID, rejected) != nil
	}
	state := map[gmsl.StateKeyTuple]gmsl.PDU{}
	for id := range inState {
		if ev := byID[id]; ev != nil && !rejected[id] {
			state[tupleOf(ev)] = ev
		}
	}
	create := state[gmsl.StateKeyTuple{EventType: spec.MRoomCreate}]
	if create == nil {
		return nil, refuse(0, "M_BAD_JSON", "the room's state has no valid create event")
	}
	var cc struct {
		Version string `json:"room_version"`
	}
	if json.Unmarshal(create.Content(), &cc) != nil {
		return nil, refuse(0, "M_BAD_JSON", "the room's create event has bad content")
	}
	if cc.Version == "" {
		cc.Version = "1" // spec: a create event without one is of version 1
	}
	if cc.Version != string(verImpl.Version()) {
		return nil, refuse(0, "M_BAD_JSON", "the room's create event is not of room version %s", verImpl.Version())
	}
	needed := make([]gmsl.PDU, 0, 8)
	for _, t := range gmsl.StateNeededForAuth([]gmsl.PDU{join}).Tuples() {
		if ev := state[t]; ev != nil {
			needed = append(needed, ev)
		}
	}
	auth, err := gmsl.NewAuthEvents(needed)
	if err != nil {
		return nil, refuse(0, "M_FORBIDDEN", "the room's state does not allow the join: %v", err)
	}
	if err := Allowed(join, auth); err != nil {
		return nil, refuse(0, "M_FORBIDDEN", "the room's state does not allow the join: %v", err)
	}

	var snapshot int64
	err = in.write(ctx, func(w *storage.Writer) error {
		room, err := w.Room(ctx, roomID)
		if errors.Is(err, storage.ErrNotFound) {
			room, err = w.CreateRoom(ctx, roomID, verImpl.Version())
		}
		if err != nil {
			return fmt.Errorf("room %s: %w", roomID, err)
		}
		nids := map[string]int64{}
		for _, ev := range evs {
			se := &storage.Event{RoomNID: room.NID, ID: ev.EventID(), Outlier: true, Rejected: rejected[ev.EventID()], PDU: ev}
			if sk := ev.StateKey(); sk != nil {
				if se.Tuple, err = w.Tuple(ctx, tupleOf(ev)); err != nil {
					return err
				}
			}
			if _, err := w.StoreEvent(ctx, se, ev.Depth()); err != nil {
				return err
			}
			nids[ev.EventID()] = se.NID
		}
		entries := make([]storage.Entry, 0, len(state))
		for t, ev := range state {
			tn, err := w.Tuple(ctx, t)
			if err != nil {
				return err
			}
			entries = append(entries, storage.Entry{Tuple: tn, Event: nids[ev.EventID()]})
		}
		snapshot, err = w.NewSnapshotFromEntries(ctx, room.NID, entries)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("store the state of %s at a join: %w", roomID, err)
	}
	down.mayBeStored = true
	prevStates := make(map[string]stateRef, len(join.PrevEventIDs()))
	for _, id := range join.PrevEventIDs() {
		prevStates[id] = stateRef{base: snapshot}
	}
	return prevStates, nil
}

// authAgainstOwn checks ev against its own auth events among byID: all
// present, none rejected, no duplicate or unexpected one, and the auth
// rules allow it.
func authAgainstOwn(ev gmsl.PDU, byID map[string]gmsl.PDU, rejected map[string]bool) error {
	want := map[gmsl.StateKeyTuple]bool{}
	for _, t := range gmsl.StateNeededForAuth([]gmsl.PDU{ev}).Tuples() {
		want[t] = true
	}
	seen := map[gmsl.StateKeyTuple]bool{}
	var pdus []gmsl.PDU
	for _, id := range ev.AuthEventIDs() {
		a := byID[id]
		if a == nil || rejected[id] || a.StateKey() == nil {
			return fmt.Errorf("auth event %s is missing or rejected", id)
		}
		t := tupleOf(a)
		if seen[t] || !want[t] {
			return fmt.Errorf("unexpected auth event %s", id)
		}
		seen[t] = true
		pdus = append(pdus, a)
	}
	auth, err := gmsl.NewAuthEvents(pdus)
	if err != nil {
		return err
	}
	return Allowed(ev, auth)
}

// isOutOfRoomMember reports whether pdus is one member event this server
// may hold of a room it is not in: an invite of one of its users (signed
// by both servers), or its own user's leave or knock through another
// server (a rejected invite, a knock).
func isOutOfRoomMember(pdus []gmsl.PDU) bool {
	if len(pdus) != 1 || pdus[0].Type() != spec.MRoomMember || pdus[0].StateKey() == nil {
		return false
	}
	m, err := pdus[0].Membership()
	return err == nil && (m == spec.Invite || m == spec.Leave || m == spec.Knock)
}

// takeInOutOfRoomMember stores a member event of a room this server has
// no state of as an outlier, records the membership, and returns its
// output: the invitee's (or knocker's) /sync shows the room with the
// stripped state that came with it, and a leave ends that. Its signatures
// are checked with the KeyRing; the auth rules cannot be run without the
// room's state, which the resident server ran.
func (in *Inputer) takeInOutOfRoomMember(ctx context.Context, verImpl gmsl.IRoomVersion, req *rsapi.InputRequest, pdu gmsl.PDU, down *outage) (*rsapi.OutputEvent, error) {
	if in.cfg.KeyRing == nil {
		return nil, refuse(0, "M_NOT_FOUND", "unknown room %s", pdu.RoomID().String())
	}
	if err := eventsig.Verify(ctx, pdu, in.cfg.KeyRing); err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, refuse(0, "M_FORBIDDEN", "bad signatures on %s: %v", pdu.EventID(), err)
	}
	membership, _ := pdu.Membership()
	roomID, target := pdu.RoomID().String(), *pdu.StateKey()
	out := &rsapi.OutputEvent{
		RoomID: roomID, RoomVersion: string(verImpl.Version()), EventID: pdu.EventID(),
		Event: json.RawMessage(pdu.JSON()), AddsState: []string{pdu.EventID()},
	}
	if membership != spec.Leave {
		out.InviteRoomState = req.StrippedState
	}
	// The invite keeps what the room showed of itself, as Synapse keeps it
	// in unsigned: what this server knows of a room it is not in (whether
	// a guest may join, perform.guestMayJoinRemote).
	if membership == spec.Invite && len(req.StrippedState) > 0 {
		if err := pdu.SetUnsignedField("invite_room_state", req.StrippedState); err != nil {
			return nil, refuse(0, "M_BAD_JSON", "invite_room_state: %v", err)
		}
	}
	stored := false
	err := in.write(ctx, func(w *storage.Writer) error {
		room, err := w.Room(ctx, roomID)
		if errors.Is(err, storage.ErrNotFound) {
			room, err = w.CreateRoom(ctx, roomID, verImpl.Version())
		}
		if err != nil {
			return fmt.Errorf("room %s: %w", roomID, err)
		}
		_, prevNID, err := in.store.Membership(ctx, room.NID, target)
		if err != nil {
			return err
		}
		ev := &storage.Event{RoomNID: room.NID, ID: pdu.EventID(), Outlier: true, PDU: pdu}
		if ev.Tuple, err = w.Tuple(ctx, tupleOf(pdu)); err != nil {
			return err
		}
		if stored, err = w.StoreEvent(ctx, ev, pdu.Depth()); err != nil || !stored {
			return err
		}
		if prevNID != 0 {
			prev, err := w.EventsByNID(ctx, []int64{prevNID})
			if err != nil {
				return err
			}
			for _, p := range prev {
				out.RemovesState = append(out.RemovesState, p.ID)
			}
		}
		return w.SetMembership(ctx, room.NID, target, membership, ev.NID)
	})
	if err != nil {
		return nil, err
	}
	down.mayBeStored = true
	if !stored {
		return nil, nil // a repeat: already stored and announced
	}
	return out, nil
}
