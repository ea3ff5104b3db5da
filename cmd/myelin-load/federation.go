package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The federation scenario measures what federation adds to fanout: the
// rooms live on the server under test (-url), their senders are its users,
// and every receiver is a user of another server (-remote), so each event
// crosses a server-server transaction before a receiver's /sync sees it.
// With -remote-pids the other servers are sampled too, and the report sums
// the memory of all of them.

type federationParams struct {
	fanoutParams
	remotes    []string
	remotePIDs []int
	// bigRoom, when set, is the size of a room filled on the server under
	// test that a user of the first other server then joins: the time of
	// a remote join of a large room and its memory on the joining server.
	bigRoom int
}

func federationFlags(fs *flag.FlagSet) func(context.Context, *env, *Report) error {
	p := &federationParams{}
	p.register(fs, 2000, 5, 60*time.Second, 2*time.Second)
	var remotes, pids string
	fs.StringVar(&remotes, "remote", "", "client API base URLs of the receivers' servers, comma-separated (required; loopback)")
	fs.StringVar(&pids, "remote-pids", "", "process IDs of the -remote servers, comma-separated, to sample their CPU and memory")
	fs.IntVar(&p.bigRoom, "big-room", 0, "first fill a room of this many members here and time a user of the first -remote server joining it (0: skip)")
	return func(ctx context.Context, e *env, rep *Report) error {
		if err := p.parse(remotes, pids); err != nil {
			return err
		}
		if err := p.validate(); err != nil {
			return err
		}
		if err := checkRange("-big-room", p.bigRoom, 0, 100000); err != nil {
			return err
		}
		return runFederation(ctx, e, rep, p)
	}
}

// parse reads the comma-separated flags.
func (p *federationParams) parse(remotes, pids string) error {
	for _, r := range strings.Split(remotes, ",") {
		if r = strings.TrimSpace(r); r != "" {
			p.remotes = append(p.remotes, r)
		}
	}
	if len(p.remotes) == 0 {
		return errors.New("-remote: at least one other server is needed")
	}
	if len(p.remotes) > 64 {
		return fmt.Errorf("-remote: %d servers, at most 64", len(p.remotes))
	}
	for _, s := range strings.Split(pids, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		pid, err := strconv.Atoi(s)
		if err != nil || pid <= 0 {
			return fmt.Errorf("-remote-pids: %q is not a process ID", s)
		}
		p.remotePIDs = append(p.remotePIDs, pid)
	}
	return nil
}

// FederationDetails is the federation scenario's outcome: fanout's, with
// the other servers' part.
type FederationDetails struct {
	FanoutDetails
	Servers  int     `json:"servers"` // the server under test and the others
	Remote   []Usage `json:"remote_servers,omitempty"`
	RSSSumMB float64 `json:"rss_sum_peak_mb,omitempty"` // every sampled server's peak RSS, summed
	// Every sampled server's peak PSS, summed: the memory the servers take
	// together, their shared binary pages counted once.
	PSSSumMB  float64 `json:"pss_sum_peak_mb,omitempty"`
	CoresSum  float64 `json:"cores_sum_avg,omitempty"`
	FirstJoin Summary `json:"first_join"` // the joins that went over federation
	// BigRoom is the remote join of a -big-room room.
	BigRoom *BigRoomJoin `json:"big_room,omitempty"`
}

// BigRoomJoin is a user of another server joining a large room.
type BigRoomJoin struct {
	Members int     `json:"members"`
	Seconds float64 `json:"join_s"`
	// The joining server's RSS just before the join and at its peak
	// during it (with -remote-pids).
	RSSBeforeMB float64 `json:"rss_before_mb,omitempty"`
	RSSPeakMB   float64 `json:"rss_peak_mb,omitempty"`
	Error       string  `json:"error,omitempty"`
}

func runFederation(ctx context.Context, e *env, rep *Report, p *federationParams) error {
	rep.Name = fmt.Sprintf("federation M=%d over %d servers E=%g/s", p.users, len(p.remotes)+1, p.rate)
	d := &FederationDetails{Servers: len(p.remotes) + 1}
	rep.Details = d

	remotes := make([]*registrar, len(p.remotes))
	for i, r := range p.remotes {
		base, err := checkBaseURL(ctx, r, net.DefaultResolver.LookupIPAddr)
		if err != nil {
			return fmt.Errorf("-remote %s: %w", r, err)
		}
		remotes[i] = &registrar{base: base, hc: e.hc, method: e.opts.reg, secret: e.opts.secret}
	}
	samplers := make([]*Sampler, len(p.remotePIDs))
	for i, pid := range p.remotePIDs {
		samplers[i] = newSampler(pid, false)
		if _, err := samplers[i].read(); err != nil {
			return fmt.Errorf("-remote-pids %d: %w", pid, err)
		}
		go samplers[i].Run(ctx, e.opts.sample)
	}

	if p.bigRoom > 0 {
		var joiner *Sampler
		if len(samplers) > 0 {
			joiner = samplers[0]
		}
		b, err := e.bigRoomJoin(ctx, p.bigRoom, remotes[0], joiner)
		d.BigRoom = b
		if err != nil {
			return err
		}
		rep.add(fmt.Sprintf("remote join of a %d-member room", b.Members), b.Seconds, "s", "lower")
		if joiner != nil {
			rep.add("joining server's RSS before that join", b.RSSBeforeMB, "MB", "")
			rep.add("joining server's RSS peak during it", b.RSSPeakMB, "MB", "lower")
		}
	}
	s, err := e.setUpFederation(ctx, p, d, remotes)
	if err != nil {
		return err
	}
	ws, err := e.startPolling(ctx, &p.fanoutParams, s, &d.FanoutDetails, false)
	if err != nil {
		return err
	}
	sleepCtx(ctx, p.settle)
	d.QuietS = e.waitQuiet(ctx, p.quietCores, p.quietMax)

	e.logf("sending %g events/s into %d rooms for %v, to receivers on %d other servers", p.rate, len(s.rooms), p.duration, len(remotes))
	run, err := e.sendAndCollect(ctx, rep, &p.fanoutParams, ws, s, &d.FanoutDetails, s.senders, s.rooms)
	if err != nil {
		return err
	}
	var latencies []float64
	for _, r := range run.results {
		latencies = append(latencies, r.Latencies...)
	}
	d.Latency = summarize(latencies)

	if rep.Server != nil {
		d.RSSSumMB, d.PSSSumMB, d.CoresSum = rep.Server.RSSPeakMB, rep.Server.PSSPeakMB, rep.Server.AvgCores
	}
	for _, smp := range samplers {
		u := smp.Window(run.start, run.end)
		d.Remote = append(d.Remote, u)
		d.RSSSumMB += u.RSSPeakMB
		d.PSSSumMB += u.PSSPeakMB
		d.CoresSum += u.AvgCores
	}
	rep.addLatency("delivery latency", d.Latency)
	rep.addLatency("remote join", d.FirstJoin)
	if len(samplers) > 0 {
		rep.add("RSS of all servers (sum of peaks)", d.RSSSumMB, "MB", "lower")
		rep.add("PSS of all servers (sum of peaks)", d.PSSSumMB, "MB", "lower")
		rep.add("CPU of all servers", d.CoresSum, "cores", "lower")
	}
	d.report(rep)
	return nil
}

// setUpFederation registers the senders on the server under test and the
// receivers round-robin on the others, creates the rooms, and joins the
// receivers through the rooms' server: first one receiver per room and
// server (the join that goes over federation, timed), then the rest.
func (e *env) setUpFederation(ctx context.Context, p *federationParams, d *FederationDetails, remotes []*registrar) (*fanoutSetup, error) {
	s, err := e.registerSenders(ctx, &p.fanoutParams, &d.FanoutDetails)
	if err != nil {
		return nil, err
	}
	nRooms := len(s.senders)
	via := serverOf(s.senders[0].UserID)
	if via == "" {
		return nil, fmt.Errorf("cannot tell the server name from user ID %q", s.senders[0].UserID)
	}
	s.receivers = make([]*Client, p.users)
	pr := e.progress("register receivers", p.users)
	password := "load-" + e.runID
	err = parallel(ctx, p.users, e.opts.concurrency, func(ctx context.Context, i int) error {
		localpart := fmt.Sprintf("load_%s_frecv_%d", e.runID, i)
		return e.retry(ctx, "setup register", func() error {
			c, err := remotes[i%len(remotes)].Register(ctx, localpart, password)
			if err != nil {
				return err
			}
			s.receivers[i] = c
			pr.inc()
			return nil
		})
	})
	d.Setup = append(d.Setup, pr.finish())
	if err != nil {
		return nil, fmt.Errorf("register receivers: %w", err)
	}
	if s.rooms, err = e.createRooms(ctx, s.senders); err != nil {
		return nil, err
	}

	// Receiver i is on server i mod K and in room i mod R: the first
	// lcm(K, R) receivers hold every (room, server) pair there is.
	first := min(p.users, lcm(len(remotes), nRooms))
	var mu sync.Mutex
	var joinMS []float64
	pf := e.progress("remote joins (first per room and server)", first)
	err = parallel(ctx, first, e.opts.concurrency, func(ctx context.Context, i int) error {
		return e.retry(ctx, "setup join", func() error {
			t0 := time.Now()
			if err := s.receivers[i].JoinVia(ctx, s.rooms[s.roomOf(i)], via); err != nil {
				return err
			}
			mu.Lock()
			joinMS = append(joinMS, ms(time.Since(t0)))
			mu.Unlock()
			pf.inc()
			return nil
		})
	})
	d.Setup = append(d.Setup, pf.finish())
	d.FirstJoin = summarize(joinMS)
	if err != nil {
		return nil, fmt.Errorf("remote joins: %w", err)
	}
	rest := s.receivers[first:]
	pj := e.progress("join the other receivers", len(rest))
	err = parallel(ctx, len(rest), e.opts.concurrency, func(ctx context.Context, i int) error {
		return e.retry(ctx, "setup join", func() error {
			if err := rest[i].JoinVia(ctx, s.rooms[s.roomOf(first+i)], via); err != nil {
				return err
			}
			pj.inc()
			return nil
		})
	})
	d.Setup = append(d.Setup, pj.finish())
	if err != nil {
		return nil, fmt.Errorf("join receivers: %w", err)
	}
	return s, nil
}

func lcm(a, b int) int {
	g, h := a, b
	for h != 0 {
		g, h = h, g%h
	}
	return a / g * b
}

// serverOf is the server name of a user ID.
func serverOf(userID string) string {
	_, server, ok := strings.Cut(userID, ":")
	if !ok {
		return ""
	}
	return server
}

// JoinVia joins a room by ID through the given server, as a client joins a
// room it was told about on another server.
func (c *Client) JoinVia(ctx context.Context, roomID, via string) error {
	q := url.Values{"via": {via}, "server_name": {via}}
	return c.doJSON(ctx, http.MethodPost, clientPrefix+"/join/"+url.PathEscape(roomID), q, struct{}{}, nil, reqTimeout)
}

// bigRoomJoin fills a room here with n members, then has a new user of
// remote join it over federation, timing the join and sampling the
// joining server's memory around it.
func (e *env) bigRoomJoin(ctx context.Context, n int, remote *registrar, joiner *Sampler) (*BigRoomJoin, error) {
	b := &BigRoomJoin{Members: n}
	members, _, err := e.registerUsers(ctx, "bigmember", n)
	if err != nil {
		return b, err
	}
	rooms, err := e.createRooms(ctx, members[:1])
	if err != nil {
		return b, err
	}
	if _, err := e.joinAll(ctx, "fill the big room", members[1:], rooms, func(int) int { return 0 }, e.opts.concurrency); err != nil {
		return b, err
	}
	var c *Client
	if err := e.retry(ctx, "setup register", func() (err error) {
		c, err = remote.Register(ctx, "load_"+e.runID+"_bigjoiner", "load-"+e.runID)
		return err
	}); err != nil {
		return b, fmt.Errorf("register the joiner: %w", err)
	}
	var start time.Time
	if joiner != nil {
		sleepCtx(ctx, 2*time.Second) // a baseline sample or more
		start = joiner.Mark()
		b.RSSBeforeMB = joiner.Window(start, start).RSSPeakMB
	} else {
		start = time.Now()
	}
	e.logf("joining the %d-member room from %s", n, remote.base)
	err = c.JoinVia(ctx, rooms[0], serverOf(members[0].UserID))
	b.Seconds = time.Since(start).Seconds()
	if joiner != nil {
		end := joiner.Mark()
		b.RSSPeakMB = joiner.Window(start, end).RSSPeakMB
	}
	if err != nil {
		b.Error = err.Error()
		return b, fmt.Errorf("remote join of the %d-member room: %w", n, err)
	}
	e.logf("joined in %.2fs", b.Seconds)
	return b, nil
}
