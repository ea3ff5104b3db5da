package setup_test

// A send load for fault tests, and the checks each of them makes once the
// fault is over. A fault test starts a server, makes a room with
// newLoadRoom, runs startLoad on it, injects its fault, waits for the
// load to make progress again (waitAcked), stops it, and calls check:
//
//	room := newLoadRoom(t, srv.URL, 4)
//	load := startLoad(t, srv.URL, room, loadOptions{})
//	load.waitAcked(t, 40, 30*time.Second)
//	... the fault ...
//	load.waitAcked(t, load.acked()+40, 30*time.Second)
//	load.stop()
//	load.check(t)

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"myelin/internal/poll"
	"myelin/internal/testserver"
)

// loadRoom is a public room and the users who send into it.
type loadRoom struct {
	ID      string
	Owner   *testserver.Client
	Senders []*testserver.Client
	names   []string
}

// newLoadRoom registers an owner and n senders on the server at base and
// makes a public room they are all joined to.
func newLoadRoom(t *testing.T, base string, n int) *loadRoom {
	t.Helper()
	reg := func(localpart string) *testserver.Client {
		c := &testserver.Client{Base: base}
		r := c.Do(t, "POST", "/_matrix/client/v3/register", map[string]any{
			"username": localpart, "password": "password-" + localpart,
			"auth": map[string]string{"type": "m.login.dummy"},
		}).MustOK(t)
		c.Token = r.String("access_token")
		return c
	}
	lr := &loadRoom{Owner: reg("owner")}
	lr.ID = lr.Owner.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{"preset": "public_chat"}).MustOK(t).String("room_id")
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("sender%d", i)
		c := reg(name)
		c.Do(t, "POST", "/_matrix/client/v3/rooms/"+lr.ID+"/join", map[string]any{}).MustOK(t)
		lr.Senders = append(lr.Senders, c)
		lr.names = append(lr.names, name)
	}
	return lr
}

// loadOptions bound a load. Zero values mean the defaults.
type loadOptions struct {
	// MaxPerSender bounds the messages each sender sends (default 2,000).
	MaxPerSender int
	// RequestTimeout bounds each request; a request that takes longer
	// counts as a "timeout" failure (default 20 s, a third of the
	// roomserver's own 60 s wait).
	RequestTimeout time.Duration
	// Total bounds the whole load: a send still failing then is
	// abandoned, which check reports (default 50 s).
	Total time.Duration
}

// sendLoad is senders sending m.room.message events into one room, each
// one at a time, as Matrix clients do: a send that fails (any answer but
// 200, or none) is retried with the same transaction ID until it is
// acknowledged.
type sendLoad struct {
	room    *loadRoom
	opts    loadOptions
	base    atomic.Pointer[string]
	seq     atomic.Int64 // orders first attempts and acknowledgements across senders
	nAcked  atomic.Int64
	halt    chan struct{}
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	senders []*sender
}

type sender struct {
	name string
	c    *testserver.Client
	http *http.Client

	mu       sync.Mutex
	sends    []*send
	failures []failure
}

// send is one transaction ID a sender used.
type send struct {
	txn, body string
	start     int64 // load sequence number of its first attempt
	attempts  int
	eventID   string    // acknowledged event ID; "" if never acknowledged
	acked     int64     // load sequence number of its acknowledgement
	failed    time.Time // when its first failed attempt ended
}

// failure is one attempt that did not get a 200.
type failure struct {
	class string // "503 M_UNKNOWN", "transport", "timeout", ...
	took  time.Duration
	at    time.Time
}

// startLoad starts one sender per room sender; stop ends it.
func startLoad(t *testing.T, base string, room *loadRoom, opts loadOptions) *sendLoad {
	t.Helper()
	if opts.MaxPerSender == 0 {
		opts.MaxPerSender = 2000
	}
	if opts.RequestTimeout == 0 {
		opts.RequestTimeout = 20 * time.Second
	}
	if opts.Total == 0 {
		opts.Total = 50 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), opts.Total)
	l := &sendLoad{room: room, opts: opts, halt: make(chan struct{}), cancel: cancel}
	l.setBase(base)
	for i, c := range room.Senders {
		s := &sender{name: room.names[i], c: c, http: &http.Client{Timeout: opts.RequestTimeout}}
		l.senders = append(l.senders, s)
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			l.run(ctx, s)
		}()
	}
	t.Cleanup(l.stop)
	return l
}

// setBase points the senders at a server's new address (after a restart).
func (l *sendLoad) setBase(base string) { l.base.Store(&base) }

// acked is the number of sends acknowledged so far.
func (l *sendLoad) acked() int { return int(l.nAcked.Load()) }

// waitAcked waits until n sends in all have been acknowledged.
func (l *sendLoad) waitAcked(t *testing.T, n int, total time.Duration) {
	t.Helper()
	poll.Until(t, total, func() error {
		if got := l.acked(); got < n {
			return fmt.Errorf("%d of %d sends acknowledged; failures so far: %v", got, n, l.failureCounts())
		}
		return nil
	})
}

// stop lets each sender finish the send it is retrying (a client does not
// give up on its message), starts no other, and waits for them.
func (l *sendLoad) stop() {
	select {
	case <-l.halt:
	default:
		close(l.halt)
	}
	l.wg.Wait()
	l.cancel()
}

func (l *sendLoad) halted() bool {
	select {
	case <-l.halt:
		return true
	default:
		return false
	}
}

// run is one sender's loop.
func (l *sendLoad) run(ctx context.Context, s *sender) {
	for i := 0; i < l.opts.MaxPerSender && !l.halted() && ctx.Err() == nil; i++ {
		sd := &send{txn: fmt.Sprintf("%s-%d", s.name, i), body: fmt.Sprintf("%s %d", s.name, i), start: l.seq.Add(1)}
		s.mu.Lock()
		s.sends = append(s.sends, sd)
		s.mu.Unlock()
		backoff := 20 * time.Millisecond
		for ctx.Err() == nil {
			id, f := l.attempt(ctx, s, sd)
			if f == nil {
				s.mu.Lock()
				sd.eventID, sd.acked = id, l.seq.Add(1)
				s.mu.Unlock()
				l.nAcked.Add(1)
				break
			}
			s.mu.Lock()
			s.failures = append(s.failures, *f)
			if sd.failed.IsZero() {
				sd.failed = f.at.Add(f.took)
			}
			s.mu.Unlock()
			// A client's retry backoff, as Matrix SDKs have: it paces
			// the retries, it waits for nothing in particular.
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 500*time.Millisecond)
		}
	}
}

// attempt makes one PUT of sd; it returns the event ID, or what failed.
func (l *sendLoad) attempt(ctx context.Context, s *sender, sd *send) (string, *failure) {
	s.mu.Lock()
	sd.attempts++
	s.mu.Unlock()
	path := "/_matrix/client/v3/rooms/" + url.PathEscape(l.room.ID) + "/send/m.room.message/" + url.PathEscape(sd.txn)
	begin := time.Now()
	status, body, err := do(ctx, s.http, "PUT", *l.base.Load()+path, s.c.Token, map[string]any{"msgtype": "m.text", "body": sd.body})
	took := time.Since(begin)
	switch {
	case err != nil && errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil:
		return "", &failure{class: "timeout", took: took, at: begin}
	case err != nil:
		return "", &failure{class: "transport", took: took, at: begin}
	case status == 200 && body["event_id"] != nil:
		id, _ := body["event_id"].(string)
		return id, nil
	default:
		code, _ := body["errcode"].(string)
		if code == "" {
			code = "(no errcode)"
		}
		return "", &failure{class: fmt.Sprintf("%d %s", status, code), took: took, at: begin}
	}
}

// do makes one JSON request without failing a test: load goroutines
// report what happened instead.
func do(ctx context.Context, hc *http.Client, method, u, token string, body any) (int, map[string]any, error) {
	var rd io.Reader
	if body != nil {
		raw, err := json.Marshal(body)
		if err != nil {
			return 0, nil, err
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return 0, nil, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil, err
	}
	var out map[string]any
	_ = json.Unmarshal(raw, &out)
	return resp.StatusCode, out, nil
}

// failureCounts counts the failed attempts by class.
func (l *sendLoad) failureCounts() map[string]int {
	out := map[string]int{}
	for _, s := range l.senders {
		s.mu.Lock()
		for _, f := range s.failures {
			out[f.class]++
		}
		s.mu.Unlock()
	}
	return out
}

// requireFailures fails t if any attempt failed other than as allowed
// ("503 M_UNKNOWN", "transport", ...).
func (l *sendLoad) requireFailures(t *testing.T, allowed ...string) {
	t.Helper()
	for class, n := range l.failureCounts() {
		ok := false
		for _, a := range allowed {
			ok = ok || class == a
		}
		if !ok {
			t.Errorf("%d send attempts failed with %s; only %v may", n, class, allowed)
		}
	}
}

// report logs what the load saw: sends, failures by class, the slowest
// failure and how long clients saw sends failing (from the first failed
// attempt to the next acknowledgement): observations, not assertions.
func (l *sendLoad) report(t *testing.T) {
	t.Helper()
	var sends, attempts int
	var slowest time.Duration
	var first, last time.Time
	for _, s := range l.senders {
		s.mu.Lock()
		sends += len(s.sends)
		for _, sd := range s.sends {
			attempts += sd.attempts
		}
		for _, f := range s.failures {
			slowest = max(slowest, f.took)
			if first.IsZero() || f.at.Before(first) {
				first = f.at
			}
			if end := f.at.Add(f.took); end.After(last) {
				last = end
			}
		}
		s.mu.Unlock()
	}
	t.Logf("load: %d senders, %d sends (%d acknowledged), %d attempts; failed attempts by class %v",
		len(l.senders), sends, l.acked(), attempts, l.failureCounts())
	if !first.IsZero() {
		t.Logf("load: failures from first to last %v, slowest failed attempt %v", last.Sub(first).Round(time.Millisecond), slowest.Round(time.Millisecond))
	}
}

// timelineEvent is a message as /messages returns it.
type timelineEvent struct {
	ID, Sender, Body string
	TS               int64 // origin_server_ts
}

// roomMessages pages the room's whole timeline forwards as c and returns
// its m.room.message events in order.
func roomMessages(t *testing.T, c *testserver.Client, roomID string) []timelineEvent {
	t.Helper()
	var out []timelineEvent
	from := ""
	for page := 0; page < 1000; page++ {
		q := url.Values{"dir": {"f"}, "limit": {"500"}}
		if from != "" {
			q.Set("from", from)
		}
		r := c.Do(t, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/messages?"+q.Encode(), nil).MustOK(t)
		var resp struct {
			Chunk []struct {
				EventID string `json:"event_id"`
				Type    string `json:"type"`
				Sender  string `json:"sender"`
				TS      int64  `json:"origin_server_ts"`
				Content struct {
					Body string `json:"body"`
				} `json:"content"`
			} `json:"chunk"`
			End string `json:"end"`
		}
		if err := json.Unmarshal(r.Raw, &resp); err != nil {
			t.Fatalf("messages: %v", err)
		}
		for _, e := range resp.Chunk {
			if e.Type == "m.room.message" {
				out = append(out, timelineEvent{ID: e.EventID, Sender: e.Sender, Body: e.Content.Body, TS: e.TS})
			}
		}
		if resp.End == "" || len(resp.Chunk) == 0 {
			return out
		}
		from = resp.End
	}
	t.Fatalf("messages of %s: more than 1000 pages", roomID)
	return nil
}

// check verifies, after stop, what a fault must never break:
//   - every send was acknowledged in the end (a client retrying its
//     transaction ID gets through once the fault is over);
//   - every acknowledged event is in the room's timeline exactly once,
//     and in order: after every event acknowledged before its own send
//     began (each sender's own messages in the order it sent them);
//   - no transaction ID made two events, and nothing appeared that no
//     sender sent;
//   - a retry of every transaction ID now returns the event the room
//     holds for it;
//   - /sync answers.
func (l *sendLoad) check(t *testing.T) {
	t.Helper()
	l.stop()
	l.report(t)
	// Clients at the server's current address.
	at := func(c *testserver.Client) *testserver.Client {
		cc := *c
		cc.Base = *l.base.Load()
		return &cc
	}
	owner := at(l.room.Owner)
	// The roomserver has every acknowledged event; syncapi, which serves
	// /messages, may still be catching up after the fault (its consumer
	// retries a failed message with a backoff).
	var timeline []timelineEvent
	poll.Until(t, 30*time.Second, func() error {
		timeline = roomMessages(t, owner, l.room.ID)
		have := make(map[string]bool, len(timeline))
		for _, e := range timeline {
			have[e.ID] = true
		}
		missing := 0
		for _, s := range l.senders {
			for _, sd := range s.sends {
				if sd.eventID != "" && !have[sd.eventID] {
					missing++
				}
			}
		}
		if missing > 0 {
			return fmt.Errorf("%d acknowledged events are not in the timeline", missing)
		}
		return nil
	})
	pos := map[string]int{}    // event ID -> index in timeline
	byBody := map[string]int{} // body -> index in timeline
	for i, e := range timeline {
		if _, dup := pos[e.ID]; dup {
			t.Errorf("event %s is in the timeline twice", e.ID)
		}
		pos[e.ID] = i
		if j, dup := byBody[e.Body]; dup {
			t.Errorf("message %q is in the timeline twice: %s and %s (one transaction ID, two events)", e.Body, timeline[j].ID, e.ID)
		}
		byBody[e.Body] = i
	}
	type ackedSend struct {
		*send
		pos int
	}
	var all []ackedSend
	sent := map[string]bool{}
	for _, s := range l.senders {
		s.mu.Lock()
		sends := append([]*send(nil), s.sends...)
		s.mu.Unlock()
		for _, sd := range sends {
			sent[sd.body] = true
			if sd.eventID == "" {
				t.Errorf("%s: transaction %s was never acknowledged (%d attempts)", s.name, sd.txn, sd.attempts)
				continue
			}
			p, ok := pos[sd.eventID]
			if !ok {
				t.Errorf("%s: acknowledged event %s (%q) is not in the timeline", s.name, sd.eventID, sd.body)
				continue
			}
			if timeline[p].Body != sd.body {
				t.Errorf("%s: acknowledged event %s has body %q, want %q", s.name, sd.eventID, timeline[p].Body, sd.body)
			}
			all = append(all, ackedSend{sd, p})
		}
	}
	for _, e := range timeline {
		if !sent[e.Body] {
			t.Errorf("the timeline holds %s (%q), which no sender sent", e.ID, e.Body)
		}
	}
	// Order: walk the sends by first attempt, keeping the furthest
	// timeline position of everything acknowledged before.
	sort.Slice(all, func(i, j int) bool { return all[i].acked < all[j].acked })
	byStart := append([]ackedSend(nil), all...)
	sort.Slice(byStart, func(i, j int) bool { return byStart[i].start < byStart[j].start })
	furthest, latest, k := -1, "", 0
	for _, b := range byStart {
		for ; k < len(all) && all[k].acked < b.start; k++ {
			if all[k].pos > furthest {
				furthest, latest = all[k].pos, all[k].body
			}
		}
		if b.pos < furthest {
			t.Errorf("%q is before %q in the timeline, but was sent after that was acknowledged", b.body, latest)
		}
	}
	// Retries: every transaction ID returns the event the room holds.
	retried, storedAnyway := 0, 0
	for _, s := range l.senders {
		for _, sd := range s.sends {
			want := ""
			if i, ok := byBody[sd.body]; ok {
				want = timeline[i].ID
				if !sd.failed.IsZero() {
					retried++
					// Made by the attempt that failed (the server went
					// away before answering), and returned to the retry.
					if timeline[i].TS <= sd.failed.UnixMilli() {
						storedAnyway++
					}
				}
			}
			if want == "" {
				continue
			}
			r := at(s.c).Do(t, "PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(l.room.ID)+"/send/m.room.message/"+url.PathEscape(sd.txn),
				map[string]any{"msgtype": "m.text", "body": sd.body}).MustOK(t)
			if got := r.String("event_id"); got != want {
				t.Errorf("%s: retrying transaction %s returned %s, but the room holds %s", s.name, sd.txn, got, want)
			}
		}
	}
	r := owner.Do(t, "GET", "/_matrix/client/v3/sync?timeout=0", nil).MustOK(t)
	if !strings.Contains(string(r.Raw), l.room.ID) {
		t.Errorf("/sync does not show the room %s", l.room.ID)
	}
	t.Logf("check: %d acknowledged sends, all in the timeline of %d messages, in order, once each; "+
		"%d sends were retried after a failure, %d of them had been stored by the attempt that failed",
		len(all), len(timeline), retried, storedAnyway)
}
