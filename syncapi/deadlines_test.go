package syncapi

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"
)

// noSpread is a jitter that never moves a deadline, for the tests of the
// rounding.
func noSpread(int64) int64 { return 0 }

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
			d.jitter = noSpread
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
	d.jitter = noSpread
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
	// Timers never fire early: at most the spread and a tick before the
	// timeout.
	if waited := time.Since(start); waited < 80*time.Millisecond {
		t.Fatalf("ended after %v, more than a tenth and a tick before its 100ms timeout", waited)
	}
}

func TestDeadlinesSpreadBounds(t *testing.T) {
	const tick = 250 * time.Millisecond
	base := time.Unix(3_000_000, 0) // on a tick boundary
	starts := []time.Duration{0, 100 * time.Millisecond, tick - 1}
	tests := []struct {
		name    string
		timeout time.Duration
	}{
		{"shortest rounded", minTicks * tick},
		{"a few seconds", 4 * time.Second},
		{"Element's 30 s", 30 * time.Second},
		{"not a whole tick", 30*time.Second + 123*time.Millisecond},
		{"the longest allowed", 5 * time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := int64(tt.timeout / spreadDiv)
			rng := rand.New(rand.NewPCG(1, 2))
			// The ends of the range, its middle, and random draws.
			draws := []int64{0, n - 1, n / 2}
			for range 1000 {
				draws = append(draws, rng.Int64N(n))
			}
			for _, at := range starts {
				now := base.Add(at)
				latest := now.Add(tt.timeout)
				earliest := latest.Add(-tt.timeout/spreadDiv - tick)
				for _, j := range draws {
					d := newDeadlines(tick)
					d.jitter = func(m int64) int64 {
						if m != n {
							t.Fatalf("jitter asked for [0, %d), want [0, %d)", m, n)
						}
						return j
					}
					due := time.Unix(0, d.dueTick(now, tt.timeout)*int64(tick))
					if due.After(latest) {
						t.Fatalf("start +%v, spread %v: due %v after the timeout", at, time.Duration(j), due.Sub(latest))
					}
					if !due.After(earliest) {
						t.Fatalf("start +%v, spread %v: due %v before the timeout, more than a tenth and a tick", at, time.Duration(j), latest.Sub(due))
					}
				}
			}
		})
	}
}

func TestDeadlinesSpreadAcrossRange(t *testing.T) {
	const tick = 250 * time.Millisecond
	base := time.Unix(3_000_000, 0) // on a tick boundary
	first := base.UnixNano() / int64(tick)
	d := newDeadlines(tick)
	d.now = func() time.Time { return base }
	rng := rand.New(rand.NewPCG(3, 4))
	d.jitter = rng.Int64N
	// A herd of 12,000 long-polls made at one instant with a 30 s timeout.
	const herd = 12000
	var cancels []context.CancelFunc
	for range herd {
		_, cancel := d.withTimeout(context.Background(), 30*time.Second)
		cancels = append(cancels, cancel)
	}
	defer func() {
		for _, c := range cancels {
			c()
		}
	}()
	d.mu.Lock()
	counts := map[int64]int{}
	for k, due := range d.due {
		counts[k-first] = len(due)
	}
	d.mu.Unlock()
	// A tenth of 30 s is 12 ticks: 27 s up to but not including 30 s
	// (a spread of exactly 0 is one draw in three thousand million).
	const ticks = 12
	if len(counts) != ticks {
		t.Errorf("the herd is due at %d ticks, want %d: %v", len(counts), ticks, counts)
	}
	for k := int64(120 - ticks); k < 120; k++ {
		// Each tick's share of a uniform spread, give or take a fifth
		// (the seed is fixed, so this is not a matter of luck).
		if n := counts[k]; n < herd/ticks*4/5 || n > herd/ticks*6/5 {
			t.Errorf("tick %d has %d of the herd, want about %d", k, n, herd/ticks)
		}
	}
	for k := range counts {
		if k < 120-ticks || k > 120 {
			t.Errorf("tick %d is outside the spread", k)
		}
	}
}

// TestDeadlinesReleaseEndedPolls: a poll that ends before its tick (the
// usual case on a busy server) leaves nothing of its context behind.
func TestDeadlinesReleaseEndedPolls(t *testing.T) {
	d := newDeadlines(250 * time.Millisecond)
	_, cancelEnded := d.withTimeout(context.Background(), 30*time.Second)
	waitingCtx, cancelWaiting := d.withTimeout(context.Background(), 30*time.Second)
	defer cancelWaiting()
	cancelEnded()
	d.mu.Lock()
	held, entries := 0, 0
	var ticks []int64
	for k, due := range d.due {
		ticks = append(ticks, k)
		for _, e := range due {
			entries++
			if e.cancel != nil {
				held++
			}
		}
	}
	d.mu.Unlock()
	if entries != 2 || held != 1 {
		t.Fatalf("%d entries holding %d contexts, want 2 holding 1 (the ended poll's released)", entries, held)
	}
	for _, k := range ticks {
		d.expire(k)
	}
	if waitingCtx.Err() == nil {
		t.Fatal("the waiting poll did not end at its tick")
	}
}
