// Command myelin-load generates load against a Matrix homeserver over the
// Client-Server API and measures how the server copes. It speaks only
// standard endpoints, so it measures Myelin, Dendrite and Synapse alike.
//
//	myelin-load send        [flags]   S senders over R rooms: events/s, send latency
//	myelin-load fanout      [flags]   M long-polling /sync clients, E events/s: delivery latency, loss
//	myelin-load storm       [flags]   M long-polls restarted in step, E events/s: delivery latency while their timeouts fall
//	myelin-load idle        [flags]   C idle /sync long-polls: server RSS per connection, idle CPU
//	myelin-load join        [flags]   U users joining one room: joins/s per slice of the room's growth
//	myelin-load federation  [flags]   M long-polls on other servers, E events/s sent here: delivery across federation
//	myelin-load initialsync [flags]   initial /sync in an N-member room, /messages back-pagination
//	myelin-load table DIR_A DIR_B [DIR_C DIR_D ...]   side-by-side markdown from -json results
//
// It creates its own users (open registration or Synapse-style shared-secret
// registration, -reg) and rooms, talks to loopback addresses only, and bounds
// every loop by count and time (-deadline for the whole run). With -pid it
// samples the server's CPU time and RSS from /proc. Many clients are spread
// over worker processes (the tool re-executing itself), because one process
// may hold only so many file descriptors.
//
// Nothing imports this package; it is a program.
package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// scenario is one kind of measurement.
type scenario struct {
	name  string
	about string
	// flags registers the scenario's own flags and returns a function that
	// validates them and runs the scenario.
	flags func(fs *flag.FlagSet) func(ctx context.Context, e *env, rep *Report) error
}

var scenarios = []scenario{
	{"send", "S concurrent senders over R rooms: events/s and send latency", sendFlags},
	{"fanout", "M long-polling /sync clients in rooms of ~100, E events/s: delivery latency, missing, duplicates", fanoutFlags},
	{"storm", "M long-polls restarted in step, E events/s into a few rooms: delivery latency in and out of the timeout windows", stormFlags},
	{"idle", "C idle long-polling /sync connections held for T: RSS per connection, idle CPU", idleFlags},
	{"join", "U users joining one room: joins/s overall and per slice", joinFlags},
	{"federation", "M long-polling /sync clients on other servers (-remote), E events/s sent on this one: delivery latency across federation, memory of all servers", federationFlags},
	{"initialsync", "initial /sync in an N-member room with and without lazy loading; /messages pagination", initialSyncFlags},
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: myelin-load SCENARIO [flags]   (myelin-load SCENARIO -h lists the flags)")
	fmt.Fprintln(w, "       myelin-load table DIR_A DIR_B [DIR_C DIR_D ...]")
	fmt.Fprintln(w, "       myelin-load floor [-listen ADDR]   a do-nothing server: the idle scenario's floor")
	fmt.Fprintln(w, "scenarios:")
	for _, s := range scenarios {
		fmt.Fprintf(w, "  %-12s %s\n", s.name, s.about)
	}
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	switch args[0] {
	case "worker":
		// Internal: a child process holding long-polling clients.
		if err := runWorker(os.Stdin, stdout); err != nil {
			fmt.Fprintln(stderr, "myelin-load worker:", err)
			return 1
		}
		return 0
	case "floor":
		if err := runFloor(args[1:], stdout, stderr); err != nil {
			fmt.Fprintln(stderr, "myelin-load floor:", err)
			return 1
		}
		return 0
	case "table":
		if err := runTable(args[1:], stdout); err != nil {
			fmt.Fprintln(stderr, "myelin-load table:", err)
			return 1
		}
		return 0
	case "-h", "-help", "--help", "help":
		usage(stdout)
		return 0
	}
	i := slices.IndexFunc(scenarios, func(s scenario) bool { return s.name == args[0] })
	if i < 0 {
		fmt.Fprintf(stderr, "myelin-load: unknown scenario %q\n", args[0])
		usage(stderr)
		return 2
	}
	sc := scenarios[i]
	fs := flag.NewFlagSet("myelin-load "+sc.name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	opts := commonFlags(fs)
	runScenario := sc.flags(fs)
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "myelin-load %s: unexpected arguments %q\n", sc.name, fs.Args())
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := runOne(ctx, sc.name, fs, opts, runScenario, stderr)
	if rep != nil {
		rep.print(stdout)
		if opts.jsonPath != "" {
			if werr := writeJSON(opts.jsonPath, rep); werr != nil {
				fmt.Fprintln(stderr, "myelin-load:", werr)
				return 1
			}
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "myelin-load %s: %v\n", sc.name, err)
		return 1
	}
	return 0
}

// options are the flags every scenario takes.
type options struct {
	url         string
	label       string
	pid         int
	dbPID       int
	jsonPath    string
	deadline    time.Duration
	reg         string
	secret      string
	concurrency int
	procs       int
	srcIPs      int
	sample      time.Duration
}

func commonFlags(fs *flag.FlagSet) *options {
	o := &options{}
	fs.StringVar(&o.url, "url", "http://127.0.0.1:8008", "homeserver base URL (must resolve to loopback)")
	fs.StringVar(&o.label, "label", "", "name of the server under test in the report (e.g. myelin-sqlite)")
	fs.IntVar(&o.pid, "pid", 0, "server process ID: sample its CPU time and RSS from /proc")
	fs.IntVar(&o.dbPID, "db-pid", 0, "database server process ID (PostgreSQL postmaster): sample its process tree's CPU time")
	fs.StringVar(&o.jsonPath, "json", "", "also write the report as JSON to this file")
	fs.DurationVar(&o.deadline, "deadline", 30*time.Minute, "give up on the whole run after this long")
	fs.StringVar(&o.reg, "reg", regOpen, "how to create users: open (POST /register, m.login.dummy) or shared-secret")
	fs.StringVar(&o.secret, "shared-secret", os.Getenv("MYELIN_LOAD_SHARED_SECRET"), "registration shared secret for -reg shared-secret (default $MYELIN_LOAD_SHARED_SECRET)")
	fs.IntVar(&o.concurrency, "setup-concurrency", 16, "requests in flight while creating users, rooms and memberships")
	fs.IntVar(&o.procs, "procs", 0, "worker processes holding /sync clients (0: one per 5,000 clients)")
	fs.IntVar(&o.srcIPs, "src-ips", 1, "spread /sync clients over source addresses 127.0.0.1..127.0.0.N (IPv4 targets only)")
	fs.DurationVar(&o.sample, "sample-interval", 500*time.Millisecond, "how often to sample the server's /proc entries")
	return o
}

func (o *options) validate() error {
	var errs []error
	if o.deadline <= 0 || o.deadline > 24*time.Hour {
		errs = append(errs, fmt.Errorf("-deadline %v: must be in (0, 24h]", o.deadline))
	}
	if o.reg != regOpen && o.reg != regShared {
		errs = append(errs, fmt.Errorf("-reg %q: must be %s or %s", o.reg, regOpen, regShared))
	}
	if o.reg == regShared && o.secret == "" {
		errs = append(errs, errors.New("-reg shared-secret needs -shared-secret or $MYELIN_LOAD_SHARED_SECRET"))
	}
	errs = append(errs, checkRange("-setup-concurrency", o.concurrency, 1, 256))
	errs = append(errs, checkRange("-procs", o.procs, 0, 64))
	errs = append(errs, checkRange("-src-ips", o.srcIPs, 1, maxSourceIPs))
	if o.sample < 50*time.Millisecond || o.sample > time.Minute {
		errs = append(errs, fmt.Errorf("-sample-interval %v: must be in [50ms, 1m]", o.sample))
	}
	if o.pid < 0 || o.dbPID < 0 {
		errs = append(errs, errors.New("-pid and -db-pid must be positive"))
	}
	return errors.Join(errs...)
}

// checkRange returns an error naming flag when v is outside [lo, hi].
func checkRange(flag string, v, lo, hi int) error {
	if v < lo || v > hi {
		return fmt.Errorf("%s %d: must be in [%d, %d]", flag, v, lo, hi)
	}
	return nil
}

// env is what a running scenario uses: the target, the registrar, the
// samplers and the error tally.
type env struct {
	opts   *options
	base   string
	hc     *http.Client // shared by setup requests
	reg    *registrar
	errs   *Tally
	server *Sampler // nil without -pid
	db     *Sampler // nil without -db-pid
	runID  string   // makes user names unique per run
	stderr io.Writer
}

func (e *env) logf(format string, args ...any) {
	fmt.Fprintf(e.stderr, "%s %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// measure records the server's (and database's) resource use between from
// and to as the report's measured window.
func (e *env) measure(rep *Report, from, to time.Time) {
	if e.server != nil {
		u := e.server.Window(from, to)
		rep.Server = &u
	}
	if e.db != nil {
		u := e.db.Window(from, to)
		rep.DB = &u
	}
}

// mark takes a sample on every sampler now.
func (e *env) mark() time.Time {
	now := time.Now()
	if e.server != nil {
		e.server.Mark()
	}
	if e.db != nil {
		e.db.Mark()
	}
	return now
}

func runOne(ctx context.Context, name string, fs *flag.FlagSet, o *options,
	runScenario func(context.Context, *env, *Report) error, stderr io.Writer) (*Report, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, o.deadline)
	defer cancel()
	base, err := checkBaseURL(ctx, o.url, net.DefaultResolver.LookupIPAddr)
	if err != nil {
		return nil, err
	}
	e := &env{
		opts:   o,
		base:   base,
		hc:     &http.Client{Transport: newTransport(nil, o.concurrency*2)},
		errs:   newTally(),
		runID:  randomID(6),
		stderr: stderr,
	}
	e.reg = &registrar{base: base, hc: e.hc, method: o.reg, secret: o.secret}
	rep := &Report{
		Tool:     "myelin-load",
		Scenario: name,
		Label:    o.label,
		BaseURL:  base,
		Started:  time.Now().UTC(),
		Params:   flagValues(fs),
		Host:     hostInfo(),
	}
	samplerCtx, stopSamplers := context.WithCancel(ctx)
	defer stopSamplers()
	if o.pid > 0 {
		e.server = newSampler(o.pid, false)
		if _, err := e.server.read(); err != nil {
			return nil, fmt.Errorf("-pid %d: %w", o.pid, err)
		}
		go e.server.Run(samplerCtx, o.sample)
	}
	if o.dbPID > 0 {
		e.db = newSampler(o.dbPID, true)
		if _, err := e.db.read(); err != nil {
			return nil, fmt.Errorf("-db-pid %d: %w", o.dbPID, err)
		}
		go e.db.Run(samplerCtx, o.sample)
	}
	// The server must answer before anything is measured.
	if _, err := (&Client{base: base, hc: e.hc}).do(ctx, http.MethodGet, "/_matrix/client/versions", nil, nil, 10*time.Second); err != nil {
		return nil, fmt.Errorf("server not reachable: %w", err)
	}
	err = runScenario(ctx, e, rep)
	if err == nil && ctx.Err() != nil {
		err = fmt.Errorf("stopped: %w", context.Cause(ctx))
	}
	stopSamplers()
	rep.Finished = time.Now().UTC()
	rep.Host.LoadAvgEnd = loadAvg()
	rep.Errors, rep.ErrorSamples = e.errs.Snapshot()
	if e.server != nil {
		rep.ServerGone = e.server.GoneReason()
	}
	rep.addUsageMetrics()
	if err != nil {
		rep.Failed = err.Error()
	}
	return rep, err
}

// flagValues records every flag's value for the report, hiding secrets.
func flagValues(fs *flag.FlagSet) map[string]string {
	m := make(map[string]string)
	fs.VisitAll(func(f *flag.Flag) {
		v := f.Value.String()
		if strings.Contains(f.Name, "secret") && v != "" {
			v = "(set)"
		}
		m[f.Name] = v
	})
	return m
}

func randomID(n int) string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, n)
	rand.Read(b)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

func decodeInto(b []byte, v any) error {
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("decode response: %w", err)
	}
	return nil
}
