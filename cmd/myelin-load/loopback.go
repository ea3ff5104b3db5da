package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"syscall"
	"time"
)

// The tool generates enough traffic to hurt a real server, so it talks to
// loopback only: the base URL must resolve to loopback addresses, and every
// connection is checked again when it is dialled (a name could resolve
// differently later).

// isLoopback reports whether ip is in 127.0.0.0/8 or is ::1.
func isLoopback(ip net.IP) bool {
	if ip4 := ip.To4(); ip4 != nil {
		return ip4[0] == 127
	}
	return ip.Equal(net.IPv6loopback)
}

// lookupFunc resolves a host name, like (*net.Resolver).LookupIPAddr.
type lookupFunc func(ctx context.Context, host string) ([]net.IPAddr, error)

// checkBaseURL parses raw and checks that it is an http(s) URL whose host
// resolves only to loopback addresses. It returns the URL without a
// trailing slash.
func checkBaseURL(ctx context.Context, raw string, lookup lookupFunc) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("base URL %q: %w", raw, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", fmt.Errorf("base URL %q: scheme must be http or https", raw)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return "", fmt.Errorf("base URL %q: no user, query or fragment allowed", raw)
	}
	host := u.Hostname()
	if host == "" {
		return "", fmt.Errorf("base URL %q: no host", raw)
	}
	var ips []net.IP
	if ip := net.ParseIP(host); ip != nil {
		ips = []net.IP{ip}
	} else {
		addrs, err := lookup(ctx, host)
		if err != nil {
			return "", fmt.Errorf("base URL %q: resolve %s: %w", raw, host, err)
		}
		for _, a := range addrs {
			ips = append(ips, a.IP)
		}
	}
	if len(ips) == 0 {
		return "", fmt.Errorf("base URL %q: %s resolves to no address", raw, host)
	}
	for _, ip := range ips {
		if !isLoopback(ip) {
			return "", fmt.Errorf("base URL %q: %s resolves to %s, which is not loopback (127.0.0.0/8 or ::1); this tool only loads local servers", raw, host, ip)
		}
	}
	s := u.String()
	for len(s) > 0 && s[len(s)-1] == '/' {
		s = s[:len(s)-1]
	}
	return s, nil
}

// dialLoopbackOnly is a net.Dialer Control function refusing any address
// that is not loopback.
func dialLoopbackOnly(network, address string, _ syscall.RawConn) error {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return err
	}
	ip := net.ParseIP(host)
	if ip == nil || !isLoopback(ip) {
		return fmt.Errorf("refusing to connect to %s: not a loopback address", address)
	}
	return nil
}

// newTransport returns a keep-alive HTTP transport that dials loopback only,
// from source address src when set, keeping up to conns idle connections.
func newTransport(src net.IP, conns int) *http.Transport {
	d := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second, Control: dialLoopbackOnly}
	if src != nil {
		d.LocalAddr = &net.TCPAddr{IP: src}
	}
	return &http.Transport{
		DialContext:         d.DialContext,
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns,
		IdleConnTimeout:     5 * time.Minute,
		// Matrix clients speak HTTP/1.1 to a plain-HTTP homeserver.
		ForceAttemptHTTP2: false,
	}
}

// maxSourceIPs bounds -src-ips: 127.0.0.1 to 127.0.0.250.
const maxSourceIPs = 250

// sourceIP returns client i's source address when clients are spread over
// n loopback addresses 127.0.0.1 ... 127.0.0.n, or nil when n <= 1 (the
// kernel chooses). More source addresses mean more ephemeral ports.
func sourceIP(i, n int) net.IP {
	if n <= 1 {
		return nil
	}
	return net.IPv4(127, 0, 0, byte(i%min(n, maxSourceIPs)+1))
}
