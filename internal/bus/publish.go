package bus

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

const (
	// defaultPublishRetry bounds how long a publish waits for the bus to
	// heal before it answers UnavailableError (Options.PublishRetry).
	defaultPublishRetry = 10 * time.Second
	// attemptTimeout bounds the wait for the acks of one PublishAll.
	attemptTimeout = 5 * time.Second
)

// Publish stores msg in the stream of its subject and returns once
// JetStream has acknowledged it. Connection-level failures are retried,
// on a new connection when one comes up, for at most Options.PublishRetry;
// then the error is an UnavailableError. msg should carry a Nats-Msg-Id
// (NewMsg) if a second copy would matter: a retry after a lost ack
// publishes it again.
func (b *Bus) Publish(ctx context.Context, msg *nats.Msg) error {
	if err := checkSubject(msg.Subject, false); err != nil {
		return err
	}
	return b.retry(ctx, msg.Subject, func(ctx context.Context, s *session) error {
		_, err := s.js.PublishMsg(ctx, msg)
		return err
	})
}

// PublishAll stores msgs in order, pipelined, and returns once JetStream
// has acknowledged every one. A failure retries the whole batch as
// Publish does; every message must carry a Nats-Msg-Id (NewMsg), so that
// those stored before the failure are dropped as duplicates and the order
// is kept.
func (b *Bus) PublishAll(ctx context.Context, msgs []*nats.Msg) error {
	if len(msgs) == 0 {
		return nil
	}
	for _, m := range msgs {
		if err := checkSubject(m.Subject, false); err != nil {
			return err
		}
		if m.Header.Get(jetstream.MsgIDHeader) == "" {
			return fmt.Errorf("bus: PublishAll on %s: message without an ID", m.Subject)
		}
	}
	return b.retry(ctx, msgs[0].Subject, func(ctx context.Context, s *session) error {
		acks := make([]jetstream.PubAckFuture, 0, len(msgs))
		for _, m := range msgs {
			f, err := s.js.PublishMsgAsync(m)
			if err != nil {
				return err
			}
			acks = append(acks, f)
		}
		// nats.go leaves the futures of a closed connection unresolved:
		// watch the session too.
		t := time.NewTimer(attemptTimeout)
		defer t.Stop()
		for _, f := range acks {
			select {
			case <-f.Ok():
			case err := <-f.Err():
				return err
			case <-s.closed:
				return nats.ErrConnectionClosed
			case <-t.C:
				return nats.ErrTimeout
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	})
}

// retry runs do on the current connection until it succeeds, fails for a
// reason a new connection would not change, ctx ends, or
// Options.PublishRetry has passed since the first failure.
func (b *Bus) retry(ctx context.Context, subject string, do func(context.Context, *session) error) error {
	var deadline time.Time
	var last error = errNotConnected
	wait := 20 * time.Millisecond
	for {
		s := b.cur.Load()
		if s == nil && b.downLongerThan(b.opts.PublishRetry) {
			// An outage that has already outlasted the wait: answer at
			// once rather than hold every request for the full wait.
			return &UnavailableError{Op: "publish on " + subject, Err: last}
		}
		if s != nil {
			err := do(ctx, s)
			if err == nil {
				return nil
			}
			if ctx.Err() != nil {
				return fmt.Errorf("publish on %s: %w", subject, ctx.Err())
			}
			if !retryable(err) {
				return fmt.Errorf("publish on %s: %w", subject, err)
			}
			last = err
			b.suspect()
		}
		now := time.Now()
		if deadline.IsZero() {
			deadline = now.Add(b.opts.PublishRetry)
		}
		if !now.Before(deadline) {
			return &UnavailableError{Op: "publish on " + subject, Err: last}
		}
		b.mu.Lock()
		renewed, closed := b.renewed, b.closed
		b.mu.Unlock()
		if closed {
			return ErrClosed
		}
		// Retry when a new connection comes up, or after a pause in case
		// the failure was not the connection's (JetStream busy).
		t := time.NewTimer(min(wait, deadline.Sub(now)))
		select {
		case <-renewed:
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("publish on %s: %w", subject, ctx.Err())
		}
		t.Stop()
		wait = min(2*wait, time.Second)
	}
}

// downLongerThan reports whether the bus has been without a connection
// for longer than d.
func (b *Bus) downLongerThan(d time.Duration) bool {
	b.mu.Lock()
	since := b.outage.since
	b.mu.Unlock()
	return !since.IsZero() && b.now().Sub(since) > d
}

// retryable reports whether a publish that failed with err may succeed
// later: anything but a refusal of the message itself.
func retryable(err error) bool {
	switch {
	case errors.Is(err, nats.ErrMaxPayload), errors.Is(err, nats.ErrBadSubject),
		errors.Is(err, nats.ErrHeadersNotSupported), errors.Is(err, nats.ErrBadHeaderMsg),
		errors.Is(err, jetstream.ErrInvalidSubject), errors.Is(err, ErrClosed):
		return false
	}
	var api *jetstream.APIError
	if errors.As(err, &api) {
		// 503: JetStream unavailable or out of resources (disk full).
		return api.Code >= 500
	}
	return true
}

// Send publishes a core NATS message (a reply), which is not stored: if
// there is no connection it fails at once, and whoever waits for it asks
// again when the bus is renewed.
func (b *Bus) Send(subject string, data []byte) error {
	if err := checkSubject(subject, false); err != nil {
		return err
	}
	s := b.cur.Load()
	if s == nil {
		return &UnavailableError{Op: "send on " + subject, Err: errNotConnected}
	}
	if err := s.nc.Publish(subject, data); err != nil {
		return &UnavailableError{Op: "send on " + subject, Err: err}
	}
	return nil
}

// LastSeq is the sequence of the last message in stream.
func (b *Bus) LastSeq(ctx context.Context, stream string) (uint64, error) {
	s := b.cur.Load()
	if s == nil {
		return 0, &UnavailableError{Op: "stream info of " + stream, Err: errNotConnected}
	}
	st, err := s.js.Stream(ctx, stream)
	if err != nil {
		return 0, fmt.Errorf("stream info of %s: %w", stream, err)
	}
	return st.CachedInfo().State.LastSeq, nil
}
