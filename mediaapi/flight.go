package mediaapi

import (
	"context"
	"sync"
)

// flightGroup runs one call per key at a time: concurrent requests for
// the same remote item or thumbnail wait for the one doing the work and
// share its result.
type flightGroup struct {
	mu    sync.Mutex
	calls map[string]*flight
}

type flight struct {
	done chan struct{}
	err  error
}

// do runs f for key unless a call for key is under way, in which case it
// waits for that one's error (or ctx). The work is done under ctx of the
// first caller; a waiter that gives up leaves it running.
func (g *flightGroup) do(ctx context.Context, key string, f func() error) error {
	g.mu.Lock()
	if g.calls == nil {
		g.calls = map[string]*flight{}
	}
	if c, ok := g.calls[key]; ok {
		g.mu.Unlock()
		select {
		case <-c.done:
			return c.err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	c := &flight{done: make(chan struct{})}
	g.calls[key] = c
	g.mu.Unlock()
	c.err = f()
	g.mu.Lock()
	delete(g.calls, key)
	g.mu.Unlock()
	close(c.done)
	return c.err
}
