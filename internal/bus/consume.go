package bus

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/sirupsen/logrus"
)

// Consumer is a durable JetStream consumer that only this process reads,
// reopened on every new connection.
type Consumer struct {
	b      *Bus
	stream string
	cfg    jetstream.ConsumerConfig
	log    *logrus.Entry
	floor  uint64

	// cons is the consumer on sess; only the goroutine running Messages
	// touches them after OpenConsumer.
	cons jetstream.Consumer
	sess *session
}

// OpenConsumer creates or updates a durable consumer that only this
// process reads, and makes whatever a previous run left unacknowledged
// deliverable again at once (a crash leaves delivered messages pending
// until their ack wait ends). Consuming starts with Messages or Consume.
func (b *Bus) OpenConsumer(ctx context.Context, stream string, cfg jetstream.ConsumerConfig) (*Consumer, error) {
	c := &Consumer{b: b, stream: stream, cfg: cfg, log: b.log.WithFields(logrus.Fields{"stream": stream, "consumer": cfg.Durable})}
	s, err := b.await(ctx, "open consumer "+cfg.Durable+" on "+stream)
	if err != nil {
		return nil, err
	}
	if c.floor, err = c.open(ctx, s, true); err != nil {
		return nil, err
	}
	return c, nil
}

// AckFloor is the stream sequence below which everything had been
// processed when the consumer was opened.
func (c *Consumer) AckFloor() uint64 { return c.floor }

// open creates or updates the consumer on s (update: its configuration
// may have changed since the last run; a reopen only looks it up, and
// creates it if it is gone), resets it if it has messages delivered but
// unacknowledged (they died with a previous process or connection) and
// returns its ack floor.
func (c *Consumer) open(ctx context.Context, s *session, update bool) (uint64, error) {
	var cons jetstream.Consumer
	var err error
	if !update {
		cons, err = s.js.Consumer(ctx, c.stream, c.cfg.Durable)
	}
	if update || errors.Is(err, jetstream.ErrConsumerNotFound) {
		cons, err = s.js.CreateOrUpdateConsumer(ctx, c.stream, c.cfg)
	}
	if err != nil {
		return 0, fmt.Errorf("open consumer %s on %s: %w", c.cfg.Durable, c.stream, err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("consumer %s on %s: %w", c.cfg.Durable, c.stream, err)
	}
	if info.NumAckPending > 0 {
		if _, err := s.js.ResetConsumer(ctx, c.stream, c.cfg.Durable); err != nil {
			return 0, fmt.Errorf("reset consumer %s on %s: %w", c.cfg.Durable, c.stream, err)
		}
	}
	c.cons, c.sess = cons, s
	return info.AckFloor.Stream, nil
}

// Messages hands each message to deliver, in stream order, until ctx
// ends. When the connection is lost it reopens the consumer on the next
// one (what was delivered and not acked is delivered again), waiting
// between attempts so that it never spins. Messages still buffered when
// ctx ends are nakked, so that the next process gets them at once.
// deliver acks (or naks) each message, now or later.
func (c *Consumer) Messages(ctx context.Context, batch int, deliver func(jetstream.Msg)) {
	delay := minBackoff
	pause := func() {
		t := time.NewTimer(delay)
		defer t.Stop()
		delay = min(2*delay, maxBackoff)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
	}
	failing := false // logged once until the consumer works again
	for ctx.Err() == nil {
		if c.cons == nil {
			s, err := c.b.session(ctx)
			if err != nil {
				if errors.Is(err, ErrClosed) {
					return
				}
				continue // ctx ended
			}
			if _, err := c.open(ctx, s, false); err != nil {
				if s.nc.IsClosed() {
					// Lost before the bus noticed: wait for the next.
					renewed := c.b.Renewed()
					if c.b.cur.Load() == s {
						select {
						case <-renewed:
						case <-ctx.Done():
						}
					}
					continue
				}
				if ctx.Err() == nil && !failing {
					failing = true
					c.log.WithError(err).Warn("reopening consumer failed; retrying")
				}
				pause()
				continue
			}
		}
		start := time.Now()
		n, err := c.iterate(ctx, batch, deliver)
		c.cons = nil
		if n > 0 {
			failing = false
		}
		if ctx.Err() != nil {
			return
		}
		if c.sess.nc.IsClosed() {
			// The connection went (the bus logs it); the next one is
			// awaited above.
			continue
		}
		// Ended on a live connection (the consumer was deleted, ...).
		if err != nil && !failing {
			failing = true
			c.log.WithError(err).Warn("reading from stream; reopening the consumer")
		}
		// One that keeps ending at once waits longer each time.
		if n > 0 || time.Since(start) > stableAfter {
			delay = minBackoff
		} else {
			pause()
		}
	}
}

// iterate reads the consumer until its iterator ends (the connection
// closed, the consumer was deleted, ctx ended) and reports how many
// messages it delivered and why it ended, if not for ctx or the
// connection.
func (c *Consumer) iterate(ctx context.Context, batch int, deliver func(jetstream.Msg)) (int, error) {
	it, err := c.cons.Messages(jetstream.PullMaxMessages(batch))
	if err != nil {
		return 0, fmt.Errorf("consume: %w", err)
	}
	// On ctx's end, drain: the buffered messages still come from Next
	// (and are nakked below), then Next reports ErrMsgIteratorClosed.
	stop := context.AfterFunc(ctx, it.Drain)
	defer stop()
	n := 0
	for {
		msg, err := it.Next()
		if err != nil {
			it.Stop()
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return n, nil
			}
			return n, err
		}
		if ctx.Err() != nil {
			_ = msg.Nak()
			continue
		}
		n++
		deliver(msg)
	}
}

// Handler processes one message. Returning nil acks it; an error retries it
// in place (with backoff) so that stream order is kept. A handler that must
// never see a message again (it cannot be parsed) logs and returns nil.
type Handler func(ctx context.Context, msg jetstream.Msg) error

// Consume runs handle on each message, one at a time in stream order,
// until ctx ends, across connection losses (see Messages). A message
// whose ack is lost with the connection is handled again, so handlers
// must be idempotent.
func (c *Consumer) Consume(ctx context.Context, log *logrus.Entry, handle Handler) {
	c.Messages(ctx, 256, func(msg jetstream.Msg) {
		if !retry(ctx, log, msg, handle) {
			_ = msg.Nak()
			return
		}
		if err := msg.Ack(); err != nil && ctx.Err() == nil {
			// The connection went: the message is redelivered on the
			// next one, and the loss is logged by the bus.
			log.WithError(err).Debug("ack failed")
		}
	})
}

// retry runs handle until it succeeds or ctx ends (reporting false), telling
// the server the message is still in progress so it is not redelivered.
func retry(ctx context.Context, log *logrus.Entry, msg jetstream.Msg, handle Handler) bool {
	delay := 100 * time.Millisecond
	for {
		err := safely(ctx, log, msg, handle)
		if err == nil {
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		log.WithError(err).WithField("subject", msg.Subject()).Warn("message processing failed; retrying")
		_ = msg.InProgress()
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return false
		case <-t.C:
		}
		// A failing message holds its whole stream, so the delay is also
		// how late the stream resumes once the cause (a database restart,
		// a full disk) is gone: keep it short.
		if delay *= 2; delay > 5*time.Second {
			delay = 5 * time.Second
		}
	}
}

// safely runs handle, turning a panic into a skipped message: a message
// that crashes its handler would crash it again on every redelivery.
func safely(ctx context.Context, log *logrus.Entry, msg jetstream.Msg, handle Handler) (err error) {
	defer func() {
		if p := recover(); p != nil {
			log.WithField("subject", msg.Subject()).WithField("panic", p).WithField("stack", string(debug.Stack())).Error("message handler panicked; skipping the message")
			err = nil
		}
	}()
	return handle(ctx, msg)
}
