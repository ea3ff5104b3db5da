package netguard

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"
)

func TestAllowed(t *testing.T) {
	g, err := New([]string{"203.0.114.0/24", "8.8.4.4"}, []string{"127.0.0.1/32", "10.9.0.0/16"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		addr string
		want bool
	}{
		{"1.1.1.1", true},
		{"2606:4700::1111", true},
		{"8.8.8.8", true},
		{"127.0.0.1", true},        // allow list
		{"10.9.3.4", true},         // allow list wins over private
		{"127.0.0.2", false},       // loopback, not the allowed one
		{"::1", false},             // loopback
		{"10.1.2.3", false},        // private
		{"172.16.0.1", false},      // private
		{"192.168.1.1", false},     // private
		{"169.254.169.254", false}, // link-local (cloud metadata)
		{"100.64.0.1", false},      // CGNAT
		{"224.0.0.1", false},       // multicast
		{"0.0.0.0", false},         // unspecified
		{"::", false},              // unspecified
		{"fe80::1", false},         // link-local
		{"fd00::1", false},         // ULA
		{"fc00::1", false},         // ULA
		{"ff02::1", false},         // multicast
		{"::ffff:127.0.0.1", true}, // mapped, its IPv4 allowed
		{"::ffff:1.1.1.1", false},  // mapped: refused as such
		{"::ffff:10.0.0.1", false}, // mapped private
		{"64:ff9b::a00:1", false},  // NAT64
		{"2001:db8::1", false},     // documentation
		{"203.0.114.7", false},     // deny list
		{"8.8.4.4", false},         // deny list, one address
		{"255.255.255.255", false}, // reserved (240/4)
		{"fec0::1", false},         // site-local
		{"198.18.0.1", false},      // benchmarking
	} {
		if got := g.Allowed(netip.MustParseAddr(tc.addr)); got != tc.want {
			t.Errorf("Allowed(%s) = %v, want %v", tc.addr, got, tc.want)
		}
	}
}

func TestNewRefusesBadRanges(t *testing.T) {
	for _, bad := range []string{"10.0.0.0/33", "not an address", "1.2.3"} {
		if _, err := New([]string{bad}, nil); err == nil {
			t.Errorf("deny %q accepted", bad)
		}
		if _, err := New(nil, []string{bad}); err == nil {
			t.Errorf("allow %q accepted", bad)
		}
	}
}

// TestDialerRefusesLoopback dials a server on loopback by address and by
// a name resolving to it: the guard refuses both before connecting (the
// server sees nothing), and an allow list lets them through.
func TestDialerRefusesLoopback(t *testing.T) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits.Add(1) }))
	defer srv.Close()
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	for _, tc := range []struct {
		name  string
		allow []string
		host  string
		ok    bool
	}{
		{"address refused", nil, "127.0.0.1", false},
		{"name resolving to loopback refused", nil, "localhost", false},
		{"address allowed", []string{"127.0.0.1"}, "127.0.0.1", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g, err := New(nil, tc.allow)
			if err != nil {
				t.Fatal(err)
			}
			before := hits.Load()
			d := g.Dialer(net.Dialer{Timeout: 5 * time.Second})
			// tcp4: localhost resolves to ::1 too, where nothing listens.
			c, err := d.DialContext(context.Background(), "tcp4", net.JoinHostPort(tc.host, port))
			if tc.ok {
				if err != nil {
					t.Fatal(err)
				}
				c.Close()
				return
			}
			if !errors.Is(err, ErrRefused) {
				t.Fatalf("got %v, want %v", err, ErrRefused)
			}
			if hits.Load() != before {
				t.Error("the server was reached")
			}
		})
	}
}
