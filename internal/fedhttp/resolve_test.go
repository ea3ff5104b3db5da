package fedhttp

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"myelin/internal/poll"
	"myelin/internal/testca"
)

// fakeNet is a test's DNS and .well-known hosts: names map to loopback,
// SRV records and .well-known answers come from its tables, and nothing
// reaches the network.
type fakeNet struct {
	mu        sync.Mutex
	srv       map[string][]*net.SRV // "_service._proto.name"
	hosts     map[string][]netip.Addr
	wellKnown map[string]wellKnownAnswer // by host
	fetches   map[string]int             // .well-known fetches by host
	gate      chan struct{}              // when set, answers wait for it to close
}

type wellKnownAnswer struct {
	status int
	body   string
	header http.Header
}

func (f *fakeNet) resolver() *Resolver {
	return &Resolver{
		LookupSRV: func(_ context.Context, service, proto, name string) ([]*net.SRV, error) {
			f.mu.Lock()
			defer f.mu.Unlock()
			if r, ok := f.srv["_"+service+"._"+proto+"."+name]; ok {
				return r, nil
			}
			return nil, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
		},
		LookupHost: func(_ context.Context, host string) ([]netip.Addr, error) {
			f.mu.Lock()
			defer f.mu.Unlock()
			if a, ok := f.hosts[host]; ok {
				return a, nil
			}
			return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
		},
	}
}

func (f *fakeNet) set(fn func(f *fakeNet)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *fakeNet) fetchCount(host string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.fetches[host]
}

// ServeHTTP serves .well-known/matrix/server for whichever host is asked.
func (f *fakeNet) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	host, _, _ := net.SplitHostPort(r.Host)
	f.mu.Lock()
	f.fetches[host]++
	a, ok := f.wellKnown[host]
	gate := f.gate
	f.mu.Unlock()
	if gate != nil {
		<-gate
	}
	if !ok || r.URL.Path != "/.well-known/matrix/server" {
		http.NotFound(w, r)
		return
	}
	for k, v := range a.header {
		w.Header()[k] = v
	}
	if a.status == 0 {
		a.status = 200
	}
	w.WriteHeader(a.status)
	_, _ = io.WriteString(w, a.body)
}

// newFakeNet starts the .well-known server (TLS from a test CA, valid for
// every name the tests use) and a Transport resolving through it.
func newFakeNet(t *testing.T, clock func() time.Time) (*fakeNet, *Transport) {
	t.Helper()
	f := &fakeNet{
		srv:       map[string][]*net.SRV{},
		hosts:     map[string][]netip.Addr{},
		wellKnown: map[string]wellKnownAnswer{},
		fetches:   map[string]int{},
	}
	ca := testca.New(t)
	srv := httptest.NewUnstartedServer(f)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{ca.TLS("a.test", "b.test", "c.test", "d.test", "e.test", "f.test", "g.test", "h.test")}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	p, _ := strconv.Atoi(port)
	for _, h := range []string{"a.test", "b.test", "c.test", "d.test", "e.test", "f.test", "g.test", "h.test"} {
		f.hosts[h] = []netip.Addr{netip.MustParseAddr("127.0.0.1")}
	}
	tr, err := New(Options{
		CAFiles:       []string{ca.File},
		Timeout:       5 * time.Second,
		ResolveTTL:    10 * time.Minute,
		AllowPrivate:  true,
		Resolver:      f.resolver(),
		WellKnownPort: p,
		Now:           clock,
	})
	if err != nil {
		t.Fatal(err)
	}
	return f, tr
}

func srvRecord(target string, port uint16) []*net.SRV {
	return []*net.SRV{{Target: target + ".", Port: port}}
}

func TestResolve(t *testing.T) {
	tests := []struct {
		name   string
		server spec.ServerName
		setup  func(f *fakeNet)
		want   []Target
	}{
		{"IPv4 literal takes port 8448", "127.0.0.5", nil,
			[]Target{{Addr: "127.0.0.5:8448", Host: "127.0.0.5", TLSName: "127.0.0.5"}}},
		{"IPv4 literal with port", "127.0.0.5:9000", nil,
			[]Target{{Addr: "127.0.0.5:9000", Host: "127.0.0.5:9000", TLSName: "127.0.0.5"}}},
		{"IPv6 literal with port", "[::1]:8000", nil,
			[]Target{{Addr: "[::1]:8000", Host: "[::1]:8000", TLSName: "::1"}}},
		{"explicit port skips .well-known and SRV", "a.test:1234", func(f *fakeNet) {
			f.wellKnown["a.test"] = wellKnownAnswer{body: `{"m.server":"b.test:1"}`}
			f.srv["_matrix-fed._tcp.a.test"] = srvRecord("x.test", 2)
		}, []Target{{Addr: "a.test:1234", Host: "a.test:1234", TLSName: "a.test"}}},
		{"well-known delegation with port", "a.test", func(f *fakeNet) {
			f.wellKnown["a.test"] = wellKnownAnswer{body: `{"m.server":"b.test:4444"}`}
		}, []Target{{Addr: "b.test:4444", Host: "b.test:4444", TLSName: "b.test"}}},
		{"well-known delegation to an IP literal", "a.test", func(f *fakeNet) {
			f.wellKnown["a.test"] = wellKnownAnswer{body: `{"m.server":"127.0.0.9"}`}
		}, []Target{{Addr: "127.0.0.9:8448", Host: "127.0.0.9", TLSName: "127.0.0.9"}}},
		{"well-known delegation then SRV of the delegated name", "a.test", func(f *fakeNet) {
			f.wellKnown["a.test"] = wellKnownAnswer{body: `{"m.server":"c.test"}`}
			f.srv["_matrix-fed._tcp.c.test"] = srvRecord("srv.c.test", 5555)
			f.srv["_matrix-fed._tcp.a.test"] = srvRecord("wrong.test", 1)
		}, []Target{{Addr: "srv.c.test:5555", Host: "c.test", TLSName: "c.test"}}},
		{"well-known delegation then legacy SRV", "a.test", func(f *fakeNet) {
			f.wellKnown["a.test"] = wellKnownAnswer{body: `{"m.server":"c.test"}`}
			f.srv["_matrix._tcp.c.test"] = srvRecord("old.c.test", 5556)
		}, []Target{{Addr: "old.c.test:5556", Host: "c.test", TLSName: "c.test"}}},
		{"well-known delegation without SRV takes 8448", "a.test", func(f *fakeNet) {
			f.wellKnown["a.test"] = wellKnownAnswer{body: `{"m.server":"c.test"}`}
		}, []Target{{Addr: "c.test:8448", Host: "c.test", TLSName: "c.test"}}},
		{"no well-known: SRV", "a.test", func(f *fakeNet) {
			f.srv["_matrix-fed._tcp.a.test"] = []*net.SRV{{Target: "s1.test.", Port: 1}, {Target: "s2.test.", Port: 2}}
		}, []Target{{Addr: "s1.test:1", Host: "a.test", TLSName: "a.test"}, {Addr: "s2.test:2", Host: "a.test", TLSName: "a.test"}}},
		{"no well-known: SRV before legacy SRV", "a.test", func(f *fakeNet) {
			f.srv["_matrix-fed._tcp.a.test"] = srvRecord("new.test", 1)
			f.srv["_matrix._tcp.a.test"] = srvRecord("old.test", 2)
		}, []Target{{Addr: "new.test:1", Host: "a.test", TLSName: "a.test"}}},
		{"no well-known: legacy SRV", "a.test", func(f *fakeNet) {
			f.srv["_matrix._tcp.a.test"] = srvRecord("old.test", 2)
		}, []Target{{Addr: "old.test:2", Host: "a.test", TLSName: "a.test"}}},
		{"nothing: port 8448", "a.test", nil,
			[]Target{{Addr: "a.test:8448", Host: "a.test", TLSName: "a.test"}}},
		{"SRV record '.' offers no service", "a.test", func(f *fakeNet) {
			f.srv["_matrix-fed._tcp.a.test"] = []*net.SRV{{Target: ".", Port: 0}}
		}, []Target{{Addr: "a.test:8448", Host: "a.test", TLSName: "a.test"}}},
		{"well-known that is not JSON is ignored", "a.test", func(f *fakeNet) {
			f.wellKnown["a.test"] = wellKnownAnswer{body: `<html>`}
			f.srv["_matrix-fed._tcp.a.test"] = srvRecord("s.test", 7)
		}, []Target{{Addr: "s.test:7", Host: "a.test", TLSName: "a.test"}}},
		{"well-known naming no server is ignored", "a.test", func(f *fakeNet) {
			f.wellKnown["a.test"] = wellKnownAnswer{body: `{"m.server":"bad name!"}`}
		}, []Target{{Addr: "a.test:8448", Host: "a.test", TLSName: "a.test"}}},
		{"well-known answering 404 is ignored", "a.test", func(f *fakeNet) {
			f.wellKnown["a.test"] = wellKnownAnswer{status: 404, body: `{"m.server":"b.test:1"}`}
		}, []Target{{Addr: "a.test:8448", Host: "a.test", TLSName: "a.test"}}},
		{"well-known redirect is followed", "a.test", func(f *fakeNet) {
			f.wellKnown["a.test"] = wellKnownAnswer{status: 302, header: http.Header{"Location": {"https://d.test:" + "PORT" + "/.well-known/matrix/server"}}}
			f.wellKnown["d.test"] = wellKnownAnswer{body: `{"m.server":"e.test:443"}`}
		}, []Target{{Addr: "e.test:443", Host: "e.test:443", TLSName: "e.test"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, tr := newFakeNet(t, nil)
			if tt.setup != nil {
				f.set(tt.setup)
			}
			f.set(func(f *fakeNet) { // the redirect names the server's real port
				for h, a := range f.wellKnown {
					if loc := a.header.Get("Location"); loc != "" {
						a.header.Set("Location", strings.Replace(loc, "PORT", strconv.Itoa(tr.wellKnownPort), 1))
						f.wellKnown[h] = a
					}
				}
			})
			got, err := tr.Resolve(context.Background(), tt.server)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestResolveInvalidName(t *testing.T) {
	_, tr := newFakeNet(t, nil)
	for _, name := range []spec.ServerName{"", "bad name", "a.test:notaport", "[::1"} {
		if got, err := tr.Resolve(context.Background(), name); err == nil {
			t.Errorf("%q resolved to %v", name, got)
		}
	}
}

// TestResolveCacheExpiry: a resolution is reused until the .well-known's
// max-age or ResolveTTL passes, whichever is first, then redone; an
// error is cached for an hour; Forget drops everything at once.
func TestResolveCacheExpiry(t *testing.T) {
	var mu sync.Mutex
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	f, tr := newFakeNet(t, clock)
	ctx := context.Background()
	resolve := func(name spec.ServerName) string {
		t.Helper()
		got, err := tr.Resolve(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		return got[0].Addr
	}
	steps := []struct {
		name    string
		change  func(f *fakeNet)
		advance time.Duration
		server  spec.ServerName
		want    string
	}{
		{"first resolution", func(f *fakeNet) {
			f.wellKnown["a.test"] = wellKnownAnswer{body: `{"m.server":"b.test:1"}`, header: http.Header{"Cache-Control": {"max-age=120"}}}
		}, 0, "a.test", "b.test:1"},
		{"within max-age: cached", func(f *fakeNet) {
			f.wellKnown["a.test"] = wellKnownAnswer{body: `{"m.server":"c.test:2"}`}
		}, 100 * time.Second, "a.test", "b.test:1"},
		{"past max-age: fetched again", nil, 30 * time.Second, "a.test", "c.test:2"},
		{"no cache headers: kept past ResolveTTL's well-known, SRV redone", func(f *fakeNet) {
			f.wellKnown["a.test"] = wellKnownAnswer{body: `{"m.server":"d.test:3"}`}
		}, 11 * time.Minute, "a.test", "c.test:2"},
		{"SRV without well-known: cached for ResolveTTL", func(f *fakeNet) {
			f.srv["_matrix-fed._tcp.f.test"] = srvRecord("one.test", 1)
		}, 0, "f.test", "one.test:1"},
		{"SRV changed, still cached", func(f *fakeNet) {
			f.srv["_matrix-fed._tcp.f.test"] = srvRecord("two.test", 2)
		}, 5 * time.Minute, "f.test", "one.test:1"},
		{"SRV changed, past ResolveTTL", nil, 6 * time.Minute, "f.test", "two.test:2"},
		{"a second host resolves on its own", func(f *fakeNet) {
			f.wellKnown["g.test"] = wellKnownAnswer{body: `{"m.server":"h.test:9"}`}
		}, 0, "g.test", "h.test:9"},
	}
	for _, s := range steps {
		if s.change != nil {
			f.set(s.change)
		}
		advance(s.advance)
		if got := resolve(s.server); got != s.want {
			t.Fatalf("%s: %s resolved to %s, want %s", s.name, s.server, got, s.want)
		}
	}
	// A .well-known fetched with max-age far beyond 48 hours is kept 48.
	f.set(func(f *fakeNet) {
		f.wellKnown["e.test"] = wellKnownAnswer{body: `{"m.server":"x.test:1"}`, header: http.Header{"Cache-Control": {"max-age=9999999"}}}
	})
	if got := resolve("e.test"); got != "x.test:1" {
		t.Fatalf("e.test: %s", got)
	}
	fetched := f.fetchCount("e.test")
	for range 5 {
		advance(10 * time.Hour) // 50 hours in all: refetched once the 48 pass
		resolve("e.test")
	}
	if n := f.fetchCount("e.test") - fetched; n != 1 {
		t.Fatalf("e.test fetched %d more times in 50 hours, want 1", n)
	}
	// Errors: h.test has no well-known; fetched once, then not for an hour.
	resolve("h.test")
	n := f.fetchCount("h.test")
	advance(30 * time.Minute)
	tr.mu.Lock()
	delete(tr.resolved, "h.test") // only the resolution, not the well-known
	tr.mu.Unlock()
	resolve("h.test")
	if got := f.fetchCount("h.test"); got != n {
		t.Fatalf("a failed .well-known was fetched again within the hour (%d then %d)", n, got)
	}
	tr.Forget("h.test")
	resolve("h.test")
	if got := f.fetchCount("h.test"); got != n+1 {
		t.Fatalf("after Forget the .well-known was not fetched again (%d then %d)", n, got)
	}
}

func TestCacheTTL(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name   string
		header http.Header
		want   time.Duration
	}{
		{"none: a day", nil, 24 * time.Hour},
		{"max-age", http.Header{"Cache-Control": {"public, max-age=3600"}}, time.Hour},
		{"max-age capped at 48h", http.Header{"Cache-Control": {"max-age=999999"}}, 48 * time.Hour},
		{"no-cache floored to a minute", http.Header{"Cache-Control": {"no-cache"}}, time.Minute},
		{"expires", http.Header{"Expires": {now.Add(2 * time.Hour).Format(http.TimeFormat)}}, 2 * time.Hour},
		{"bad expires", http.Header{"Expires": {"soon"}}, time.Minute},
		{"max-age wins over expires", http.Header{"Cache-Control": {"max-age=600"}, "Expires": {now.Add(2 * time.Hour).Format(http.TimeFormat)}}, 10 * time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := cacheTTL(tt.header, now); got != tt.want {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

// TestPrivateAddresses: without allow_private_addresses a federation
// request to a loopback or private address is refused before connecting,
// whether the name is an IP literal or resolves to one.
func TestPrivateAddresses(t *testing.T) {
	f := &fakeNet{hosts: map[string][]netip.Addr{
		"loop.test":  {netip.MustParseAddr("127.0.0.1")},
		"lan.test":   {netip.MustParseAddr("192.168.1.10")},
		"v6.test":    {netip.MustParseAddr("::ffff:10.0.0.1")},
		"local.test": {netip.MustParseAddr("fe80::1")},
	}, srv: map[string][]*net.SRV{}}
	tr, err := New(Options{Resolver: f.resolver(), WellKnownPort: 1, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"127.0.0.1:8448", "10.1.2.3:8448", "[::1]:8448", "loop.test:8448", "lan.test:8448", "v6.test:8448", "local.test:8448", "100.64.0.1:8448"} {
		t.Run(name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", "matrix://"+name+"/_matrix/federation/v1/version", nil)
			_, err := tr.RoundTrip(req)
			if !errors.Is(err, ErrPrivateAddress) {
				t.Fatalf("got %v, want %v", err, ErrPrivateAddress)
			}
		})
	}
}

// TestResolveOnce: requests for a name being resolved wait for that
// resolution: ten at once make one .well-known fetch.
func TestResolveOnce(t *testing.T) {
	f, tr := newFakeNet(t, nil)
	gate := make(chan struct{})
	f.set(func(f *fakeNet) {
		f.wellKnown["a.test"] = wellKnownAnswer{body: `{"m.server":"b.test:1"}`}
		f.gate = gate
	})
	var started atomic.Int32
	results := make(chan string, 10)
	for range 10 {
		go func() {
			started.Add(1)
			got, err := tr.Resolve(context.Background(), "a.test")
			if err != nil {
				results <- err.Error()
				return
			}
			results <- got[0].Addr
		}()
	}
	poll.True(t, 10*time.Second, "the burst to start and one fetch to arrive", func() bool {
		return started.Load() == 10 && f.fetchCount("a.test") >= 1
	})
	close(gate)
	for range 10 {
		if got := <-results; got != "b.test:1" {
			t.Errorf("resolved to %s", got)
		}
	}
	if n := f.fetchCount("a.test"); n != 1 {
		t.Errorf("%d .well-known fetches, want 1", n)
	}
}
