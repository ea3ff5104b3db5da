package syncapi

import (
	"context"
	"sync"
	"time"
)

// deadlines gives long-polls timeouts that expire together.
//
// On an idle server, timed-out long-polls are nearly all the work: with
// 18,000 clients polling with Element's 30 s timeout, 600 a second. Each
// one waking the runtime on its own costs more than the answer itself
// (the threads sleep and wake per request). Rounding each deadline down
// to a shared tick wakes them in batches instead, and their clients'
// next polls then arrive in batches too. A poll may so end up to one
// tick early, which the spec allows: the timeout is the longest to wait.
type deadlines struct {
	tick time.Duration
	now  func() time.Time
	mu   sync.Mutex
	due  map[int64][]context.CancelFunc // by tick number
}

// minTicks is the shortest timeout, in ticks, that is rounded: a short
// timeout keeps its own timer, so that rounding never cuts it by more
// than a quarter.
const minTicks = 4

func newDeadlines(tick time.Duration) *deadlines {
	return &deadlines{tick: tick, now: time.Now, due: map[int64][]context.CancelFunc{}}
}

// withTimeout returns a context that ends when ctx does or when the
// timeout, rounded down to a tick, has passed.
func (d *deadlines) withTimeout(ctx context.Context, timeout time.Duration) (context.Context, context.CancelFunc) {
	if timeout < minTicks*d.tick {
		return context.WithTimeout(ctx, timeout)
	}
	c, cancel := context.WithCancel(ctx)
	now := d.now()
	k := now.Add(timeout).UnixNano() / int64(d.tick)
	d.mu.Lock()
	waiting, ok := d.due[k]
	d.due[k] = append(waiting, cancel)
	d.mu.Unlock()
	if !ok {
		time.AfterFunc(time.Unix(0, k*int64(d.tick)).Sub(now), func() { d.expire(k) })
	}
	return c, cancel
}

// expire ends the contexts due at tick k. Those whose request already
// finished are cancelled a second time, which does nothing.
func (d *deadlines) expire(k int64) {
	d.mu.Lock()
	due := d.due[k]
	delete(d.due, k)
	d.mu.Unlock()
	for _, cancel := range due {
		cancel()
	}
}
