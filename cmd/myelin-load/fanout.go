package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
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
	// jitter sends each event at a random instant of its slot rather than
	// at its start, so that the sends meet every phase of whatever the
	// server does periodically.
	jitter bool
}

func fanoutFlags(fs *flag.FlagSet) func(context.Context, *env, *Report) error {
	p := &fanoutParams{}
	p.register(fs, 1000, 5, 60*time.Second, 2*time.Second)
	return func(ctx context.Context, e *env, rep *Report) error {
		if err := p.validate(); err != nil {
			return err
		}
		return runFanout(ctx, e, rep, p)
	}
}

// register adds the flags of fanout (which storm shares) with the given
// defaults.
func (p *fanoutParams) register(fs *flag.FlagSet, users int, rate float64, duration, settle time.Duration) {
	fs.IntVar(&p.users, "users", users, "receivers long-polling /sync (M)")
	fs.IntVar(&p.roomSize, "room-size", 100, "receivers per room")
	fs.Float64Var(&p.rate, "rate", rate, "events sent per second, over all rooms (E)")
	fs.DurationVar(&p.duration, "duration", duration, "how long to send (D)")
	fs.DurationVar(&p.grace, "grace", 10*time.Second, "how long after the last send receivers may still see events")
	fs.DurationVar(&p.poll, "poll-timeout", 30*time.Second, "the /sync timeout parameter of each long-poll")
	fs.DurationVar(&p.settle, "settle", settle, "pause between all receivers polling and the first send")
	fs.DurationVar(&p.quietMax, "quiet-max", 2*time.Minute, "with -pid: longest wait, after all receivers poll, for the server to quiet down (0: none)")
	fs.Float64Var(&p.quietCores, "quiet-cores", 0.5, "with -pid: the server is quiet when it used less CPU than this (cores) for 3 s")
	fs.StringVar(&p.filter, "filter", defaultSyncFilter, "the /sync filter (JSON or a filter ID)")
	fs.IntVar(&p.inflight, "max-inflight", 64, "sends in flight at most; beyond that the send rate falls behind")
}

func (p *fanoutParams) validate() error {
	err := errors.Join(
		checkRange("-users", p.users, 1, 50000),
		checkRange("-room-size", p.roomSize, 1, 50000),
		checkRange("-max-inflight", p.inflight, 1, 10000),
		checkDuration("-duration", p.duration, time.Second, 24*time.Hour),
		checkDuration("-grace", p.grace, 0, time.Hour),
		checkDuration("-poll-timeout", p.poll, time.Second, 10*time.Minute),
		checkDuration("-settle", p.settle, 0, time.Hour),
		checkDuration("-quiet-max", p.quietMax, 0, time.Hour),
	)
	if p.rate <= 0 || p.rate > 10000 {
		err = errors.Join(err, fmt.Errorf("-rate %v: must be in (0, 10000]", p.rate))
	}
	return err
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
	room   int
	at     time.Time // when the send request started
	acked  bool
	sendMS float64 // the send request's latency, once acked
}

// fanoutSetup is what fanout and storm build before measuring: a sender
// per room, the receivers, their rooms, and the receivers joined.
type fanoutSetup struct {
	senders, receivers []*Client
	rooms              []string
}

// roomOf is the room receiver i is in.
func (s *fanoutSetup) roomOf(i int) int { return i % len(s.rooms) }

// setUpFanout registers the senders and receivers, creates the rooms and joins
// the receivers to them, recording each step in d.
func (e *env) setUpFanout(ctx context.Context, p *fanoutParams, d *FanoutDetails) (*fanoutSetup, error) {
	s, err := e.registerSenders(ctx, p, d)
	if err != nil {
		return nil, err
	}
	var ph Phase
	s.receivers, ph, err = e.registerUsers(ctx, "recv", p.users)
	d.Setup = append(d.Setup, ph)
	if err != nil {
		return nil, err
	}
	if s.rooms, err = e.createRooms(ctx, s.senders); err != nil {
		return nil, err
	}
	ph, err = e.joinAll(ctx, "join receivers", s.receivers, s.rooms, s.roomOf, e.opts.concurrency)
	d.Setup = append(d.Setup, ph)
	if err != nil {
		return nil, err
	}
	return s, nil
}

// registerSenders sizes the run's rooms (p.users receivers in rooms of
// p.roomSize) and registers a sender for each, here.
func (e *env) registerSenders(ctx context.Context, p *fanoutParams, d *FanoutDetails) (*fanoutSetup, error) {
	nRooms := (p.users + p.roomSize - 1) / p.roomSize
	d.Rooms, d.Receivers = nRooms, p.users
	s := &fanoutSetup{}
	var ph Phase
	var err error
	s.senders, ph, err = e.registerUsers(ctx, "fsender", nRooms)
	d.Setup = append(d.Setup, ph)
	if err != nil {
		return nil, err
	}
	return s, nil
}

// startPolling starts the receivers' long-polls in worker processes and
// waits until all poll.
func (e *env) startPolling(ctx context.Context, p *fanoutParams, s *fanoutSetup, d *FanoutDetails, restart bool) (*workers, error) {
	ws, err := e.startWorkers(ctx, s.receivers, p.filter, p.poll, restart)
	if err != nil {
		return nil, err
	}
	ready, err := ws.waitReady(ctx)
	if err != nil {
		ws.kill()
		return nil, err
	}
	d.Polling = ready.InitialOK
	d.InitialSync = summarize(ready.InitialMS)
	e.logf("%d receivers polling (%d initial syncs failed), initial sync %v", ready.InitialOK, ready.InitialFailed, d.InitialSync)
	return ws, nil
}

func runFanout(ctx context.Context, e *env, rep *Report, p *fanoutParams) error {
	rep.Name = fmt.Sprintf("fanout M=%d E=%g/s", p.users, p.rate)
	d := &FanoutDetails{}
	rep.Details = d
	s, err := e.setUpFanout(ctx, p, d)
	if err != nil {
		return err
	}
	ws, err := e.startPolling(ctx, p, s, d, false)
	if err != nil {
		return err
	}
	sleepCtx(ctx, p.settle)
	// Clients coming online make the server tell their rooms' members (a
	// presence storm of M x room size wake-ups on a server with presence);
	// deliveries are measured in the steady state after it.
	d.QuietS = e.waitQuiet(ctx, p.quietCores, p.quietMax)

	e.logf("sending %g events/s into %d rooms for %v", p.rate, len(s.rooms), p.duration)
	run, err := e.sendAndCollect(ctx, rep, p, ws, s, d, s.senders, s.rooms)
	if err != nil {
		return err
	}
	results := run.results
	var latencies []float64
	for _, r := range results {
		latencies = append(latencies, r.Latencies...)
	}
	d.Latency = summarize(latencies)

	rep.addLatency("delivery latency", d.Latency)
	d.report(rep)
	return nil
}

// collect tallies the sends and what the workers saw, but for the
// delivery latencies, which fanout and storm summarise differently.
// fanoutRun is the measured part of a fanout-shaped run.
type fanoutRun struct {
	start, end time.Time
	sent       []sentEvent
	results    []workerResult
}

// sendAndCollect sends into rooms at the scenario's rate, waits the grace
// period for deliveries, measures the server over that span, stops the
// receivers and accounts their deliveries in d.
func (e *env) sendAndCollect(ctx context.Context, rep *Report, p *fanoutParams, ws *workers, s *fanoutSetup, d *FanoutDetails, senders []*Client, rooms []string) (*fanoutRun, error) {
	run := &fanoutRun{start: e.mark()}
	run.sent = e.sendAtRate(ctx, p, senders, rooms)
	e.logf("sent %d events; waiting %v for deliveries", len(run.sent), p.grace)
	sleepCtx(ctx, p.grace)
	run.end = e.mark()
	e.measure(rep, run.start, run.end)
	var err error
	if run.results, err = ws.stop(ctx); err != nil {
		return nil, err
	}
	d.collect(e, run.sent, s, run.results, p.duration)
	return run, nil
}

func (d *FanoutDetails) collect(e *env, sent []sentEvent, s *fanoutSetup, results []workerResult, duration time.Duration) {
	d.Attempted = int64(len(sent))
	var sendLat []float64
	for _, ev := range sent {
		if ev.acked {
			d.Acked++
			sendLat = append(sendLat, ev.sendMS)
		} else {
			d.SendFailed++
		}
	}
	d.SendRate = float64(d.Acked) / duration.Seconds()
	d.SendLatency = summarize(sendLat)
	procs := len(results)
	for w, r := range results {
		e.errs.Merge(r.Errors, r.Samples)
		d.Polls += r.Polls
		d.Limited += r.Limited
		for k, seen := range r.Seen {
			recv := w + k*procs // clients were dealt out round-robin
			d.account(sent, s.roomOf(recv), s.receivers[recv].UserID, seen)
		}
	}
}

// report adds the metrics fanout and storm share, after their latencies.
func (d *FanoutDetails) report(rep *Report) {
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

// sendAtRate sends events on a fixed schedule, event k at start + k/rate
// (with p.jitter, at a random instant of [k/rate, (k+1)/rate)), room k mod
// rooms, until the duration is over. It returns every event
// indexed by its sequence number, with its send latency once acknowledged.
func (e *env) sendAtRate(ctx context.Context, p *fanoutParams, senders []*Client, rooms []string) []sentEvent {
	var (
		mu   sync.Mutex
		sent []sentEvent
		wg   sync.WaitGroup
		sem  = make(chan struct{}, p.inflight)
	)
	// The senders share a pool of connections, as a bridge or bot might.
	hc := &http.Client{Transport: newTransport(nil, p.inflight)}
	interval := time.Duration(float64(time.Second) / p.rate)
	start := time.Now()
	end := start.Add(p.duration)
	for seq := 0; ; seq++ {
		at := start.Add(time.Duration(seq) * interval)
		if p.jitter {
			at = at.Add(rand.N(interval))
		}
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
		sent = append(sent, sentEvent{room: room, at: now})
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
			sent[seq].sendMS = ms(time.Since(now))
			mu.Unlock()
		}()
	}
	wg.Wait()
	return sent
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
