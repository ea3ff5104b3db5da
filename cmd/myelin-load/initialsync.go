package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"slices"
	"time"
)

type initialSyncParams struct {
	members, reps     int
	messages, page    int
	msgSenders, joinC int
}

func initialSyncFlags(fs *flag.FlagSet) func(context.Context, *env, *Report) error {
	p := &initialSyncParams{}
	fs.IntVar(&p.members, "members", 10000, "members of the room, its creator included (N)")
	fs.IntVar(&p.reps, "reps", 3, "initial syncs timed per filter")
	fs.IntVar(&p.messages, "messages", 1000, "messages sent into the room, then paginated back through with /messages")
	fs.IntVar(&p.page, "page", 50, "the /messages limit parameter")
	fs.IntVar(&p.msgSenders, "msg-senders", 10, "members who send the messages (each sends in turn)")
	fs.IntVar(&p.joinC, "join-concurrency", 16, "joins in flight while the room fills")
	return func(ctx context.Context, e *env, rep *Report) error {
		if err := errors.Join(
			checkRange("-members", p.members, 2, 200000),
			checkRange("-reps", p.reps, 1, 100),
			checkRange("-messages", p.messages, 0, 100000),
			checkRange("-page", p.page, 1, 1000),
			checkRange("-msg-senders", p.msgSenders, 1, p.members-1),
			checkRange("-join-concurrency", p.joinC, 1, 1000),
		); err != nil {
			return err
		}
		return runInitialSync(ctx, e, rep, p)
	}
}

// SyncRun is one timed initial sync.
type SyncRun struct {
	MS          float64 `json:"ms"`
	Bytes       int     `json:"bytes"`
	StateEvents int     `json:"state_events"`
	Timeline    int     `json:"timeline_events"`
	// Senders counts the timeline's distinct senders, and MembersMissing
	// those of them whose m.room.member event is neither in the state nor
	// in the timeline: an initial sync must send them even when members
	// are lazy-loaded (spec: "Lazy-loading room members").
	Senders        int `json:"timeline_senders"`
	MembersMissing int `json:"members_missing"`
}

// InitialSyncDetails is the initialsync scenario's outcome.
type InitialSyncDetails struct {
	Setup     []Phase   `json:"setup"`
	Full      []SyncRun `json:"full_members"`
	Lazy      []SyncRun `json:"lazy_members"`
	Pages     int       `json:"pages"`
	Paginated int       `json:"events_paginated"`
	PageMS    Summary   `json:"page_ms"`
	TotalMS   float64   `json:"pagination_total_ms"`
}

const lazyFilter = `{"room":{"state":{"lazy_load_members":true},"timeline":{"limit":20}}}`
const fullFilter = `{"room":{"timeline":{"limit":20}}}`

func runInitialSync(ctx context.Context, e *env, rep *Report, p *initialSyncParams) error {
	rep.Name = fmt.Sprintf("initialsync N=%d", p.members)
	d := &InitialSyncDetails{}
	rep.Details = d

	creators, ph, err := e.registerUsers(ctx, "screator", 1)
	d.Setup = append(d.Setup, ph)
	if err != nil {
		return err
	}
	members, ph, err := e.registerUsers(ctx, "member", p.members-1)
	d.Setup = append(d.Setup, ph)
	if err != nil {
		return err
	}
	rooms, err := e.createRooms(ctx, creators)
	if err != nil {
		return err
	}
	room := rooms[0]
	fill, err := e.joinAll(ctx, "fill room", members, rooms, func(int) int { return 0 }, p.joinC)
	d.Setup = append(d.Setup, fill)
	if err != nil {
		return err
	}
	if p.messages > 0 {
		prog := e.progress("send messages", p.messages)
		err = parallel(ctx, p.msgSenders, p.msgSenders, func(ctx context.Context, s int) error {
			for k := s; k < p.messages; k += p.msgSenders {
				content := loadContent{MsgType: "m.text", Body: fmt.Sprintf("history %d", k), Seq: int64(k), SentUS: time.Now().UnixMicro()}
				err := e.retry(ctx, "setup send", func() error {
					_, err := members[s].Send(ctx, room, fmt.Sprintf("%s-h%d", e.runID, k), content)
					return err
				})
				if err != nil {
					return err
				}
				prog.inc()
			}
			return nil
		})
		d.Setup = append(d.Setup, prog.finish())
		if err != nil {
			return fmt.Errorf("send messages: %w", err)
		}
	}

	// The reader is the creator, on a connection of its own.
	reader := creators[0].withHTTP(&http.Client{Transport: newTransport(nil, 1)})
	start := e.mark()
	var prevBatch string
	for _, mode := range []struct {
		name   string
		filter string
		runs   *[]SyncRun
	}{{"all members", fullFilter, &d.Full}, {"lazy members", lazyFilter, &d.Lazy}} {
		for r := range p.reps {
			t0 := time.Now()
			resp, n, err := reader.Sync(ctx, "", mode.filter, 0)
			if err != nil {
				e.errs.Add("initial sync", err)
				return fmt.Errorf("initial sync (%s): %w", mode.name, err)
			}
			run := SyncRun{MS: ms(time.Since(t0)), Bytes: n}
			jr := resp.Rooms.Join[room]
			run.StateEvents = len(jr.State.Events)
			run.Timeline = len(jr.Timeline.Events)
			run.Senders, run.MembersMissing = checkMembers(resp, room)
			prevBatch = jr.Timeline.PrevBatch
			*mode.runs = append(*mode.runs, run)
			e.logf("initial sync %d (%s): %.0f ms, %d bytes, %d state events, %d timeline senders (%d without member event)",
				r+1, mode.name, run.MS, run.Bytes, run.StateEvents, run.Senders, run.MembersMissing)
		}
	}
	if p.messages > 0 {
		if err := d.paginate(ctx, e, reader, room, prevBatch, p); err != nil {
			return err
		}
	}
	end := e.mark()
	e.measure(rep, start, end)

	full, lazy := syncMS(d.Full), syncMS(d.Lazy)
	rep.add("initial sync, all members, median", full.P50, "ms", "lower")
	rep.add("initial sync, all members, max", full.Max, "ms", "lower")
	rep.add("initial sync, all members, size", float64(d.Full[0].Bytes)/1024, "KB", "")
	rep.add("initial sync, all members, state events", float64(d.Full[0].StateEvents), "", "")
	rep.add("initial sync, lazy members, median", lazy.P50, "ms", "lower")
	rep.add("initial sync, lazy members, max", lazy.Max, "ms", "lower")
	rep.add("initial sync, lazy members, size", float64(d.Lazy[0].Bytes)/1024, "KB", "")
	rep.add("initial sync, lazy members, state events", float64(d.Lazy[0].StateEvents), "", "")
	missing := 0
	for _, r := range append(slices.Clone(d.Full), d.Lazy...) {
		missing += r.MembersMissing
	}
	rep.add("initial syncs lacking a sender's member event", float64(missing), "", "lower")
	if p.messages > 0 {
		rep.add(fmt.Sprintf("/messages page (limit %d) p50", p.page), d.PageMS.P50, "ms", "lower")
		rep.add(fmt.Sprintf("/messages page (limit %d) max", p.page), d.PageMS.Max, "ms", "lower")
		rep.add(fmt.Sprintf("/messages total for %d events", d.Paginated), d.TotalMS, "ms", "lower")
	}
	rep.add("fill room joins/s", fill.PerSecond, "joins/s", "higher")
	return nil
}

// checkMembers counts the distinct senders of room's timeline in resp and
// how many of them have no m.room.member event in the state or timeline.
func checkMembers(resp *syncResponse, room string) (senders, missing int) {
	jr := resp.Rooms.Join[room]
	have := make(map[string]bool)
	for _, ev := range jr.State.Events {
		if ev.Type == "m.room.member" && ev.StateKey != nil {
			have[*ev.StateKey] = true
		}
	}
	for _, ev := range jr.Timeline.Events {
		if ev.Type == "m.room.member" && ev.StateKey != nil {
			have[*ev.StateKey] = true
		}
	}
	seen := make(map[string]bool)
	for _, ev := range jr.Timeline.Events {
		if seen[ev.Sender] {
			continue
		}
		seen[ev.Sender] = true
		if !have[ev.Sender] {
			missing++
		}
	}
	return len(seen), missing
}

func syncMS(runs []SyncRun) Summary {
	var v []float64
	for _, r := range runs {
		v = append(v, r.MS)
	}
	return summarize(v)
}

// paginate pages back through the room from token from until it has seen
// p.messages events or the room's start.
func (d *InitialSyncDetails) paginate(ctx context.Context, e *env, c *Client, room, from string, p *initialSyncParams) error {
	const filter = `{"lazy_load_members":true}`
	maxPages := p.messages/p.page*2 + 10 // pages may come back short
	var pages []float64
	t0 := time.Now()
	for d.Paginated < p.messages && len(pages) < maxPages {
		t := time.Now()
		resp, _, err := c.Messages(ctx, room, from, p.page, filter)
		if err != nil {
			e.errs.Add("messages", err)
			return fmt.Errorf("/messages page %d: %w", len(pages)+1, err)
		}
		pages = append(pages, ms(time.Since(t)))
		d.Paginated += len(resp.Chunk)
		if len(resp.Chunk) == 0 || resp.End == "" || resp.End == from {
			break
		}
		from = resp.End
	}
	d.TotalMS = ms(time.Since(t0))
	d.Pages = len(pages)
	d.PageMS = summarize(pages)
	e.logf("/messages: %d events in %d pages, %.0f ms (page %v)", d.Paginated, d.Pages, d.TotalMS, d.PageMS)
	return nil
}
