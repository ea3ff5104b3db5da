package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math"
	"time"
)

// The storm scenario: every receiver's long-poll starts at the same
// instant, as when a server restarts and all its clients reconnect, and
// the clients in rooms without traffic then time out together every poll
// timeout, as long as the server keeps them in step. Events go to a few
// active rooms throughout; deliveries sent while a herd of timeouts falls
// (the windows around restart + k x poll timeout) are reported apart from
// the rest.

type stormParams struct {
	fanoutParams
	activeRooms   int
	before, after time.Duration
}

func stormFlags(fs *flag.FlagSet) func(context.Context, *env, *Report) error {
	// Sent at random instants, the events meet the herd's timeouts at
	// every phase, not at the same point of each window.
	p := &stormParams{fanoutParams: fanoutParams{jitter: true}}
	// Ten windows: at 1 event/s, a window of 4 s holds four events and
	// the half second after the herd's timeouts one in eight of them, so
	// three windows often see none there.
	p.register(fs, 2000, 1, 300*time.Second, 5*time.Second)
	fs.Lookup("settle").Usage = "pause between the restart and the first send"
	fs.IntVar(&p.activeRooms, "active-rooms", 1, "rooms that get the events; the others stay quiet, so their clients only time out")
	fs.DurationVar(&p.before, "window-before", 3*time.Second, "a timeout window starts this long before restart + k x poll timeout (a server may end a poll early, never late)")
	fs.DurationVar(&p.after, "window-after", time.Second, "and ends this long after it")
	return func(ctx context.Context, e *env, rep *Report) error {
		if err := p.validate(); err != nil {
			return err
		}
		return runStorm(ctx, e, rep, p)
	}
}

func (p *stormParams) validate() error {
	rooms := (p.users + p.roomSize - 1) / p.roomSize
	err := errors.Join(
		p.fanoutParams.validate(),
		checkRange("-active-rooms", p.activeRooms, 1, rooms),
		checkDuration("-window-before", p.before, 0, time.Hour),
		checkDuration("-window-after", p.after, 0, time.Hour),
	)
	if p.before+p.after >= p.poll {
		err = errors.Join(err, fmt.Errorf("-window-before %v and -window-after %v: together must be shorter than -poll-timeout %v", p.before, p.after, p.poll))
	}
	// At least one whole window while sending, or there is nothing to
	// compare.
	w := stormWindows{period: p.poll, before: p.before, after: p.after}
	if n := len(w.within(p.settle, p.settle+p.duration)); n == 0 {
		err = errors.Join(err, fmt.Errorf("-settle %v and -duration %v: sending covers no whole timeout window (the first is %v to %v after the restart)",
			p.settle, p.duration, p.poll-p.before, p.poll+p.after))
	}
	return err
}

// StormDetails is the storm scenario's outcome.
type StormDetails struct {
	FanoutDetails
	ActiveRooms int       `json:"active_rooms"`
	Restart     time.Time `json:"restart"`
	// Windows are the timeout windows wholly inside the sending, as
	// offsets from the restart.
	Windows   []stormWindow `json:"windows"`
	LatencyIn Summary       `json:"delivery_latency_in_windows"`
	// ByOffset breaks LatencyIn down by when, in its window, the event
	// was sent: where the herd hurts.
	ByOffset []offsetLatency `json:"delivery_latency_by_offset"`
	// ByPeriod is the delivery latency of the events sent in each poll
	// timeout after the restart, inside windows or not: whether the run
	// drifts.
	ByPeriod       []Summary `json:"delivery_latency_by_period"`
	LatencyOut     Summary   `json:"delivery_latency_outside"`
	SendLatencyIn  Summary   `json:"send_latency_in_windows"`
	SendLatencyOut Summary   `json:"send_latency_outside"`
	// Empty answers (timed-out long-polls) from the restart to the end.
	Timeouts int64 `json:"timeouts"`
	// TimeoutPeak is the most empty answers within one 250 ms, and when
	// that span began (after the restart).
	TimeoutPeak   int64   `json:"timeout_peak_250ms"`
	TimeoutPeakAt float64 `json:"timeout_peak_at_s"`
}

// offsetLatency is the delivery latency of the events sent from FromS to
// ToS (seconds) after restart + k x poll timeout, in every window.
type offsetLatency struct {
	FromS   float64 `json:"from_s"`
	ToS     float64 `json:"to_s"`
	Latency Summary `json:"latency"`
}

// stormWindow is one timeout window and the timed-out polls answered in
// it.
type stormWindow struct {
	K        int     `json:"k"`
	FromS    float64 `json:"from_s"`
	ToS      float64 `json:"to_s"`
	Timeouts int64   `json:"timeouts"`
}

func runStorm(ctx context.Context, e *env, rep *Report, p *stormParams) error {
	rep.Name = fmt.Sprintf("storm M=%d E=%g/s", p.users, p.rate)
	d := &StormDetails{ActiveRooms: p.activeRooms}
	rep.Details = d
	s, err := e.setUpFanout(ctx, &p.fanoutParams, &d.FanoutDetails)
	if err != nil {
		return err
	}
	ws, err := e.startPolling(ctx, &p.fanoutParams, s, &d.FanoutDetails, true)
	if err != nil {
		return err
	}
	// Let the presence changes of everyone coming online pass first: the
	// herd is the restart's, not the setup's.
	d.QuietS = e.waitQuiet(ctx, p.quietCores, p.quietMax)

	restart := time.Now().Add(time.Second).Truncate(100 * time.Millisecond)
	if err := ws.restartAt(restart); err != nil {
		ws.kill()
		return err
	}
	d.Restart = restart.UTC()
	e.logf("every long-poll restarts at %s; sending %g events/s into %d of %d rooms from %v later, for %v",
		restart.Format("15:04:05.0"), p.rate, p.activeRooms, len(s.rooms), p.settle, p.duration)
	sleepCtx(ctx, time.Until(restart.Add(p.settle)))
	run, err := e.sendAndCollect(ctx, rep, &p.fanoutParams, ws, s, &d.FanoutDetails, s.senders[:p.activeRooms], s.rooms[:p.activeRooms])
	if err != nil {
		return err
	}
	start, end, sent, results := run.start, run.end, run.sent, run.results

	w := stormWindows{start: restart, period: p.poll, before: p.before, after: p.after}
	sendFrom, sendTo := start.Sub(restart), start.Sub(restart)+p.duration
	ks := w.within(sendFrom, sendTo)
	var latencies []float64
	var in, out []float64
	bins := make([][]float64, w.bins(offsetBin))
	for _, r := range results {
		latencies = append(latencies, r.Latencies...)
		i, o := w.split(sent, r.FirstSeq, r.Latencies, ks, offsetBin, bins)
		in, out = append(in, i...), append(out, o...)
	}
	var periods [][]float64
	for _, r := range results {
		for i, seq := range r.FirstSeq {
			if seq < 0 || seq >= int64(len(sent)) || i >= len(r.Latencies) {
				continue
			}
			k := int(sent[seq].at.Sub(restart) / p.poll)
			for len(periods) <= k {
				periods = append(periods, nil)
			}
			periods[k] = append(periods[k], r.Latencies[i])
		}
	}
	for k, l := range periods {
		d.ByPeriod = append(d.ByPeriod, summarize(l))
		e.logf("sent %v to %v after the restart: delivery %v", time.Duration(k)*p.poll, time.Duration(k+1)*p.poll, d.ByPeriod[k])
	}
	for b, l := range bins {
		from := -w.before + time.Duration(b)*offsetBin
		o := offsetLatency{FromS: from.Seconds(), ToS: min(from+offsetBin, w.after).Seconds(), Latency: summarize(l)}
		d.ByOffset = append(d.ByOffset, o)
		e.logf("sent %+.2fs to %+.2fs from a timeout: delivery %v", o.FromS, o.ToS, o.Latency)
	}
	d.Latency = summarize(latencies)
	d.LatencyIn, d.LatencyOut = summarize(in), summarize(out)
	var sendIn, sendOut []float64
	for _, ev := range sent {
		if !ev.acked {
			continue
		}
		if w.index(ev.at, ks) > 0 {
			sendIn = append(sendIn, ev.sendMS)
		} else {
			sendOut = append(sendOut, ev.sendMS)
		}
	}
	d.SendLatencyIn, d.SendLatencyOut = summarize(sendIn), summarize(sendOut)

	empty := map[int64]int64{}
	for _, r := range results {
		for b, n := range r.EmptyAt {
			empty[b] += n
		}
	}
	tl := timeouts{buckets: empty, width: emptyBucket}
	d.Timeouts = tl.count(restart, end)
	var peakAt time.Time
	d.TimeoutPeak, peakAt = tl.peak(restart, end, 250*time.Millisecond)
	d.TimeoutPeakAt = peakAt.Sub(restart).Seconds()
	for _, k := range ks {
		from, to := w.bounds(k)
		d.Windows = append(d.Windows, stormWindow{K: k, FromS: from.Sub(restart).Seconds(), ToS: to.Sub(restart).Seconds(), Timeouts: tl.count(from, to)})
	}

	rep.addLatency("delivery latency in timeout windows", d.LatencyIn)
	rep.addLatency("delivery latency outside them", d.LatencyOut)
	rep.addLatency("delivery latency, all", d.Latency)
	rep.add("deliveries in timeout windows", float64(d.LatencyIn.Count), "", "")
	rep.add("timeout windows", float64(len(ks)), "", "")
	rep.addLatency("send latency in timeout windows", d.SendLatencyIn)
	rep.addLatency("send latency outside them", d.SendLatencyOut)
	rep.add("timed-out polls after the restart", float64(d.Timeouts), "", "")
	rep.add("timed-out polls, most in 250 ms", float64(d.TimeoutPeak), "", "lower")
	d.report(rep)
	return nil
}

// stormWindows are the spans in which the timeouts of a herd of
// long-polls that all started at start fall: around start + k x period,
// from before ahead of it (a server may end a long-poll early, never late)
// to after it.
type stormWindows struct {
	start         time.Time
	period        time.Duration
	before, after time.Duration
}

// bounds returns window k's span, [from, to).
func (w stormWindows) bounds(k int) (from, to time.Time) {
	at := w.start.Add(time.Duration(k) * w.period)
	return at.Add(-w.before), at.Add(w.after)
}

// within returns the windows wholly inside [from, to), offsets from the
// start.
func (w stormWindows) within(from, to time.Duration) []int {
	var ks []int
	for k := 1; time.Duration(k)*w.period+w.after <= to; k++ {
		if time.Duration(k)*w.period-w.before >= from {
			ks = append(ks, k)
		}
	}
	return ks
}

// index returns the window among ks that t falls in, or 0 for none.
func (w stormWindows) index(t time.Time, ks []int) int {
	k := int(math.Round(float64(t.Sub(w.start)) / float64(w.period)))
	for _, kk := range ks {
		if kk != k {
			continue
		}
		if from, to := w.bounds(k); !t.Before(from) && t.Before(to) {
			return k
		}
	}
	return 0
}

// offsetBin is the width of the slices of a window that the report
// breaks the latency down by.
const offsetBin = 250 * time.Millisecond

// bins is how many slices of width a window has.
func (w stormWindows) bins(width time.Duration) int {
	return int((w.before + w.after + width - 1) / width)
}

// split sorts delivery latencies by whether their event was sent inside
// one of the windows ks; seqs[i] is the event of latencies[i]. Those
// inside are also added to bins[j], j the slice of width of the window
// that they were sent in. A delivery of an event not in sent (which
// account counts as unexpected) is left out.
func (w stormWindows) split(sent []sentEvent, seqs []int64, latencies []float64, ks []int, width time.Duration, bins [][]float64) (in, out []float64) {
	for i, seq := range seqs {
		if seq < 0 || seq >= int64(len(sent)) || i >= len(latencies) {
			continue
		}
		at := sent[seq].at
		k := w.index(at, ks)
		if k == 0 {
			out = append(out, latencies[i])
			continue
		}
		in = append(in, latencies[i])
		from, _ := w.bounds(k)
		if j := int(at.Sub(from) / width); j < len(bins) {
			bins[j] = append(bins[j], latencies[i])
		}
	}
	return in, out
}

// timeouts are counts of timed-out long-polls by the time bucket they
// were answered in (Unix time / width).
type timeouts struct {
	buckets map[int64]int64
	width   time.Duration
}

func (t timeouts) bucket(at time.Time) int64 { return at.UnixMicro() / t.width.Microseconds() }

// count returns the timeouts answered in [from, to), to the bucket.
func (t timeouts) count(from, to time.Time) int64 {
	var n int64
	for b, c := range t.buckets {
		if b >= t.bucket(from) && b < t.bucket(to) {
			n += c
		}
	}
	return n
}

// peak returns the most timeouts answered within any span of the given
// length (whole buckets) inside [from, to), and when that span began.
func (t timeouts) peak(from, to time.Time, span time.Duration) (int64, time.Time) {
	n := max(1, int64(span/t.width))
	first, last := t.bucket(from), t.bucket(to)
	var best, sum int64
	bestAt := first
	for b := first; b < last; b++ {
		sum += t.buckets[b]
		if b-n >= first {
			sum -= t.buckets[b-n]
		}
		if sum > best {
			best, bestAt = sum, max(first, b-n+1)
		}
	}
	return best, time.UnixMicro(bestAt * t.width.Microseconds())
}
