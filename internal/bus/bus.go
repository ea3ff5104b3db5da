// Package bus is Myelin's message bus: the NATS JetStream streams and
// subjects the components talk through, and the one connection to NATS
// they share, which heals itself. setup opens it (an embedded server, or
// an external one named by nats.url); components use only the methods of
// Bus, Consumer and Subscription, never a *nats.Conn or a JetStream
// context of their own, so that they survive the connection being
// replaced.
//
// # Why the bus replaces its connection instead of letting nats.go reconnect
//
// nats.go reconnects after a network error, but a server -ERR other than
// "stale connection" (for instance "maximum control line exceeded", which
// one over-long subject provokes) closes the connection for good: the
// reconnect options do not apply. An in-process connection can only reach
// the server object it was made with, so after the embedded server is
// restarted there is nothing for it to reconnect to. And even a
// reconnected connection has lost the core messages (replies) sent while
// it was down. So the bus turns nats.go's reconnection off and treats
// every loss alike: the connection closes, and a supervisor goroutine
// makes a new one, with backoff. For the embedded server it first
// restarts the server on the same store directory when it has stopped or
// has JetStream off (nats-server disables JetStream when its store runs
// out of disk). On the new connection it recreates the streams and the
// core subscriptions, and only then announces it (Renewed). The
// supervisor also probes: each second that the embedded server runs with
// JetStream on, or every five seconds that an external server's
// JetStream answers; a failed probe replaces the connection too.
//
// Everything built on the connection follows it:
//   - a Consumer's loop sees its iterator end, reopens the durable
//     consumer on the new connection and resets it, so that what the old
//     connection delivered but never acked comes again at once;
//   - a Subscription is re-made before the new connection is announced;
//     whoever waits for a reply on it watches Lost, and when the
//     connection goes, Awaits the next one (for a bounded time) and asks
//     again there (the roomserver answers a repeated input request from
//     its input log), or gives up with an UnavailableError;
//   - Publish and PublishAll retry connection-level failures until a new
//     connection is up, for at most Options.PublishRetry (10 s unless
//     nats.publish_retry says otherwise), and then return an error whose
//     Unavailable method reports true (the HTTP edge answers 503, which
//     clients retry).
//
// Nothing acknowledged is lost: messages are acked only after they are
// processed, and every consumer is idempotent (messages carry the IDs that
// let a redelivery be recognised), so a message whose ack died with the
// connection is simply processed again.
//
// # Subjects
//
// Subjects never carry input verbatim: a room's input subject is a
// fixed-length digest of its ID (RoomSubject), and Publish, Send and
// Subscribe refuse any subject that is long or has characters outside a
// safe set, so nothing a client sends can make the server answer -ERR.
package bus

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
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
	// OutputDeviceListUpdate carries the device list changes of local
	// users (uapi.DeviceListUpdate), for the federationapi to send.
	OutputDeviceListUpdate = "OutputDeviceListUpdate"
	// OutputSigningKeyUpdate carries the cross-signing key changes of
	// local users (uapi.SigningKeyUpdate), for the federationapi to send.
	OutputSigningKeyUpdate = "OutputSigningKeyUpdate"
	// OutputSendToDevice carries send-to-device messages
	// (sapi.SendToDevice), local and from other servers.
	OutputSendToDevice = "OutputSendToDevice"
)

// Header keys used on messages.
const (
	// HeaderReply names a core NATS subject on which the consumer of an
	// InputRoomEvent message reports the outcome to the producer.
	HeaderReply = "Myelin-Reply"
	// HeaderRequestID identifies an input request across the copies of it
	// a producer may publish: the roomserver logs its outcome under this
	// ID and answers a copy from the log. It is kept apart from
	// jetstream.MsgIDHeader, whose deduplication would drop a copy.
	HeaderRequestID = "Myelin-Request"
)

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

// maxMsgID bounds a Nats-Msg-Id header; longer IDs are replaced by a digest.
const maxMsgID = 128

// MsgID returns id if it is fit to be a Nats-Msg-Id header (short,
// printable ASCII without spaces), else a digest of it. IDs that come from
// outside (event IDs of federated events) go through it.
func MsgID(id string) string {
	ok := len(id) > 0 && len(id) <= maxMsgID
	for i := 0; ok && i < len(id); i++ {
		ok = id[i] > ' ' && id[i] < 0x7f
	}
	if ok {
		return id
	}
	sum := sha256.Sum256([]byte(id))
	return "sha256:" + hex.EncodeToString(sum[:])
}

// maxSubject bounds every subject the bus sends on or subscribes to, far
// below the server's control line (4 KiB, which also holds the reply
// subject and sizes).
const maxSubject = 256

// checkSubject reports whether subject is fit for the bus: at most
// maxSubject bytes of non-empty, dot-separated tokens of letters, digits,
// '_', '-', '+', '=' and '@'; with wildcards ('*', or '>' as the last
// token) only when wild. Anything else could make the server answer
// -ERR, which closes the connection.
func checkSubject(subject string, wild bool) error {
	if subject == "" || len(subject) > maxSubject {
		return fmt.Errorf("bus: subject of %d bytes (at most %d)", len(subject), maxSubject)
	}
	start := 0
	for i := 0; i <= len(subject); i++ {
		if i < len(subject) && subject[i] != '.' {
			c := subject[i]
			if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '+' || c == '=' || c == '@' {
				continue
			}
			if wild && (c == '*' || c == '>') {
				continue
			}
			return fmt.Errorf("bus: subject %q has a forbidden character %q", subject, c)
		}
		tok := subject[start:i]
		switch {
		case tok == "":
			return fmt.Errorf("bus: subject %q has an empty token", subject)
		case len(tok) > 1 && (containsByte(tok, '*') || containsByte(tok, '>')):
			return fmt.Errorf("bus: subject %q has a wildcard inside a token", subject)
		case tok == ">" && i != len(subject):
			return fmt.Errorf("bus: subject %q has '>' before its last token", subject)
		}
		start = i + 1
	}
	return nil
}

func containsByte(s string, b byte) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == b {
			return true
		}
	}
	return false
}

// UnavailableError reports that the bus could not do something for now:
// no connection came back within Options.PublishRetry, or JetStream is down or
// out of resources. The request that needed it was fine and may succeed
// when retried.
type UnavailableError struct {
	Op  string
	Err error
}

func (e *UnavailableError) Error() string { return "bus unavailable: " + e.Op + ": " + e.Err.Error() }
func (e *UnavailableError) Unwrap() error { return e.Err }

// Unavailable reports true: the HTTP edge answers 503 (mxhttp.Unavailable).
func (e *UnavailableError) Unavailable() bool { return true }

// ErrClosed is returned by a bus that was closed.
var ErrClosed = errors.New("bus: closed")

// errNotConnected is the cause of an UnavailableError when no connection
// came up in time.
var errNotConnected = errors.New("not connected")

// streams are the streams Myelin uses; replicas is set by the bus.
func streams() []jetstream.StreamConfig {
	return []jetstream.StreamConfig{
		{
			Name:     InputRoomEvent,
			Subjects: []string{InputRoomEvent + ".>"},
			// Work queue: a message is gone once the roomserver acked it,
			// and it acks only after the event is committed.
			Retention: jetstream.WorkQueuePolicy,
			Storage:   jetstream.FileStorage,
			// Dedup window for Nats-Msg-Id: a publish retried after its
			// ack was lost carries the same ID.
			Duplicates: 2 * time.Minute,
		},
		limitsStream(OutputRoomEvent, 7*24*time.Hour),
		{
			Name:      OutputUserData,
			Subjects:  []string{OutputUserData, OutputUserData + ".>"},
			Retention: jetstream.LimitsPolicy,
			Storage:   jetstream.FileStorage,
			MaxAge:    24 * time.Hour,
		},
		// Typing is only ever current state: an hour-old
		// notification has long expired.
		limitsStream(OutputTyping, time.Hour),
		limitsStream(OutputReceipt, 24*time.Hour),
		limitsStream(OutputPresence, 24*time.Hour),
		// A remote server that missed an update resyncs the whole
		// list when the next one shows the gap.
		limitsStream(OutputDeviceListUpdate, 24*time.Hour),
		limitsStream(OutputSigningKeyUpdate, 24*time.Hour),
		{
			Name:      OutputSendToDevice,
			Subjects:  []string{OutputSendToDevice},
			Retention: jetstream.LimitsPolicy,
			Storage:   jetstream.FileStorage,
			MaxAge:    24 * time.Hour,
			// A client retrying PUT /sendToDevice with its transaction ID
			// publishes with the same message ID, dropped in this window.
			Duplicates: 2 * time.Minute,
		},
	}
}

// ensureStreams creates or updates the streams on js.
func ensureStreams(ctx context.Context, js jetstream.JetStream, replicas int) error {
	for _, s := range streams() {
		s.Replicas = max(replicas, 1)
		if _, err := js.CreateOrUpdateStream(ctx, s); err != nil {
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

// NewMsg is a message to Publish on subject, with a Nats-Msg-Id (when
// msgID is not empty) that lets JetStream drop a copy published again
// after a lost ack.
func NewMsg(subject string, data []byte, msgID string) *nats.Msg {
	m := &nats.Msg{Subject: subject, Data: data}
	if msgID != "" {
		m.Header = nats.Header{jetstream.MsgIDHeader: []string{MsgID(msgID)}}
	}
	return m
}

// limitsStream is a stream of one subject whose messages are kept for
// maxAge, on file.
func limitsStream(name string, maxAge time.Duration) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:      name,
		Subjects:  []string{name},
		Retention: jetstream.LimitsPolicy,
		Storage:   jetstream.FileStorage,
		MaxAge:    maxAge,
	}
}
