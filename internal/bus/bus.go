// Package bus names Myelin's NATS JetStream streams and subjects and holds
// the small helpers every component uses to publish and consume them.
// Streams carry work between components whether they share a process or
// not; setup decides which NATS server (embedded or external) they use.
package bus

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"runtime/debug"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/sirupsen/logrus"
)

// Stream names. Each stream's subjects are its name and, where noted,
// "<name>.<token>".
const (
	// InputRoomEvent carries events for the roomserver to persist, on
	// InputRoomEvent.<room token> (RoomSubject) so that each room is
	// processed in order.
	InputRoomEvent = "InputRoomEvent"
	// OutputRoomEvent carries every event the roomserver accepted, with its
	// state delta.
	OutputRoomEvent = "OutputRoomEvent"
	// OutputUserData carries per-user changes (account data, ...) that
	// wake /sync.
	OutputUserData = "OutputUserData"
	// OutputTyping carries typing notifications (sapi.TypingUpdate).
	OutputTyping = "OutputTyping"
	// OutputReceipt carries read receipts (sapi.ReceiptUpdate).
	OutputReceipt = "OutputReceipt"
	// OutputPresence carries presence changes (sapi.PresenceUpdate).
	OutputPresence = "OutputPresence"
)

// Header keys used on messages.
const (
	// HeaderReply names a core NATS subject on which the consumer of an
	// InputRoomEvent message reports the outcome to the producer.
	HeaderReply = "Myelin-Reply"
	// HeaderRequestID matches a reply to its request.
	HeaderRequestID = "Myelin-Request"
)

// Bus is a connection to NATS with JetStream.
type Bus struct {
	Conn *nats.Conn
	JS   jetstream.JetStream
}

// New wraps a NATS connection.
func New(nc *nats.Conn) (*Bus, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	return &Bus{Conn: nc, JS: js}, nil
}

// roomTokenLen is the length in hex digits of a room's subject token: 128
// bits of SHA-256, so that two rooms sharing a subject (and so an input
// queue) is not a concern.
const roomTokenLen = 32

// RoomSubject is the InputRoomEvent subject of roomID: a fixed-length
// digest, so that every room keeps one subject (and its order) whatever
// its ID holds or however long it is. (The ID itself, even encoded, made
// a 5,000-character room ID a subject longer than the server's control
// line: issue 10.)
func RoomSubject(roomID string) string {
	sum := sha256.Sum256([]byte(roomID))
	return InputRoomEvent + "." + hex.EncodeToString(sum[:roomTokenLen/2])
}

// EnsureStreams creates or updates the streams Myelin uses. replicas is 1
// for the embedded server.
func (b *Bus) EnsureStreams(ctx context.Context, replicas int) error {
	if replicas < 1 {
		replicas = 1
	}
	streams := []jetstream.StreamConfig{
		{
			Name:     InputRoomEvent,
			Subjects: []string{InputRoomEvent + ".>"},
			// Work queue: a message is gone once the roomserver acked it,
			// and it acks only after the event is committed.
			Retention: jetstream.WorkQueuePolicy,
			Storage:   jetstream.FileStorage,
			// Dedup window for Nats-Msg-Id: a client retrying a
			// transaction publishes the same ID.
			Duplicates: 2 * time.Minute,
		},
		{
			Name:      OutputRoomEvent,
			Subjects:  []string{OutputRoomEvent},
			Retention: jetstream.LimitsPolicy,
			Storage:   jetstream.FileStorage,
			MaxAge:    7 * 24 * time.Hour,
		},
		{
			Name:      OutputUserData,
			Subjects:  []string{OutputUserData, OutputUserData + ".>"},
			Retention: jetstream.LimitsPolicy,
			Storage:   jetstream.FileStorage,
			MaxAge:    24 * time.Hour,
		},
		{
			// Typing is only ever current state: an hour-old
			// notification has long expired.
			Name:      OutputTyping,
			Subjects:  []string{OutputTyping},
			Retention: jetstream.LimitsPolicy,
			Storage:   jetstream.FileStorage,
			MaxAge:    time.Hour,
		},
		{
			Name:      OutputReceipt,
			Subjects:  []string{OutputReceipt},
			Retention: jetstream.LimitsPolicy,
			Storage:   jetstream.FileStorage,
			MaxAge:    24 * time.Hour,
		},
		{
			Name:      OutputPresence,
			Subjects:  []string{OutputPresence},
			Retention: jetstream.LimitsPolicy,
			Storage:   jetstream.FileStorage,
			MaxAge:    24 * time.Hour,
		},
	}
	for _, s := range streams {
		s.Replicas = replicas
		if _, err := b.JS.CreateOrUpdateStream(ctx, s); err != nil {
			return fmt.Errorf("create stream %s: %w", s.Name, err)
		}
	}
	return nil
}

// OutputConsumer is the configuration of a component's durable consumer of
// an output stream: explicit acks, redelivery after 30 s, at most 1,000
// messages in flight, starting where deliver says.
func OutputConsumer(durable string, deliver jetstream.DeliverPolicy) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       durable,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       30 * time.Second,
		MaxAckPending: 1000,
		DeliverPolicy: deliver,
	}
}

// OpenConsumer creates or updates a durable consumer that only this process
// reads, and makes whatever a previous run of it left unacknowledged
// deliverable again at once (a crash leaves delivered messages pending
// until their ack wait ends). It returns the consumer's ack floor: the
// stream sequence below which everything was processed.
func (b *Bus) OpenConsumer(ctx context.Context, stream string, cfg jetstream.ConsumerConfig) (jetstream.Consumer, uint64, error) {
	cons, err := b.JS.CreateOrUpdateConsumer(ctx, stream, cfg)
	if err != nil {
		return nil, 0, fmt.Errorf("create consumer %s on %s: %w", cfg.Durable, stream, err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return nil, 0, fmt.Errorf("consumer %s on %s: %w", cfg.Durable, stream, err)
	}
	if info.NumAckPending > 0 {
		if _, err := b.JS.ResetConsumer(ctx, stream, cfg.Durable); err != nil {
			return nil, 0, fmt.Errorf("reset consumer %s on %s: %w", cfg.Durable, stream, err)
		}
	}
	return cons, info.AckFloor.Stream, nil
}

// Handler processes one message. Returning nil acks it; an error retries it
// in place (with backoff) so that stream order is kept. A handler that must
// never see a message again (it cannot be parsed) logs and returns nil.
type Handler func(ctx context.Context, msg jetstream.Msg) error

// Consume runs handle on each message of a consumer, one at a time in
// stream order, until ctx ends.
func Consume(ctx context.Context, cons jetstream.Consumer, log *logrus.Entry, handle Handler) error {
	it, err := cons.Messages(jetstream.PullMaxMessages(256))
	if err != nil {
		return fmt.Errorf("consume: %w", err)
	}
	StopOnDone(ctx, it)
	for {
		msg, err := it.Next()
		if err != nil {
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return nil
			}
			if ctx.Err() == nil {
				log.WithError(err).Warn("reading from stream")
			}
			continue
		}
		if ctx.Err() != nil {
			_ = msg.Nak()
			continue
		}
		if !retry(ctx, log, msg, handle) {
			_ = msg.Nak()
			continue
		}
		if err := msg.Ack(); err != nil && ctx.Err() == nil {
			log.WithError(err).Warn("ack failed")
		}
	}
}

// StopOnDone drains it when ctx ends: the messages already buffered are
// still returned by Next (callers nak them, so that they are redelivered at
// once to the next consumer rather than after the ack wait), then Next
// reports ErrMsgIteratorClosed.
func StopOnDone(ctx context.Context, it jetstream.MessagesContext) {
	go func() {
		<-ctx.Done()
		it.Drain()
	}()
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
		select {
		case <-ctx.Done():
			return false
		case <-time.After(delay):
		}
		if delay *= 2; delay > 30*time.Second {
			delay = 30 * time.Second
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
