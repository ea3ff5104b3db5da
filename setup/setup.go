// Package setup wires Myelin's components into a running homeserver: it
// opens the database, starts (or connects to) NATS, creates the
// components with what each needs, and serves their HTTP routes. It is
// used by cmd/myelin and by tests that start a real server in-process.
package setup

import (
	"context"
	"errors"
	"fmt"
	"io"
	stdlog "log"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/mux"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/sirupsen/logrus"

	"myelin/clientapi"
	"myelin/federationapi"
	"myelin/internal/bus"
	"myelin/internal/fedhttp"
	"myelin/internal/fedpolicy"
	"myelin/internal/identity"
	"myelin/internal/mxhttp"
	"myelin/internal/ratelimit"
	"myelin/internal/signing"
	"myelin/internal/sqldb"
	"myelin/mediaapi"
	"myelin/roomserver"
	rsapi "myelin/roomserver/api"
	"myelin/setup/config"
	"myelin/syncapi"
	"myelin/userapi"
	uapi "myelin/userapi/api"
)

// Version is Myelin's version, reported to clients and servers.
const Version = "0.1.0-dev"

// Server is one Myelin homeserver with all its components in this process.
type Server struct {
	cfg *config.Config
	log *logrus.Logger

	bus *bus.Bus
	db  *sqldb.DB
	key *signing.Key
	// outbound carries requests to other servers: federation, push
	// gateways (with the operator's trusted CAs).
	outbound *fedhttp.Transport

	users  *userapi.UserAPI
	fed    *federationapi.FederationAPI
	rooms  *roomserver.Roomserver
	sync   *syncapi.SyncAPI
	client *clientapi.ClientAPI
	media  *mediaapi.MediaAPI

	// resolver, when set, replaces DNS for outbound federation (tests).
	resolver *fedhttp.Resolver

	ctx     context.Context // lifetime of the components
	cancel  context.CancelFunc
	servers []*http.Server
	addrs   map[string]net.Addr
	// logFor is the log of a component (logging.components).
	logFor func(component string) *logrus.Entry
	wg     sync.WaitGroup
}

// NewLogger makes the process logger from the logging section.
func NewLogger(c config.Logging) (*logrus.Logger, io.Closer, error) {
	l := logrus.New()
	lvl, err := logrus.ParseLevel(c.Level)
	if err != nil {
		return nil, nil, fmt.Errorf("logging.level: %w", err)
	}
	l.SetLevel(lvl)
	if c.Format == "json" {
		l.SetFormatter(&logrus.JSONFormatter{})
	} else {
		l.SetFormatter(&logrus.TextFormatter{FullTimestamp: true})
	}
	var closer io.Closer = io.NopCloser(nil)
	if c.File != "" {
		f, err := os.OpenFile(c.File, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return nil, nil, fmt.Errorf("logging.file: %w", err)
		}
		l.SetOutput(f)
		closer = f
	}
	return l, closer, nil
}

// componentLoggers returns the entry each component logs to: the process
// logger, or for a component given a level of its own in
// logging.components, a logger at that level writing to the same place.
func componentLoggers(log *logrus.Logger, c config.Logging) (func(component string) *logrus.Entry, error) {
	levels, err := c.ComponentLevels()
	if err != nil {
		return nil, fmt.Errorf("logging.components: %w", err)
	}
	own := map[string]*logrus.Logger{}
	for name, level := range levels {
		lvl, err := logrus.ParseLevel(level)
		if err != nil {
			return nil, fmt.Errorf("logging.components: %s: %w", name, err)
		}
		l := logrus.New()
		l.SetOutput(log.Out)
		l.SetFormatter(log.Formatter)
		l.ReplaceHooks(log.Hooks)
		l.SetLevel(lvl)
		own[name] = l
	}
	return func(component string) *logrus.Entry {
		if l, ok := own[component]; ok {
			return l.WithField("component", component)
		}
		return log.WithField("component", component)
	}, nil
}

// Option adjusts what New builds beyond the configuration.
type Option func(*Server)

// WithResolver makes outbound federation look names up with r instead of
// DNS: tests map server names to loopback addresses with it.
func WithResolver(r *fedhttp.Resolver) Option {
	return func(s *Server) { s.resolver = r }
}

// New opens storage and messaging and builds the components; nothing is
// served until Start.
func New(ctx context.Context, cfg *config.Config, log *logrus.Logger, opts ...Option) (s *Server, err error) {
	s = &Server{cfg: cfg, log: log, addrs: map[string]net.Addr{}}
	for _, o := range opts {
		o(s)
	}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data_dir: %w", err)
	}
	if s.key, err = signing.LoadOrGenerate(cfg.Keys.SigningKeyPath, cfg.ServerName); err != nil {
		return nil, err
	}
	entry, err := componentLoggers(log, cfg.Logging)
	if err != nil {
		return nil, err
	}
	s.logFor = entry
	s.bus, err = bus.Open(ctx, bus.Options{
		URL:          cfg.NATS.URL,
		StoreDir:     cfg.NATS.StoreDir,
		Name:         "myelin",
		Replicas:     1,
		PublishRetry: cfg.NATS.PublishRetry,
		Log:          entry("bus"),
	})
	if err != nil {
		return nil, err
	}
	if s.db, err = sqldb.Open(ctx, cfg.Database.URL, sqldb.Options{MaxOpenConns: cfg.Database.MaxOpenConns}); err != nil {
		return nil, fmt.Errorf("database: %w", err)
	}
	if s.users, err = userapi.New(ctx, s.db, s.bus, cfg, entry("userapi")); err != nil {
		return nil, err
	}
	users := s.users
	profiles := roomserver.WithProfiles(func(ctx context.Context, userID string) (string, string, error) {
		p, err := users.Profile(ctx, userID)
		if err != nil {
			return "", "", err
		}
		return p.DisplayName, p.AvatarURL, nil
	})
	// One policy for both directions: the transport refuses every
	// request to a denied server, the federationapi refuses its requests
	// and queues nothing for it.
	fedPolicy := fedpolicy.New(cfg.FederationAPI.AllowedServers, cfg.FederationAPI.DeniedServers)
	fedTransport, err := fedhttp.New(fedhttp.Options{
		CAFiles:      cfg.FederationAPI.TrustedCAFiles,
		AllowPrivate: cfg.FederationAPI.AllowPrivateAddresses,
		Resolver:     s.resolver,
		Policy:       fedPolicy,
	})
	if err != nil {
		return nil, fmt.Errorf("federation_api.trusted_ca_files: %w", err)
	}
	s.outbound = fedTransport
	var fedLimit *ratelimit.Limiter
	if rl := cfg.RateLimits; rl.Enabled {
		fedLimit = ratelimit.New(rl.Federation.PerSecond, rl.Federation.Burst, nil)
	}
	keyServers := make([]spec.ServerName, 0, len(cfg.FederationAPI.KeyServers))
	for _, k := range cfg.FederationAPI.KeyServers {
		keyServers = append(keyServers, spec.ServerName(k))
	}
	s.fed, err = federationapi.New(ctx, s.db, federationapi.Options{
		Key:        s.key,
		Transport:  fedTransport,
		Version:    Version,
		KeyServers: keyServers,
		Limit:      fedLimit,
		Profiles:   s.users,
		UserKeys:   s.users,
		Bus:        s.bus,
		OpenID:     s.users,
		Log:        entry("federationapi"),
		Policy:     fedPolicy,
	})
	if err != nil {
		return nil, err
	}
	// The userapi asks other servers for their users' keys through the
	// federationapi, made after it.
	s.users.SetRemoteKeys(s.fed.RemoteKeys())
	// Identity servers are named by clients: their requests go through
	// the same address guard as federation's.
	ids := identity.New(fedTransport.GuardedClient(cfg.FederationAPI.InsecureIdentityServers), s.key)
	if s.rooms, err = roomserver.New(ctx, s.db, s.bus, s.key, entry("roomserver"), profiles,
		roomserver.WithFederation(s.fed.Remote()),
		roomserver.WithKeyValidity(ids.KeyValid),
		roomserver.WithCacheBytes(cfg.Memory.RoomCacheMB<<20),
		roomserver.WithInput(roomserver.InputConfig{Fetcher: s.fed.Fetcher(), KeyRing: s.fed.KeyRing()})); err != nil {
		return nil, err
	}
	// Made after the federationapi, since the roomserver asks other
	// servers through it (Remote, Fetcher); the federationapi serves its
	// rooms from here on.
	s.fed.ServeRooms(s.rooms)
	if s.sync, err = syncapi.New(ctx, cfg, s.db, s.bus, s.users, s.rooms, entry("syncapi")); err != nil {
		return nil, err
	}
	s.client = clientapi.New(cfg, s.users, s.rooms, entry("clientapi"), clientapi.WithFederation(s.fed.Remote()),
		clientapi.WithIdentity(ids))
	var uploadLimit *ratelimit.Limiter
	if rl := cfg.RateLimits; rl.Enabled {
		uploadLimit = ratelimit.New(rl.MediaUpload.PerSecond, rl.MediaUpload.Burst, nil)
	}
	if s.media, err = mediaapi.New(ctx, s.db, mediaapi.Options{
		Config:      cfg.MediaAPI,
		ServerName:  cfg.ServerName,
		Devices:     s.users,
		UploadLimit: uploadLimit,
		TLSRoots:    fedTransport.Roots(),
		Bus:         s.bus,
		Log:         entry("mediaapi"),
	}); err != nil {
		return nil, err
	}
	// Remote media comes through clients of their own: signed with this
	// server's key over the federation transport (its address guard and
	// server policy), with a timeout a large file fits in.
	ua := fclient.WithUserAgent("Myelin/" + Version)
	s.media.SetRemote(&mediaapi.FederationRemote{
		Origin: s.key.ServerName,
		Signed: fclient.NewFederationClient([]*fclient.SigningIdentity{{ServerName: s.key.ServerName, KeyID: s.key.KeyID, PrivateKey: s.key.Private}},
			fclient.WithTransport(fedTransport), fclient.WithTimeout(mediaFetchTimeout), ua),
		Plain: fclient.NewClient(fclient.WithTransport(fedTransport), fclient.WithTimeout(mediaFetchTimeout), ua),
	})
	return s, nil
}

// mediaFetchTimeout bounds one download of remote media, body included.
const mediaFetchTimeout = 5 * time.Minute

// ClientHandler serves the client listener: the Client-Server API,
// /.well-known/matrix/client, /health, and the media API. It fails if a
// route has a path variable the HTTP edge does not know how to check.
func (s *Server) ClientHandler() (http.Handler, error) {
	r := mxhttp.NewRouter()
	// The router tries routes in order, and every client always has a
	// /sync in flight: the sync routes go first.
	s.sync.Routes(r)
	s.client.Routes(r)
	s.media.AdminRoutes(r)
	s.fed.OpenIDRoutes(r)
	s.fed.ThirdPartyRoutes(r)
	s.commonRoutes(r)
	if err := mxhttp.CheckRouteVars(r); err != nil {
		return nil, err
	}
	// Media has a router of its own, with the upload size as its body
	// limit instead of the client API's.
	mr := mxhttp.NewRouter()
	s.media.Routes(mr)
	if err := mxhttp.CheckRouteVars(mr); err != nil {
		return nil, err
	}
	log := s.logFor("http").WithField("listener", "client")
	api := mxhttp.Serve(log, s.cfg.ClientAPI.MaxRequestBytes, withClientIP, r)
	media := mxhttp.Serve(log, s.cfg.MediaAPI.MaxUploadBytes, withClientIP, mr)
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if mediaapi.IsMediaPath(req.URL.Path) {
			media.ServeHTTP(w, req)
			return
		}
		api.ServeHTTP(w, req)
	}), nil
}

// FederationHandler serves the federation listener: the Server-Server
// API (/_matrix/federation/*, /_matrix/key/*) and /health, with the
// federation body limit; its rate limits are per origin server.
func (s *Server) FederationHandler() (http.Handler, error) {
	r := mxhttp.NewRouter()
	s.fed.Routes(r)
	s.media.FederationRoutes(r, s.fed.Authed)
	s.commonRoutes(r)
	if err := mxhttp.CheckRouteVars(r); err != nil {
		return nil, err
	}
	return mxhttp.Serve(s.logFor("http").WithField("listener", "federation"), s.cfg.FederationAPI.MaxRequestBytes, nil, r), nil
}

// commonRoutes are served on both listeners: /health, and the
// .well-known delegation of federation when one is configured (it is
// fetched from port 443 of the server name, which may be either).
func (s *Server) commonRoutes(r *mux.Router) {
	r.Handle("/health", mxhttp.Handler(s.health)).Methods(http.MethodGet)
	if wk := s.cfg.FederationAPI.WellKnownServer; wk != "" {
		body := map[string]string{"m.server": wk}
		r.Handle("/.well-known/matrix/server", mxhttp.Handler(func(*http.Request) (any, error) { return body, nil })).Methods(http.MethodGet)
	}
}

// withClientIP puts the client's address in the request context, where
// the userapi records it as a device's last-seen IP.
func withClientIP(ctx context.Context, r *http.Request) context.Context {
	return uapi.WithClientIP(ctx, mxhttp.ClientIP(r))
}

// listener is one address the server serves on.
type listener struct {
	name, addr, cert, key string
	handler               http.Handler
}

// Start starts the components' consumers and the listeners.
func (s *Server) Start() error {
	clientHandler, err := s.ClientHandler()
	if err != nil {
		return err
	}
	fedHandler, err := s.FederationHandler()
	if err != nil {
		return err
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	if err := s.rooms.Start(s.ctx); err != nil {
		return err
	}
	if err := s.users.Start(s.ctx, s.rooms, s.outbound); err != nil {
		return err
	}
	if err := s.sync.Start(s.ctx); err != nil {
		return err
	}
	if err := s.media.Start(s.ctx); err != nil {
		return err
	}
	if s.cfg.FederationAPI.Listen != "" {
		// Only a server others can reach sends to them: without the
		// federation listener no remote server can be in a room.
		if err := s.fed.StartOutbound(s.ctx, s.bus); err != nil {
			return err
		}
	}
	listeners := []listener{
		{"client", s.cfg.ClientAPI.Listen, s.cfg.ClientAPI.TLSCert, s.cfg.ClientAPI.TLSKey, clientHandler},
		{"federation", s.cfg.FederationAPI.Listen, s.cfg.FederationAPI.TLSCert, s.cfg.FederationAPI.TLSKey, fedHandler},
	}
	if s.cfg.Debug.PprofListen != "" {
		listeners = append(listeners, listener{"pprof", s.cfg.Debug.PprofListen, "", "", pprofHandler()})
	}
	for _, l := range listeners {
		if l.addr == "" {
			continue
		}
		ln, err := net.Listen("tcp", l.addr)
		if err != nil {
			return fmt.Errorf("listen on %s (%s): %w", l.addr, l.name, err)
		}
		s.addrs[l.name] = ln.Addr()
		if l.cert == "" && l.name != "pprof" {
			// Requests net/http cannot parse get a Matrix error too;
			// under TLS this would cost HTTP/2 (see the function).
			ln = mxhttp.PlainErrorListener(ln)
		}
		srv := &http.Server{
			Handler:           l.handler,
			ReadHeaderTimeout: 30 * time.Second,
			IdleTimeout:       5 * time.Minute,
			// Connection-level errors (TLS handshakes cut short, ...) are
			// the client's business: debug level.
			ErrorLog: stdlog.New(s.log.WithField("listener", l.name).WriterLevel(logrus.DebugLevel), "", 0),
		}
		s.servers = append(s.servers, srv)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			var err error
			if l.cert != "" {
				err = srv.ServeTLS(ln, l.cert, l.key)
			} else {
				err = srv.Serve(ln)
			}
			if err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.log.WithError(err).WithField("listener", l.name).Error("listener failed")
			}
		}()
		s.log.WithFields(logrus.Fields{"listener": l.name, "addr": ln.Addr().String(), "server_name": s.cfg.ServerName}).Info("listening")
	}
	return nil
}

// pprofHandler serves Go's profiles. It also turns on mutex and blocking
// profiling, which cost a little on every contended lock: only when an
// admin asked for the debug listener.
func pprofHandler() http.Handler {
	runtime.SetMutexProfileFraction(100)
	runtime.SetBlockProfileRate(int(time.Millisecond))
	// A heap sample every 64 KiB rather than 512: a small server's heap is
	// tens of MB of small things, which the default rate shows as noise.
	runtime.MemProfileRate = 64 << 10
	m := http.NewServeMux()
	m.HandleFunc("/debug/pprof/", pprof.Index)
	m.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	m.HandleFunc("/debug/pprof/profile", pprof.Profile)
	m.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	m.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return m
}

// Bus is the server's message bus, for fault tests that break its
// connection.
func (s *Server) Bus() *bus.Bus { return s.bus }

// Users is the server's userapi, for tests that check what has no
// endpoint of its own (notification counts before /sync shows them).
func (s *Server) Users() uapi.API { return s.users }

// SyncWaiters is the number of long-polling /sync requests waiting.
func (s *Server) SyncWaiters() int { return s.sync.SyncWaiters() }

// Addr returns the address a listener ("client", "federation", "pprof") is
// bound to, nil if it is not running.
func (s *Server) Addr(name string) net.Addr { return s.addrs[name] }

// ClientURL is the base URL of the client listener.
func (s *Server) ClientURL() string {
	return s.listenerURL("client", s.cfg.ClientAPI.TLSCert != "")
}

// FederationURL is the base URL of the federation listener, "" when it
// is off.
func (s *Server) FederationURL() string {
	return s.listenerURL("federation", s.cfg.FederationAPI.TLSCert != "")
}

func (s *Server) listenerURL(name string, tls bool) string {
	a := s.Addr(name)
	if a == nil {
		return ""
	}
	scheme := "http"
	if tls {
		scheme = "https"
	}
	return scheme + "://" + strings.Replace(a.String(), "[::]", "127.0.0.1", 1)
}

// FederationClient sends requests to other servers, signed with this
// server's key.
func (s *Server) FederationClient() fclient.FederationClient { return s.fed.Client() }

// Fetcher gets what the roomserver's input of federated events lacks from
// other servers, checked (tests call it directly).
func (s *Server) Fetcher() rsapi.Fetcher { return s.fed.Fetcher() }

// Stop stops accepting requests, lets the ones in flight finish (until ctx
// ends), stops the consumers, and closes NATS and the database. Events
// acknowledged to clients are already committed; unacknowledged input is
// redelivered on the next start.
func (s *Server) Stop(ctx context.Context) error {
	var firstErr error
	for _, srv := range s.servers {
		if err := srv.Shutdown(ctx); err != nil && firstErr == nil {
			firstErr = err
		}
	}
	s.wg.Wait()
	if s.cancel != nil {
		s.cancel()
		s.rooms.Wait()
		s.users.Wait()
		s.sync.Wait()
		s.fed.Wait()
		s.media.Wait()
	}
	s.close()
	return firstErr
}

func (s *Server) close() {
	if s.outbound != nil {
		s.outbound.CloseIdleConnections()
	}
	if s.bus != nil {
		// Flushes, so that the naks of unprocessed messages reach the
		// server (they are redelivered at once on the next start).
		s.bus.Close()
	}
	if s.db != nil {
		_ = s.db.Close()
	}
}
