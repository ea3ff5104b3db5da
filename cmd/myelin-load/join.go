package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"sort"
	"sync"
	"time"
)

type joinParams struct {
	users, concurrency, slice int
}

func joinFlags(fs *flag.FlagSet) func(context.Context, *env, *Report) error {
	p := &joinParams{}
	fs.IntVar(&p.users, "users", 1000, "users joining the room (U)")
	fs.IntVar(&p.concurrency, "concurrency", 8, "joins in flight")
	fs.IntVar(&p.slice, "slice", 500, "report the join rate per this many joins")
	return func(ctx context.Context, e *env, rep *Report) error {
		if err := errors.Join(
			checkRange("-users", p.users, 1, 100000),
			checkRange("-concurrency", p.concurrency, 1, 1000),
			checkRange("-slice", p.slice, 1, 100000),
		); err != nil {
			return err
		}
		return runJoin(ctx, e, rep, p)
	}
}

// JoinSlice is the join rate while the room grew from From to To members
// (not counting its creator).
type JoinSlice struct {
	From    int     `json:"from"`
	To      int     `json:"to"`
	PerSec  float64 `json:"joins_per_second"`
	Latency Summary `json:"latency"`
}

// JoinDetails is the join scenario's outcome.
type JoinDetails struct {
	Setup   []Phase     `json:"setup"`
	Joined  int         `json:"joined"`
	Failed  int         `json:"failed"`
	Seconds float64     `json:"seconds"`
	PerSec  float64     `json:"joins_per_second"`
	Latency Summary     `json:"latency"`
	Slices  []JoinSlice `json:"slices"`
}

type joinDone struct {
	at      time.Time
	latency float64
}

func runJoin(ctx context.Context, e *env, rep *Report, p *joinParams) error {
	rep.Name = fmt.Sprintf("join U=%d", p.users)
	d := &JoinDetails{}
	rep.Details = d
	creator, ph, err := e.registerUsers(ctx, "jcreator", 1)
	d.Setup = append(d.Setup, ph)
	if err != nil {
		return err
	}
	users, ph, err := e.registerUsers(ctx, "joiner", p.users)
	d.Setup = append(d.Setup, ph)
	if err != nil {
		return err
	}
	rooms, err := e.createRooms(ctx, creator)
	if err != nil {
		return err
	}

	e.logf("%d users joining %s, %d at a time", p.users, rooms[0], p.concurrency)
	hc := &http.Client{Transport: newTransport(nil, p.concurrency)}
	var mu sync.Mutex
	var done []joinDone
	prog := e.progress("join", p.users)
	start := e.mark()
	// Joins are measured, not retried: a failed join is a result.
	parallel(ctx, p.users, p.concurrency, func(ctx context.Context, i int) error {
		t0 := time.Now()
		if err := users[i].withHTTP(hc).Join(ctx, rooms[0]); err != nil {
			if ctx.Err() == nil {
				e.errs.Add("join", err)
				mu.Lock()
				d.Failed++
				mu.Unlock()
			}
			return nil
		}
		now := time.Now()
		mu.Lock()
		done = append(done, joinDone{at: now, latency: ms(now.Sub(t0))})
		mu.Unlock()
		prog.inc()
		return nil
	})
	prog.finish()
	end := e.mark()
	e.measure(rep, start, end)

	d.Joined = len(done)
	d.Seconds = end.Sub(start).Seconds()
	d.PerSec = float64(d.Joined) / d.Seconds
	d.Slices, d.Latency = joinSlices(done, start, p.slice)

	rep.add("joins/s", d.PerSec, "joins/s", "higher")
	rep.addLatency("join latency", d.Latency)
	rep.add("join errors", float64(d.Failed), "", "lower")
	for _, s := range d.Slices {
		rep.add(fmt.Sprintf("joins/s, members %d-%d", s.From, s.To), s.PerSec, "joins/s", "higher")
	}
	return nil
}

// joinSlices cuts the joins, in the order they completed, into slices of
// size joins and returns each slice's rate and latency, and the latency
// over all joins.
func joinSlices(done []joinDone, start time.Time, size int) ([]JoinSlice, Summary) {
	sort.Slice(done, func(i, j int) bool { return done[i].at.Before(done[j].at) })
	var out []JoinSlice
	var all []float64
	prev := start
	for from := 0; from < len(done); from += size {
		to := min(from+size, len(done))
		var lat []float64
		for _, j := range done[from:to] {
			lat = append(lat, j.latency)
		}
		all = append(all, lat...)
		last := done[to-1].at
		s := JoinSlice{From: from, To: to, Latency: summarize(lat)}
		if secs := last.Sub(prev).Seconds(); secs > 0 {
			s.PerSec = float64(to-from) / secs
		}
		out = append(out, s)
		prev = last
	}
	return out, summarize(all)
}
