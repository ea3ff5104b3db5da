package queue

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/sirupsen/logrus"

	"myelin/federationapi/storage"
	"myelin/internal/fedhttp"
	"myelin/internal/poll"
	"myelin/internal/signing"
	"myelin/internal/sqldb"
	"myelin/internal/sqldb/sqldbtest"
)

const origin = "origin.test"

// received is one /send request as the remote saw it.
type received struct {
	TxnID string
	PDUs  []string // the "id" field of each PDU
	EDUs  []string // the "n" field of each EDU's content
}

// remote is a federation server over TLS on loopback that records the
// transactions it receives, and answers 500 while failing is set.
type remote struct {
	srv  *httptest.Server
	name spec.ServerName
	ca   string

	mu       sync.Mutex
	failing  bool
	attempts []received // every request, failed or not
	accepted []received // the requests answered 200
	// failAt are the attempts (counted from 0) answered 500.
	failAt map[int]bool
	// inFlight counts the requests being answered, maxInFlight the most
	// at once.
	inFlight, maxInFlight int
	// hold, when set, is called with each attempt's number before it is
	// answered (outside the lock); it may block.
	hold func(attempt int, req *http.Request)
}

func newRemote(t testing.TB) *remote {
	t.Helper()
	r := &remote{}
	r.srv = httptest.NewTLSServer(http.HandlerFunc(r.serve))
	t.Cleanup(r.srv.Close)
	r.name = spec.ServerName(strings.TrimPrefix(r.srv.URL, "https://"))
	r.ca = filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(r.ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return r
}

func (r *remote) serve(w http.ResponseWriter, req *http.Request) {
	txnID, ok := strings.CutPrefix(req.URL.Path, "/_matrix/federation/v1/send/")
	if !ok || req.Method != http.MethodPut || !strings.HasPrefix(req.Header.Get("Authorization"), "X-Matrix origin=") {
		http.Error(w, `{"errcode":"M_UNRECOGNIZED"}`, http.StatusNotFound)
		return
	}
	var body struct {
		Origin string            `json:"origin"`
		PDUs   []json.RawMessage `json:"pdus"`
		EDUs   []gmsl.EDU        `json:"edus"`
	}
	if err := json.NewDecoder(req.Body).Decode(&body); err != nil || body.Origin != origin {
		http.Error(w, `{"errcode":"M_BAD_JSON"}`, http.StatusBadRequest)
		return
	}
	rec := received{TxnID: txnID}
	for _, p := range body.PDUs {
		var ev struct{ ID string }
		_ = json.Unmarshal(p, &ev)
		rec.PDUs = append(rec.PDUs, ev.ID)
	}
	for _, e := range body.EDUs {
		var c struct{ N string }
		_ = json.Unmarshal(e.Content, &c)
		rec.EDUs = append(rec.EDUs, c.N)
	}
	r.mu.Lock()
	n, hold := len(r.attempts), r.hold
	r.attempts = append(r.attempts, rec)
	r.inFlight++
	r.maxInFlight = max(r.maxInFlight, r.inFlight)
	r.mu.Unlock()
	if hold != nil {
		hold(n, req)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.inFlight--
	if r.failing || r.failAt[n] {
		http.Error(w, `{"errcode":"M_UNKNOWN"}`, http.StatusInternalServerError)
		return
	}
	r.accepted = append(r.accepted, rec)
	_, _ = w.Write([]byte(`{"pdus":{}}`))
}

func (r *remote) setFailing(f bool) {
	r.mu.Lock()
	r.failing = f
	r.mu.Unlock()
}

func (r *remote) counts() (attempts, accepted int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.attempts), len(r.accepted)
}

// deliveredPDUs lists the PDUs of the accepted transactions, in order.
func (r *remote) deliveredPDUs() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, a := range r.accepted {
		out = append(out, a.PDUs...)
	}
	return out
}

// env is a sending server: its database and queues.
type env struct {
	t      testing.TB
	dbURL  string
	db     *sqldb.DB
	store  *storage.Storage
	q      *Queues
	stop   context.CancelFunc
	sender Sender
}

func openStore(t testing.TB, dbURL string) (*sqldb.DB, *storage.Storage) {
	t.Helper()
	db, err := sqldb.Open(context.Background(), dbURL, sqldb.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	st, err := storage.Open(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	return db, st
}

// client is a federation client signing as origin, trusting r's
// certificate, resolving no name through DNS (r is named by its address).
func client(t testing.TB, r *remote) Sender { return clientFor(t, r) }

// clientFor is client trusting the certificates of all of rs.
func clientFor(t testing.TB, rs ...*remote) Sender {
	t.Helper()
	var cas []string
	for _, r := range rs {
		cas = append(cas, r.ca)
	}
	key, err := signing.LoadOrGenerate(filepath.Join(t.TempDir(), "key"), origin)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := fedhttp.New(fedhttp.Options{CAFiles: cas, Timeout: 5 * time.Second, AllowPrivate: true, Resolver: &fedhttp.Resolver{
		LookupSRV: func(context.Context, string, string, string) ([]*net.SRV, error) {
			return nil, &net.DNSError{Err: "no DNS in tests", IsNotFound: true}
		},
		LookupHost: func(_ context.Context, host string) ([]netip.Addr, error) {
			return nil, &net.DNSError{Err: "no DNS in tests", Name: host, IsNotFound: true}
		},
	}})
	if err != nil {
		t.Fatal(err)
	}
	return fclient.NewFederationClient([]*fclient.SigningIdentity{{ServerName: origin, KeyID: key.KeyID, PrivateKey: key.Private}},
		fclient.WithTransport(tr), fclient.WithTimeout(5*time.Second))
}

func newEnv(t testing.TB, dbURL string, r *remote) *env {
	db, st := openStore(t, dbURL)
	return &env{t: t, dbURL: dbURL, db: db, store: st, sender: client(t, r)}
}

// start starts queues on the env's database (a restart makes new ones).
func (e *env) start(opts Options) {
	e.t.Helper()
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	opts.Origin, opts.Sender, opts.Store, opts.Log = origin, e.sender, e.store, logrus.NewEntry(log)
	if opts.MinBackoff == 0 {
		opts.MinBackoff = 10 * time.Millisecond
	}
	e.q = New(opts)
	ctx, cancel := context.WithCancel(context.Background())
	if err := e.q.Start(ctx); err != nil {
		e.t.Fatal(err)
	}
	q := e.q
	e.stop = func() { cancel(); q.Wait() }
	e.t.Cleanup(e.stop)
}

// event queues a PDU of this server in room for the servers in it; room
// members are dest's, joined once per room.
func (e *env) event(room, id string, dest spec.ServerName) {
	e.t.Helper()
	ev := storage.RoomEvent{
		RoomID: room, EventID: id, Self: origin, Send: true,
		JSON:  fmt.Sprintf(`{"id":%q,"room_id":%q}`, id, room),
		Joins: []storage.Join{{EventID: "$join-" + room, Server: string(dest)}},
	}
	dests, err := e.store.RecordEvent(context.Background(), ev)
	if err != nil {
		e.t.Fatal(err)
	}
	if e.q != nil {
		e.q.Queued(dests)
	}
}

func (e *env) edu(n string, dest spec.ServerName) {
	e.t.Helper()
	q := e.q
	if q == nil {
		q = New(Options{Origin: origin, Store: e.store})
	}
	if err := q.SendEDU(context.Background(), gmsl.EDU{Type: "m.typing", Content: spec.RawJSON(fmt.Sprintf(`{"n":%q}`, n))}, []spec.ServerName{dest, origin}); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) queueEmpty(dest spec.ServerName) {
	e.t.Helper()
	poll.Until(e.t, 10*time.Second, func() error {
		p, d, err := e.store.QueueLength(context.Background(), string(dest))
		if err != nil || p+d > 0 {
			return fmt.Errorf("queue of %s: %d PDUs, %d EDUs (%v)", dest, p, d, err)
		}
		// No JSON is left that no queue refers to.
		var n int
		if err := e.db.QueryRow(context.Background(), `SELECT COUNT(*) FROM federationapi_queue_json j
			WHERE NOT EXISTS (SELECT 1 FROM federationapi_queue q WHERE q.json_nid = j.json_nid)`).Scan(&n); err != nil || n > 0 {
			return fmt.Errorf("%d queued JSON left unreferenced (%v)", n, err)
		}
		return nil
	})
}

func ids(prefix string, from, to int) []string {
	var out []string
	for i := from; i < to; i++ {
		out = append(out, fmt.Sprintf("%s%03d", prefix, i))
	}
	return out
}

func equal(a, b []string) bool {
	return strings.Join(a, ",") == strings.Join(b, ",")
}

// TestBatching: what was queued before the queue starts goes in
// transactions of at most 50 PDUs and 100 EDUs, in queue order.
func TestBatching(t *testing.T) {
	cases := []struct {
		name       string
		pdus, edus int
		// sizes of the transactions sent: PDUs and EDUs in each
		want [][2]int
	}{
		{"one event", 1, 0, [][2]int{{1, 0}}},
		{"exactly 50", 50, 0, [][2]int{{50, 0}}},
		{"120 events", 120, 0, [][2]int{{50, 0}, {50, 0}, {20, 0}}},
		{"edus only", 0, 230, [][2]int{{0, 100}, {0, 100}, {0, 30}}},
		{"both", 60, 150, [][2]int{{50, 100}, {10, 50}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sqldbtest.Each(t, func(t *testing.T, dbURL string) {
				r := newRemote(t)
				e := newEnv(t, dbURL, r)
				for _, id := range ids("$e", 0, c.pdus) {
					e.event("!room:origin.test", id, r.name)
				}
				for _, n := range ids("edu", 0, c.edus) {
					e.edu(n, r.name)
				}
				e.start(Options{})
				e.queueEmpty(r.name)
				r.mu.Lock()
				defer r.mu.Unlock()
				var sizes [][2]int
				var pdus, edus []string
				seen := map[string]bool{}
				for _, a := range r.accepted {
					sizes = append(sizes, [2]int{len(a.PDUs), len(a.EDUs)})
					pdus, edus = append(pdus, a.PDUs...), append(edus, a.EDUs...)
					if seen[a.TxnID] {
						t.Errorf("txn ID %s used for two transactions", a.TxnID)
					}
					seen[a.TxnID] = true
				}
				if fmt.Sprint(sizes) != fmt.Sprint(c.want) {
					t.Errorf("transactions %v, want %v", sizes, c.want)
				}
				if !equal(pdus, ids("$e", 0, c.pdus)) || !equal(edus, ids("edu", 0, c.edus)) {
					t.Errorf("out of order: pdus %v edus %v", pdus, edus)
				}
			})
		})
	}
}

// TestOrderWhileSending: events queued while transactions are in flight
// reach the remote in the order they were queued.
func TestOrderWhileSending(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		r := newRemote(t)
		e := newEnv(t, dbURL, r)
		e.start(Options{})
		want := ids("$e", 0, 200)
		for _, id := range want {
			e.event("!room:origin.test", id, r.name)
		}
		e.queueEmpty(r.name)
		if got := r.deliveredPDUs(); !equal(got, want) {
			t.Fatalf("delivered %v", got)
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.maxInFlight != 1 {
			t.Errorf("%d transactions in flight at once, want 1", r.maxInFlight)
		}
	})
}

// TestFailureWhilePipelined: while a transaction is in flight the next one
// is taken ahead; when the one in flight fails, it is sent again under its
// ID before the one taken ahead, and nothing is lost or reordered.
func TestFailureWhilePipelined(t *testing.T) {
	cases := []struct {
		name   string
		failAt []int
	}{
		{"first", []int{0}},
		{"second", []int{1}},
		{"third twice", []int{2, 3}},
		{"every other", []int{1, 3, 5}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sqldbtest.Each(t, func(t *testing.T, dbURL string) {
				r := newRemote(t)
				r.failAt = map[int]bool{}
				for _, n := range c.failAt {
					r.failAt[n] = true
				}
				e := newEnv(t, dbURL, r)
				want := ids("$e", 0, 230)
				for _, id := range want {
					e.event("!room:origin.test", id, r.name)
				}
				e.start(Options{MinBackoff: 10 * time.Millisecond})
				e.queueEmpty(r.name)
				if got := r.deliveredPDUs(); !equal(got, want) {
					t.Fatalf("delivered %v", got)
				}
				r.mu.Lock()
				defer r.mu.Unlock()
				for i, a := range r.attempts {
					if r.failAt[i] && (i+1 >= len(r.attempts) || r.attempts[i+1].TxnID != a.TxnID || !equal(r.attempts[i+1].PDUs, a.PDUs)) {
						t.Errorf("attempt %d (%s) failed and was not sent again next", i, a.TxnID)
					}
				}
				if r.maxInFlight != 1 {
					t.Errorf("%d transactions in flight at once, want 1", r.maxInFlight)
				}
			})
		})
	}
}

// TestStopWhilePipelined: a sender stopped while a transaction is in
// flight (the one after it taken ahead, the one before it acknowledged
// but perhaps not yet marked sent) loses nothing: after a restart every
// event arrives, in order; a transaction sent twice has the same ID and
// the same events (the remote answers it from its record).
func TestStopWhilePipelined(t *testing.T) {
	for _, at := range []int{1, 2, 4} {
		t.Run(fmt.Sprintf("stopped at attempt %d", at), func(t *testing.T) {
			sqldbtest.Each(t, func(t *testing.T, dbURL string) {
				r := newRemote(t)
				held := make(chan struct{})
				r.hold = func(n int, req *http.Request) {
					if n == at {
						close(held)
						<-req.Context().Done()
					}
				}
				e := newEnv(t, dbURL, r)
				want := ids("$e", 0, 400)
				for _, id := range want {
					e.event("!room:origin.test", id, r.name)
				}
				e.start(Options{})
				select {
				case <-held:
				case <-time.After(10 * time.Second):
					t.Fatal("no attempt held")
				}
				e.stop()
				r.mu.Lock()
				r.hold = nil
				r.mu.Unlock()
				e2 := newEnv(t, dbURL, r)
				e2.start(Options{})
				e2.queueEmpty(r.name)
				r.mu.Lock()
				defer r.mu.Unlock()
				byID := map[string][]string{}
				var got []string
				for _, a := range r.accepted {
					if prev, ok := byID[a.TxnID]; ok {
						if !equal(prev, a.PDUs) {
							t.Errorf("transaction %s sent with %v, then %v", a.TxnID, prev, a.PDUs)
						}
						continue
					}
					byID[a.TxnID] = a.PDUs
					got = append(got, a.PDUs...)
				}
				if !equal(got, want) {
					t.Fatalf("delivered %v", got)
				}
			})
		})
	}
}

// TestRetry: a transaction the remote fails is sent again after a backoff,
// with the same ID and the same events, until it is accepted.
func TestRetry(t *testing.T) {
	cases := []struct {
		name     string
		failures int
	}{
		{"no failure", 0},
		{"one failure", 1},
		{"four failures", 4},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sqldbtest.Each(t, func(t *testing.T, dbURL string) {
				r := newRemote(t)
				e := newEnv(t, dbURL, r)
				r.setFailing(c.failures > 0)
				for _, id := range ids("$e", 0, 3) {
					e.event("!room:origin.test", id, r.name)
				}
				start := time.Now()
				e.start(Options{MinBackoff: 20 * time.Millisecond})
				poll.True(t, 10*time.Second, "failed attempts", func() bool { a, _ := r.counts(); return a >= c.failures })
				r.setFailing(false)
				e.queueEmpty(r.name)
				r.mu.Lock()
				defer r.mu.Unlock()
				if len(r.accepted) != 1 || len(r.attempts) < c.failures+1 {
					t.Fatalf("accepted %d of %d attempts", len(r.accepted), len(r.attempts))
				}
				for _, a := range r.attempts {
					if a.TxnID != r.accepted[0].TxnID || !equal(a.PDUs, ids("$e", 0, 3)) {
						t.Fatalf("retry changed the transaction: %+v vs %+v", a, r.accepted[0])
					}
				}
				// Backoff: 20, 40, 80 ms... between the failed attempts.
				if min := time.Duration(20*(1<<c.failures)-20) * time.Millisecond; time.Since(start) < min {
					t.Errorf("%d retries in %v: no backoff", c.failures, time.Since(start))
				}
				d, err := e.store.Destination(context.Background(), string(r.name))
				if err != nil || d.Failures != 0 || d.RetryAt != 0 {
					t.Errorf("destination after success: %+v %v", d, err)
				}
			})
		})
	}
}

// TestRestart: nothing queued is lost when the sender stops while the
// remote is down, and the transaction tried before the stop is sent again
// under its ID.
func TestRestart(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		r := newRemote(t)
		e := newEnv(t, dbURL, r)
		r.setFailing(true)
		e.start(Options{MinBackoff: time.Hour})
		want := ids("$e", 0, 70)
		for _, id := range want {
			e.event("!room:origin.test", id, r.name)
		}
		e.edu("edu0", r.name)
		poll.True(t, 10*time.Second, "a failed attempt", func() bool { a, _ := r.counts(); return a >= 1 })
		e.stop()
		r.mu.Lock()
		first := r.attempts[0].TxnID
		r.mu.Unlock()

		// A new process on the same database; the remote is back, and
		// the backoff (an hour) was cut short by its request.
		r.setFailing(false)
		e2 := newEnv(t, dbURL, r)
		e2.start(Options{MinBackoff: time.Hour})
		if err := e2.q.MarkAlive(context.Background(), r.name); err != nil {
			t.Fatal(err)
		}
		e2.queueEmpty(r.name)
		if got := r.deliveredPDUs(); !equal(got, want) {
			t.Fatalf("delivered %v", got)
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.accepted[0].TxnID != first {
			t.Errorf("first transaction after restart is %s, want the retried %s", r.accepted[0].TxnID, first)
		}
		n := 0
		for _, a := range r.accepted {
			n += len(a.EDUs)
		}
		if n != 1 {
			t.Errorf("EDUs delivered: %d", n)
		}
	})
}

// TestCatchUp: after a long outage the remote gets the latest event of
// each room only (it fetches the rest with /get_missing_events); after a
// short one, everything.
func TestCatchUp(t *testing.T) {
	cases := []struct {
		name         string
		catchUpAfter time.Duration
		want         []string
	}{
		{"short outage", time.Hour, append(ids("$a", 0, 10), ids("$b", 0, 5)...)},
		{"long outage", 100 * time.Millisecond, []string{"$a009", "$b004"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sqldbtest.Each(t, func(t *testing.T, dbURL string) {
				r := newRemote(t)
				e := newEnv(t, dbURL, r)
				r.setFailing(true)
				for _, id := range ids("$a", 0, 10) {
					e.event("!a:origin.test", id, r.name)
				}
				for _, id := range ids("$b", 0, 5) {
					e.event("!b:origin.test", id, r.name)
				}
				e.start(Options{MinBackoff: 20 * time.Millisecond, CatchUpAfter: c.catchUpAfter})
				poll.True(t, 10*time.Second, "the outage", func() bool {
					d, _ := e.store.Destination(context.Background(), string(r.name))
					return d.Failures > 0 && time.Since(time.UnixMilli(d.FailingSince)) > 150*time.Millisecond
				})
				r.setFailing(false)
				e.queueEmpty(r.name)
				got := r.deliveredPDUs()
				if !equal(got, c.want) {
					t.Fatalf("delivered %v, want %v", got, c.want)
				}
			})
		})
	}
}

// TestBlacklist: a server failing past the backoff limit is no longer
// tried; its queue keeps only the latest event of each room, and no EDU;
// when it contacts us it gets them at once.
func TestBlacklist(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		ctx := context.Background()
		r := newRemote(t)
		e := newEnv(t, dbURL, r)
		r.setFailing(true)
		// Delays 10, 20, 40 ms; the next (80) is past the limit.
		e.start(Options{MinBackoff: 10 * time.Millisecond, BlacklistAfter: 50 * time.Millisecond})
		e.event("!a:origin.test", "$a000", r.name)
		poll.True(t, 10*time.Second, "the blacklisting", func() bool {
			d, _ := e.store.Destination(ctx, string(r.name))
			return d.Blacklisted
		})
		if a, _ := r.counts(); a != 4 {
			t.Errorf("%d attempts before giving up, want 4", a)
		}
		for _, id := range ids("$a", 1, 5) {
			e.event("!a:origin.test", id, r.name)
		}
		e.event("!b:origin.test", "$b000", r.name)
		e.edu("stale", r.name)
		if p, d, _ := e.store.QueueLength(ctx, string(r.name)); p != 2 || d != 0 {
			t.Errorf("queue of a dead server: %d PDUs, %d EDUs; want 2, 0", p, d)
		}
		if a, _ := r.counts(); a != 4 {
			t.Errorf("a dead server was tried again: %d attempts", a)
		}
		// Another server's request does not wake it.
		if err := e.q.MarkAlive(ctx, "other.test"); err != nil {
			t.Fatal(err)
		}
		r.setFailing(false)
		if err := e.q.MarkAlive(ctx, r.name); err != nil {
			t.Fatal(err)
		}
		e.queueEmpty(r.name)
		if got := r.deliveredPDUs(); !equal(got, []string{"$a004", "$b000"}) {
			t.Fatalf("delivered %v", got)
		}
		d, err := e.store.Destination(ctx, string(r.name))
		if err != nil || d.Blacklisted || d.Failures != 0 {
			t.Fatalf("destination after wake-up: %+v %v", d, err)
		}
		// Alive again: EDUs are queued and sent.
		e.edu("fresh", r.name)
		e.queueEmpty(r.name)
	})
}

// TestDestinationsIndependent: a destination that fails holds up no other.
func TestDestinationsIndependent(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		down, up := newRemote(t), newRemote(t)
		down.setFailing(true)
		e := newEnv(t, dbURL, down)
		// One client trusting both certificates: rebuild it with both.
		e.sender = clientFor(t, down, up)
		e.start(Options{MinBackoff: time.Hour})
		want := ids("$e", 0, 60)
		for _, id := range want {
			ev := storage.RoomEvent{
				RoomID: "!r:origin.test", EventID: id, Self: origin, Send: true, JSON: fmt.Sprintf(`{"id":%q}`, id),
				Joins: []storage.Join{{EventID: "$down", Server: string(down.name)}, {EventID: "$up", Server: string(up.name)}},
			}
			dests, err := e.store.RecordEvent(context.Background(), ev)
			if err != nil {
				t.Fatal(err)
			}
			if len(dests) != 2 {
				t.Fatalf("queued for %v", dests)
			}
			e.q.Queued(dests)
		}
		e.queueEmpty(up.name)
		if got := up.deliveredPDUs(); !equal(got, want) {
			t.Fatalf("delivered %v", got)
		}
		if p, _, _ := e.store.QueueLength(context.Background(), string(down.name)); p != 60 {
			t.Fatalf("%d queued for the failing destination, want 60", p)
		}
	})
}

// BenchmarkSend measures queueing an event (the consumer's write) and
// sending it to a remote over TLS, in transactions of 50.
func BenchmarkSend(b *testing.B) {
	for _, dialect := range sqldbtest.Dialects {
		b.Run(dialect, func(b *testing.B) {
			r := newRemote(b)
			e := newEnv(b, sqldbtest.URL(b, dialect), r)
			e.start(Options{})
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				e.event("!room:origin.test", fmt.Sprintf("$e%d", i), r.name)
			}
			e.queueEmpty(r.name)
			b.StopTimer()
			if got := len(r.deliveredPDUs()); got != b.N {
				b.Fatalf("delivered %d of %d", got, b.N)
			}
		})
	}
}
