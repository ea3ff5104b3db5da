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
	"myelin/internal/bus/bustest"
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
	// A stand-in roomserver: it takes the first request, acks it, and
	// loses the connection before answering; it answers the rest.
	h := newInputHarness(ctx, t, bus.Options{StoreDir: t.TempDir()})
	b, ic, cons := h.bus, h.ic, h.cons
	type request struct{ msgID, reqID string }
	var mu sync.Mutex
	var seen []request
	cctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		cons.Consume(cctx, h.log, func(ctx context.Context, m jetstream.Msg) error {
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

// TestInputFailsWhenBusStaysDown: a request waiting for its reply when the
// NATS server goes away, and stays away, fails with an error the HTTP edge
// answers 503 once the bus has waited its publish retry, not after the
// 60 s input timeout.
func TestInputFailsWhenBusStaysDown(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), inputTimeout/2)
	defer cancel()
	ns := bustest.RunServer(t, t.TempDir(), -1)
	defer ns.Shutdown()
	// A stand-in roomserver that takes the request and, instead of
	// answering, stops the NATS server.
	h := newInputHarness(ctx, t, bus.Options{URL: ns.ClientURL(), PublishRetry: 500 * time.Millisecond})
	ic, cons := h.ic, h.cons
	cctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		cons.Consume(cctx, h.log, func(context.Context, jetstream.Msg) error {
			go ns.Shutdown()
			return nil
		})
	}()
	defer func() { stop(); wg.Wait() }()

	_, err := ic.Input(ctx, &rsapi.InputRequest{RoomID: "!room:test"})
	var un interface{ Unavailable() bool }
	if !errors.As(err, &un) || !un.Unavailable() {
		t.Fatalf("input with the bus gone: %v, want an Unavailable error", err)
	}
	if ctx.Err() != nil {
		t.Fatal("input waited for its context")
	}
}

// inputHarness is a bus, an InputClient on it, and the consumer of a
// stand-in roomserver.
type inputHarness struct {
	bus  *bus.Bus
	ic   *InputClient
	cons *bus.Consumer
	log  *logrus.Entry
}

// newInputHarness opens an inputHarness on opts; it is closed when t ends.
func newInputHarness(ctx context.Context, t *testing.T, opts bus.Options) *inputHarness {
	t.Helper()
	l := logrus.New()
	l.SetLevel(logrus.ErrorLevel)
	h := &inputHarness{log: logrus.NewEntry(l)}
	opts.Log = h.log
	var err error
	if h.bus, err = bus.Open(ctx, opts); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.bus.Close)
	if h.ic, err = NewInputClient(h.bus); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.ic.Close() })
	if h.cons, err = h.bus.OpenConsumer(ctx, bus.InputRoomEvent, jetstream.ConsumerConfig{Durable: "test", AckPolicy: jetstream.AckExplicitPolicy}); err != nil {
		t.Fatal(err)
	}
	return h
}
