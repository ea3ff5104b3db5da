package federationapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"unicode/utf8"

	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/matrix-org/util"

	"myelin/internal/mxhttp"
	"myelin/internal/ratelimit"
)

type originKey struct{}

// withOrigin records the authenticated origin of a request.
func withOrigin(ctx context.Context, origin spec.ServerName) context.Context {
	return context.WithValue(ctx, originKey{}, origin)
}

// Origin is the server that signed the request being served (empty
// outside an authenticated federation request).
func Origin(ctx context.Context) spec.ServerName {
	o, _ := ctx.Value(originKey{}).(spec.ServerName)
	return o
}

func unauthorized(format string, args ...any) *mxhttp.Error {
	return mxhttp.New("M_UNAUTHORIZED", format, args...)
}

// authed wraps a handler that only another server may call: the request
// must carry an X-Matrix signature of its origin over its method, URI,
// destination and body (spec: "Request Authentication"). The origin is
// then in the request's context (Origin) and counts against its rate
// limit; the body is readable again by the handler.
func (f *FederationAPI) authed(h mxhttp.Handler) mxhttp.Handler {
	return func(r *http.Request) (any, error) {
		origin, err := f.verify(r)
		if err != nil {
			return nil, err
		}
		if err := allow(f.limit, "origin "+string(origin)); err != nil {
			return nil, err
		}
		// A server that reached us is up: if our sends to it were
		// failing, or given up, they resume at once.
		if err := f.MarkAlive(r.Context(), origin); err != nil {
			f.log.WithError(err).WithField("origin", origin).Warn("cannot resume the queue of a server that reached us")
		}
		return h(r.WithContext(withOrigin(r.Context(), origin)))
	}
}

// Authed is authed for the routes of other components on the federation
// listener (the mediaapi's): the same X-Matrix check, rate limit and
// origin in the context.
func (f *FederationAPI) Authed(h mxhttp.Handler) mxhttp.Handler { return f.authed(h) }

// open wraps a handler that needs no authentication (keys, version),
// rate-limited by the caller's IP.
func (f *FederationAPI) open(h mxhttp.Handler) mxhttp.Handler {
	return func(r *http.Request) (any, error) {
		if err := allow(f.limit, "ip "+mxhttp.ClientIP(r)); err != nil {
			return nil, err
		}
		return h(r)
	}
}

func allow(l *ratelimit.Limiter, key string) error {
	if ok, wait := l.Allow(key); !ok {
		return mxhttp.LimitExceeded(wait.Milliseconds() + 1)
	}
	return nil
}

// verify checks the X-Matrix authorization of r and returns its origin.
// gomatrixserverlib's VerifyHTTPRequest checks the signature, but reads the
// body without a limit, answers in a shape that is not a Matrix error, and
// folds distinct faults into one 400; so what can be checked before the
// signature is checked here first, each fault with its Matrix error, and
// the body it sees is one already read within the listener's limit.
func (f *FederationAPI) verify(r *http.Request) (spec.ServerName, error) {
	body, err := mxhttp.ReadBody(r) // within the listener's body limit: M_TOO_LARGE
	if err != nil {
		return "", err
	}
	if len(body) > 0 {
		if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
			return "", mxhttp.NotJSON("Content-Type must be application/json")
		}
		if !utf8.Valid(body) || !json.Valid(body) {
			return "", mxhttp.NotJSON("request body is not valid UTF-8 JSON")
		}
	}
	var origin spec.ServerName
	for _, h := range r.Header.Values("Authorization") {
		scheme, o, dest, key, sig := fclient.ParseAuthorization(h)
		if scheme != "X-Matrix" {
			continue
		}
		if o == "" || key == "" || sig == "" {
			return "", unauthorized("X-Matrix authorization needs origin, key and sig")
		}
		if _, _, ok := spec.ParseAndValidateServerName(o); !ok {
			// A malformed header is a bad request, as Synapse answers it
			// (sytest: "Non-numeric ports in server names are rejected").
			return "", unauthorized("X-Matrix origin is not a server name").WithStatus(http.StatusBadRequest)
		}
		if origin != "" && o != origin {
			return "", unauthorized("X-Matrix authorizations name different origins")
		}
		origin = o
		// Spec: a destination that is not this server is denied with 401.
		if dest != "" && dest != f.key.ServerName {
			return "", unauthorized("X-Matrix destination %q is not this server", dest)
		}
	}
	if origin == "" {
		return "", unauthorized("Missing X-Matrix Authorization header")
	}
	if origin == f.key.ServerName {
		return "", unauthorized("X-Matrix origin is this server")
	}
	// Before the signature: checking it could fetch the keys of a server
	// we must not contact.
	if !f.policy.Allowed(origin) {
		return "", mxhttp.Forbidden("Federation with %s is denied by this server", origin)
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	// gomatrixserverlib logs each refusal at info level to the logger in
	// the context (the global one without): give it ours, warnings only.
	vr := r.WithContext(util.ContextWithLogger(r.Context(), f.libLog))
	fr, resp := fclient.VerifyHTTPRequest(vr, f.now(), f.key.ServerName, nil, f.keys.ring)
	r.Body = io.NopCloser(bytes.NewReader(body))
	if fr == nil {
		if resp.Code >= 500 {
			// Only the key store fails this way (the fetchers' failures
			// leave a key missing): our outage, not the request's fault.
			return "", mxhttp.ServiceUnavailable(errors.New("verify X-Matrix signature: key store failed"))
		}
		return "", unauthorized("Invalid X-Matrix signature")
	}
	if fr.Origin() != origin {
		return "", unauthorized("X-Matrix origin mismatch")
	}
	return origin, nil
}
