package bus

import (
	"cmp"
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
		if !backOff(ctx, &delay) {
			return false
		}
	}
}

// backOff waits delay, or until ctx ends (reporting false), and doubles
// delay up to 5 s for the next failure. A failing message holds its
// whole stream, so the delay is also how late the stream resumes once the
// cause (a database restart, a full disk) is gone: it stays short.
func backOff(ctx context.Context, delay *time.Duration) bool {
	t := time.NewTimer(*delay)
	select {
	case <-ctx.Done():
		t.Stop()
		return false
	case <-t.C:
	}
	if *delay *= 2; *delay > 5*time.Second {
		*delay = 5 * time.Second
	}
	return true
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

// BatchHandler processes messages in stream order. Returning nil acks them
// all; an error retries them all in place, so the handler must be
// idempotent over a whole batch.
type BatchHandler func(ctx context.Context, msgs []jetstream.Msg) error

// ConsumeBatch is Consume for a handler that does better with several
// messages at once (one write transaction for all of them): each batch is
// what arrived while the previous one was handled, up to max, and what
// arrives within linger of its first message (0: nothing more; a handler
// whose work may wait a little gets fuller batches from a steady stream).
// A batch whose handler panics is handled again one message at a time, so
// that only the message at fault is skipped.
func (c *Consumer) ConsumeBatch(ctx context.Context, log *logrus.Entry, max int, linger time.Duration, handle BatchHandler) {
	max = cmp.Or(max, 1)
	queued := make(chan jetstream.Msg, max)
	done := make(chan struct{})
	go func() {
		defer close(done)
		batch := make([]jetstream.Msg, 0, max)
		for {
			select {
			case <-ctx.Done():
				return
			case m := <-queued:
				batch = append(batch[:0], m)
			}
		fill:
			for len(batch) < max {
				select {
				case m := <-queued:
					batch = append(batch, m)
				default:
					break fill
				}
			}
			if len(batch) < max && linger > 0 {
				t := time.NewTimer(linger)
			wait:
				for len(batch) < max {
					select {
					case m := <-queued:
						batch = append(batch, m)
					case <-t.C:
						break wait
					case <-ctx.Done():
						break wait
					}
				}
				t.Stop()
			}
			ok := retryBatch(ctx, log, batch, handle)
			for _, m := range batch {
				if !ok {
					_ = m.Nak()
				} else if err := m.Ack(); err != nil && ctx.Err() == nil {
					log.WithError(err).Debug("ack failed")
				}
			}
		}
	}()
	c.Messages(ctx, max, func(m jetstream.Msg) {
		select {
		case queued <- m:
		case <-ctx.Done():
			_ = m.Nak()
		}
	})
	<-done
	// What was queued and not handled goes back, for the next process.
	for {
		select {
		case m := <-queued:
			_ = m.Nak()
		default:
			return
		}
	}
}

// errPanicked is what safelyBatch returns for a handler that panicked.
var errPanicked = errors.New("handler panicked")

// retryBatch is retry for a batch.
func retryBatch(ctx context.Context, log *logrus.Entry, msgs []jetstream.Msg, handle BatchHandler) bool {
	delay := 100 * time.Millisecond
	for {
		err := safelyBatch(ctx, log, msgs, handle)
		if errors.Is(err, errPanicked) {
			if len(msgs) == 1 {
				return true // skipped, as safely does
			}
			for _, m := range msgs {
				one := func(ctx context.Context, m jetstream.Msg) error { return handle(ctx, []jetstream.Msg{m}) }
				if !retry(ctx, log, m, one) {
					return false
				}
			}
			return true
		}
		if err == nil {
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		log.WithError(err).WithField("messages", len(msgs)).Warn("message processing failed; retrying")
		for _, m := range msgs {
			_ = m.InProgress()
		}
		if !backOff(ctx, &delay) {
			return false
		}
	}
}

func safelyBatch(ctx context.Context, log *logrus.Entry, msgs []jetstream.Msg, handle BatchHandler) (err error) {
	defer func() {
		if p := recover(); p != nil {
			if len(msgs) == 1 {
				log.WithField("subject", msgs[0].Subject()).WithField("panic", p).WithField("stack", string(debug.Stack())).Error("message handler panicked; skipping the message")
			}
			err = errPanicked
		}
	}()
	return handle(ctx, msgs)
}
