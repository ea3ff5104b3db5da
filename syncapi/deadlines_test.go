package syncapi

import (
	"context"
	"testing"
	"time"
)

func TestDeadlinesRoundDown(t *testing.T) {
	base := time.Unix(1_000_000, 0) // on a tick boundary
	tests := []struct {
		name    string
		at      time.Duration // when the timeout starts, after base
		timeout time.Duration
		tick    int64 // the tick it expires at, counted from base; -1: own timer
	}{
		{"on a tick", 0, 30 * time.Second, 120},
		{"between ticks rounds down", 100 * time.Millisecond, 30 * time.Second, 120},
		{"just before the next tick", 249 * time.Millisecond, 30 * time.Second, 120},
		{"next tick", 250 * time.Millisecond, 30 * time.Second, 121},
		{"shortest rounded", 0, minTicks * 250 * time.Millisecond, minTicks},
		{"short keeps its own timer", 0, minTicks*250*time.Millisecond - 1, -1},
		{"zero", 0, 0, -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := newDeadlines(250 * time.Millisecond)
			d.now = func() time.Time { return base.Add(tt.at) }
			ctx, cancel := d.withTimeout(context.Background(), tt.timeout)
			defer cancel()
			first := base.UnixNano() / int64(250*time.Millisecond)
			d.mu.Lock()
			var got []int64
			for k := range d.due {
				got = append(got, k-first)
			}
			d.mu.Unlock()
			if tt.tick < 0 {
				if len(got) != 0 {
					t.Fatalf("rounded to ticks %v, want its own timer", got)
				}
				return
			}
			if len(got) != 1 || got[0] != tt.tick {
				t.Fatalf("due at ticks %v, want [%d]", got, tt.tick)
			}
			if ctx.Err() != nil {
				t.Fatal("ended before its tick")
			}
			d.expire(first + tt.tick)
			if ctx.Err() == nil {
				t.Fatal("still running after its tick expired")
			}
		})
	}
}

func TestDeadlinesShareATick(t *testing.T) {
	base := time.Unix(2_000_000, 0)
	d := newDeadlines(250 * time.Millisecond)
	var ctxs []context.Context
	for i := range 3 {
		d.now = func() time.Time { return base.Add(time.Duration(i) * 50 * time.Millisecond) }
		ctx, cancel := d.withTimeout(context.Background(), 10*time.Second)
		defer cancel()
		ctxs = append(ctxs, ctx)
	}
	if len(d.due) != 1 {
		t.Fatalf("%d ticks for three timeouts within one tick, want 1", len(d.due))
	}
	for k := range d.due {
		d.expire(k)
	}
	for i, ctx := range ctxs {
		if ctx.Err() == nil {
			t.Errorf("context %d still running", i)
		}
	}
}

func TestDeadlinesParentEnds(t *testing.T) {
	d := newDeadlines(250 * time.Millisecond)
	parent, stop := context.WithCancel(context.Background())
	ctx, cancel := d.withTimeout(parent, time.Hour)
	defer cancel()
	stop()
	<-ctx.Done() // ends with its parent, long before its tick
}

func TestDeadlinesExpireForReal(t *testing.T) {
	d := newDeadlines(10 * time.Millisecond)
	start := time.Now()
	ctx, cancel := d.withTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	<-ctx.Done()
	// Timers never fire early: at most one tick before the timeout.
	if waited := time.Since(start); waited < 90*time.Millisecond {
		t.Fatalf("ended after %v, more than a tick before its 100ms timeout", waited)
	}
}
