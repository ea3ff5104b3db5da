// Package fedhttp is Myelin's outbound HTTPS for federation: an
// http.RoundTripper for the matrix:// URLs gomatrixserverlib's clients build,
// which resolves server names itself (spec: "Resolving server names", with
// caches that expire, unlike gomatrixserverlib's), refuses to connect to
// private and loopback addresses unless told otherwise, and verifies TLS
// against the system roots plus any CA certificates the operator
// configured. Plain https:// requests (push gateways, application
// services) use the same TLS settings but neither the resolution nor the
// address guard; GuardedClient's requests (identity servers) have the
// guard without the resolution. Only setup and the federationapi import it.
package fedhttp

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"myelin/internal/fedpolicy"
	"myelin/internal/netguard"
)

// Options configure a Transport.
type Options struct {
	// CAFiles are PEM files of extra certificate authorities to trust.
	CAFiles []string
	// Timeout bounds connecting and waiting for response headers.
	Timeout time.Duration
	// ResolveTTL is how long a server name's resolution (its SRV records
	// and the addresses they name) is reused; a .well-known answer is kept
	// as long as its own cache headers say, but never beyond this.
	ResolveTTL time.Duration
	// AllowPrivate lets federation requests reach loopback, private,
	// link-local and other non-public addresses (test networks).
	AllowPrivate bool
	// Resolver looks names up; nil uses the system's DNS.
	Resolver *Resolver
	// WellKnownPort is the port .well-known/matrix/server is fetched from:
	// 443 (the spec's) unless a test sets another.
	WellKnownPort int
	// Now is the clock of the caches; nil is time.Now.
	Now func() time.Time
	// Policy is the operator's allow and deny lists: a matrix:// request
	// to a server it does not allow fails with ErrDenied before anything
	// is resolved or dialled. Nil allows every server.
	Policy *fedpolicy.Policy
}

// ErrDenied is the error of a request to a server the operator's
// federation policy denies.
var ErrDenied = errors.New("server denied by the federation policy")

// Resolver is how names are looked up. Tests give a fake one (no network).
type Resolver struct {
	// LookupSRV returns the SRV records of _service._proto.name, in the
	// order to try them.
	LookupSRV func(ctx context.Context, service, proto, name string) ([]*net.SRV, error)
	// LookupHost returns the addresses of host.
	LookupHost func(ctx context.Context, host string) ([]netip.Addr, error)
}

// SystemResolver is the Resolver of the system's DNS.
func SystemResolver() *Resolver {
	r := net.DefaultResolver
	return &Resolver{
		LookupSRV: func(ctx context.Context, service, proto, name string) ([]*net.SRV, error) {
			_, srvs, err := r.LookupSRV(ctx, service, proto, name)
			return srvs, err
		},
		LookupHost: func(ctx context.Context, host string) ([]netip.Addr, error) {
			return r.LookupNetIP(ctx, "ip", host)
		},
	}
}

// Transport resolves and dials Matrix servers.
type Transport struct {
	roots         *x509.CertPool
	timeout       time.Duration
	ttl           time.Duration
	allowPrivate  bool
	dns           *Resolver
	wellKnownPort int
	now           func() time.Time
	policy        *fedpolicy.Policy
	wellKnownHTTP *http.Client

	mu         sync.Mutex
	resolved   map[spec.ServerName]resolution
	resolving  map[spec.ServerName]chan struct{} // closed when done
	wellKnowns map[string]wellKnown
	transports map[string]*http.Transport // by TLS server name
	plain      *http.Transport
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
	if opts.Resolver == nil {
		opts.Resolver = SystemResolver()
	}
	if opts.WellKnownPort <= 0 {
		opts.WellKnownPort = 443
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	t := &Transport{
		roots:         roots,
		timeout:       opts.Timeout,
		ttl:           opts.ResolveTTL,
		allowPrivate:  opts.AllowPrivate,
		dns:           opts.Resolver,
		wellKnownPort: opts.WellKnownPort,
		now:           opts.Now,
		policy:        opts.Policy,
		resolved:      map[spec.ServerName]resolution{},
		resolving:     map[spec.ServerName]chan struct{}{},
		wellKnowns:    map[string]wellKnown{},
		transports:    map[string]*http.Transport{},
	}
	d := &net.Dialer{Timeout: t.timeout, KeepAlive: 30 * time.Second}
	t.plain = t.newTransport("", d.DialContext)
	t.wellKnownHTTP = &http.Client{
		Transport: t.newTransport("", t.dialGuarded),
		Timeout:   wellKnownTimeout,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= maxWellKnownRedirects {
				return errors.New("too many redirects")
			}
			return nil
		},
	}
	return t, nil
}

func (t *Transport) newTransport(tlsServerName string, dial func(context.Context, string, string) (net.Conn, error)) *http.Transport {
	return &http.Transport{
		DialContext:           dial,
		TLSClientConfig:       &tls.Config{ServerName: tlsServerName, RootCAs: t.roots, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout:   t.timeout,
		ResponseHeaderTimeout: 2 * t.timeout,
		MaxIdleConnsPerHost:   8,
		IdleConnTimeout:       90 * time.Second,
		ForceAttemptHTTP2:     true,
	}
}

// Roots are the certificate authorities the transport trusts: the
// system's and the operator's. URL previews verify pages against them.
func (t *Transport) Roots() *x509.CertPool { return t.roots }

// HTTPClient is a client for plain https:// URLs with the transport's TLS
// settings.
func (t *Transport) HTTPClient() *http.Client {
	return &http.Client{Transport: t.plain, Timeout: 2 * t.timeout}
}

// GuardedClient is a client for https:// URLs of hosts that users name
// (identity servers): it refuses private addresses unless they are
// allowed, as federation requests do. insecureTLS skips verifying the
// hosts' certificates, for test networks whose identity servers present
// self-signed ones (sytest's).
func (t *Transport) GuardedClient(insecureTLS bool) *http.Client {
	tr := t.newTransport("", t.dialGuarded)
	tr.TLSClientConfig.InsecureSkipVerify = insecureTLS
	return &http.Client{
		Transport: tr,
		Timeout:   2 * t.timeout,
		// The identity service API never redirects.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

func (t *Transport) tlsTransport(serverName string) *http.Transport {
	t.mu.Lock()
	defer t.mu.Unlock()
	tr, ok := t.transports[serverName]
	if !ok {
		tr = t.newTransport(serverName, t.dialGuarded)
		t.transports[serverName] = tr
	}
	return tr
}

// ErrPrivateAddress is returned for a federation connection to an
// address that is not public while private addresses are not allowed.
var ErrPrivateAddress = errors.New("refusing to connect to a private address (federation_api.allow_private_addresses is false)")

// dialGuarded dials addr ("host:port"), looking the host up through the
// transport's resolver and refusing addresses that are not public unless
// they are allowed. The check is on the address dialled, so a name that
// resolves to a private address (DNS rebinding) is refused too.
func (t *Transport) dialGuarded(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	var addrs []netip.Addr
	if ip, err := netip.ParseAddr(host); err == nil {
		addrs = []netip.Addr{ip}
	} else if addrs, err = t.dns.LookupHost(ctx, host); err != nil {
		return nil, fmt.Errorf("look up %s: %w", host, err)
	}
	d := &net.Dialer{Timeout: t.timeout, KeepAlive: 30 * time.Second}
	var lastErr error
	for _, a := range addrs {
		if !t.allowPrivate && !netguard.Public(a) {
			lastErr = fmt.Errorf("%s (%s): %w", host, a, ErrPrivateAddress)
			continue
		}
		conn, err := d.DialContext(ctx, network, net.JoinHostPort(a.Unmap().String(), port))
		if err == nil {
			return conn, nil
		}
		lastErr = err
	}
	if lastErr == nil {
		lastErr = fmt.Errorf("%s has no address", host)
	}
	return nil, lastErr
}

// RoundTrip sends matrix:// requests to the resolved server and anything
// else as it is.
func (t *Transport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Scheme != "matrix" && r.URL.Scheme != "matrix-federation" {
		return t.plain.RoundTrip(r)
	}
	name := spec.ServerName(r.URL.Host)
	if !t.policy.Allowed(name) {
		return nil, fmt.Errorf("send to %s: %w", name, ErrDenied)
	}
	targets, err := t.Resolve(r.Context(), name)
	if err != nil {
		return nil, err
	}
	var lastErr error
	for i, target := range targets {
		req := r.Clone(r.Context())
		if i > 0 && r.Body != nil && r.Body != http.NoBody {
			if r.GetBody == nil {
				break // the body cannot be sent twice
			}
			if req.Body, err = r.GetBody(); err != nil {
				return nil, err
			}
		}
		u := *r.URL
		u.Scheme, u.Host = "https", target.Addr
		req.URL = &u
		req.Host = target.Host
		resp, err := t.tlsTransport(target.TLSName).RoundTrip(req)
		if err == nil {
			return resp, nil
		}
		lastErr = err
		if r.Context().Err() != nil {
			break
		}
	}
	// Every address failed: resolve afresh next time (delegation may have
	// changed).
	t.Forget(name)
	if lastErr == nil {
		lastErr = errors.New("no address could be tried")
	}
	return nil, fmt.Errorf("send to %s: %w", name, lastErr)
}

// CloseIdleConnections closes the kept-alive connections to other
// servers, as a server stopping does.
func (t *Transport) CloseIdleConnections() {
	t.plain.CloseIdleConnections()
	t.wellKnownHTTP.CloseIdleConnections()
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, tr := range t.transports {
		tr.CloseIdleConnections()
	}
}
