package sqldb

import (
	"context"
	"sync"
	"time"
)

// backgroundPatience is the longest a background writer lets others go
// first: bulk work is deferred, never starved.
const backgroundPatience = 250 * time.Millisecond

type backgroundKey struct{}

// Background marks ctx's writes as bulk work that no request waits for
// (the push consumer's notifications): on SQLite they let the writes
// waiting beside them go first, for up to backgroundPatience. Writes
// queue for the one SQLite writer; without this, a request's write can
// sit behind a batch that takes the writer for tens of milliseconds.
func Background(ctx context.Context) context.Context {
	return context.WithValue(ctx, backgroundKey{}, true)
}

func isBackground(ctx context.Context) bool {
	b, _ := ctx.Value(backgroundKey{}).(bool)
	return b
}

// writeGate admits one SQLite writer at a time and hands the writer over
// on release: to the longest-waiting background writer if it has waited
// past backgroundPatience, else to the first other writer, else to the
// first background one.
type writeGate struct {
	now func() time.Time

	mu     sync.Mutex
	held   bool
	fg, bg []*gateWaiter
}

type gateWaiter struct {
	ready chan struct{} // closed when the writer is handed to it
	since time.Time
}

func newWriteGate() *writeGate { return &writeGate{now: time.Now} }

// lock waits for the writer; it returns the release function.
func (g *writeGate) lock(ctx context.Context) (func(), error) {
	g.mu.Lock()
	if !g.held {
		g.held = true
		g.mu.Unlock()
		return g.unlock, nil
	}
	w := &gateWaiter{ready: make(chan struct{}), since: g.now()}
	bg := isBackground(ctx)
	if bg {
		g.bg = append(g.bg, w)
	} else {
		g.fg = append(g.fg, w)
	}
	g.mu.Unlock()
	select {
	case <-w.ready:
		return g.unlock, nil
	case <-ctx.Done():
	}
	g.mu.Lock()
	q := &g.fg
	if bg {
		q = &g.bg
	}
	for i, x := range *q {
		if x == w {
			*q = append((*q)[:i], (*q)[i+1:]...)
			g.mu.Unlock()
			return nil, ctx.Err()
		}
	}
	// Handed over as ctx ended: pass it on.
	g.mu.Unlock()
	g.unlock()
	return nil, ctx.Err()
}

func (g *writeGate) unlock() {
	g.mu.Lock()
	defer g.mu.Unlock()
	var next *gateWaiter
	switch {
	case len(g.bg) > 0 && g.now().Sub(g.bg[0].since) >= backgroundPatience:
		next, g.bg = g.bg[0], g.bg[1:]
	case len(g.fg) > 0:
		next, g.fg = g.fg[0], g.fg[1:]
	case len(g.bg) > 0:
		next, g.bg = g.bg[0], g.bg[1:]
	default:
		g.held = false
		return
	}
	close(next.ready)
}
