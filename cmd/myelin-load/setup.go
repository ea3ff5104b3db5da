package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// parallel runs f(ctx, i) for every i in [0, n) with at most conc calls in
// flight. It stops starting new calls at the first error or when ctx is
// done, waits for the calls in flight, and returns the first error.
func parallel(ctx context.Context, n, conc int, f func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	sem := make(chan struct{}, max(conc, 1))
	var wg sync.WaitGroup
loop:
	for i := range n {
		select {
		case <-ctx.Done():
			break loop
		case sem <- struct{}{}:
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := f(ctx, i); err != nil {
				cancel(err)
			}
		}()
	}
	wg.Wait()
	return context.Cause(ctx)
}

// setupRetries is how often a setup request is tried before the run gives
// up: a server may shed load now and then, but a run with missing users or
// members would measure something else.
const setupRetries = 3

// retry runs f until it succeeds, fails with a 4xx other than 429 (which the
// client already retried), or has been tried setupRetries times. Every
// failure is tallied under op.
func (e *env) retry(ctx context.Context, op string, f func() error) error {
	var err error
	for attempt := range setupRetries {
		if err = f(); err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		e.errs.Add(op, err)
		var ae *apiError
		if errors.As(err, &ae) && ae.Status/100 == 4 {
			return err
		}
		if err := sleepCtx(ctx, time.Duration(attempt+1)*time.Second); err != nil {
			return err
		}
	}
	return err
}

// progress logs how far a long setup step has come, at most every few
// seconds.
type progress struct {
	e     *env
	what  string
	total int
	start time.Time
	done  atomic.Int64
	last  atomic.Int64 // unix nanoseconds of the last log line
}

func (e *env) progress(what string, total int) *progress {
	p := &progress{e: e, what: what, total: total, start: time.Now()}
	p.last.Store(p.start.UnixNano())
	return p
}

func (p *progress) inc() {
	n := p.done.Add(1)
	now := time.Now()
	last := p.last.Load()
	if now.UnixNano()-last > int64(5*time.Second) && p.last.CompareAndSwap(last, now.UnixNano()) {
		p.e.logf("%s: %d/%d (%.0f/s)", p.what, n, p.total, float64(n)/now.Sub(p.start).Seconds())
	}
}

// finish logs the step's total and returns its rate.
func (p *progress) finish() Phase {
	d := time.Since(p.start)
	ph := Phase{Name: p.what, Count: int(p.done.Load()), Seconds: d.Seconds()}
	if d > 0 {
		ph.PerSecond = float64(ph.Count) / d.Seconds()
	}
	p.e.logf("%s: %d in %.1fs (%.1f/s)", p.what, ph.Count, ph.Seconds, ph.PerSecond)
	return ph
}

// Phase is a timed step of a run's setup.
type Phase struct {
	Name      string  `json:"name"`
	Count     int     `json:"count"`
	Seconds   float64 `json:"seconds"`
	PerSecond float64 `json:"per_second"`
}

// registerUsers creates n users named after the run and role.
func (e *env) registerUsers(ctx context.Context, role string, n int) ([]*Client, Phase, error) {
	users := make([]*Client, n)
	p := e.progress("register "+role, n)
	password := "load-" + e.runID
	err := parallel(ctx, n, e.opts.concurrency, func(ctx context.Context, i int) error {
		localpart := fmt.Sprintf("load_%s_%s_%d", e.runID, role, i)
		return e.retry(ctx, "setup register", func() error {
			c, err := e.reg.Register(ctx, localpart, password)
			if err != nil {
				return err
			}
			users[i] = c
			p.inc()
			return nil
		})
	})
	ph := p.finish()
	if err != nil {
		return nil, ph, fmt.Errorf("register %s users: %w", role, err)
	}
	return users, ph, nil
}

// createRooms has each creator make one public room.
func (e *env) createRooms(ctx context.Context, creators []*Client) ([]string, error) {
	rooms := make([]string, len(creators))
	err := parallel(ctx, len(creators), e.opts.concurrency, func(ctx context.Context, i int) error {
		return e.retry(ctx, "setup createRoom", func() error {
			id, err := creators[i].CreateRoom(ctx, fmt.Sprintf("load %s %d", e.runID, i))
			rooms[i] = id
			return err
		})
	})
	if err != nil {
		return nil, fmt.Errorf("create rooms: %w", err)
	}
	return rooms, nil
}

// joinAll has users[i] join rooms[roomOf(i)], conc joins in flight.
func (e *env) joinAll(ctx context.Context, what string, users []*Client, rooms []string, roomOf func(i int) int, conc int) (Phase, error) {
	p := e.progress(what, len(users))
	err := parallel(ctx, len(users), conc, func(ctx context.Context, i int) error {
		return e.retry(ctx, "setup join", func() error {
			if err := users[i].Join(ctx, rooms[roomOf(i)]); err != nil {
				return err
			}
			p.inc()
			return nil
		})
	})
	ph := p.finish()
	if err != nil {
		return ph, fmt.Errorf("%s: %w", what, err)
	}
	return ph, nil
}

// withHTTP returns a copy of c that sends its requests through hc.
func (c *Client) withHTTP(hc *http.Client) *Client {
	cp := *c
	cp.hc = hc
	return &cp
}
