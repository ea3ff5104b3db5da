package roomserver

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"myelin/internal/bus"
	rsapi "myelin/roomserver/api"
)

// InputClient publishes InputRequests on the room's InputRoomEvent subject
// and waits for the roomserver's reply, which comes only after the events
// are committed and their outputs are in the OutputRoomEvent stream. It
// works the same whether the roomserver runs in this process or another.
type InputClient struct {
	bus    *bus.Bus
	prefix string
	sub    *bus.Subscription

	mu      sync.Mutex
	waiting map[string]chan *rsapi.InputResponse
}

// inputTimeout bounds a wait for the roomserver; the event may still be
// stored after it (the message is durable), and a client retrying with the
// same transaction ID then gets it back.
const inputTimeout = 60 * time.Second

// NewInputClient subscribes to this process's reply subjects.
func NewInputClient(b *bus.Bus) (*InputClient, error) {
	c := &InputClient{bus: b, prefix: bus.NewInbox(), waiting: map[string]chan *rsapi.InputResponse{}}
	sub, err := b.Subscribe(c.prefix+".*", c.onReply)
	if err != nil {
		return nil, fmt.Errorf("subscribe to input replies: %w", err)
	}
	c.sub = sub
	return c, nil
}

// Close stops receiving replies.
func (c *InputClient) Close() error { return c.sub.Unsubscribe() }

func (c *InputClient) onReply(m *nats.Msg) {
	id := m.Subject[len(c.prefix)+1:]
	var resp rsapi.InputResponse
	if err := json.Unmarshal(m.Data, &resp); err != nil {
		resp = rsapi.InputResponse{Error: "unreadable reply from roomserver"}
	}
	c.mu.Lock()
	ch := c.waiting[id]
	delete(c.waiting, id)
	c.mu.Unlock()
	if ch != nil {
		ch <- &resp
	}
}

func randomID(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Input implements rsapi.Inputter.
func (c *InputClient) Input(ctx context.Context, req *rsapi.InputRequest) (*rsapi.InputResponse, error) {
	key := req.RoomID
	if key == "" {
		key = req.NewRoomID
	}
	if key == "" {
		// A room whose ID will derive from its create event: no other
		// message can name it yet, so any fresh subject keeps order.
		key = "new-" + randomID(16)
	}
	data, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("encode input request: %w", err)
	}
	id := randomID(16)
	ch := make(chan *rsapi.InputResponse, 1)
	c.mu.Lock()
	c.waiting[id] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.waiting, id)
		c.mu.Unlock()
	}()
	subject, reply := bus.RoomSubject(key), c.prefix+"."+id
	publish := func(attempt int) error {
		// Each copy has its own message ID, or JetStream's deduplication
		// would drop it; the request ID, under which the roomserver logs
		// the outcome, stays the same.
		msgID := id
		if attempt > 0 {
			msgID = id + "." + strconv.Itoa(attempt)
		}
		msg := &nats.Msg{
			Subject: subject,
			Data:    data,
			Header: nats.Header{
				jetstream.MsgIDHeader: []string{msgID},
				bus.HeaderRequestID:   []string{id},
				bus.HeaderReply:       []string{reply},
			},
		}
		if err := c.bus.Publish(ctx, msg); err != nil {
			return fmt.Errorf("publish input request: %w", err)
		}
		return nil
	}
	lost := c.bus.Lost()
	if err := publish(0); err != nil {
		return nil, err
	}
	t := time.NewTimer(inputTimeout)
	defer t.Stop()
	for attempt := 1; ; attempt++ {
		select {
		case resp := <-ch:
			if err := resp.Err(); err != nil {
				return resp, err
			}
			return resp, nil
		case <-lost:
			// The reply would come on the connection the bus just lost.
			// Wait (briefly) for the next one and ask again there; a
			// request already processed is answered from the
			// roomserver's input log. If none comes, the error says
			// the bus is unavailable: the client retries later.
			if err := c.bus.Await(ctx); err != nil {
				return nil, fmt.Errorf("wait for the roomserver: %w", err)
			}
			lost = c.bus.Lost()
			if err := publish(attempt); err != nil {
				return nil, err
			}
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-t.C:
			return nil, errSlow{}
		}
	}
}

// errSlow is the roomserver not answering within inputTimeout (its
// database slow or failing). The request is durable and may still be
// stored: a client retrying with its transaction ID then gets that event,
// so it is told to retry (503), not that the server failed (500).
type errSlow struct{}

func (errSlow) Error() string     { return "timed out waiting for the roomserver" }
func (errSlow) Unavailable() bool { return true }
