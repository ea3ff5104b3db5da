// Package federationapi serves the Server-Server API (/_matrix/federation/*
// and /_matrix/key/*) on the federation listener and makes this server's
// requests to others. It publishes this server's signing keys, acts as a
// notary, verifies the X-Matrix signature of every authenticated inbound
// request (keys from its own store, fetched from the origin or from the
// configured notaries), and signs outbound requests. Inbound and outbound
// federation of events builds on it. Only setup imports this package.
package federationapi

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/gorilla/mux"
	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/sirupsen/logrus"

	"myelin/federationapi/internal/queue"
	"myelin/federationapi/storage"
	"myelin/internal/bus"
	"myelin/internal/fedhttp"
	"myelin/internal/fedpolicy"
	"myelin/internal/ratelimit"
	"myelin/internal/signing"
	"myelin/internal/sqldb"
	uapi "myelin/userapi/api"
)

// keyValidity is how long others may cache our key response; the key is
// refetched after it (spec: valid_until_ts, at most 7 days for room v5+).
const keyValidity = 24 * time.Hour

// requestTimeout bounds one outbound federation request.
const requestTimeout = 30 * time.Second

// Profiles is what the federation API reads of the userapi.
type Profiles interface {
	Profile(ctx context.Context, userID string) (*uapi.Profile, error)
	// Account tells whether a local user was erased (deactivated asking
	// that what they sent be forgotten).
	Account(ctx context.Context, userID string) (*uapi.Account, error)
}

// Options are what the federation API needs besides its database.
type Options struct {
	Key *signing.Key
	// Transport carries outbound requests (server discovery, TLS).
	Transport *fedhttp.Transport
	Version   string
	// KeyServers are the notaries asked for keys an origin does not give.
	KeyServers []spec.ServerName
	// Limit bounds each origin's requests (each IP's on the endpoints
	// without authentication); nil allows everything.
	Limit    *ratelimit.Limiter
	Profiles Profiles
	// UserKeys serves local users' devices and keys to other servers.
	UserKeys UserKeys
	// Bus takes the EDUs of other servers to the local streams.
	Bus *bus.Bus
	// OpenID resolves the OpenID tokens of this server's users.
	OpenID OpenIDTokens
	// Rooms serves events and state to other servers.
	Rooms Rooms
	Log   *logrus.Entry
	// Sender sends the outbound queues' transactions; nil: the federation
	// client.
	Sender queue.Sender
	// Policy is the operator's allow and deny lists of servers: one not
	// allowed is refused inbound and sent nothing. Nil allows all.
	Policy *fedpolicy.Policy
}

// FederationAPI serves the federation endpoints.
type FederationAPI struct {
	key       *signing.Key
	version   string
	store     *storage.Storage
	keyClient *fclient.Client
	client    fclient.FederationClient
	keys      *keyRing
	limit     *ratelimit.Limiter
	profiles  Profiles
	userKeys  UserKeys
	bus       *bus.Bus
	openID    OpenIDTokens
	rooms     Rooms
	// rs serves the membership dances (ServeRooms); nil until then.
	rs  MemberRooms
	log *logrus.Entry
	// libLog is the logger gomatrixserverlib gets for a request: ours,
	// but warnings and errors only (it logs every refused request).
	libLog *logrus.Entry
	now    func() time.Time
	out    outbound
	policy *fedpolicy.Policy
	acls   aclCache
	// in is the state of inbound transactions (/send).
	in inbound
	// edus are the handlers of inbound EDUs by edu_type (edu.go), filled
	// in New and only read after.
	edus map[string]eduHandler
}

// New makes the federation API for the server's signing key.
func New(ctx context.Context, db *sqldb.DB, opts Options) (*FederationAPI, error) {
	store, err := storage.Open(ctx, db)
	if err != nil {
		return nil, fmt.Errorf("federationapi storage: %w", err)
	}
	ua := fclient.WithUserAgent("Myelin/" + opts.Version)
	f := &FederationAPI{
		key:       opts.Key,
		version:   opts.Version,
		store:     store,
		keyClient: fclient.NewClient(fclient.WithTransport(opts.Transport), fclient.WithTimeout(requestTimeout), ua),
		client: fclient.NewFederationClient(
			[]*fclient.SigningIdentity{{ServerName: opts.Key.ServerName, KeyID: opts.Key.KeyID, PrivateKey: opts.Key.Private}},
			fclient.WithTransport(opts.Transport), fclient.WithTimeout(requestTimeout), ua,
		),
		limit:    opts.Limit,
		profiles: opts.Profiles,
		userKeys: opts.UserKeys,
		bus:      opts.Bus,
		openID:   opts.OpenID,
		rooms:    opts.Rooms,
		log:      opts.Log,
		libLog:   quieter(opts.Log, logrus.WarnLevel),
		now:      time.Now,
		policy:   opts.Policy,
	}
	f.keys = newKeyRing(f, opts.KeyServers)
	f.edus = map[string]eduHandler{}
	f.registerEDUs()
	sender := opts.Sender
	if sender == nil {
		sender = f.client
	}
	f.out.queues = queue.New(queue.Options{Origin: opts.Key.ServerName, Sender: sender, Store: store, Log: opts.Log.WithField("part", "outbound")})
	return f, nil
}

// quieter is log at a higher level: the same output, format and fields.
func quieter(log *logrus.Entry, level logrus.Level) *logrus.Entry {
	l := &logrus.Logger{Out: log.Logger.Out, Formatter: log.Logger.Formatter, Hooks: make(logrus.LevelHooks), Level: level}
	return logrus.NewEntry(l).WithFields(log.Data)
}

// ServeRooms gives the federation API the roomserver, made after it (the
// roomserver asks other servers through Remote and Fetcher): it serves
// events, state and the membership dances from it. Call it before
// serving; Options.Rooms does the same for the read endpoints alone.
func (f *FederationAPI) ServeRooms(rs MemberRooms) { f.rooms, f.rs = rs, rs }

// Client is the federation client: requests it sends are signed with this
// server's key (X-Matrix) and go through the server's transport.
func (f *FederationAPI) Client() fclient.FederationClient { return f.client }

// KeyRing verifies JSON signed by other servers (events, requests), with
// their keys from the store or fetched.
func (f *FederationAPI) KeyRing() gmsl.JSONVerifier { return f.keys.ring }

// Routes registers the federation endpoints on the federation listener's
// router.
func (f *FederationAPI) Routes(root *mux.Router) {
	root.Handle("/_matrix/key/v2/server", f.open(f.serverKeys)).Methods(http.MethodGet)
	root.Handle("/_matrix/key/v2/server/{keyId}", f.open(f.serverKeys)).Methods(http.MethodGet)
	root.Handle("/_matrix/key/v2/query", f.open(f.queryKeysPost)).Methods(http.MethodPost)
	root.Handle("/_matrix/key/v2/query/{serverName}", f.open(f.queryKeysGet)).Methods(http.MethodGet)
	root.Handle("/_matrix/key/v2/query/{serverName}/{keyId}", f.open(f.queryKeysGet)).Methods(http.MethodGet)
	v1 := root.PathPrefix("/_matrix/federation/v1").Subrouter()
	v1.Handle("/version", f.open(f.serverVersion)).Methods(http.MethodGet)
	v1.Handle("/query/profile", f.authed(f.queryProfile)).Methods(http.MethodGet)
	f.OpenIDRoutes(root)
	f.ThirdPartyRoutes(root)
	v1.Handle("/event/{eventId}", f.authed(f.getEvent)).Methods(http.MethodGet)
	// Endpoints of one room answer only servers its ACL allows; /event
	// checks the ACL of its event's room.
	v1.Handle("/state/{roomId}", f.authed(f.roomACL(f.getState))).Methods(http.MethodGet)
	v1.Handle("/state_ids/{roomId}", f.authed(f.roomACL(f.getStateIDs))).Methods(http.MethodGet)
	v1.Handle("/event_auth/{roomId}/{eventId}", f.authed(f.roomACL(f.getEventAuth))).Methods(http.MethodGet)
	v1.Handle("/get_missing_events/{roomId}", f.authed(f.roomACL(f.getMissingEvents))).Methods(http.MethodPost)
	v1.Handle("/backfill/{roomId}", f.authed(f.roomACL(f.backfill))).Methods(http.MethodGet)
	v1.Handle("/send/{txnId}", f.authed(f.send)).Methods(http.MethodPut)
	f.userKeyRoutes(v1)
	f.membershipRoutes(v1, root.PathPrefix("/_matrix/federation/v2").Subrouter())
}

// OpenIDRoutes registers GET /_matrix/federation/v1/openid/userinfo alone.
// Setup serves it on the client listener too, as Synapse's "openid"
// resource does: the services that exchange a token (integration managers,
// widgets) know a homeserver by its client URL, and the endpoint needs no
// server signature.
func (f *FederationAPI) OpenIDRoutes(root *mux.Router) {
	root.Handle("/_matrix/federation/v1/openid/userinfo", f.open(f.openIDUserInfo)).Methods(http.MethodGet)
}

func (f *FederationAPI) serverVersion(r *http.Request) (any, error) {
	return map[string]any{"server": map[string]string{"name": "Myelin", "version": f.version}}, nil
}
