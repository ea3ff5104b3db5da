// Package clientapi serves the Client-Server API (/_matrix/client/*) apart
// from the sync-shaped endpoints, which syncapi serves. Handlers decode and
// check a request, call the userapi or the roomserver, and encode; the
// components decide. Only setup imports this package.
package clientapi

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/gorilla/mux"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/sirupsen/logrus"

	"myelin/internal/identity"
	"myelin/internal/mxhttp"
	"myelin/internal/ratelimit"
	rsapi "myelin/roomserver/api"
	"myelin/setup/config"
	uapi "myelin/userapi/api"
)

// ClientAPI holds what the handlers need.
type ClientAPI struct {
	cfg   *config.Config
	users uapi.API
	rooms rsapi.API
	// fed asks other servers what a client asks of them; nil when the
	// server does not federate.
	fed Federation
	// ids asks identity servers about invited email addresses; nil
	// refuses third-party invites.
	ids *identity.Client
	log *logrus.Entry
	now func() time.Time

	limits limiters
	uia    *uiaSessions
	// nonces are the single-use nonces of shared-secret registration.
	nonces *expiring[struct{}]
}

type limiters struct {
	login, register, send *ratelimit.Limiter
}

// Federation is what the client API asks other servers, for a client
// reading their directory, their rooms' hierarchy or their timelines.
type Federation interface {
	PublicRooms(ctx context.Context, server spec.ServerName, q rsapi.PublicRoomsQuery) (*rsapi.PublicRoomsPage, error)
	TimestampToEvent(ctx context.Context, roomID string, ts int64, backward bool) (*rsapi.TimeEvent, error)
	Hierarchy(ctx context.Context, server spec.ServerName, roomID string, suggestedOnly bool) (*rsapi.Hierarchy, error)
	// Profile asks a user's server for its public profile (one field, or
	// both when field is "").
	Profile(ctx context.Context, userID, field string) (*uapi.Profile, error)
}

// Option configures a ClientAPI.
type Option func(*ClientAPI)

// WithFederation lets the client API ask other servers.
func WithFederation(fed Federation) Option { return func(c *ClientAPI) { c.fed = fed } }

// WithIdentity lets users invite email addresses through identity
// servers (third-party invites).
func WithIdentity(ids *identity.Client) Option { return func(c *ClientAPI) { c.ids = ids } }

// New makes the client API. rooms may be nil in tests that only exercise
// accounts.
func New(cfg *config.Config, users uapi.API, rooms rsapi.API, log *logrus.Entry, opts ...Option) *ClientAPI {
	c := &ClientAPI{
		cfg:    cfg,
		users:  users,
		rooms:  rooms,
		log:    log,
		now:    time.Now,
		uia:    newUIASessions(),
		nonces: newExpiring[struct{}](nonceTTL, maxNonces),
	}
	for _, o := range opts {
		o(c)
	}
	if rl := cfg.RateLimits; rl.Enabled {
		c.limits = limiters{
			login:    ratelimit.New(rl.Login.PerSecond, rl.Login.Burst, nil),
			register: ratelimit.New(rl.Register.PerSecond, rl.Register.Burst, nil),
			send:     ratelimit.New(rl.Send.PerSecond, rl.Send.Burst, nil),
		}
	}
	return c
}

// ClientPrefixes are the path prefixes the versioned endpoints answer on.
var ClientPrefixes = []string{"/_matrix/client/v3", "/_matrix/client/r0"}

// Routes registers the client API on the server's root router.
func (c *ClientAPI) Routes(root *mux.Router) {
	root.Handle("/.well-known/matrix/client", mxhttp.Handler(c.wellKnown)).Methods(http.MethodGet)
	root.Handle("/_matrix/client/versions", mxhttp.Handler(c.versions)).Methods(http.MethodGet)
	root.Handle("/_synapse/admin/v1/register", mxhttp.Handler(c.sharedSecretNonce)).Methods(http.MethodGet)
	root.Handle("/_synapse/admin/v1/register", mxhttp.Handler(c.sharedSecretRegister)).Methods(http.MethodPost)
	// Clients (and sytest) still upload cross-signing keys on the unstable
	// prefix of MSC1756.
	root.Handle("/_matrix/client/unstable/keys/device_signing/upload", c.authed(c.uploadCrossSigningKeys)).Methods(http.MethodPost)
	root.Handle("/_matrix/client/unstable/keys/signatures/upload", c.authed(c.uploadSignatures)).Methods(http.MethodPost)
	// MSC2290's bind and unbind, from before they were in the spec.
	root.Handle("/_matrix/client/unstable/account/3pid/bind", c.authed(c.bindThreepid)).Methods(http.MethodPost)
	root.Handle("/_matrix/client/unstable/account/3pid/unbind", c.authed(c.forgetThreepid)).Methods(http.MethodPost)
	for _, p := range ClientPrefixes {
		r := root.PathPrefix(p).Subrouter()
		c.accountRoutes(r)
		c.roomRoutes(r)
		c.directoryRoutes(r)
		c.tagRoutes(r)
		c.pushRoutes(r)
		c.keyRoutes(r)
		c.roomKeyRoutes(r)
		c.reportRoutes(r)
	}
	v1 := root.PathPrefix("/_matrix/client/v1").Subrouter()
	c.v1Routes(v1)
	c.accountV1Routes(root, v1)
	c.regTokenRoutes(root, v1)
	c.dehydratedRoutes(root)
	c.roomSummaryRoutes(root, v1)
	c.reportAdminRoutes(root)
	c.delayedRoutes(root)
}

// authed wraps a handler that needs a logged-in device. The client's IP
// rides in the context so the userapi can record the device's last-seen IP.
//
// Guests get M_GUEST_ACCESS_FORBIDDEN here; authedGuest admits them.
func (c *ClientAPI) authed(h func(r *http.Request, dev *uapi.Device) (any, error)) mxhttp.Handler {
	return mxhttp.Authenticated(c.fullAccount, h)
}

func (c *ClientAPI) fullAccount(ctx context.Context, token string) (*uapi.Device, error) {
	dev, err := c.users.DeviceByToken(ctx, token)
	if err != nil {
		return nil, err
	}
	if dev.IsGuest {
		return nil, mxhttp.New("M_GUEST_ACCESS_FORBIDDEN", "Guests may not do this").WithStatus(http.StatusForbidden)
	}
	return dev, nil
}

// allow takes a token from limiter l for key, or answers M_LIMIT_EXCEEDED.
func allow(l *ratelimit.Limiter, key string) error {
	if ok, wait := l.Allow(key); !ok {
		return mxhttp.LimitExceeded(wait.Milliseconds() + 1)
	}
	return nil
}

// remoteFailed is the answer when another server did not give what a
// client asked of it: its own refusal when it gave one with a Matrix
// code, else 502 (the spec's status for a server that could not be
// reached), never a 500.
func remoteFailed(server spec.ServerName, err error) error {
	var coded mxhttp.Coded
	if errors.As(err, &coded) {
		return err
	}
	var un mxhttp.Unavailable
	if errors.As(err, &un) && un.Unavailable() {
		return err
	}
	e := mxhttp.Unknown("Cannot reach %s", server).WithStatus(http.StatusBadGateway)
	e.Cause = err
	return e
}
