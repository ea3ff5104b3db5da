package fedhttp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"
)

const (
	// defaultPort is where a server is reached when nothing says otherwise.
	defaultPort = 8448
	// The spec ("Resolving server names", step 3) recommends caching a
	// .well-known answer for 24 hours without cache headers, at most 48
	// hours with them, and an error for up to an hour.
	wellKnownDefaultTTL = 24 * time.Hour
	wellKnownMaxTTL     = 48 * time.Hour
	wellKnownErrorTTL   = time.Hour
	// wellKnownMinTTL keeps a server that sends "no-cache" from making us
	// fetch its .well-known for every request.
	wellKnownMinTTL       = time.Minute
	wellKnownTimeout      = 10 * time.Second
	wellKnownMaxBytes     = 50 << 10
	maxWellKnownRedirects = 5
	// maxCached bounds each cache; past it, expired entries are dropped.
	maxCached = 10_000
)

// Target is one place to send a server's requests.
type Target struct {
	// Addr is the host (a name or an IP) and port to connect to.
	Addr string
	// Host is the Host header.
	Host string
	// TLSName is the name (or IP) the certificate must be valid for.
	TLSName string
}

type resolution struct {
	targets []Target
	expires time.Time
}

// wellKnown is a cached .well-known/matrix/server answer: the delegated
// server name, empty when there is none (or it could not be fetched).
type wellKnown struct {
	delegated string
	expires   time.Time
}

// Resolve returns where to send requests for server name, in the order to
// try them (spec: "Resolving server names"): an IP literal as it is (port
// 8448 unless given); a name with an explicit port as it is; otherwise
// the name's .well-known delegation, resolved the same way but without a
// second .well-known; then SRV records (_matrix-fed._tcp, then the legacy
// _matrix._tcp); then port 8448. Results are cached until ResolveTTL or
// the .well-known answer's own expiry, whichever comes first.
//
// Requests for a name being resolved wait for that resolution rather than
// start their own: a queue waking up for a server makes one .well-known
// fetch, not one per request.
func (t *Transport) Resolve(ctx context.Context, name spec.ServerName) ([]Target, error) {
	host, port, valid := spec.ParseAndValidateServerName(name)
	if !valid {
		return nil, fmt.Errorf("resolve %q: not a valid server name", name)
	}
	for {
		t.mu.Lock()
		if r, ok := t.resolved[name]; ok && t.now().Before(r.expires) {
			t.mu.Unlock()
			return r.targets, nil
		}
		wait, busy := t.resolving[name]
		if !busy {
			done := make(chan struct{})
			t.resolving[name] = done
			t.mu.Unlock()
			defer func() {
				t.mu.Lock()
				delete(t.resolving, name)
				t.mu.Unlock()
				close(done)
			}()
			break
		}
		t.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return nil, fmt.Errorf("resolve %s: %w", name, ctx.Err())
		}
	}
	now := t.now()
	expires := now.Add(t.ttl)
	var targets []Target
	if ip, isIP := parseIP(host); isIP {
		targets = []Target{{Addr: joinPort(ip, port), Host: string(name), TLSName: ip}}
	} else if port > 0 {
		targets = []Target{{Addr: joinPort(host, port), Host: string(name), TLSName: host}}
	} else {
		wk := t.wellKnown(ctx, host)
		expires = minTime(expires, wk.expires)
		if wk.delegated != "" {
			targets = t.resolveDelegated(ctx, wk.delegated)
		}
		if len(targets) == 0 {
			targets = t.srvTargets(ctx, host)
		}
		if len(targets) == 0 {
			targets = []Target{{Addr: joinPort(host, defaultPort), Host: host, TLSName: host}}
		}
	}
	t.mu.Lock()
	if len(t.resolved) >= maxCached {
		for k, v := range t.resolved {
			if !now.Before(v.expires) {
				delete(t.resolved, k)
			}
		}
	}
	t.resolved[name] = resolution{targets: targets, expires: expires}
	t.mu.Unlock()
	return targets, nil
}

// resolveDelegated resolves the server name a .well-known delegated to
// (steps 3.1 to 3.5): no further .well-known. It returns nothing for a
// delegation that is not a valid server name, so that resolution goes on
// as if there were no .well-known.
func (t *Transport) resolveDelegated(ctx context.Context, delegated string) []Target {
	host, port, valid := spec.ParseAndValidateServerName(spec.ServerName(delegated))
	if !valid {
		return nil
	}
	if ip, isIP := parseIP(host); isIP {
		return []Target{{Addr: joinPort(ip, port), Host: delegated, TLSName: ip}}
	}
	if port > 0 {
		return []Target{{Addr: joinPort(host, port), Host: delegated, TLSName: host}}
	}
	if targets := t.srvTargets(ctx, host); len(targets) > 0 {
		return targets
	}
	return []Target{{Addr: joinPort(host, defaultPort), Host: host, TLSName: host}}
}

// srvTargets looks up _matrix-fed._tcp.host, then the deprecated
// _matrix._tcp.host. The Host header and the certificate stay those of
// host, whatever the records point to.
func (t *Transport) srvTargets(ctx context.Context, host string) []Target {
	for _, service := range []string{"matrix-fed", "matrix"} {
		srvs, err := t.dns.LookupSRV(ctx, service, "tcp", host)
		if err != nil {
			continue // no such record is the usual case
		}
		var out []Target
		for _, s := range srvs {
			target := strings.TrimSuffix(s.Target, ".")
			if target == "" { // "." means the service is not offered
				continue
			}
			out = append(out, Target{Addr: net.JoinHostPort(target, strconv.Itoa(int(s.Port))), Host: host, TLSName: host})
		}
		if len(out) > 0 {
			return out
		}
	}
	return nil
}

// wellKnown returns host's .well-known/matrix/server delegation, from the
// cache while it lasts.
func (t *Transport) wellKnown(ctx context.Context, host string) wellKnown {
	now := t.now()
	t.mu.Lock()
	wk, ok := t.wellKnowns[host]
	t.mu.Unlock()
	if ok && now.Before(wk.expires) {
		return wk
	}
	delegated, ttl, err := t.fetchWellKnown(ctx, host)
	if err != nil {
		delegated, ttl = "", wellKnownErrorTTL
	}
	wk = wellKnown{delegated: delegated, expires: now.Add(ttl)}
	t.mu.Lock()
	if len(t.wellKnowns) >= maxCached {
		for k, v := range t.wellKnowns {
			if !now.Before(v.expires) {
				delete(t.wellKnowns, k)
			}
		}
	}
	t.wellKnowns[host] = wk
	t.mu.Unlock()
	return wk
}

// fetchWellKnown asks https://host/.well-known/matrix/server for its
// delegation, following redirects, through the same address guard as
// federation requests (a .well-known must not reach what a request may
// not).
func (t *Transport) fetchWellKnown(ctx context.Context, host string) (string, time.Duration, error) {
	u := "https://" + host
	if t.wellKnownPort != 443 {
		u += ":" + strconv.Itoa(t.wellKnownPort)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u+"/.well-known/matrix/server", nil)
	if err != nil {
		return "", 0, err
	}
	resp, err := t.wellKnownHTTP.Do(req)
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", 0, fmt.Errorf("well-known of %s: status %d", host, resp.StatusCode)
	}
	raw, err := io.ReadAll(io.LimitReader(resp.Body, wellKnownMaxBytes+1))
	if err != nil {
		return "", 0, err
	}
	if len(raw) > wellKnownMaxBytes {
		return "", 0, fmt.Errorf("well-known of %s: over %d bytes", host, wellKnownMaxBytes)
	}
	var body struct {
		Server string `json:"m.server"`
	}
	if err := json.Unmarshal(raw, &body); err != nil {
		return "", 0, fmt.Errorf("well-known of %s: %w", host, err)
	}
	if _, _, ok := spec.ParseAndValidateServerName(spec.ServerName(body.Server)); !ok {
		return "", 0, errors.New("well-known of " + host + ": m.server is not a server name")
	}
	return body.Server, cacheTTL(resp.Header, t.now()), nil
}

// cacheTTL is how long a .well-known answer may be kept, from its
// Cache-Control max-age or its Expires header, within the spec's bounds.
func cacheTTL(h http.Header, now time.Time) time.Duration {
	ttl := wellKnownDefaultTTL
	found := false
	for _, d := range strings.Split(h.Get("Cache-Control"), ",") {
		d = strings.ToLower(strings.TrimSpace(d))
		switch {
		case d == "no-store" || d == "no-cache":
			ttl, found = 0, true
		case strings.HasPrefix(d, "max-age="):
			if n, err := strconv.Atoi(strings.TrimPrefix(d, "max-age=")); err == nil && !found {
				ttl, found = time.Duration(n)*time.Second, true
			}
		}
	}
	if !found {
		if e := h.Get("Expires"); e != "" {
			if at, err := http.ParseTime(e); err == nil {
				ttl = at.Sub(now)
			} else {
				ttl = 0 // RFC 9111: an invalid Expires means already expired
			}
		}
	}
	return min(max(ttl, wellKnownMinTTL), wellKnownMaxTTL)
}

// Forget drops what is cached about name, so that the next request
// resolves it afresh: called when every address failed, since its
// delegation may have changed.
func (t *Transport) Forget(name spec.ServerName) {
	host, _, _ := spec.ParseAndValidateServerName(name)
	t.mu.Lock()
	delete(t.resolved, name)
	delete(t.wellKnowns, host)
	t.mu.Unlock()
}

// parseIP reports whether host is an IP literal ("1.2.3.4" or "[::1]"),
// returning it without brackets.
func parseIP(host string) (string, bool) {
	h := strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	ip, err := netip.ParseAddr(h)
	if err != nil {
		return "", false
	}
	return ip.String(), true
}

func joinPort(host string, port int) string {
	if port <= 0 {
		port = defaultPort
	}
	return net.JoinHostPort(host, strconv.Itoa(port))
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}
