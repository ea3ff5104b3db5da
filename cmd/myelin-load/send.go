package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

type sendParams struct {
	senders, rooms int
	duration       time.Duration
	events         int
}

func sendFlags(fs *flag.FlagSet) func(context.Context, *env, *Report) error {
	p := &sendParams{}
	fs.IntVar(&p.senders, "senders", 16, "concurrent senders, each a user with its own connection")
	fs.IntVar(&p.rooms, "rooms", 4, "rooms the senders are spread over")
	fs.DurationVar(&p.duration, "duration", 60*time.Second, "how long to send")
	fs.IntVar(&p.events, "events", 0, "stop after this many events in all (0: only -duration bounds the run)")
	return func(ctx context.Context, e *env, rep *Report) error {
		if err := errors.Join(
			checkRange("-senders", p.senders, 1, 10000),
			checkRange("-rooms", p.rooms, 1, p.senders),
			checkRange("-events", p.events, 0, 10_000_000),
			checkDuration("-duration", p.duration, time.Second, 24*time.Hour),
		); err != nil {
			return err
		}
		return runSend(ctx, e, rep, p)
	}
}

func checkDuration(flag string, d, lo, hi time.Duration) error {
	if d < lo || d > hi {
		return fmt.Errorf("%s %v: must be in [%v, %v]", flag, d, lo, hi)
	}
	return nil
}

// SendDetails is the send scenario's outcome.
type SendDetails struct {
	Setup    []Phase `json:"setup"`
	OK       int64   `json:"ok"`
	Failed   int64   `json:"failed"`
	Seconds  float64 `json:"seconds"`
	PerSec   float64 `json:"events_per_second"`
	Latency  Summary `json:"latency"`
	PerRoom  []int64 `json:"ok_per_room"`
	Senders  int     `json:"senders"`
	RoomsCnt int     `json:"rooms"`
}

func runSend(ctx context.Context, e *env, rep *Report, p *sendParams) error {
	rep.Name = fmt.Sprintf("send S=%d R=%d", p.senders, p.rooms)
	d := &SendDetails{Senders: p.senders, RoomsCnt: p.rooms}
	rep.Details = d
	users, ph, err := e.registerUsers(ctx, "sender", p.senders)
	d.Setup = append(d.Setup, ph)
	if err != nil {
		return err
	}
	rooms, err := e.createRooms(ctx, users[:p.rooms])
	if err != nil {
		return err
	}
	// Senders 0..R-1 created the rooms; the others join theirs.
	ph, err = e.joinAll(ctx, "join senders", users[p.rooms:], rooms, func(i int) int { return (i + p.rooms) % p.rooms }, e.opts.concurrency)
	d.Setup = append(d.Setup, ph)
	if err != nil {
		return err
	}

	e.logf("sending from %d senders into %d rooms for %v", p.senders, p.rooms, p.duration)
	var (
		count     atomic.Int64
		failed    atomic.Int64
		perRoom   = make([]atomic.Int64, p.rooms)
		latencies = make([][]float64, p.senders)
		wg        sync.WaitGroup
	)
	phaseCtx, cancel := context.WithTimeout(ctx, p.duration)
	defer cancel()
	start := e.mark()
	for i, u := range users {
		c := u.withHTTP(&http.Client{Transport: newTransport(nil, 1)})
		room := i % p.rooms
		wg.Add(1)
		go func() {
			defer wg.Done()
			for phaseCtx.Err() == nil {
				n := count.Add(1)
				if p.events > 0 && n > int64(p.events) {
					return
				}
				content := loadContent{MsgType: "m.text", Body: fmt.Sprintf("load message %d", n), Seq: n, SentUS: time.Now().UnixMicro()}
				t0 := time.Now()
				// Sends run on ctx, not phaseCtx: the last ones finish and
				// are counted rather than cut off at the deadline.
				_, err := c.Send(ctx, rooms[room], fmt.Sprintf("%s-%d", e.runID, n), content)
				if err != nil {
					if ctx.Err() != nil {
						return
					}
					failed.Add(1)
					e.errs.Add("send", err)
					continue
				}
				latencies[i] = append(latencies[i], ms(time.Since(t0)))
				perRoom[room].Add(1)
			}
		}()
	}
	wg.Wait()
	end := e.mark()
	e.measure(rep, start, end)

	var all []float64
	for _, l := range latencies {
		all = append(all, l...)
	}
	d.OK = int64(len(all))
	d.Failed = failed.Load()
	d.Seconds = end.Sub(start).Seconds()
	d.PerSec = float64(d.OK) / d.Seconds
	d.Latency = summarize(all)
	for i := range perRoom {
		d.PerRoom = append(d.PerRoom, perRoom[i].Load())
	}
	rep.add("events/s", d.PerSec, "ev/s", "higher")
	rep.addLatency("send latency", d.Latency)
	rep.add("events sent", float64(d.OK), "", "")
	rep.add("send errors", float64(d.Failed), "", "lower")
	return nil
}
