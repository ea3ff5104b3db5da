// Package input is the roomserver's event input: a durable JetStream
// consumer on InputRoomEvent.> whose messages are handed to one actor per
// room, so each room's events are processed in order while rooms run in
// parallel. An actor drains everything queued for its room and commits it
// in one transaction, then publishes the accepted events on OutputRoomEvent,
// answers the producers and acks.
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

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/sirupsen/logrus"

	"myelin/internal/bus"
	"myelin/internal/signing"
	rsapi "myelin/roomserver/api"
	"myelin/roomserver/storage"
)

// durable is the name of the roomserver's consumer on InputRoomEvent.
const durable = "roomserver"

// maxBatch bounds how many queued messages of one room share a transaction.
const maxBatch = 64

// Inputer consumes InputRoomEvent.
type Inputer struct {
	store *storage.Storage
	bus   *bus.Bus
	key   *signing.Key
	log   *logrus.Entry
	now   func() time.Time

	workers chan struct{} // bounds rooms processed at once

	mu       sync.Mutex
	actors   map[string]*actor // by subject
	poisoned map[string]bool   // requests whose processing panicked
	wg       sync.WaitGroup
}

type actor struct {
	subject string
	queue   []jetstream.Msg
}

// New returns an Inputer; Start runs it.
func New(store *storage.Storage, b *bus.Bus, key *signing.Key, log *logrus.Entry) *Inputer {
	return &Inputer{
		store:    store,
		bus:      b,
		key:      key,
		log:      log,
		now:      time.Now,
		workers:  make(chan struct{}, max(4, 2*runtime.GOMAXPROCS(0))),
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
		AckWait:       30 * time.Second,
		MaxAckPending: 20000,
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
	a.queue = append(a.queue, msg)
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

		select {
		case in.workers <- struct{}{}:
		case <-ctx.Done():
			continue
		}
		if !in.processBatch(ctx, batch) {
			for _, m := range batch {
				_ = m.Nak()
			}
		}
		<-in.workers
	}
}

// result is what processing one message produced.
type result struct {
	Response rsapi.InputResponse `json:"response"`
	Outputs  []rsapi.OutputEvent `json:"outputs,omitempty"`
}

// processBatch commits a room's queued messages in one transaction,
// retrying transient failures, then publishes, replies and acks. It
// reports false if it gave up (shutdown) without acking.
func (in *Inputer) processBatch(ctx context.Context, msgs []jetstream.Msg) bool {
	var results []*result
	var down outage
	delay := 50 * time.Millisecond
	for {
		results = make([]*result, len(msgs))
		err := in.store.Write(ctx, func(w *storage.Writer) error {
			for i, m := range msgs {
				r, err := in.processMessage(ctx, w, m)
				if err != nil {
					return err
				}
				results[i] = r
			}
			return nil
		})
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return false
		}
		if down.answered(ctx, in, msgs, err) {
			return true
		}
		in.log.WithError(err).WithField("subject", msgs[0].Subject()).Warn("input transaction failed; retrying")
		for _, m := range msgs {
			_ = m.InProgress()
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(delay):
		}
		delay = min(2*delay, 10*time.Second)
	}

	// Publish every output before answering anyone, so that a producer
	// told "committed" can rely on the output being in the stream.
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
	for i, m := range msgs {
		if reply := m.Headers().Get(bus.HeaderReply); reply != "" {
			data, _ := json.Marshal(&results[i].Response)
			if err := in.bus.Send(reply, data); err != nil {
				// The producer asks again when the bus is back.
				in.log.WithError(err).Debug("replying to input producer")
			}
		}
		if err := m.Ack(); err != nil && ctx.Err() == nil {
			// Lost with the connection: the message comes again on the
			// next one and is answered from the input log.
			in.log.WithError(err).Debug("ack input message")
		}
	}
	return true
}

// processMessage handles one InputRequest inside the batch transaction. It
// returns an error only for failures worth retrying (the database);
// refusals are reported in the response. A panic (gomatrixserverlib has
// known ones on odd input) aborts the batch, whose retry then refuses the
// request that panicked instead of crashing the process.
func (in *Inputer) processMessage(ctx context.Context, w *storage.Writer, m jetstream.Msg) (res *result, err error) {
	reqID := requestID(m)
	key := reqID
	if key == "" {
		key = string(m.Data())
	}
	in.mu.Lock()
	poisoned := in.poisoned[key]
	in.mu.Unlock()
	if poisoned {
		return &result{Response: rsapi.InputResponse{Error: "internal error processing the event", ErrCode: "M_UNKNOWN"}}, nil
	}
	defer func() {
		if p := recover(); p != nil {
			in.log.WithField("panic", p).WithField("stack", string(debug.Stack())).Error("input processing panicked; the request will be refused")
			in.mu.Lock()
			if len(in.poisoned) > 1000 {
				in.poisoned = map[string]bool{}
			}
			in.poisoned[key] = true
			in.mu.Unlock()
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
