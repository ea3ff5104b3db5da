package bus

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"myelin/internal/poll"
)

// TestConsumeBatch: batches come in stream order and are acked only when
// their handler succeeds; a failing batch is retried whole; a panicking
// message is skipped alone, the rest of its batch handled.
func TestConsumeBatch(t *testing.T) {
	ctx := context.Background()
	b, err := Open(ctx, Options{StoreDir: t.TempDir(), Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	const total, failAt, panicAt = 300, 40, 170
	// Published before consuming starts, so that batches fill up.
	for i := range total {
		id := strconv.Itoa(i)
		if err := b.Publish(ctx, NewMsg(OutputTyping, []byte(id), id)); err != nil {
			t.Fatal(err)
		}
	}
	cons, err := b.OpenConsumer(ctx, OutputTyping, OutputConsumer("batch", jetstream.DeliverAllPolicy))
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var handled []int // the messages of the batches that succeeded
	largest, failed := 0, false
	cctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		cons.ConsumeBatch(cctx, b.log, 16, 0, func(_ context.Context, ms []jetstream.Msg) error {
			var got []int
			for _, m := range ms {
				n, _ := strconv.Atoi(string(m.Data()))
				got = append(got, n)
			}
			mu.Lock()
			defer mu.Unlock()
			largest = max(largest, len(ms))
			if slices.Contains(got, failAt) && !failed {
				failed = true
				return errors.New("transient")
			}
			if slices.Contains(got, panicAt) {
				panic("bad message")
			}
			handled = append(handled, got...)
			return nil
		})
	}()
	defer func() { stop(); <-done }()

	poll.Until(t, 20*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(handled) < total-1 {
			return fmt.Errorf("%d of %d handled", len(handled), total-1)
		}
		return nil
	})
	mu.Lock()
	want := make([]int, 0, total-1)
	for i := range total {
		if i != panicAt {
			want = append(want, i)
		}
	}
	if !slices.Equal(handled, want) {
		t.Errorf("handled %v, want 0..%d in order without %d", handled, total-1, panicAt)
	}
	if largest < 2 || largest > 16 {
		t.Errorf("largest batch %d, want 2 to 16", largest)
	}
	mu.Unlock()
	// Everything acked, the skipped message too.
	poll.Until(t, 10*time.Second, func() error {
		info, err := b.JetStream().Consumer(ctx, OutputTyping, "batch")
		if err != nil {
			return err
		}
		ci, err := info.Info(ctx)
		if err != nil {
			return err
		}
		if ci.AckFloor.Stream != total || ci.NumAckPending != 0 {
			return fmt.Errorf("ack floor %d, %d pending", ci.AckFloor.Stream, ci.NumAckPending)
		}
		return nil
	})
}

// TestConsumeBatchLinger: a batch waits up to its linger for more
// messages, and no longer.
func TestConsumeBatchLinger(t *testing.T) {
	ctx := context.Background()
	b, err := Open(ctx, Options{StoreDir: t.TempDir(), Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	cons, err := b.OpenConsumer(ctx, OutputTyping, OutputConsumer("linger", jetstream.DeliverAllPolicy))
	if err != nil {
		t.Fatal(err)
	}
	const linger = 500 * time.Millisecond
	batches := make(chan int, 10)
	cctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		cons.ConsumeBatch(cctx, b.log, 16, linger, func(_ context.Context, ms []jetstream.Msg) error {
			batches <- len(ms)
			return nil
		})
	}()
	defer func() { stop(); <-done }()
	publish := func(n int) {
		for i := range n {
			id := fmt.Sprintf("%d-%d", n, i)
			if err := b.Publish(ctx, NewMsg(OutputTyping, []byte(id), id)); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Three messages published one after the other (well within the
	// linger of the first) make one batch.
	publish(3)
	select {
	case n := <-batches:
		if n != 3 {
			t.Errorf("first batch of %d, want 3", n)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no batch")
	}
	// One alone is handed over once its linger is past.
	start := time.Now()
	publish(1)
	select {
	case n := <-batches:
		if took := time.Since(start); n != 1 || took < linger || took > linger+5*time.Second {
			t.Errorf("batch of %d after %v, want 1 after about %v", n, took, linger)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no second batch")
	}
}
