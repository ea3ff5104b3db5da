package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"time"
)

type idleParams struct {
	conns, roomSize int
	hold, poll      time.Duration
	settle          time.Duration
	filter          string
}

func idleFlags(fs *flag.FlagSet) func(context.Context, *env, *Report) error {
	p := &idleParams{}
	fs.IntVar(&p.conns, "conns", 5000, "idle clients, each a user long-polling /sync on its own connection (C)")
	fs.IntVar(&p.roomSize, "room-size", 100, "put the clients in silent rooms of this many members (0: no rooms)")
	fs.DurationVar(&p.hold, "hold", 60*time.Second, "how long to hold the connections once all are polling (T)")
	fs.DurationVar(&p.poll, "poll-timeout", 30*time.Second, "the /sync timeout parameter; clients poll again when it expires")
	fs.DurationVar(&p.settle, "settle", 5*time.Second, "quiet time before the connections open, measured as the baseline")
	fs.StringVar(&p.filter, "filter", defaultSyncFilter, "the /sync filter (JSON or a filter ID)")
	return func(ctx context.Context, e *env, rep *Report) error {
		if err := errors.Join(
			checkRange("-conns", p.conns, 1, 50000),
			checkRange("-room-size", p.roomSize, 0, 50000),
			checkDuration("-hold", p.hold, time.Second, 24*time.Hour),
			checkDuration("-poll-timeout", p.poll, time.Second, 10*time.Minute),
			checkDuration("-settle", p.settle, time.Second, time.Hour),
		); err != nil {
			return err
		}
		return runIdle(ctx, e, rep, p)
	}
}

// IdleDetails is the idle scenario's outcome.
type IdleDetails struct {
	Setup        []Phase `json:"setup"`
	Rooms        int     `json:"rooms"`
	Polling      int     `json:"polling"`
	ConnectS     float64 `json:"connect_seconds"` // until every client polled
	InitialSync  Summary `json:"initial_sync"`
	Before       *Usage  `json:"before,omitempty"` // the quiet baseline
	Polls        int64   `json:"polls"`            // answers during the hold, not the connect phase
	PollRate     float64 `json:"polls_per_second"`
	RSSPerConnKB float64 `json:"rss_per_conn_kb"`
	CPUPerPollUS float64 `json:"cpu_per_poll_us,omitempty"`
}

func runIdle(ctx context.Context, e *env, rep *Report, p *idleParams) error {
	rep.Name = fmt.Sprintf("idle C=%d", p.conns)
	d := &IdleDetails{}
	rep.Details = d

	users, ph, err := e.registerUsers(ctx, "idle", p.conns)
	d.Setup = append(d.Setup, ph)
	if err != nil {
		return err
	}
	if p.roomSize > 0 {
		d.Rooms = (p.conns + p.roomSize - 1) / p.roomSize
		creators, ph, err := e.registerUsers(ctx, "icreator", d.Rooms)
		d.Setup = append(d.Setup, ph)
		if err != nil {
			return err
		}
		rooms, err := e.createRooms(ctx, creators)
		if err != nil {
			return err
		}
		ph, err = e.joinAll(ctx, "join idle users", users, rooms, func(i int) int { return i % d.Rooms }, e.opts.concurrency)
		d.Setup = append(d.Setup, ph)
		if err != nil {
			return err
		}
	}

	e.logf("measuring the baseline for %v", p.settle)
	sleepCtx(ctx, p.settle) // let setup's work drain
	b0 := e.mark()
	sleepCtx(ctx, p.settle)
	b1 := e.mark()
	if e.server != nil {
		u := e.server.Window(b0, b1)
		d.Before = &u
	}

	t0 := time.Now()
	ws, err := e.startWorkers(ctx, users, p.filter, p.poll, false)
	if err != nil {
		return err
	}
	ready, err := ws.waitReady(ctx)
	if err != nil {
		ws.kill()
		return err
	}
	d.ConnectS = time.Since(t0).Seconds()
	d.Polling = ready.InitialOK
	d.InitialSync = summarize(ready.InitialMS)
	e.logf("%d clients polling after %.1fs (%d initial syncs failed); holding for %v", d.Polling, d.ConnectS, ready.InitialFailed, p.hold)

	h0 := e.mark()
	sleepCtx(ctx, p.hold)
	h1 := e.mark()
	e.measure(rep, h0, h1)
	results, err := ws.stop(ctx)
	// Whole seconds inside the hold: answers during the connect phase come
	// early (others coming online wake their rooms) and are not idle.
	from, to := h0.Unix()+1, h1.Unix()
	for _, r := range results {
		e.errs.Merge(r.Errors, r.Samples)
		for sec, n := range r.PollsAt {
			if sec >= from && sec < to {
				d.Polls += n
			}
		}
	}
	if to > from {
		d.PollRate = float64(d.Polls) / float64(to-from)
	}
	if err != nil {
		return err
	}

	rep.add("clients polling", float64(d.Polling), "", "higher")
	rep.add("time to connect all", d.ConnectS, "s", "lower")
	rep.add("initial sync p50", d.InitialSync.P50, "ms", "lower")
	if d.Before != nil && rep.Server != nil && d.Polling > 0 {
		d.RSSPerConnKB = (rep.Server.RSSAvgMB - d.Before.RSSAvgMB) * 1024 / float64(d.Polling)
		rep.add("RSS before", d.Before.RSSAvgMB, "MB", "lower")
		rep.add("RSS per connection", d.RSSPerConnKB, "KB", "lower")
		rep.add("CPU before (baseline)", d.Before.AvgCores, "cores", "lower")
		rep.add("CPU while idle", rep.Server.AvgCores, "cores", "lower")
	}
	rep.add("sync responses/s while idle", d.PollRate, "/s", "")
	if rep.Server != nil && d.PollRate > 0 {
		// What an answered long-poll costs, everything else the server
		// does while idle included.
		d.CPUPerPollUS = rep.Server.AvgCores / d.PollRate * 1e6
		rep.add("server CPU per response", d.CPUPerPollUS, "us", "lower")
	}
	return nil
}
