package sqldb

import (
	"context"
	"sync"
	"testing"
	"time"

	"myelin/internal/poll"
)

// queued waits until the gate has n waiters in all.
func queued(t *testing.T, g *writeGate, n int) {
	t.Helper()
	poll.True(t, 5*time.Second, "waiters queued", func() bool {
		g.mu.Lock()
		defer g.mu.Unlock()
		return len(g.fg)+len(g.bg) == n
	})
}

func TestWriteGateOrder(t *testing.T) {
	base := time.Unix(1000, 0)
	tests := []struct {
		name string
		// waiters in the order they queue: true for background
		background []bool
		// how long after queueing the writer is released
		after time.Duration
		want  []int // the order they get the writer
	}{
		{"others first", []bool{true, false, true, false}, 0, []int{1, 3, 0, 2}},
		{"all foreground in turn", []bool{false, false, false}, 0, []int{0, 1, 2}},
		{"background past its patience goes first", []bool{true, false}, backgroundPatience, []int{0, 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newWriteGate()
			var mu sync.Mutex
			now := base
			g.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
			release, err := g.lock(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			got := make(chan int, len(tt.background))
			var wg sync.WaitGroup
			for i, bg := range tt.background {
				ctx := context.Background()
				if bg {
					ctx = Background(ctx)
				}
				wg.Go(func() {
					unlock, err := g.lock(ctx)
					if err != nil {
						t.Error(err)
						return
					}
					got <- i
					unlock()
				})
				queued(t, g, i+1) // queue in this order
			}
			mu.Lock()
			now = now.Add(tt.after)
			mu.Unlock()
			release()
			wg.Wait()
			close(got)
			var order []int
			for i := range got {
				order = append(order, i)
			}
			if len(order) != len(tt.want) {
				t.Fatalf("order %v, want %v", order, tt.want)
			}
			for i := range order {
				if order[i] != tt.want[i] {
					t.Fatalf("order %v, want %v", order, tt.want)
				}
			}
			if g.held {
				t.Fatal("still held after everyone released it")
			}
		})
	}
}

func TestWriteGateCancel(t *testing.T) {
	g := newWriteGate()
	release, err := g.lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := g.lock(ctx)
		done <- err
	}()
	queued(t, g, 1)
	cancel()
	if err := <-done; err == nil {
		t.Fatal("a cancelled waiter got the writer")
	}
	queued(t, g, 0)
	release()
	// Free again: taken at once.
	unlock, err := g.lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	unlock()
}
