package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"sync"
	"time"
)

// defaultSyncFilter is what a typical client (Element Web) asks /sync for:
// lazy-loaded members and a short timeline.
const defaultSyncFilter = `{"room":{"state":{"lazy_load_members":true},"timeline":{"limit":20}}}`

type fanoutParams struct {
	users, roomSize int
	rate            float64
	duration, grace time.Duration
	poll, settle    time.Duration
	quietMax        time.Duration
	quietCores      float64
	filter          string
	inflight        int
}

func fanoutFlags(fs *flag.FlagSet) func(context.Context, *env, *Report) error {
	p := &fanoutParams{}
	fs.IntVar(&p.users, "users", 1000, "receivers long-polling /sync (M)")
	fs.IntVar(&p.roomSize, "room-size", 100, "receivers per room")
	fs.Float64Var(&p.rate, "rate", 5, "events sent per second, over all rooms (E)")
	fs.DurationVar(&p.duration, "duration", 60*time.Second, "how long to send (D)")
	fs.DurationVar(&p.grace, "grace", 10*time.Second, "how long after the last send receivers may still see events")
	fs.DurationVar(&p.poll, "poll-timeout", 30*time.Second, "the /sync timeout parameter of each long-poll")
	fs.DurationVar(&p.settle, "settle", 2*time.Second, "pause between all receivers polling and the first send")
	fs.DurationVar(&p.quietMax, "quiet-max", 2*time.Minute, "with -pid: longest wait, after all receivers poll, for the server to quiet down (0: none)")
	fs.Float64Var(&p.quietCores, "quiet-cores", 0.5, "with -pid: the server is quiet when it used less CPU than this (cores) for 3 s")
	fs.StringVar(&p.filter, "filter", defaultSyncFilter, "the /sync filter (JSON or a filter ID)")
	fs.IntVar(&p.inflight, "max-inflight", 64, "sends in flight at most; beyond that the send rate falls behind")
	return func(ctx context.Context, e *env, rep *Report) error {
		if err := errors.Join(
			checkRange("-users", p.users, 1, 50000),
			checkRange("-room-size", p.roomSize, 1, 50000),
			checkRange("-max-inflight", p.inflight, 1, 10000),
			checkDuration("-duration", p.duration, time.Second, 24*time.Hour),
			checkDuration("-grace", p.grace, 0, time.Hour),
			checkDuration("-poll-timeout", p.poll, time.Second, 10*time.Minute),
			checkDuration("-settle", p.settle, 0, time.Hour),
			checkDuration("-quiet-max", p.quietMax, 0, time.Hour),
		); err != nil {
			return err
		}
		if p.rate <= 0 || p.rate > 10000 {
			return fmt.Errorf("-rate %v: must be in (0, 10000]", p.rate)
		}
		return runFanout(ctx, e, rep, p)
	}
}

// FanoutDetails is the fanout scenario's outcome.
type FanoutDetails struct {
	Setup       []Phase `json:"setup"`
	QuietS      float64 `json:"quiet_s"` // wait after all polled, for the server's CPU to settle
	Rooms       int     `json:"rooms"`
	Receivers   int     `json:"receivers"`
	Polling     int     `json:"polling"` // receivers whose initial sync worked
	InitialSync Summary `json:"initial_sync"`

	Attempted    int64   `json:"sends_attempted"`
	Acked        int64   `json:"sends_acked"`
	SendFailed   int64   `json:"sends_failed"`
	SendRate     float64 `json:"send_rate"` // achieved, acked events/s
	SendLatency  Summary `json:"send_latency"`
	Expected     int64   `json:"deliveries_expected"`
	Delivered    int64   `json:"deliveries_seen"`
	Missing      int64   `json:"deliveries_missing"`
	Duplicates   int64   `json:"duplicates"`
	Unexpected   int64   `json:"unexpected"` // seen, but not acknowledged to the sender
	Latency      Summary `json:"delivery_latency"`
	Polls        int64   `json:"polls"`
	Limited      int64   `json:"limited_timelines"`
	MissingUsers int     `json:"receivers_missing_some"`
	// A few receivers with missing deliveries, as evidence.
	MissingSamples []string `json:"missing_samples,omitempty"`
}

type sentEvent struct {
	room  int
	acked bool
}

func runFanout(ctx context.Context, e *env, rep *Report, p *fanoutParams) error {
	rep.Name = fmt.Sprintf("fanout M=%d E=%g/s", p.users, p.rate)
	nRooms := (p.users + p.roomSize - 1) / p.roomSize
	d := &FanoutDetails{Rooms: nRooms, Receivers: p.users}
	rep.Details = d

	senders, ph, err := e.registerUsers(ctx, "fsender", nRooms)
	d.Setup = append(d.Setup, ph)
	if err != nil {
		return err
	}
	receivers, ph, err := e.registerUsers(ctx, "recv", p.users)
	d.Setup = append(d.Setup, ph)
	if err != nil {
		return err
	}
	rooms, err := e.createRooms(ctx, senders)
	if err != nil {
		return err
	}
	roomOf := func(i int) int { return i % nRooms }
	ph, err = e.joinAll(ctx, "join receivers", receivers, rooms, roomOf, e.opts.concurrency)
	d.Setup = append(d.Setup, ph)
	if err != nil {
		return err
	}

	ws, err := e.startWorkers(ctx, receivers, p.filter, p.poll)
	if err != nil {
		return err
	}
	ready, err := ws.waitReady(ctx)
	if err != nil {
		ws.kill()
		return err
	}
	d.Polling = ready.InitialOK
	d.InitialSync = summarize(ready.InitialMS)
	e.logf("%d receivers polling (%d initial syncs failed), initial sync %v", ready.InitialOK, ready.InitialFailed, d.InitialSync)
	sleepCtx(ctx, p.settle)
	// Clients coming online make the server tell their rooms' members (a
	// presence storm of M x room size wake-ups on a server with presence);
	// deliveries are measured in the steady state after it.
	d.QuietS = e.waitQuiet(ctx, p.quietCores, p.quietMax)

	e.logf("sending %g events/s into %d rooms for %v", p.rate, nRooms, p.duration)
	start := e.mark()
	sent, sendLat := e.sendAtRate(ctx, p, senders, rooms)
	e.logf("sent %d events; waiting %v for deliveries", len(sent), p.grace)
	sleepCtx(ctx, p.grace)
	end := e.mark()
	e.measure(rep, start, end)
	results, err := ws.stop(ctx)
	if err != nil {
		return err
	}

	d.Attempted = int64(len(sent))
	for _, s := range sent {
		if s.acked {
			d.Acked++
		} else {
			d.SendFailed++
		}
	}
	d.SendRate = float64(d.Acked) / p.duration.Seconds()
	d.SendLatency = summarize(sendLat)
	var latencies []float64
	procs := len(results)
	for w, r := range results {
		e.errs.Merge(r.Errors, r.Samples)
		d.Polls += r.Polls
		d.Limited += r.Limited
		latencies = append(latencies, r.Latencies...)
		for k, seen := range r.Seen {
			recv := w + k*procs // clients were dealt out round-robin
			d.account(sent, roomOf(recv), receivers[recv].UserID, seen)
		}
	}
	d.Latency = summarize(latencies)

	rep.addLatency("delivery latency", d.Latency)
	rep.add("deliveries expected", float64(d.Expected), "", "")
	rep.add("missing deliveries", float64(d.Missing), "", "lower")
	rep.add("duplicate deliveries", float64(d.Duplicates), "", "lower")
	rep.add("unexpected deliveries", float64(d.Unexpected), "", "lower")
	rep.add("send rate achieved", d.SendRate, "ev/s", "higher")
	rep.addLatency("send latency", d.SendLatency)
	rep.add("send errors", float64(d.SendFailed), "", "lower")
	rep.add("receivers polling", float64(d.Polling), "", "higher")
	rep.add("wait for the server to quiet", d.QuietS, "s", "")
	rep.add("initial sync p50", d.InitialSync.P50, "ms", "lower")
	rep.add("sync responses", float64(d.Polls), "", "")
	return nil
}

// account compares what one receiver in room saw with what was sent.
func (d *FanoutDetails) account(sent []sentEvent, room int, user string, seen []int64) {
	counts := make(map[int64]int, len(seen))
	for _, s := range seen {
		counts[s]++
	}
	var missing int64
	for seq, s := range sent {
		if s.room != room || !s.acked {
			continue
		}
		d.Expected++
		if counts[int64(seq)] > 0 {
			d.Delivered++
		} else {
			missing++
		}
	}
	for seq, n := range counts {
		d.Duplicates += int64(n - 1)
		if seq < 0 || seq >= int64(len(sent)) || !sent[seq].acked || sent[seq].room != room {
			d.Unexpected++
		}
	}
	d.Missing += missing
	if missing > 0 {
		d.MissingUsers++
		if len(d.MissingSamples) < 10 {
			d.MissingSamples = append(d.MissingSamples, fmt.Sprintf("%s in room #%d missed %d events", user, room, missing))
		}
	}
}

// sendAtRate sends events on a fixed schedule, event k at start + k/rate,
// room k mod rooms, until the duration is over. It returns every event
// indexed by its sequence number, and the acknowledged sends' latencies.
func (e *env) sendAtRate(ctx context.Context, p *fanoutParams, senders []*Client, rooms []string) ([]sentEvent, []float64) {
	var (
		mu        sync.Mutex
		sent      []sentEvent
		latencies []float64
		wg        sync.WaitGroup
		sem       = make(chan struct{}, p.inflight)
	)
	// The senders share a pool of connections, as a bridge or bot might.
	hc := &http.Client{Transport: newTransport(nil, p.inflight)}
	interval := time.Duration(float64(time.Second) / p.rate)
	start := time.Now()
	end := start.Add(p.duration)
	for seq := 0; ; seq++ {
		at := start.Add(time.Duration(seq) * interval)
		if !at.Before(end) || sleepCtx(ctx, time.Until(at)) != nil {
			break
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		room := seq % len(rooms)
		c := senders[room].withHTTP(hc)
		now := time.Now()
		mu.Lock()
		sent = append(sent, sentEvent{room: room})
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			content := loadContent{MsgType: "m.text", Body: fmt.Sprintf("fanout %d", seq), Seq: int64(seq), SentUS: now.UnixMicro()}
			_, err := c.Send(ctx, rooms[room], fmt.Sprintf("%s-f%d", e.runID, seq), content)
			if err != nil {
				e.errs.Add("send", err)
				return
			}
			mu.Lock()
			sent[seq].acked = true
			latencies = append(latencies, ms(time.Since(now)))
			mu.Unlock()
		}()
	}
	wg.Wait()
	return sent, latencies
}

// waitQuiet waits until the server used less than cores of CPU over the
// last 3 s, at most maxWait, and returns the seconds waited. Without a pid
// to sample it does not wait.
func (e *env) waitQuiet(ctx context.Context, cores float64, maxWait time.Duration) float64 {
	if e.server == nil || maxWait <= 0 {
		return 0
	}
	start := time.Now()
	for ctx.Err() == nil {
		now := e.server.Mark()
		if u := e.server.Window(now.Add(-3*time.Second), now); now.Sub(start) >= 3*time.Second && u.Samples >= 2 && u.AvgCores < cores {
			e.logf("server quiet (%.2f cores) after %.0fs", u.AvgCores, now.Sub(start).Seconds())
			return now.Sub(start).Seconds()
		}
		if now.Sub(start) >= maxWait {
			e.logf("server still busy after %v; sending anyway", maxWait)
			return now.Sub(start).Seconds()
		}
		sleepCtx(ctx, time.Second)
	}
	return time.Since(start).Seconds()
}
