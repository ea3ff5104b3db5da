package roomserver

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/sirupsen/logrus"

	"myelin/internal/bus"
	rsapi "myelin/roomserver/api"
)

// TestInputAsksAgain: a request whose reply was lost with the bus
// connection is published again on the next one, under the same request
// ID and a new message ID (JetStream would drop a copy with the old one),
// and the caller gets the reply to the copy instead of waiting for its
// timeout.
func TestInputAsksAgain(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l := logrus.New()
	l.SetLevel(logrus.WarnLevel)
	b, err := bus.Open(ctx, bus.Options{StoreDir: t.TempDir(), Log: logrus.NewEntry(l)})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ic, err := NewInputClient(b)
	if err != nil {
		t.Fatal(err)
	}
	defer ic.Close()

	// A stand-in roomserver: it takes the first request, acks it, and
	// loses the connection before answering; it answers the rest.
	cons, err := b.OpenConsumer(ctx, bus.InputRoomEvent, jetstream.ConsumerConfig{Durable: "test", AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatal(err)
	}
	type request struct{ msgID, reqID string }
	var mu sync.Mutex
	var seen []request
	cctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		cons.Consume(cctx, logrus.NewEntry(l), func(ctx context.Context, m jetstream.Msg) error {
			h := m.Headers()
			mu.Lock()
			seen = append(seen, request{h.Get(jetstream.MsgIDHeader), h.Get(bus.HeaderRequestID)})
			first := len(seen) == 1
			mu.Unlock()
			if first {
				if err := m.DoubleAck(ctx); err != nil {
					return err
				}
				b.Conn().Close()
				return nil
			}
			data, _ := json.Marshal(rsapi.InputResponse{RoomID: "!room:test", EventIDs: []string{"$answered"}})
			return b.Send(h.Get(bus.HeaderReply), data)
		})
	}()
	defer func() { stop(); wg.Wait() }()

	resp, err := ic.Input(ctx, &rsapi.InputRequest{RoomID: "!room:test"})
	if err != nil {
		t.Fatalf("input: %v", err)
	}
	if len(resp.EventIDs) != 1 || resp.EventIDs[0] != "$answered" {
		t.Fatalf("response %+v", resp)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 2 {
		t.Fatalf("the roomserver saw %d messages, want the request and one copy: %+v", len(seen), seen)
	}
	if seen[0].reqID == "" || seen[1].reqID != seen[0].reqID || seen[1].msgID == seen[0].msgID {
		t.Fatalf("copy %+v of request %+v: want the same request ID and another message ID", seen[1], seen[0])
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Fatal("timed out")
	}
}
