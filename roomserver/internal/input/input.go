// Package input is the roomserver's event input: a durable JetStream
// consumer on InputRoomEvent.> whose messages are handed to one actor per
// room, so each room's events are processed in order while rooms run in
// parallel. An actor drains everything queued for its room and commits
// its proto-events (local events it builds) in one transaction, then
// publishes the accepted events on OutputRoomEvent, answers the producers
// and acks. Complete events (federation) go in two steps: fetch and
// prepare outside any transaction and any write slot (missing events,
// state resolution), then store in one short transaction (pdu.go).
package input

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"runtime/debug"
	"sync"
	"time"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/sirupsen/logrus"
	"github.com/tidwall/gjson"

	"myelin/internal/bus"
	"myelin/internal/signing"
	rsapi "myelin/roomserver/api"
	"myelin/roomserver/storage"
)

// durable is the name of the roomserver's consumer on InputRoomEvent.
const durable = "roomserver"

// maxBatch bounds how many queued messages of one room share a transaction.
const maxBatch = 64

// ackWait is how long JetStream waits for an ack before redelivering; work
// that may take longer (a retried batch, a fetch) calls InProgress.
const ackWait = 30 * time.Second

// maxAckPending is the consumer's ack budget: messages delivered and not
// acked, across all rooms. When it is spent, nothing more is delivered.
const maxAckPending = 20000

// Config tunes an Inputer; zero values take the defaults.
type Config struct {
	// Fetcher gets what federated events need and this server lacks. With
	// none, an event whose prev events are missing is refused.
	Fetcher rsapi.Fetcher
	// KeyRing checks the signatures of the room state a join through
	// another server brings (InputRequest.State); with none, such a join
	// is refused.
	KeyRing gmsl.JSONVerifier
	// FetchTimeout bounds one request's fetch step (default 30 s).
	FetchTimeout time.Duration
	// MaxMissing bounds the events fetched to fill one gap (default 20).
	MaxMissing int
	// FetchSlots bounds the rooms fetching at once (default 16).
	FetchSlots int
	// MaxFetchingQueue bounds the messages queued on one room while it
	// fetches (default 100), SlowBudget those queued on all fetching
	// rooms (default a quarter of the ack budget); what exceeds them is
	// answered busy, so slow rooms never spend the ack budget of the rest.
	MaxFetchingQueue int
	SlowBudget       int
	// OnResolve, when set, is called during each state resolution of a
	// federated event. Tests use it to show that resolution runs outside
	// any write transaction.
	OnResolve func()
}

func (c *Config) defaults() {
	if c.FetchTimeout <= 0 {
		c.FetchTimeout = 30 * time.Second
	}
	if c.MaxMissing <= 0 {
		c.MaxMissing = 20
	}
	if c.FetchSlots <= 0 {
		c.FetchSlots = 16
	}
	if c.MaxFetchingQueue <= 0 {
		c.MaxFetchingQueue = 100
	}
	if c.SlowBudget <= 0 {
		c.SlowBudget = maxAckPending / 4
	}
}

// Inputer consumes InputRoomEvent.
type Inputer struct {
	store *storage.Storage
	bus   *bus.Bus
	key   *signing.Key
	log   *logrus.Entry
	now   func() time.Time
	cfg   Config

	workers chan struct{} // bounds the write transactions of input at once
	fetches chan struct{} // bounds the rooms fetching at once

	mu         sync.Mutex
	actors     map[string]*actor // by subject
	poisoned   map[string]bool   // requests whose processing panicked
	slowQueued int               // messages queued on fetching rooms
	wg         sync.WaitGroup
}

type actor struct {
	subject  string
	queue    []jetstream.Msg
	fetching bool // its queue counts in slowQueued
}

// New returns an Inputer; Start runs it.
func New(store *storage.Storage, b *bus.Bus, key *signing.Key, log *logrus.Entry, cfg Config) *Inputer {
	cfg.defaults()
	return &Inputer{
		store:    store,
		bus:      b,
		key:      key,
		log:      log,
		now:      time.Now,
		cfg:      cfg,
		workers:  make(chan struct{}, max(4, 2*runtime.GOMAXPROCS(0))),
		fetches:  make(chan struct{}, cfg.FetchSlots),
		actors:   map[string]*actor{},
		poisoned: map[string]bool{},
	}
}

// Start creates the consumer and processes messages until ctx ends; Wait
// waits for in-flight work after that.
func (in *Inputer) Start(ctx context.Context) error {
	cons, err := in.bus.OpenConsumer(ctx, bus.InputRoomEvent, jetstream.ConsumerConfig{
		Durable:   durable,
		AckPolicy: jetstream.AckExplicitPolicy,
		// After a crash, unacked input is redelivered this long after it
		// was delivered; slow batches call InProgress while retrying.
		AckWait:       ackWait,
		MaxAckPending: maxAckPending,
		MaxDeliver:    -1,
	})
	if err != nil {
		return err
	}
	in.wg.Add(2)
	go func() {
		defer in.wg.Done()
		// Across a loss of the bus connection, messages delivered on the
		// old one may still be in the actors' queues or transactions
		// when the reopened consumer delivers them again: the copy queues
		// behind them on the same actor and is answered from the input
		// log.
		cons.Messages(ctx, 1024, func(msg jetstream.Msg) { in.dispatch(ctx, msg) })
	}()
	go func() {
		defer in.wg.Done()
		// Forget processed requests once redelivery is no longer possible.
		t := time.NewTicker(time.Hour)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if err := in.store.PruneInputLog(ctx, 24*time.Hour); err != nil && ctx.Err() == nil {
					in.log.WithError(err).Warn("pruning input log")
				}
			}
		}
	}()
	return nil
}

// Wait blocks until the consumer and every actor have stopped.
func (in *Inputer) Wait() { in.wg.Wait() }

// dispatch queues msg on its room's actor, starting the actor if idle.
func (in *Inputer) dispatch(ctx context.Context, msg jetstream.Msg) {
	subj := msg.Subject()
	in.mu.Lock()
	a, running := in.actors[subj]
	if !running {
		a = &actor{subject: subj}
		in.actors[subj] = a
	}
	if a.fetching && (len(a.queue) >= in.cfg.MaxFetchingQueue || in.slowQueued >= in.cfg.SlowBudget) {
		in.mu.Unlock()
		// A room waiting on a slow (or hostile) remote must not take the
		// ack budget every room shares: past its share, input to it is
		// answered busy, and its producer may try again later.
		in.answerUnavailable(ctx, []jetstream.Msg{msg}, "room busy fetching missing events; try again later")
		return
	}
	a.queue = append(a.queue, msg)
	if a.fetching {
		in.slowQueued++
	}
	in.mu.Unlock()
	if !running {
		in.wg.Add(1)
		go in.run(ctx, a)
	}
}

// run processes an actor's queue until it is empty, then retires the actor.
func (in *Inputer) run(ctx context.Context, a *actor) {
	defer in.wg.Done()
	for {
		in.mu.Lock()
		n := min(len(a.queue), maxBatch)
		if n == 0 || ctx.Err() != nil {
			for _, m := range a.queue {
				_ = m.Nak() // shutting down: redeliver at once on the next start
			}
			delete(in.actors, a.subject)
			in.mu.Unlock()
			return
		}
		batch := a.queue[:n:n]
		a.queue = a.queue[n:]
		in.mu.Unlock()
		in.processBatch(ctx, a, batch)
	}
}

// isPDURequest reports whether a message carries complete events (which
// take the fetch and prepare path) rather than proto-events, by its first
// event as planAndStore decides, without decoding the whole request.
func isPDURequest(m jetstream.Msg) bool {
	return gjson.GetBytes(m.Data(), "events.0.pdu").Exists()
}

// processBatch processes a room's batch in order: a run of proto-event
// requests shares one write transaction; a PDU request is fetched and
// prepared first, outside any transaction and holding no write slot,
// then stored. What is not processed (shutdown) is nakked.
func (in *Inputer) processBatch(ctx context.Context, a *actor, msgs []jetstream.Msg) {
	for len(msgs) > 0 {
		n := 1
		pdus := isPDURequest(msgs[0])
		if !pdus {
			for n < len(msgs) && !isPDURequest(msgs[n]) {
				n++
			}
		}
		run, rest := msgs[:n], msgs[n:]
		var ok bool
		if pdus {
			ok = in.processPDURequest(ctx, a, run[0], rest)
		} else {
			ok = in.commitProtos(ctx, run)
		}
		if !ok {
			for _, m := range msgs {
				_ = m.Nak()
			}
			return
		}
		msgs = rest
	}
}

// result is what processing one message produced.
type result struct {
	Response rsapi.InputResponse `json:"response"`
	Outputs  []rsapi.OutputEvent `json:"outputs,omitempty"`
	// timing is where a request of complete events spent its time, for
	// the debug log line each gets; nil for other requests.
	timing *pduTiming
}

// pduTiming adds up the stages of a request of complete events.
type pduTiming struct {
	parse, fetch time.Duration
	// gate is the wait for a write slot and the database's writer,
	// body the statements, commit the commit, over all the request's
	// write transactions.
	gate, body, commit time.Duration
	writes             int
}

// write is in.write timed into t.
func (t *pduTiming) write(ctx context.Context, in *Inputer, f func(w *storage.Writer) error) error {
	start := time.Now()
	var in0, out time.Time
	err := in.write(ctx, func(w *storage.Writer) error {
		in0 = time.Now()
		defer func() { out = time.Now() }()
		return f(w)
	})
	end := time.Now()
	if !in0.IsZero() && !out.IsZero() {
		t.gate += in0.Sub(start)
		t.body += out.Sub(in0)
		t.commit += end.Sub(out)
		t.writes++
	}
	return err
}

// write runs f in one write transaction, holding one of the input's write
// slots for as long as it runs.
func (in *Inputer) write(ctx context.Context, f func(w *storage.Writer) error) error {
	select {
	case in.workers <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-in.workers }()
	return in.store.Write(ctx, f)
}

// commitProtos commits a run of proto-event requests in one transaction,
// then publishes, replies and acks. It reports false if it gave up
// (shutdown) without acking.
func (in *Inputer) commitProtos(ctx context.Context, msgs []jetstream.Msg) bool {
	var results []*result
	var down outage
	answered, ok := in.untilStored(ctx, msgs, &down, func() error {
		results = make([]*result, len(msgs))
		return in.write(ctx, func(w *storage.Writer) error {
			for i, m := range msgs {
				r, err := in.processMessage(ctx, w, m)
				if err != nil {
					return err
				}
				results[i] = r
			}
			return nil
		})
	})
	if !ok || answered {
		return ok
	}
	return in.publishAndAnswer(ctx, msgs, results, false)
}

// untilStored runs attempt until it succeeds, retrying transient failures
// with a growing delay and telling JetStream the messages are in
// progress. It reports answered when an outage of the database answered
// the messages instead, and ok false when ctx ended first.
func (in *Inputer) untilStored(ctx context.Context, msgs []jetstream.Msg, down *outage, attempt func() error) (answered, ok bool) {
	delay := 50 * time.Millisecond
	for {
		err := attempt()
		if err == nil {
			return false, true
		}
		if ctx.Err() != nil {
			return false, false
		}
		if down.answered(ctx, in, msgs, err) {
			return true, true
		}
		in.log.WithError(err).WithField("subject", msgs[0].Subject()).Warn("input transaction failed; retrying")
		for _, m := range msgs {
			_ = m.InProgress()
		}
		select {
		case <-ctx.Done():
			return false, false
		case <-time.After(delay):
		}
		delay = min(2*delay, 10*time.Second)
	}
}

// publishAndAnswer publishes the outputs of processed messages, then
// replies to their producers and acks them; answerFirst (the request's
// AnswerOnCommit), it replies before publishing. It reports false, acking
// nothing, if the outputs could not be published.
func (in *Inputer) publishAndAnswer(ctx context.Context, msgs []jetstream.Msg, results []*result, answerFirst bool) bool {
	// Unless asked otherwise, publish every output before answering
	// anyone, so that a producer told "committed" can rely on the output
	// being in the stream.
	if answerFirst {
		in.reply(msgs, results)
	}
	var outs []*nats.Msg
	for _, r := range results {
		for i := range r.Outputs {
			data, err := json.Marshal(&r.Outputs[i])
			if err != nil {
				in.log.WithError(err).Error("encode output event")
				continue
			}
			outs = append(outs, bus.NewMsg(bus.OutputRoomEvent, data, r.Outputs[i].EventID))
		}
	}
	if err := in.bus.PublishAll(ctx, outs); err != nil {
		var down *bus.UnavailableError
		switch {
		case ctx.Err() != nil:
		case errors.As(err, &down):
			// The bus logs its own outage.
			in.log.WithError(err).Debug("output events not stored: the bus is down")
		default:
			in.log.WithError(err).Error("output events not stored by JetStream")
		}
		return false // the redelivery republishes from the input log
	}
	if !answerFirst {
		in.reply(msgs, results)
	}
	for _, m := range msgs {
		if err := m.Ack(); err != nil && ctx.Err() == nil {
			// Lost with the connection: the message comes again on the
			// next one and is answered from the input log.
			in.log.WithError(err).Debug("ack input message")
		}
	}
	return true
}

// reply sends each message's producer its result.
func (in *Inputer) reply(msgs []jetstream.Msg, results []*result) {
	for i, m := range msgs {
		if to := m.Headers().Get(bus.HeaderReply); to != "" {
			data, _ := json.Marshal(&results[i].Response)
			if err := in.bus.Send(to, data); err != nil {
				// The producer asks again when the bus is back.
				in.log.WithError(err).Debug("replying to input producer")
			}
		}
	}
}

// answerUnavailable acks msgs and tells their producers that nothing was
// stored and nothing will be from these messages: they may send again.
func (in *Inputer) answerUnavailable(ctx context.Context, msgs []jetstream.Msg, reason string) {
	reply, _ := json.Marshal(&rsapi.InputResponse{Error: reason, Unavailable: true})
	for _, m := range msgs {
		// Wait for the server to confirm the ack: a message that may still
		// be redelivered must not be answered "not stored". If it cannot
		// be confirmed, the message is redelivered instead; its producer
		// hears nothing and times out, which promises nothing.
		if err := m.DoubleAck(ctx); err != nil {
			if ctx.Err() == nil {
				in.log.WithError(err).Warn("ack input message")
			}
			_ = m.Nak()
			continue
		}
		if to := m.Headers().Get(bus.HeaderReply); to != "" {
			if err := in.bus.Send(to, reply); err != nil {
				// The producer asks again when the bus is back.
				in.log.WithError(err).Debug("replying to input producer")
			}
		}
	}
}

// isPoisoned reports whether processing the request under key panicked.
func (in *Inputer) isPoisoned(key string) bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.poisoned[key]
}

// poison records that processing the request under key panicked (p), so
// that its retry refuses it instead of crashing again.
func (in *Inputer) poison(key string, p any) {
	in.log.WithField("panic", p).WithField("stack", string(debug.Stack())).Error("input processing panicked; the request will be refused")
	in.mu.Lock()
	if len(in.poisoned) > 1000 {
		in.poisoned = map[string]bool{}
	}
	in.poisoned[key] = true
	in.mu.Unlock()
}

// processMessage handles one InputRequest inside the batch transaction. It
// returns an error only for failures worth retrying (the database);
// refusals are reported in the response. A panic (gomatrixserverlib has
// known ones on odd input) aborts the batch, whose retry then refuses the
// request that panicked instead of crashing the process.
func (in *Inputer) processMessage(ctx context.Context, w *storage.Writer, m jetstream.Msg) (res *result, err error) {
	reqID, key := requestID(m), requestKey(m)
	if in.isPoisoned(key) {
		return poisonedResult(), nil
	}
	defer func() {
		if p := recover(); p != nil {
			in.poison(key, p)
			res, err = nil, errors.New("input processing panicked")
		}
	}()
	if reqID != "" {
		prev, err := w.InputLogged(ctx, reqID)
		if err != nil {
			return nil, err
		}
		if prev != "" {
			var r result
			if err := json.Unmarshal([]byte(prev), &r); err == nil {
				return &r, nil
			}
		}
	}
	var req rsapi.InputRequest
	if err := json.Unmarshal(m.Data(), &req); err != nil {
		return &result{Response: rsapi.InputResponse{Error: "malformed input request", ErrCode: "M_BAD_JSON"}}, nil
	}
	r, err := in.processRequest(ctx, w, &req)
	if err != nil {
		return nil, err
	}
	if reqID != "" && r.Response.Error == "" {
		enc, err := json.Marshal(r)
		if err != nil {
			return nil, fmt.Errorf("encode input result: %w", err)
		}
		if err := w.LogInput(ctx, reqID, string(enc)); err != nil {
			return nil, err
		}
	}
	return r, nil
}

func poisonedResult() *result {
	return &result{Response: rsapi.InputResponse{Error: "internal error processing the event", ErrCode: "M_UNKNOWN"}}
}

// requestKey is the key of a request for the poisoned set: its request ID,
// or its body when it has none.
func requestKey(m jetstream.Msg) string {
	if id := requestID(m); id != "" {
		return id
	}
	return string(m.Data())
}

// requestID is the ID under which a request's outcome is logged: the same
// for every copy of the request its producer publishes (bus.HeaderRequestID),
// or the message ID for messages published before that header existed.
func requestID(m jetstream.Msg) string {
	h := m.Headers()
	if id := h.Get(bus.HeaderRequestID); id != "" {
		return id
	}
	return h.Get(jetstream.MsgIDHeader)
}
