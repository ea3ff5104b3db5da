// Package fedhttp is Myelin's outbound HTTPS for federation: an
// http.RoundTripper for the matrix:// URLs gomatrixserverlib's clients build,
// which resolves server names (spec: "Resolving server names"; results
// cached for a while, unlike gomatrixserverlib's own never-expiring cache)
// and connects with TLS verified against the system roots plus any CA
// certificates the operator configured. Plain https:// requests (push
// gateways, application services) use the same TLS settings.
package fedhttp

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"
)

// Options configure a Transport.
type Options struct {
	// CAFiles are PEM files of extra certificate authorities to trust.
	CAFiles []string
	// Timeout bounds connecting and waiting for response headers.
	Timeout time.Duration
	// ResolveTTL is how long a server name's resolution is reused.
	ResolveTTL time.Duration
}

// Transport resolves and dials Matrix servers.
type Transport struct {
	roots   *x509.CertPool
	timeout time.Duration
	ttl     time.Duration
	resolve func(context.Context, spec.ServerName) ([]fclient.ResolutionResult, error)
	now     func() time.Time

	mu         sync.Mutex
	resolved   map[spec.ServerName]resolution
	transports map[string]*http.Transport // by TLS server name
	plain      *http.Transport
}

type resolution struct {
	results []fclient.ResolutionResult
	expires time.Time
}

// New makes a Transport.
func New(opts Options) (*Transport, error) {
	roots, err := x509.SystemCertPool()
	if err != nil || roots == nil {
		roots = x509.NewCertPool()
	}
	for _, f := range opts.CAFiles {
		pem, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("read CA file: %w", err)
		}
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s holds no PEM certificate", f)
		}
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 30 * time.Second
	}
	if opts.ResolveTTL <= 0 {
		opts.ResolveTTL = 10 * time.Minute
	}
	t := &Transport{
		roots:      roots,
		timeout:    opts.Timeout,
		ttl:        opts.ResolveTTL,
		resolve:    fclient.ResolveServer,
		now:        time.Now,
		resolved:   map[spec.ServerName]resolution{},
		transports: map[string]*http.Transport{},
	}
	t.plain = t.newTransport("")
	return t, nil
}

func (t *Transport) newTransport(tlsServerName string) *http.Transport {
	d := &net.Dialer{Timeout: t.timeout, KeepAlive: 30 * time.Second}
	return &http.Transport{
		DialContext:           d.DialContext,
		TLSClientConfig:       &tls.Config{ServerName: tlsServerName, RootCAs: t.roots, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout:   t.timeout,
		ResponseHeaderTimeout: 2 * t.timeout,
		MaxIdleConnsPerHost:   8,
		IdleConnTimeout:       90 * time.Second,
		ForceAttemptHTTP2:     true,
	}
}

// HTTPClient is a client for plain https:// URLs with the transport's TLS
// settings.
func (t *Transport) HTTPClient() *http.Client {
	return &http.Client{Transport: t.plain, Timeout: 2 * t.timeout}
}

func (t *Transport) resolutions(ctx context.Context, name spec.ServerName) ([]fclient.ResolutionResult, error) {
	t.mu.Lock()
	r, ok := t.resolved[name]
	t.mu.Unlock()
	if ok && t.now().Before(r.expires) {
		return r.results, nil
	}
	results, err := t.resolve(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", name, err)
	}
	if len(results) == 0 {
		return nil, fmt.Errorf("resolve %s: no address", name)
	}
	t.mu.Lock()
	t.resolved[name] = resolution{results: results, expires: t.now().Add(t.ttl)}
	t.mu.Unlock()
	return results, nil
}

func (t *Transport) forget(name spec.ServerName) {
	t.mu.Lock()
	delete(t.resolved, name)
	t.mu.Unlock()
}

func (t *Transport) tlsTransport(serverName string) *http.Transport {
	t.mu.Lock()
	defer t.mu.Unlock()
	tr, ok := t.transports[serverName]
	if !ok {
		tr = t.newTransport(serverName)
		t.transports[serverName] = tr
	}
	return tr
}

// RoundTrip sends matrix:// requests to the resolved server and anything
// else as it is.
func (t *Transport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Scheme != "matrix" && r.URL.Scheme != "matrix-federation" {
		return t.plain.RoundTrip(r)
	}
	name := spec.ServerName(r.URL.Host)
	results, err := t.resolutions(r.Context(), name)
	if err != nil {
		return nil, err
	}
	var lastErr error
	for i, res := range results {
		req := r.Clone(r.Context())
		if i > 0 && r.Body != nil {
			if r.GetBody == nil {
				break // the body cannot be sent twice
			}
			if req.Body, err = r.GetBody(); err != nil {
				return nil, err
			}
		}
		u := *r.URL
		u.Scheme, u.Host = "https", res.Destination
		req.URL = &u
		req.Host = string(res.Host)
		resp, err := t.tlsTransport(res.TLSServerName).RoundTrip(req)
		if err == nil {
			return resp, nil
		}
		lastErr = err
	}
	// Every address failed: resolve afresh next time (delegation may have
	// changed).
	t.forget(name)
	if lastErr == nil {
		lastErr = errors.New("no address could be tried")
	}
	return nil, fmt.Errorf("send to %s: %w", name, lastErr)
}
