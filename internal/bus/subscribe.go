package bus

import (
	"fmt"

	"github.com/nats-io/nats.go"
)

// Subscription is a core NATS subscription that the bus re-makes on every
// new connection.
type Subscription struct {
	b       *Bus
	subject string
	handle  nats.MsgHandler
	sub     *nats.Subscription // on the current connection; guarded by b.mu
}

// NewInbox returns a subject no one else uses, under which a process can
// receive replies (subscribe to it + ".*").
func NewInbox() string { return nats.NewInbox() }

// Subscribe calls handle for every core message on subject (wildcards
// allowed), on whichever connection the bus has, until Unsubscribe.
// Messages sent while there is none are lost (see Renewed).
func (b *Bus) Subscribe(subject string, handle nats.MsgHandler) (*Subscription, error) {
	if err := checkSubject(subject, true); err != nil {
		return nil, err
	}
	sub := &Subscription{b: b, subject: subject, handle: handle}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, ErrClosed
	}
	b.subs[sub] = true
	if s := b.cur.Load(); s != nil {
		// A failure here is the connection's: the next one re-makes it.
		_ = sub.subscribe(s.nc)
	}
	return sub, nil
}

// subscribe makes sub on nc; b.mu is held.
func (sub *Subscription) subscribe(nc *nats.Conn) error {
	s, err := nc.Subscribe(sub.subject, sub.handle)
	if err != nil {
		return fmt.Errorf("subscribe to %s: %w", sub.subject, err)
	}
	sub.sub = s
	return nil
}

// Unsubscribe stops the subscription.
func (sub *Subscription) Unsubscribe() error {
	b := sub.b
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.subs, sub)
	if sub.sub == nil {
		return nil
	}
	err := sub.sub.Unsubscribe()
	sub.sub = nil
	if err != nil && err != nats.ErrConnectionClosed && err != nats.ErrBadSubscription {
		return fmt.Errorf("unsubscribe from %s: %w", sub.subject, err)
	}
	return nil
}
