package main

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
)

func TestIsLoopback(t *testing.T) {
	for _, s := range []string{"127.0.0.1", "127.255.0.9", "::1", "::ffff:127.0.0.1"} {
		if !isLoopback(net.ParseIP(s)) {
			t.Errorf("%s: not loopback", s)
		}
	}
	for _, s := range []string{"10.0.0.1", "128.0.0.1", "::2", "0.0.0.0", "::", "fe80::1", "192.168.1.127"} {
		if isLoopback(net.ParseIP(s)) {
			t.Errorf("%s: loopback", s)
		}
	}
}

func TestCheckBaseURL(t *testing.T) {
	hosts := map[string][]string{
		"localhost":   {"127.0.0.1", "::1"},
		"example.org": {"93.184.215.14"},
		"mixed":       {"127.0.0.1", "10.1.2.3"},
		"empty":       {},
	}
	lookup := func(_ context.Context, host string) ([]net.IPAddr, error) {
		ips, ok := hosts[host]
		if !ok {
			return nil, errors.New("no such host")
		}
		var out []net.IPAddr
		for _, s := range ips {
			out = append(out, net.IPAddr{IP: net.ParseIP(s)})
		}
		return out, nil
	}
	tests := []struct {
		in, want, wantErr string
	}{
		{in: "http://127.0.0.1:8008", want: "http://127.0.0.1:8008"},
		{in: "http://127.0.0.1:8008/", want: "http://127.0.0.1:8008"},
		{in: "http://[::1]:8008", want: "http://[::1]:8008"},
		{in: "https://localhost:8448", want: "https://localhost:8448"},
		{in: "http://127.3.4.5", want: "http://127.3.4.5"},
		{in: "http://10.0.0.1:8008", wantErr: "not loopback"},
		{in: "http://example.org", wantErr: "not loopback"},
		{in: "http://mixed:8008", wantErr: "10.1.2.3"},
		{in: "http://empty:8008", wantErr: "no address"},
		{in: "http://nowhere:8008", wantErr: "no such host"},
		{in: "ftp://127.0.0.1", wantErr: "scheme"},
		{in: "127.0.0.1:8008", wantErr: "127.0.0.1:8008"}, // no scheme
		{in: "http://127.0.0.1:8008?x=1", wantErr: "query"},
		{in: "http://user@127.0.0.1:8008", wantErr: "user"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := checkBaseURL(context.Background(), tt.in, lookup)
			if tt.want != "" {
				if err != nil || got != tt.want {
					t.Errorf("got %q, %v; want %q", got, err, tt.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("got %q, want an error", got)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error %q does not mention %q", err, tt.wantErr)
			}
		})
	}
}

func TestDialLoopbackOnly(t *testing.T) {
	for addr, ok := range map[string]bool{
		"127.0.0.1:8008":  true,
		"[::1]:8008":      true,
		"10.0.0.1:8008":   false,
		"[fe80::1]:8008":  false,
		"localhost:8008":  false, // dialled addresses are already resolved
		"not an address:": false,
	} {
		err := dialLoopbackOnly("tcp", addr, nil)
		if (err == nil) != ok {
			t.Errorf("%s: err = %v, want allowed=%v", addr, err, ok)
		}
	}
	// A real dial to a non-loopback address is refused before any packet.
	_, err := newTransport(nil, 1).DialContext(context.Background(), "tcp", "192.0.2.1:80")
	if err == nil || !strings.Contains(err.Error(), "not a loopback") {
		t.Errorf("dial 192.0.2.1: %v", err)
	}
}

func TestSourceIP(t *testing.T) {
	if sourceIP(5, 1) != nil {
		t.Error("one source address: want nil (kernel's choice)")
	}
	if got := sourceIP(0, 4).String(); got != "127.0.0.1" {
		t.Errorf("client 0 of 4: %s", got)
	}
	if got := sourceIP(7, 4).String(); got != "127.0.0.4" {
		t.Errorf("client 7 of 4: %s", got)
	}
	// Beyond the cap, addresses wrap at 127.0.0.250.
	if got := sourceIP(maxSourceIPs+1, maxSourceIPs+50).String(); got != "127.0.0.2" {
		t.Errorf("beyond the cap: %s", got)
	}
}
