package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"time"
)

// Clients that hold long-polling /sync connections run in worker
// processes: one process may hold at most a fixed number of file
// descriptors (ulimit -n), and ten thousand clients need ten thousand
// connections. The coordinator re-executes its own binary as
// `myelin-load worker`, writes a workerJob as JSON to its stdin, and reads
// from its stdout one workerReady line once every client has done its
// initial sync and is long-polling, then (after the coordinator closes
// stdin) one workerResult line. In between, the coordinator may write
// workerControl lines.

// workerJob is what one worker process is asked to do.
type workerJob struct {
	BaseURL string    `json:"base_url"`
	Filter  string    `json:"filter"`
	PollMS  int64     `json:"poll_ms"`
	Conc    int       `json:"initial_concurrency"`
	Until   time.Time `json:"until"` // hard stop, from -deadline
	// Restart says a workerControl with a restart time will come: the
	// polls in flight then are dropped and every client polls again at
	// once, as when a server restarts and its clients reconnect together.
	Restart bool           `json:"restart,omitempty"`
	Clients []workerClient `json:"clients"`
}

// workerControl is a message to a running worker.
type workerControl struct {
	RestartAt time.Time `json:"restart_at"`
}

type workerClient struct {
	// Base is the client's homeserver when it is not the job's (the
	// federation scenario's receivers are on other servers).
	Base   string `json:"base,omitempty"`
	UserID string `json:"user_id"`
	Token  string `json:"token"`
	Src    string `json:"src,omitempty"` // source address, empty for any
}

type workerReady struct {
	Ready         bool      `json:"ready"`
	InitialOK     int       `json:"initial_ok"`
	InitialFailed int       `json:"initial_failed"`
	Seconds       float64   `json:"seconds"`
	InitialMS     []float64 `json:"initial_ms"` // each initial sync's duration
}

type workerResult struct {
	Polls int64 `json:"polls"` // /sync answers after the initial one
	// PollsAt counts those answers by the Unix second they arrived in, so
	// that a scenario can count the ones inside its measuring window.
	PollsAt map[int64]int64 `json:"polls_at"`
	Errors  map[string]int  `json:"errors"`
	Samples []string        `json:"samples"`
	// Seen[i] lists the load_seq of every event client i received, repeats
	// included; Latencies holds the delivery latency (ms) of each first
	// sighting.
	Seen      [][]int64 `json:"seen"`
	Latencies []float64 `json:"latencies_ms"`
	FirstSeq  []int64   `json:"first_seq"` // the load_seq of each of Latencies
	Limited   int64     `json:"limited"`   // timelines answered with limited=true
	// EmptyAt counts the answers holding nothing (timed-out long-polls)
	// by the emptyBucket they arrived in (Unix time / emptyBucket).
	EmptyAt map[int64]int64 `json:"empty_at"`
}

// emptyBucket is the resolution at which workers count empty answers:
// fine enough to see a herd of timeouts on one 250 ms tick.
const emptyBucket = 50 * time.Millisecond

// runWorker is the worker process's main.
func runWorker(stdin io.Reader, stdout io.Writer) error {
	dec := json.NewDecoder(stdin)
	var job workerJob
	if err := dec.Decode(&job); err != nil {
		return fmt.Errorf("read job: %w", err)
	}
	ctx, cancel := context.WithDeadline(context.Background(), job.Until)
	defer cancel()
	w := newPoller(job)
	// The coordinator closes stdin to stop the worker (and stdin reaches
	// EOF if the coordinator dies).
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		for {
			var m workerControl
			if err := dec.Decode(&m); err != nil {
				io.Copy(io.Discard, io.MultiReader(dec.Buffered(), stdin))
				return
			}
			if !m.RestartAt.IsZero() {
				time.AfterFunc(time.Until(m.RestartAt), w.restart)
			}
		}
	}()

	start := time.Now()
	// Each client long-polls as soon as its initial sync is done, as a real
	// client does: one that waited for all the others would look idle to
	// the server (and go offline) on a large run.
	pollCtx, stopPolls := context.WithCancel(ctx)
	var wg sync.WaitGroup
	initial := w.initialSyncs(ctx, func(c *pollClient) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.poll(pollCtx, c)
		}()
	})
	// One duration per client that synced (their since tokens now belong
	// to their polling goroutines).
	ready := workerReady{Ready: true, Seconds: time.Since(start).Seconds(), InitialMS: initial,
		InitialOK: len(initial), InitialFailed: len(w.clients) - len(initial)}
	out := json.NewEncoder(stdout)
	if err := out.Encode(ready); err != nil {
		stopPolls()
		return err
	}
	select {
	case <-stopped:
	case <-ctx.Done():
	}
	stopPolls()
	wg.Wait()
	return out.Encode(w.result())
}

// poller runs the long-polling clients of one worker.
type poller struct {
	job     workerJob
	clients []*pollClient
	errs    *Tally
	limited atomic.Int64
	mu      sync.Mutex
	pollsAt map[int64]int64 // answers by Unix second
	emptyAt map[int64]int64 // empty answers by emptyBucket
	// restarted ends when the coordinator's restart time comes (restart).
	restarted context.Context
	restart   context.CancelFunc
}

type pollClient struct {
	c     *Client
	since string
	// Written only by the client's own goroutine, read after it ends.
	seen      []int64
	first     map[int64]bool
	latencies []float64
	firstSeq  []int64
	restarted bool // the client's poll in flight at the restart was dropped
}

func newPoller(job workerJob) *poller {
	w := &poller{job: job, errs: newTally(), pollsAt: map[int64]int64{}, emptyAt: map[int64]int64{}}
	w.restarted, w.restart = context.WithCancel(context.Background())
	for _, wc := range job.Clients {
		var src net.IP
		if wc.Src != "" {
			src = net.ParseIP(wc.Src)
		}
		// Each client has its own keep-alive connection, as a real client does.
		hc := &http.Client{Transport: newTransport(src, 1)}
		base := job.BaseURL
		if wc.Base != "" {
			base = wc.Base
		}
		w.clients = append(w.clients, &pollClient{
			c:     &Client{base: base, hc: hc, UserID: wc.UserID, Token: wc.Token},
			first: make(map[int64]bool),
		})
	}
	return w
}

// initialSyncs gives every client its first since token, calls synced with
// each client that got one, and returns the initial syncs' durations in ms.
func (w *poller) initialSyncs(ctx context.Context, synced func(*pollClient)) []float64 {
	var mu sync.Mutex
	var durs []float64
	parallel(ctx, len(w.clients), w.job.Conc, func(ctx context.Context, i int) error {
		pc := w.clients[i]
		for attempt := 0; attempt < setupRetries && ctx.Err() == nil; attempt++ {
			t0 := time.Now()
			resp, _, err := pc.c.Sync(ctx, "", w.job.Filter, 0)
			if err == nil {
				pc.since = resp.NextBatch
				mu.Lock()
				durs = append(durs, ms(time.Since(t0)))
				mu.Unlock()
				synced(pc)
				return nil
			}
			w.errs.Add("initial sync", err)
			sleepCtx(ctx, time.Second)
		}
		return nil // a client that never synced is reported, not fatal
	})
	return durs
}

// poll long-polls /sync until ctx is done, recording the load events seen.
func (w *poller) poll(ctx context.Context, pc *pollClient) {
	timeout := time.Duration(w.job.PollMS) * time.Millisecond
	for ctx.Err() == nil {
		rctx, stop := w.dropAtRestart(ctx, pc)
		resp, _, err := pc.c.Sync(rctx, pc.since, w.job.Filter, timeout)
		stop()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if rctx.Err() != nil {
				// Dropped by the restart: reconnect at once, as a client
				// whose server came back does, with the same token.
				pc.restarted = true
				continue
			}
			w.errs.Add("sync", err)
			// Back off as a client would, then retry from the same token.
			sleepCtx(ctx, time.Second)
			continue
		}
		now := time.Now().UnixMicro()
		w.mu.Lock()
		w.pollsAt[now/1e6]++
		if resp.empty() {
			w.emptyAt[now/emptyBucket.Microseconds()]++
		}
		w.mu.Unlock()
		for _, room := range resp.Rooms.Join {
			if room.Timeline.Limited {
				w.limited.Add(1)
			}
			for _, ev := range room.Timeline.Events {
				seq := ev.Content.Seq
				if ev.Type != "m.room.message" || seq == nil {
					continue
				}
				pc.seen = append(pc.seen, *seq)
				if !pc.first[*seq] {
					pc.first[*seq] = true
					pc.latencies = append(pc.latencies, float64(now-ev.Content.SentUS)/1e3)
					pc.firstSeq = append(pc.firstSeq, *seq)
				}
			}
		}
		if resp.NextBatch != "" {
			pc.since = resp.NextBatch
		}
	}
}

// dropAtRestart returns the context for pc's next request: one that ends
// at the restart, if the job has one and pc has not been through it yet.
func (w *poller) dropAtRestart(ctx context.Context, pc *pollClient) (context.Context, func()) {
	if !w.job.Restart || pc.restarted {
		return ctx, func() {}
	}
	if w.restarted.Err() != nil {
		// The restart came between two polls: nothing to drop.
		pc.restarted = true
		return ctx, func() {}
	}
	rctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(w.restarted, cancel)
	return rctx, func() { stop(); cancel() }
}

func (w *poller) result() workerResult {
	w.mu.Lock()
	r := workerResult{Limited: w.limited.Load(), PollsAt: maps.Clone(w.pollsAt), EmptyAt: maps.Clone(w.emptyAt)}
	w.mu.Unlock()
	for _, n := range r.PollsAt {
		r.Polls += n
	}
	r.Errors, r.Samples = w.errs.Snapshot()
	r.Seen = make([][]int64, len(w.clients))
	for i, pc := range w.clients {
		r.Seen[i] = pc.seen
		r.Latencies = append(r.Latencies, pc.latencies...)
		r.FirstSeq = append(r.FirstSeq, pc.firstSeq...)
	}
	return r
}

// workers is the coordinator's handle on its worker processes.
type workers struct {
	procs []*workerProc
}

type workerProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *json.Decoder
	n     int // clients
}

// clientsPerProc is how many /sync clients one worker holds by default:
// a quarter of the 20,000 descriptors a process may have here, leaving
// room for reconnects after errors and for the runtime's own files.
const clientsPerProc = 5000

// procsFor returns how many worker processes n clients need.
func procsFor(n, requested int) (int, error) {
	if requested > 0 {
		perProc := (n + requested - 1) / requested
		if lim := noFileLimit(); lim > 0 && uint64(perProc)+200 > lim {
			return 0, fmt.Errorf("-procs %d puts %d clients in a process, but a process may open only %d files (ulimit -n); use more -procs", requested, perProc, lim)
		}
		return requested, nil
	}
	return max(1, (n+clientsPerProc-1)/clientsPerProc), nil
}

// startWorkers splits clients over procs worker processes and starts them.
// With restart, the workers wait for a restart time (workers.restartAt).
func (e *env) startWorkers(ctx context.Context, clients []*Client, filter string, poll time.Duration, restart bool) (*workers, error) {
	procs, err := procsFor(len(clients), e.opts.procs)
	if err != nil {
		return nil, err
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	until, ok := ctx.Deadline()
	if !ok {
		until = time.Now().Add(e.opts.deadline)
	}
	ws := &workers{}
	for p := range procs {
		job := workerJob{BaseURL: e.base, Filter: filter, PollMS: poll.Milliseconds(), Conc: e.opts.concurrency, Until: until, Restart: restart}
		for i := p; i < len(clients); i += procs {
			wc := workerClient{UserID: clients[i].UserID, Token: clients[i].Token}
			if clients[i].base != e.base {
				wc.Base = clients[i].base
			}
			if ip := sourceIP(i, e.opts.srcIPs); ip != nil {
				wc.Src = ip.String()
			}
			job.Clients = append(job.Clients, wc)
		}
		// Not CommandContext: a worker stops when its stdin closes, and
		// killing it would lose its results.
		cmd := exec.Command(exe, "worker")
		cmd.Stderr = e.stderr
		stdin, err := cmd.StdinPipe()
		if err != nil {
			ws.kill()
			return nil, err
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			ws.kill()
			return nil, err
		}
		if err := cmd.Start(); err != nil {
			ws.kill()
			return nil, fmt.Errorf("start worker: %w", err)
		}
		wp := &workerProc{cmd: cmd, stdin: stdin, out: json.NewDecoder(bufio.NewReader(stdout)), n: len(job.Clients)}
		ws.procs = append(ws.procs, wp)
		if err := json.NewEncoder(stdin).Encode(job); err != nil {
			ws.kill()
			return nil, fmt.Errorf("send job to worker: %w", err)
		}
	}
	e.logf("started %d worker process(es) for %d /sync clients", procs, len(clients))
	return ws, nil
}

// waitReady waits until every worker has its clients long-polling.
func (ws *workers) waitReady(ctx context.Context) (workerReady, error) {
	var total workerReady
	for _, wp := range ws.procs {
		var r workerReady
		done := make(chan error, 1)
		go func() { done <- wp.out.Decode(&r) }()
		select {
		case err := <-done:
			if err != nil {
				return total, fmt.Errorf("worker %d: %w", wp.cmd.Process.Pid, err)
			}
		case <-ctx.Done():
			return total, ctx.Err()
		}
		total.InitialOK += r.InitialOK
		total.InitialFailed += r.InitialFailed
		total.Seconds = max(total.Seconds, r.Seconds)
		total.InitialMS = append(total.InitialMS, r.InitialMS...)
	}
	total.Ready = true
	return total, nil
}

// stop closes every worker's stdin and collects the results, in the order
// the clients were handed out: result i holds clients i, i+procs, ...
func (ws *workers) stop(ctx context.Context) ([]workerResult, error) {
	for _, wp := range ws.procs {
		wp.stdin.Close()
	}
	results := make([]workerResult, len(ws.procs))
	var errs []error
	for i, wp := range ws.procs {
		done := make(chan error, 1)
		go func() { done <- wp.out.Decode(&results[i]) }()
		var err error
		select {
		case err = <-done:
		case <-ctx.Done():
			err = ctx.Err()
		case <-time.After(2 * time.Minute):
			err = errors.New("no result within 2 minutes of stopping")
		}
		if err != nil {
			wp.cmd.Process.Kill()
			errs = append(errs, fmt.Errorf("worker %d: %w", wp.cmd.Process.Pid, err))
		}
		wp.cmd.Wait()
	}
	return results, errors.Join(errs...)
}

// restartAt tells every worker to drop its clients' polls at t and have
// them poll again at once.
func (ws *workers) restartAt(t time.Time) error {
	for _, wp := range ws.procs {
		if err := json.NewEncoder(wp.stdin).Encode(workerControl{RestartAt: t}); err != nil {
			return fmt.Errorf("worker %d: send restart: %w", wp.cmd.Process.Pid, err)
		}
	}
	return nil
}

// kill ends every worker without waiting for results.
func (ws *workers) kill() {
	for _, wp := range ws.procs {
		wp.stdin.Close()
		wp.cmd.Process.Kill()
		wp.cmd.Wait()
	}
}
