package input

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	rsapi "myelin/roomserver/api"
	"myelin/roomserver/storage"
)

// refusal is a request the roomserver will not store; it is reported to
// the producer, never retried.
type refusal struct {
	code  string
	msg   string
	index int
	// busy: nothing was stored and the producer may send the request
	// again (InputResponse.Unavailable).
	busy bool
}

func (r *refusal) Error() string { return r.msg }

func refuse(index int, code, format string, args ...any) *refusal {
	return &refusal{code: code, msg: fmt.Sprintf(format, args...), index: index}
}

// reader is what views and the checks of events read: the storage itself
// (the prepare step, outside any transaction) or a write transaction.
type reader interface {
	TupleNIDs(ctx context.Context, tuples []gmsl.StateKeyTuple) (map[gmsl.StateKeyTuple]int64, error)
	StateLookup(ctx context.Context, snapshotNID int64, tuples []int64) (map[int64]int64, error)
	StateEntries(ctx context.Context, snapshotNID int64) ([]storage.Entry, error)
	EventsByNID(ctx context.Context, nids []int64) ([]*storage.Event, error)
	EventNIDs(ctx context.Context, ids []string) (map[string]int64, error)
}

var (
	_ reader = (*storage.Storage)(nil)
	_ reader = (*storage.Writer)(nil)
)

// view is a room's state as planning sees it: a stored snapshot plus the
// state events planned earlier in the same request (or, for a federated
// event, the state events layered on the snapshot by prepare).
type view struct {
	w        reader
	snapshot int64
	overlay  map[gmsl.StateKeyTuple]gmsl.PDU
}

func (v *view) get(ctx context.Context, tuples []gmsl.StateKeyTuple) (map[gmsl.StateKeyTuple]gmsl.PDU, error) {
	out := make(map[gmsl.StateKeyTuple]gmsl.PDU, len(tuples))
	var rest []gmsl.StateKeyTuple
	for _, t := range tuples {
		if p, ok := v.overlay[t]; ok {
			out[t] = p
		} else {
			rest = append(rest, t)
		}
	}
	if len(rest) == 0 || v.snapshot == 0 {
		return out, nil
	}
	tupleNIDs, err := v.w.TupleNIDs(ctx, rest)
	if err != nil {
		return nil, err
	}
	if len(tupleNIDs) == 0 {
		return out, nil
	}
	ids := make([]int64, 0, len(tupleNIDs))
	for _, n := range tupleNIDs {
		ids = append(ids, n)
	}
	found, err := v.w.StateLookup(ctx, v.snapshot, ids)
	if err != nil {
		return nil, err
	}
	var evNIDs []int64
	var evTuples []gmsl.StateKeyTuple
	for t, n := range tupleNIDs {
		if e, ok := found[n]; ok {
			evNIDs = append(evNIDs, e)
			evTuples = append(evTuples, t)
		}
	}
	evs, err := v.w.EventsByNID(ctx, evNIDs)
	if err != nil {
		return nil, err
	}
	for i, ev := range evs {
		out[evTuples[i]] = ev.PDU
	}
	return out, nil
}

func (v *view) one(ctx context.Context, evType, stateKey string) (gmsl.PDU, error) {
	t := gmsl.StateKeyTuple{EventType: evType, StateKey: stateKey}
	m, err := v.get(ctx, []gmsl.StateKeyTuple{t})
	if err != nil {
		return nil, err
	}
	return m[t], nil
}

// authEvents loads the state an event's auth needs.
func (v *view) authEvents(ctx context.Context, needed gmsl.StateNeeded) (*gmsl.AuthEvents, error) {
	m, err := v.get(ctx, needed.Tuples())
	if err != nil {
		return nil, err
	}
	pdus := make([]gmsl.PDU, 0, len(m))
	for _, p := range m {
		pdus = append(pdus, p)
	}
	return gmsl.NewAuthEvents(pdus)
}

// plannedEvent is an event that passed every check and is ready to store.
type plannedEvent struct {
	pdu         gmsl.PDU
	txn         *rsapi.TxnID
	depth       int64
	histVis     string
	inviteState []json.RawMessage
	redacts     int64 // NID of the event this redaction applies to
	redactsID   string
}

// processRequest plans every event of req in memory, and stores them only
// if all pass: a request is atomic.
func (in *Inputer) processRequest(ctx context.Context, w *storage.Writer, req *rsapi.InputRequest) (*result, error) {
	res, err := in.planAndStore(ctx, w, req)
	var ref *refusal
	if errors.As(err, &ref) {
		return &result{Response: rsapi.InputResponse{RoomID: req.RoomID, Error: ref.msg, ErrCode: ref.code, ErrIndex: ref.index}}, nil
	}
	return res, err
}

func (in *Inputer) planAndStore(ctx context.Context, w *storage.Writer, req *rsapi.InputRequest) (*result, error) {
	if len(req.Events) == 0 {
		return nil, refuse(0, "M_BAD_JSON", "no events")
	}
	var room *storage.Room
	var verImpl gmsl.IRoomVersion
	if req.RoomID != "" {
		r, err := w.Room(ctx, req.RoomID)
		if errors.Is(err, storage.ErrNotFound) {
			if req.Events[0].PDU == nil {
				return nil, refuse(0, "M_NOT_FOUND", "unknown room %s", req.RoomID)
			}
		} else if err != nil {
			return nil, err
		} else {
			room = r
		}
	}
	version := req.RoomVersion
	if room != nil {
		version = string(room.Version)
	}
	verImpl, err := gmsl.GetRoomVersion(gmsl.RoomVersion(version))
	if err != nil {
		return nil, refuse(0, "M_UNSUPPORTED_ROOM_VERSION", "unsupported room version %q", version)
	}

	// Full PDUs (federation, or events built elsewhere) take their own
	// path (processPDURequest), chosen before any transaction began.
	if req.Events[0].PDU != nil {
		return nil, refuse(0, "M_BAD_JSON", "complete events and proto-events in one request")
	}

	v := &view{w: w, overlay: map[gmsl.StateKeyTuple]gmsl.PDU{}}
	var prevIDs []string
	var depth int64
	roomID := req.RoomID
	if room != nil {
		v.snapshot = room.Snapshot
		prev, err := w.EventsByNID(ctx, room.Latest)
		if err != nil {
			return nil, err
		}
		for _, p := range prev {
			prevIDs = append(prevIDs, p.ID)
		}
		depth = room.MaxDepth
	} else if req.NewRoomID != "" {
		roomID = req.NewRoomID
	}

	resp := rsapi.InputResponse{}
	var plan []*plannedEvent
	for i, ie := range req.Events {
		if ie.Proto == nil {
			return nil, refuse(i, "M_BAD_JSON", "event %d has neither proto nor pdu", i)
		}
		if ie.Txn != nil {
			id, err := w.TxnEvent(ctx, ie.Txn.SessionID, ie.Txn.Key())
			if err != nil {
				return nil, err
			}
			if id != "" {
				resp.EventIDs = append(resp.EventIDs, id)
				continue
			}
		}
		if room == nil && len(plan) == 0 && ie.Proto.Type != spec.MRoomCreate {
			return nil, refuse(i, "M_NOT_FOUND", "unknown room %s", req.RoomID)
		}
		if ie.DedupState && ie.Proto.StateKey != nil {
			cur, err := v.one(ctx, ie.Proto.Type, *ie.Proto.StateKey)
			if err != nil {
				return nil, err
			}
			if cur != nil && string(cur.SenderID()) == ie.Proto.Sender && sameJSON(cur.Content(), ie.Proto.Content) {
				resp.EventIDs = append(resp.EventIDs, cur.EventID())
				continue
			}
		}
		pe, err := in.plan(ctx, v, verImpl, roomID, ie.Proto, prevIDs, depth+1)
		if err != nil {
			var ref *refusal
			if errors.As(err, &ref) {
				ref.index = i
			}
			return nil, err
		}
		pe.txn = ie.Txn
		if pe.pdu.Type() == spec.MRoomCreate && roomID == "" {
			roomID = pe.pdu.RoomID().String()
		}
		plan = append(plan, pe)
		prevIDs = []string{pe.pdu.EventID()}
		depth = pe.depth
		resp.EventIDs = append(resp.EventIDs, pe.pdu.EventID())
	}
	resp.RoomID = roomID
	out := &result{Response: resp}
	if len(plan) == 0 {
		return out, nil
	}

	if room == nil {
		if room, err = w.CreateRoom(ctx, roomID, verImpl.Version()); err != nil {
			if isUnique(err) {
				return nil, refuse(0, "M_UNKNOWN", "room %s already exists", roomID)
			}
			return nil, err
		}
	}
	for _, pe := range plan {
		o, err := in.storeLocal(ctx, w, room, pe)
		if err != nil {
			return nil, err
		}
		out.Outputs = append(out.Outputs, *o)
	}
	if err := w.UpdateRoom(ctx, room); err != nil {
		return nil, err
	}
	return out, nil
}

// plan builds, signs and authorises one proto-event against the view, and
// adds it to the view.
func (in *Inputer) plan(ctx context.Context, v *view, verImpl gmsl.IRoomVersion, roomID string, p *rsapi.ProtoEvent, prevIDs []string, depth int64) (*plannedEvent, error) {
	if !json.Valid(p.Content) || len(bytes.TrimSpace(p.Content)) == 0 || bytes.TrimSpace(p.Content)[0] != '{' {
		return nil, refuse(0, "M_BAD_JSON", "content must be a JSON object")
	}
	if prevIDs == nil {
		prevIDs = []string{}
	}
	proto := gmsl.ProtoEvent{
		SenderID:   p.Sender,
		Type:       p.Type,
		StateKey:   p.StateKey,
		PrevEvents: prevIDs,
		Depth:      min(depth, 1<<63-1),
		Content:    spec.RawJSON(p.Content),
		Redacts:    p.Redacts,
	}
	if !(p.Type == spec.MRoomCreate && verImpl.DomainlessRoomIDs()) {
		proto.RoomID = roomID
	}
	needed, err := gmsl.StateNeededForProtoEvent(&proto)
	if err != nil {
		return nil, refuse(0, "M_BAD_JSON", "%v", err)
	}
	auth, err := v.authEvents(ctx, needed)
	if err != nil {
		return nil, err
	}
	b := verImpl.NewEventBuilderFromProtoEvent(&proto)
	if err := b.AddAuthEvents(auth); err != nil {
		return nil, refuse(0, "M_BAD_JSON", "%v", err)
	}
	pdu, err := b.Build(in.now(), in.key.ServerName, in.key.KeyID, in.key.Private)
	if err != nil {
		var ve gmsl.EventValidationError
		if errors.As(err, &ve) && ve.Code == gmsl.EventValidationTooLarge {
			return nil, refuse(0, "M_TOO_LARGE", "%v", err)
		}
		return nil, refuse(0, "M_BAD_JSON", "%v", err)
	}
	if err := Allowed(pdu, auth); err != nil {
		return nil, notAllowed(err)
	}
	if err := checkSelfLeave(pdu, auth); err != nil {
		return nil, err
	}
	pe := &plannedEvent{pdu: pdu, depth: proto.Depth}
	if pe.histVis, err = v.historyVisibility(ctx); err != nil {
		return nil, err
	}
	if pdu.Type() == spec.MRoomRedaction && pdu.Redacts() != "" {
		if err := in.planRedaction(ctx, v, pe); err != nil {
			return nil, err
		}
	}
	if sk := pdu.StateKey(); sk != nil {
		v.overlay[gmsl.StateKeyTuple{EventType: pdu.Type(), StateKey: *sk}] = pdu
	}
	if pdu.Type() == spec.MRoomMember {
		if m, _ := pdu.Membership(); m == spec.Invite || m == spec.Knock {
			if pe.inviteState, err = v.strippedState(ctx, pdu); err != nil {
				return nil, err
			}
		}
	}
	return pe, nil
}

// checkSelfLeave applies the auth rule gomatrixserverlib relaxes: users
// may leave only from invite, join or knock (spec: auth rules,
// m.room.member, leave). gomatrixserverlib also lets a leave follow a leave
// (or no membership at all), because Synapse once accepted such events
// over federation; for an event a local user asks for now that would let
// anyone write member events into any room, even one they never saw.
func checkSelfLeave(pdu gmsl.PDU, auth *gmsl.AuthEvents) error {
	if pdu.Type() != spec.MRoomMember || !pdu.StateKeyEquals(string(pdu.SenderID())) {
		return nil
	}
	if m, _ := pdu.Membership(); m != spec.Leave {
		return nil
	}
	old, err := auth.Member(pdu.SenderID())
	if err != nil {
		return err
	}
	if old != nil {
		switch m, _ := old.Membership(); m {
		case spec.Join, spec.Invite, spec.Knock:
			return nil
		}
	}
	return refuse(0, "M_FORBIDDEN", "%s is not in room %s", pdu.SenderID(), pdu.RoomID())
}

func notAllowed(err error) error {
	var na *gmsl.NotAllowed
	if errors.As(err, &na) {
		return refuse(0, "M_FORBIDDEN", "%s", na.Message)
	}
	return refuse(0, "M_FORBIDDEN", "%v", err)
}

// planRedaction checks that a local user may redact the target and notes
// it so the redaction is applied when stored. Redacting an unknown event is
// allowed (it may arrive later) but applies nothing.
func (in *Inputer) planRedaction(ctx context.Context, v *view, pe *plannedEvent) error {
	target := pe.pdu.Redacts()
	nids, err := v.w.EventNIDs(ctx, []string{target})
	if err != nil {
		return err
	}
	nid, ok := nids[target]
	if !ok {
		return nil
	}
	evs, err := v.w.EventsByNID(ctx, []int64{nid})
	if err != nil {
		return err
	}
	t := evs[0]
	if t.PDU.RoomID().String() != pe.pdu.RoomID().String() {
		return refuse(0, "M_INVALID_PARAM", "event %s is not in this room", target)
	}
	if t.Rejected {
		return nil
	}
	if t.PDU.SenderID() != pe.pdu.SenderID() {
		ok, err := v.mayRedactOthers(ctx, pe.pdu.SenderID())
		if err != nil {
			return err
		}
		if !ok {
			return refuse(0, "M_FORBIDDEN", "You don't have permission to redact events of other users")
		}
	}
	if t.RedactedBy == "" {
		pe.redacts, pe.redactsID = nid, target
	}
	return nil
}

// mayRedactOthers reports whether sender's power reaches the redact level.
func (v *view) mayRedactOthers(ctx context.Context, sender spec.SenderID) (bool, error) {
	m, err := v.get(ctx, []gmsl.StateKeyTuple{{EventType: spec.MRoomCreate}, {EventType: spec.MRoomPowerLevels}})
	if err != nil {
		return false, err
	}
	create := m[gmsl.StateKeyTuple{EventType: spec.MRoomCreate}]
	if create == nil {
		return false, nil
	}
	verImpl, err := gmsl.GetRoomVersion(create.Version())
	if err == nil && verImpl.PrivilegedCreators() {
		for _, c := range gmsl.CreatorsFromCreateEvent(create) {
			if c == string(sender) {
				return true, nil
			}
		}
	}
	var pl *gmsl.PowerLevelContent
	if ple := m[gmsl.StateKeyTuple{EventType: spec.MRoomPowerLevels}]; ple != nil {
		if pl, err = ple.PowerLevels(); err != nil {
			return false, nil
		}
	} else {
		auth, err := gmsl.NewAuthEvents([]gmsl.PDU{create})
		if err != nil {
			return false, err
		}
		c, err := gmsl.NewPowerLevelContentFromAuthEvents(auth, string(create.SenderID()))
		if err != nil {
			return false, nil //nolint:nilerr // unreadable levels: not allowed
		}
		pl = &c
	}
	return pl.UserLevel(sender) >= pl.Redact, nil
}

func (v *view) historyVisibility(ctx context.Context) (string, error) {
	ev, err := v.one(ctx, spec.MRoomHistoryVisibility, "")
	if err != nil || ev == nil {
		return "shared", err
	}
	hv, err := ev.HistoryVisibility()
	if err != nil || hv == "" {
		return "shared", nil //nolint:nilerr // malformed content: the spec default
	}
	return string(hv), nil
}

// strippedStateTypes are the state events sent with an invite or knock
// (spec: "stripped state").
// m.room.guest_access is beyond the spec's list: an invited guest's
// server reads it to know whether the guest may join (guests join only
// rooms whose guest access is can_join, which a server not in the room
// cannot see otherwise).
var strippedStateTypes = []string{
	spec.MRoomCreate, spec.MRoomJoinRules, spec.MRoomCanonicalAlias, "m.room.avatar",
	spec.MRoomName, spec.MRoomEncryption, spec.MRoomTopic, spec.MRoomGuestAccess,
}

// StrippedStateTypes is strippedStateTypes for the packages that send
// invites themselves (perform's invites of other servers' users).
func StrippedStateTypes() []string { return slices.Clone(strippedStateTypes) }

func (v *view) strippedState(ctx context.Context, ev gmsl.PDU) ([]json.RawMessage, error) {
	tuples := make([]gmsl.StateKeyTuple, 0, len(strippedStateTypes)+1)
	for _, t := range strippedStateTypes {
		tuples = append(tuples, gmsl.StateKeyTuple{EventType: t})
	}
	tuples = append(tuples, gmsl.StateKeyTuple{EventType: spec.MRoomMember, StateKey: string(ev.SenderID())})
	m, err := v.get(ctx, tuples)
	if err != nil {
		return nil, err
	}
	var out []json.RawMessage
	for _, t := range tuples {
		p := m[t]
		if p == nil {
			continue
		}
		b, err := json.Marshal(map[string]any{
			"type": p.Type(), "state_key": *p.StateKey(), "content": json.RawMessage(p.Content()), "sender": string(p.SenderID()),
		})
		if err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return out, nil
}

// storeLocal stores a planned event on top of the room's current state.
func (in *Inputer) storeLocal(ctx context.Context, w *storage.Writer, room *storage.Room, pe *plannedEvent) (*rsapi.OutputEvent, error) {
	pdu := pe.pdu
	ev := &storage.Event{RoomNID: room.NID, ID: pdu.EventID(), StateBefore: room.Snapshot, PDU: pdu}
	out := &rsapi.OutputEvent{
		RoomID:            room.ID,
		RoomVersion:       string(room.Version),
		EventID:           ev.ID,
		Event:             json.RawMessage(pdu.JSON()),
		HistoryVisibility: pe.histVis,
		Txn:               pe.txn,
		InviteRoomState:   pe.inviteState,
	}
	sk := pdu.StateKey()
	var oldNID int64
	if sk != nil {
		t, err := w.Tuple(ctx, gmsl.StateKeyTuple{EventType: pdu.Type(), StateKey: *sk})
		if err != nil {
			return nil, err
		}
		ev.Tuple = t
		if room.Snapshot != 0 {
			old, err := w.StateLookup(ctx, room.Snapshot, []int64{t})
			if err != nil {
				return nil, err
			}
			oldNID = old[t]
		}
	}
	if _, err := w.StoreEvent(ctx, ev, pe.depth); err != nil {
		return nil, err
	}
	if sk != nil {
		snap, err := w.NewSnapshot(ctx, room.NID, room.Snapshot, []storage.Entry{{Tuple: ev.Tuple, Event: ev.NID}})
		if err != nil {
			return nil, err
		}
		room.Snapshot = snap
		out.AddsState = []string{ev.ID}
		if oldNID != 0 {
			old, err := w.EventsByNID(ctx, []int64{oldNID})
			if err != nil {
				return nil, err
			}
			out.RemovesState = []string{old[0].ID}
		}
		if pdu.Type() == spec.MRoomMember {
			m, err := pdu.Membership()
			if err != nil {
				return nil, fmt.Errorf("membership of %s: %w", ev.ID, err)
			}
			if err := w.SetMembership(ctx, room.NID, *sk, m, ev.NID); err != nil {
				return nil, err
			}
		}
	}
	room.Latest = []int64{ev.NID}
	room.MaxDepth = max(room.MaxDepth, pe.depth)
	if pe.txn != nil {
		if err := w.SetTxn(ctx, pe.txn.SessionID, pe.txn.Key(), ev.ID); err != nil {
			return nil, err
		}
	}
	if pe.redacts != 0 {
		if err := w.Redact(ctx, pe.redacts, ev.ID); err != nil {
			return nil, err
		}
		out.Redacts = pe.redactsID
	}
	return out, nil
}

func sameJSON(a, b []byte) bool {
	ca, err1 := gmsl.CanonicalJSON(a)
	cb, err2 := gmsl.CanonicalJSON(b)
	return err1 == nil && err2 == nil && bytes.Equal(ca, cb)
}
