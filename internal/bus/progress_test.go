package bus

import (
	"context"
	"strconv"
	"testing"
	"time"
)

// TestCatchUp: CatchUp returns once the consumer marked the stream's last
// sequence as of the call, not before, and gives up after its bound.
func TestCatchUp(t *testing.T) {
	ctx := context.Background()
	b, err := Open(ctx, Options{StoreDir: t.TempDir(), Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for i := range 3 {
		id := strconv.Itoa(i)
		if err := b.Publish(ctx, NewMsg(OutputTyping, []byte(id), id)); err != nil {
			t.Fatal(err)
		}
	}
	last, err := b.LastSeq(ctx, OutputTyping)
	if err != nil {
		t.Fatal(err)
	}
	p := NewProgress()
	p.Mark(last - 1)
	for _, tc := range []struct {
		name  string
		mark  uint64 // marked while CatchUp waits; 0: none
		max   time.Duration
		early bool // returns before max
	}{
		{"behind, never catches up", 0, 200 * time.Millisecond, false},
		{"catches up", last, 5 * time.Second, true},
		{"caught up already", 0, 5 * time.Second, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.mark > 0 {
				time.AfterFunc(50*time.Millisecond, func() { p.Mark(tc.mark) })
			}
			start := time.Now()
			b.CatchUp(ctx, OutputTyping, p, tc.max)
			took := time.Since(start)
			if early := took < tc.max; early != tc.early {
				t.Fatalf("returned after %v (bound %v), want early %v", took, tc.max, tc.early)
			}
		})
	}
}
