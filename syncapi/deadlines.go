package syncapi

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"
)

// deadlines gives long-polls timeouts that expire together, in batches,
// without keeping a herd of them together.
//
// On an idle server, timed-out long-polls are nearly all the work: with
// 18,000 clients polling with Element's 30 s timeout, 600 a second. Each
// one waking the runtime on its own costs more than the answer itself
// (the threads sleep and wake per request). Rounding each deadline down
// to a shared tick wakes them in batches instead, and their clients'
// next polls then arrive in batches too.
//
// Rounding alone also keeps a herd in step: when every client polls at
// once (all reconnecting after a restart), those in quiet rooms time out
// on one tick, poll again together, and do so every timeout for as long
// as their rooms stay quiet; a delivery due while thousands of them are
// answered and polled again waits behind them. So each deadline is first
// moved earlier by a random part of a tenth of the timeout: a herd spreads
// over that many ticks within one poll, and further with each, while
// polls still end on ticks. A fresh draw per poll, rather than an offset
// per client, keeps mixing a herd (clients with the same offset would
// stay in step for good) and makes no client always the shortest.
//
// A poll so ends at most a tenth of its timeout plus a tick early, never
// late, which the spec allows: the timeout is the longest to wait. On
// average polls end 5% early, so an idle server answers about 5% more.
type deadlines struct {
	tick time.Duration
	now  func() time.Time
	// jitter returns a uniform random number in [0, n).
	jitter func(n int64) int64
	mu     sync.Mutex
	due    map[int64][]*dueCtx // by tick number
}

// dueCtx is one rounded timeout. Its cancel is cleared when the poll ends
// first: a poll answered early (most are, on a busy server) must not keep
// its request's context chain alive until its tick, up to a timeout later.
type dueCtx struct{ cancel context.CancelFunc }

// minTicks is the shortest timeout, in ticks, that is rounded: a short
// timeout keeps its own timer, so that rounding never cuts it by more
// than a quarter (and the spread by a tenth more).
const minTicks = 4

// spreadDiv sets the spread: a deadline moves earlier by up to the
// timeout / spreadDiv. A tenth of Element's 30 s is 12 ticks, enough to
// cut a herd of 2,000 into batches of under 200.
const spreadDiv = 10

func newDeadlines(tick time.Duration) *deadlines {
	return &deadlines{tick: tick, now: time.Now, jitter: rand.Int64N, due: map[int64][]*dueCtx{}}
}

// withTimeout returns a context that ends when ctx does or when the
// timeout, less a random spread and rounded down to a tick, has passed.
func (d *deadlines) withTimeout(ctx context.Context, timeout time.Duration) (context.Context, context.CancelFunc) {
	if timeout < minTicks*d.tick {
		return context.WithTimeout(ctx, timeout)
	}
	c, cancel := context.WithCancel(ctx)
	now := d.now()
	k := d.dueTick(now, timeout)
	e := &dueCtx{cancel: cancel}
	d.mu.Lock()
	waiting, ok := d.due[k]
	d.due[k] = append(waiting, e)
	d.mu.Unlock()
	if !ok {
		time.AfterFunc(time.Unix(0, k*int64(d.tick)).Sub(now), func() { d.expire(k) })
	}
	return c, func() {
		d.mu.Lock()
		e.cancel = nil
		d.mu.Unlock()
		cancel()
	}
}

// dueTick is the tick at which a timeout starting at now ends: in
// (now + timeout - timeout/spreadDiv - tick, now + timeout].
func (d *deadlines) dueTick(now time.Time, timeout time.Duration) int64 {
	var spread time.Duration
	if n := int64(timeout / spreadDiv); n > 0 {
		spread = time.Duration(d.jitter(n))
	}
	return now.Add(timeout-spread).UnixNano() / int64(d.tick)
}

// expire ends the contexts due at tick k whose polls are still waiting.
func (d *deadlines) expire(k int64) {
	d.mu.Lock()
	due := d.due[k]
	delete(d.due, k)
	cancels := make([]context.CancelFunc, 0, len(due))
	for _, e := range due {
		if e.cancel != nil {
			cancels = append(cancels, e.cancel)
		}
	}
	d.mu.Unlock()
	for _, cancel := range cancels {
		cancel()
	}
}
