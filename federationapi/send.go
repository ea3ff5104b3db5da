package federationapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/sirupsen/logrus"
	"github.com/tidwall/gjson"

	"myelin/internal/eventsig"
	"myelin/internal/fanout"
	"myelin/internal/mxhttp"
	rsapi "myelin/roomserver/api"
)

// Bounds of an inbound transaction (spec: "Transactions" are limited to
// 50 PDUs and 100 EDUs; Synapse answers more with a 400).
const (
	maxTxnPDUs = 50
	maxTxnEDUs = 100
	// txnRetention is how long the response to a transaction is kept to
	// answer a retry of it; a sending server retries a transaction until
	// it gets a 200, well within a day.
	txnRetention = 24 * time.Hour
	// txnPruneEvery is how often old responses are pruned.
	txnPruneEvery = time.Hour
	// txnRoomWorkers bounds the rooms of one transaction input at once.
	txnRoomWorkers = 4
)

// txnRequest is the body of PUT /_matrix/federation/v1/send/{txnId}.
type txnRequest struct {
	Origin         string            `json:"origin"`
	OriginServerTS int64             `json:"origin_server_ts"`
	PDUs           []json.RawMessage `json:"pdus"`
	EDUs           []txnEDU          `json:"edus"`
}

// txnEDU is one EDU of a transaction.
type txnEDU struct {
	Type    string          `json:"edu_type"`
	Content json.RawMessage `json:"content"`
}

// pduResult is what the response says of one PDU: no error, it was
// handled.
type pduResult struct {
	Error string `json:"error,omitempty"`
}

// sendResponse is the answer to a transaction.
type sendResponse struct {
	PDUs map[string]pduResult `json:"pdus"`
}

// txnTiming adds up where an inbound transaction's time went, for the
// debug log line each transaction gets (rooms run in parallel, so the
// parts can sum to more than the whole).
type txnTiming struct {
	verify, input atomic.Int64 // nanoseconds
}

// inbound is the state of the /send endpoint: one transaction at a time
// per origin, the responses answered and not yet recorded, and when old
// responses were last pruned.
type inbound struct {
	mu        sync.Mutex
	origins   map[spec.ServerName]*originTurn
	recording map[txnKey]string
	lastPrune atomic.Int64
}

// txnKey names an inbound transaction.
type txnKey struct {
	origin spec.ServerName
	id     string
}

// answered keeps the response to a transaction until it is recorded, so
// that a retry arriving meanwhile finds it.
func (in *inbound) answered(k txnKey, resp string) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.recording == nil {
		in.recording = map[txnKey]string{}
	}
	in.recording[k] = resp
}

// recorded forgets a response kept by answered: it is in the store now,
// or could not be written (a retry is then processed again).
func (in *inbound) recorded(k txnKey) {
	in.mu.Lock()
	defer in.mu.Unlock()
	delete(in.recording, k)
}

// pending is the response to a transaction answered and not yet
// recorded, "" if none.
func (in *inbound) pending(k txnKey) string {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.recording[k]
}

// originTurn is a lock of one origin that a waiter can give up on (its
// request's context ending); n counts holders and waiters so that the
// entry goes when nobody needs it.
type originTurn struct {
	ch chan struct{}
	n  int
}

// turn waits until no other transaction of origin is being processed and
// returns the function that ends this one's turn. A sending server sends
// one transaction at a time (spec); if it sends more, or retries one
// still being processed, they are taken one after the other, so a retry
// finds the first one's recorded response.
func (in *inbound) turn(ctx context.Context, origin spec.ServerName) (func(), error) {
	in.mu.Lock()
	if in.origins == nil {
		in.origins = map[spec.ServerName]*originTurn{}
	}
	t := in.origins[origin]
	if t == nil {
		t = &originTurn{ch: make(chan struct{}, 1)}
		in.origins[origin] = t
	}
	t.n++
	in.mu.Unlock()
	release := func() {
		in.mu.Lock()
		if t.n--; t.n == 0 {
			delete(in.origins, origin)
		}
		in.mu.Unlock()
	}
	select {
	case t.ch <- struct{}{}:
		return func() { <-t.ch; release() }, nil
	case <-ctx.Done():
		release()
		return nil, ctx.Err()
	}
}

// send is PUT /_matrix/federation/v1/send/{txnId}: a transaction of PDUs
// and EDUs from another server. Each PDU gets its own result; a room's
// PDUs are input in order, rooms in parallel. The response is recorded
// under (origin, txnId): a retry gets it again and nothing is processed
// twice. When this server cannot store events for now, the answer is a
// 503 and nothing is recorded, so the origin sends the transaction again.
func (f *FederationAPI) send(r *http.Request) (any, error) {
	ctx := r.Context()
	origin := Origin(ctx)
	txnID := mxhttp.Var(r, "txnId")
	var req txnRequest
	if err := mxhttp.ReadJSON(r, &req); err != nil {
		return nil, err
	}
	switch {
	case req.Origin == "":
		return nil, mxhttp.BadJSON("origin is required")
	case spec.ServerName(req.Origin) != origin:
		return nil, mxhttp.Forbidden("The transaction's origin %q is not the server that signed the request", req.Origin)
	case len(req.PDUs) > maxTxnPDUs:
		return nil, mxhttp.BadJSON("A transaction holds at most %d PDUs", maxTxnPDUs)
	case len(req.EDUs) > maxTxnEDUs:
		return nil, mxhttp.BadJSON("A transaction holds at most %d EDUs", maxTxnEDUs)
	}
	start := time.Now()
	done, err := f.in.turn(ctx, origin)
	if err != nil {
		return nil, mxhttp.ServiceUnavailable(fmt.Errorf("wait for the previous transaction of %s: %w", origin, err))
	}
	defer done()
	turned := time.Now()
	key := txnKey{origin, txnID}
	if resp := f.in.pending(key); resp != "" {
		return json.RawMessage(resp), nil
	}
	if resp, err := f.store.InboundTxn(ctx, string(origin), txnID); err != nil {
		return nil, err
	} else if resp != "" {
		return json.RawMessage(resp), nil
	}
	var timing txnTiming
	res, err := f.processTxn(ctx, origin, &req, &timing)
	if err != nil {
		return nil, err
	}
	processed := time.Now()
	enc, err := json.Marshal(res)
	if err != nil {
		return nil, fmt.Errorf("encode response to transaction %s: %w", txnID, err)
	}
	// The origin has its answer while the response is recorded: with one
	// transaction in flight per destination, the write would otherwise
	// lie between every two of them. Nor does the origin's next
	// transaction wait for it: the response is kept in memory until it
	// is recorded, so that a retry of this transaction finds it either
	// way. A retry that finds nothing (the write failed) is processed
	// again, and the roomserver takes in PDUs it has as no-ops.
	f.in.answered(key, string(enc))
	return &mxhttp.Then{Body: enc, After: func(ctx context.Context) {
		defer f.in.recorded(key)
		now := f.now()
		if err := f.store.RecordInboundTxn(ctx, string(origin), txnID, string(enc), now.UnixMilli()); err != nil {
			f.log.WithError(err).WithField("origin", origin).WithField("txn_id", txnID).Warn("cannot record the response to a transaction")
		}
		f.pruneTxns(ctx, now)
		if f.log.Logger.IsLevelEnabled(logrus.DebugLevel) {
			ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
			f.log.WithFields(logrus.Fields{
				"origin": origin, "txn_id": txnID, "pdus": len(req.PDUs), "edus": len(req.EDUs),
				"wait_ms":    ms(turned.Sub(start)),
				"verify_ms":  ms(time.Duration(timing.verify.Load())),
				"input_ms":   ms(time.Duration(timing.input.Load())),
				"process_ms": ms(processed.Sub(turned)),
				"record_ms":  ms(time.Since(processed)),
			}).Debug("transaction received")
		}
	}}, nil
}

// pruneTxns forgets the responses older than txnRetention, at most once
// every txnPruneEvery.
func (f *FederationAPI) pruneTxns(ctx context.Context, now time.Time) {
	last := f.in.lastPrune.Load()
	if now.UnixMilli()-last < txnPruneEvery.Milliseconds() || !f.in.lastPrune.CompareAndSwap(last, now.UnixMilli()) {
		return
	}
	if _, err := f.store.PruneInboundTxns(ctx, now.Add(-txnRetention).UnixMilli()); err != nil {
		f.log.WithError(err).Warn("cannot prune old inbound transactions")
	}
}

// processTxn takes in a transaction's PDUs, room by room, then its EDUs.
// Its error means the transaction is to be retried whole (503).
func (f *FederationAPI) processTxn(ctx context.Context, origin spec.ServerName, req *txnRequest, timing *txnTiming) (*sendResponse, error) {
	res := &sendResponse{PDUs: make(map[string]pduResult, len(req.PDUs))}
	var order []string
	byRoom := map[string][]json.RawMessage{}
	for _, raw := range req.PDUs {
		roomID := gjson.GetBytes(raw, "room_id")
		if roomID.Type != gjson.String || roomID.Str == "" {
			// No room: not an event of any room this server could
			// take in, nor one whose ID can be named in the answer.
			f.log.WithField("origin", origin).Debug("ignoring a PDU without a room ID")
			continue
		}
		if _, ok := byRoom[roomID.Str]; !ok {
			order = append(order, roomID.Str)
		}
		byRoom[roomID.Str] = append(byRoom[roomID.Str], raw)
	}

	var mu sync.Mutex
	var failed error
	put := func(eventID string, err error) {
		if eventID == "" {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			res.PDUs[eventID] = pduResult{Error: err.Error()}
		} else {
			res.PDUs[eventID] = pduResult{}
		}
	}
	sem := make(chan struct{}, txnRoomWorkers)
	var wg sync.WaitGroup
	for _, roomID := range order {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := f.receiveRoomPDUs(ctx, origin, roomID, byRoom[roomID], put, timing); err != nil {
				mu.Lock()
				failed = cmpErr(failed, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if errors.Is(failed, context.Canceled) || errors.Is(failed, context.DeadlineExceeded) {
		// The origin gave up waiting (a room fetching what it lacks can
		// take long): it sends the transaction again, and what was
		// stored by then is taken in as a no-op.
		return nil, mxhttp.ServiceUnavailable(failed)
	}
	if failed != nil {
		return nil, failed
	}
	// After the PDUs, so that a receipt or a typing notice of an event
	// in the same transaction finds it.
	for _, edu := range req.EDUs {
		f.receiveEDU(ctx, origin, edu.Type, edu.Content)
	}
	return res, nil
}

// cmpErr keeps the first error, preferring one that says "retry".
func cmpErr(have, err error) error {
	var un mxhttp.Unavailable
	if have == nil || (!errors.As(have, &un) && errors.As(err, &un)) {
		return err
	}
	return have
}

// receiveRoomPDUs runs the checks on receipt of a PDU (spec: "Checks
// performed on receipt of a PDU") on one room's PDUs of a transaction, in
// their order, and inputs those that pass: the format for the room's
// version, the policy on the origin (server ACLs), the signatures of the
// sender's server, the content hash (an event that fails it goes on
// redacted); the roomserver's input runs the auth checks (auth events,
// state before the event, soft fail against the current state). put
// records each PDU's result; an error fails the whole transaction.
func (f *FederationAPI) receiveRoomPDUs(ctx context.Context, origin spec.ServerName, roomID string, raws []json.RawMessage, put func(string, error), timing *txnTiming) error {
	unknown := func() error {
		for _, raw := range raws {
			put(guessEventID(raw, roomID), fmt.Errorf("unknown room %s", roomID))
		}
		return nil
	}
	if f.rs == nil {
		return unknown()
	}
	ver, err := f.rs.RoomVersion(ctx, roomID)
	if errors.Is(err, rsapi.ErrRoomNotFound) {
		return unknown()
	}
	if err != nil {
		return fmt.Errorf("version of room %s: %w", roomID, err)
	}
	verImpl, err := gmsl.GetRoomVersion(ver)
	if err != nil {
		return fmt.Errorf("room %s: %w", roomID, err)
	}
	// Parsing (checks, content hash, reference hash) is a step of each
	// PDU alone: on all cores.
	parsed := make([]gmsl.PDU, len(raws))
	parseErrs := make([]error, len(raws))
	fanout.Each(len(raws), func(i int) { parsed[i], parseErrs[i] = verImpl.NewEventFromUntrustedJSON(raws[i]) })
	evs := make([]gmsl.PDU, 0, len(raws))
	for i, raw := range raws {
		ev, err := parsed[i], parseErrs[i]
		if err != nil {
			put(guessEventID(raw, roomID), fmt.Errorf("bad event: %w", err))
			continue
		}
		if ev.RoomID().String() != roomID {
			put(ev.EventID(), fmt.Errorf("the event is not of room %s", roomID))
			continue
		}
		refusal, err := f.pduPolicy(ctx, origin, ev)
		if err != nil {
			// The policy could not be read (the database): retry the
			// transaction rather than refuse the PDU for good.
			return err
		}
		if refusal != nil {
			put(ev.EventID(), refusal)
			continue
		}
		evs = append(evs, ev)
	}
	ok := evs[:0]
	verifyStart := time.Now()
	verified := eventsig.VerifyAll(ctx, evs, f.keys.ring)
	timing.verify.Add(int64(time.Since(verifyStart)))
	for i, err := range verified {
		if err != nil {
			put(evs[i].EventID(), fmt.Errorf("bad signatures: %w", err))
			continue
		}
		if evs[i].Redacted() {
			// The content hash does not match: the spec says to go on
			// with the redacted event, which is what gomatrixserverlib
			// parsed it into (its signatures cover the redacted form).
			f.log.WithField("origin", origin).WithField("event_id", evs[i].EventID()).Debug("content hash mismatch: taking the event in redacted")
		}
		ok = append(ok, evs[i])
	}
	inputStart := time.Now()
	defer func() { timing.input.Add(int64(time.Since(inputStart))) }()
	return f.inputRoomPDUs(ctx, origin, roomID, ok, put)
}

// pduPolicy is where what the server allows of origin in the event's room
// is checked before the event is input: the room's server ACL
// (m.room.server_acl) must allow origin. A refusal refuses the PDU alone;
// an error (the ACL cannot be read now) fails the transaction.
func (f *FederationAPI) pduPolicy(ctx context.Context, origin spec.ServerName, ev gmsl.PDU) (refusal, err error) {
	ok, err := f.aclAllows(ctx, ev.RoomID().String(), origin)
	if err != nil {
		return nil, err
	}
	if !ok {
		return fmt.Errorf("server %s is denied by the server ACL of %s", origin, ev.RoomID().String()), nil
	}
	return nil, nil
}

// inputRoomPDUs inputs one room's checked PDUs, in order, in as few
// requests as it can: the roomserver stores the events of a request up to
// one it refuses, and says which (InputResponse.ErrIndex); that one gets
// the refusal, and the rest go in a new request, less those built on a
// refused event, which are answered at once (they would be refused too,
// after their own fetch of what they lack, up to the roomserver's fetch
// timeout). When the response does not name the refused event among the
// stored ones, each of the rest is input on its own so that a refusal is
// its PDU's alone (those already stored are no-ops). The roomserver being
// unable to store anything now fails the transaction, to be retried.
func (f *FederationAPI) inputRoomPDUs(ctx context.Context, origin spec.ServerName, roomID string, evs []gmsl.PDU, put func(string, error)) error {
	input := func(evs []gmsl.PDU) (resp *rsapi.InputResponse, refused, err error) {
		// Answered once committed: no one here reads these events
		// back through the outputs before the next transaction.
		req := &rsapi.InputRequest{RoomID: roomID, Origin: origin, Events: make([]rsapi.InputEvent, len(evs)), AnswerOnCommit: true}
		for i, ev := range evs {
			req.Events[i] = rsapi.InputEvent{PDU: json.RawMessage(ev.JSON())}
		}
		resp, err = f.rs.Input(ctx, req)
		if err != nil && resp != nil && !resp.Unavailable {
			return resp, err, nil
		}
		return resp, nil, err
	}
	refusedIDs := map[string]bool{}
	refuse := func(ev gmsl.PDU, why error) {
		refusedIDs[ev.EventID()] = true
		f.log.WithError(why).WithField("origin", origin).WithField("event_id", ev.EventID()).Debug("PDU refused")
		put(ev.EventID(), why)
	}
	// pending drops the events built on a refused one, answering them.
	pending := func(evs []gmsl.PDU) []gmsl.PDU {
		out := evs[:0:0]
		for _, ev := range evs {
			if prev := refusedPrev(ev, refusedIDs); prev != "" {
				refuse(ev, fmt.Errorf("its prev event %s was refused", prev))
				continue
			}
			out = append(out, ev)
		}
		return out
	}
	for evs = pending(evs); len(evs) > 0; evs = pending(evs) {
		resp, refused, err := input(evs)
		if err != nil {
			return fmt.Errorf("input %d events of %s: %w", len(evs), roomID, err)
		}
		if refused == nil {
			for _, ev := range evs {
				put(ev.EventID(), nil)
			}
			return nil
		}
		k := resp.ErrIndex
		if k < 0 || k >= len(evs) || k != len(resp.EventIDs) || !storedPrefix(evs, resp.EventIDs) {
			if len(evs) == 1 {
				refuse(evs[0], refused)
				return nil
			}
			break
		}
		for _, ev := range evs[:k] {
			put(ev.EventID(), nil)
		}
		refuse(evs[k], refused)
		evs = evs[k+1:]
	}
	for _, ev := range pending(evs) {
		_, refused, err := input([]gmsl.PDU{ev})
		if err != nil {
			return fmt.Errorf("input %s: %w", ev.EventID(), err)
		}
		if refused != nil {
			refuse(ev, refused)
			continue
		}
		put(ev.EventID(), nil)
	}
	return nil
}

// storedPrefix reports whether ids are the IDs of the first events of evs.
func storedPrefix(evs []gmsl.PDU, ids []string) bool {
	if len(ids) > len(evs) {
		return false
	}
	for i, id := range ids {
		if evs[i].EventID() != id {
			return false
		}
	}
	return true
}

// refusedPrev is a prev event of ev among refused, "" if none is.
func refusedPrev(ev gmsl.PDU, refused map[string]bool) string {
	for _, id := range ev.PrevEventIDs() {
		if refused[id] {
			return id
		}
	}
	return ""
}

// guessEventID is the ID of an event that cannot be parsed in its room's
// version (or whose room is unknown), to name it in the answer: its
// event_id (room versions 1 and 2), else its reference hash as room
// versions 4 and later compute it; "" when neither can be had.
func guessEventID(raw json.RawMessage, roomID string) string {
	if id := gjson.GetBytes(raw, "event_id"); id.Type == gjson.String && len(id.Str) > 1 && id.Str[0] == '$' {
		return id.Str
	}
	v := gmsl.RoomVersionV10
	if !strings.Contains(roomID, ":") {
		v = gmsl.RoomVersionV12
	}
	ev, err := gmsl.MustGetRoomVersion(v).NewEventFromUntrustedJSON(raw)
	if err != nil {
		return ""
	}
	return ev.EventID()
}
