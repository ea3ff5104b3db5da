// Package config is Myelin's one typed configuration: loaded from YAML,
// defaulted in one place, overridden by environment variables named after
// each field's path (client_api.listen -> MYELIN_CLIENT_API_LISTEN), and
// validated with messages that name the field. setup and cmd load it;
// components read the sections they need from what setup hands them.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"gopkg.in/yaml.v3"

	"myelin/internal/netguard"
)

// Config is the whole of a Myelin configuration.
type Config struct {
	// ServerName is the domain part of every user and room alias on this server.
	ServerName string `yaml:"server_name"`
	// DataDir holds the SQLite database, the embedded NATS store and the keys
	// unless their own paths say otherwise.
	DataDir string `yaml:"data_dir"`

	ClientAPI     ClientAPI     `yaml:"client_api"`
	FederationAPI FederationAPI `yaml:"federation_api"`
	MediaAPI      MediaAPI      `yaml:"media_api"`
	Database      Database      `yaml:"database"`
	NATS          NATS          `yaml:"nats"`
	Registration  Registration  `yaml:"registration"`
	RateLimits    RateLimits    `yaml:"rate_limits"`
	Logging       Logging       `yaml:"logging"`
	Keys          Keys          `yaml:"keys"`
	Rooms         Rooms         `yaml:"rooms"`
	Sync          Sync          `yaml:"sync"`
	Memory        Memory        `yaml:"memory"`
	Debug         Debug         `yaml:"debug"`
}

// ClientAPI configures the Client-Server API listener.
type ClientAPI struct {
	Listen string `yaml:"listen"`
	// PublicBaseURL is what /.well-known/matrix/client advertises.
	PublicBaseURL string `yaml:"public_baseurl"`
	// MaxRequestBytes caps a request body; larger bodies are cut off with M_TOO_LARGE.
	MaxRequestBytes int64 `yaml:"max_request_bytes"`
	// TLSCert and TLSKey, when both set, make the listener serve HTTPS.
	TLSCert string `yaml:"tls_cert"`
	TLSKey  string `yaml:"tls_key"`
	// AccessTokenLifetime is how long an access token lasts when its
	// client asked for a refresh token (refresh_token on /login and
	// /register); 0 hands out no refresh tokens. Clients that do not ask
	// get tokens that last until logout.
	AccessTokenLifetime time.Duration `yaml:"access_token_lifetime"`
	// LoginTokenLifetime is how long a token from /login/get_token may be
	// used (once) to sign in another device; 0 turns the endpoint off.
	LoginTokenLifetime time.Duration `yaml:"login_token_lifetime"`
	// MaxDelayedEventDelay is the longest delay a delayed event (MSC4140,
	// the delay parameter of send and state requests) may have; 0 turns
	// delayed events off.
	MaxDelayedEventDelay time.Duration `yaml:"max_delayed_event_delay"`
	// TURN is what /voip/turnServer hands out.
	TURN TURN `yaml:"turn"`
}

// TURN configures the TURN servers clients use for VoIP calls.
type TURN struct {
	// URIs are the turn:/turns:/stun: URIs; empty answers {}.
	URIs []string `yaml:"uris"`
	// SharedSecret makes time-limited credentials (the TURN REST API
	// scheme coturn's use-auth-secret reads); else Username and Password
	// are handed out as they are.
	SharedSecret string `yaml:"shared_secret"`
	Username     string `yaml:"username"`
	Password     string `yaml:"password"`
	// UserLifetime is how long shared-secret credentials last.
	UserLifetime time.Duration `yaml:"user_lifetime"`
	// AllowGuests lets guest accounts have credentials too.
	AllowGuests bool `yaml:"allow_guests"`
}

// FederationAPI configures the Server-Server API listener and this
// server's requests to others.
type FederationAPI struct {
	// Listen is the federation listener address; empty disables it.
	Listen  string `yaml:"listen"`
	TLSCert string `yaml:"tls_cert"`
	TLSKey  string `yaml:"tls_key"`
	// MaxRequestBytes caps a request body on the federation listener
	// (a /send of 50 PDUs and 100 EDUs must fit); larger bodies are cut
	// off with M_TOO_LARGE.
	MaxRequestBytes int64 `yaml:"max_request_bytes"`
	// TrustedCAFiles are PEM files of certificate authorities trusted, on
	// top of the system's, when this server connects to others.
	TrustedCAFiles []string `yaml:"trusted_ca_files"`
	// KeyServers are notaries (server names) asked for another server's
	// keys when that server does not give them itself; empty asks none.
	KeyServers []string `yaml:"key_servers"`
	// AllowPrivateAddresses lets this server connect to loopback and
	// private addresses when it contacts other servers; off, a server
	// name resolving to one is refused (so that a remote cannot make us
	// reach our own network). Test networks turn it on.
	AllowPrivateAddresses bool `yaml:"allow_private_addresses"`
	// WellKnownServer, when set, is served as the m.server of
	// /.well-known/matrix/server (on both listeners), delegating
	// federation for server_name to that host[:port].
	WellKnownServer string `yaml:"well_known_server"`
	// AllowedServers, when not empty, are the only servers this server
	// federates with; DeniedServers are never federated with. Both are
	// globs ('*', '?') over server names without their port, matched
	// case-insensitively. A server not allowed is refused inbound (403)
	// and sent nothing; its events in other servers' state are kept.
	AllowedServers []string `yaml:"allowed_servers"`
	DeniedServers  []string `yaml:"denied_servers"`
	// InsecureIdentityServers skips verifying the TLS certificates of
	// identity servers (third-party invites). Test networks only: sytest's
	// identity server presents a self-signed certificate.
	InsecureIdentityServers bool `yaml:"insecure_identity_servers"`
}

// MediaAPI configures the content repository: uploads, downloads and
// thumbnails.
type MediaAPI struct {
	// BasePath is the directory blobs are stored under, one file per
	// content hash (default <data_dir>/media).
	BasePath string `yaml:"base_path"`
	// MaxUploadBytes caps one upload; larger ones are cut off while they
	// stream in with M_TOO_LARGE.
	MaxUploadBytes int64 `yaml:"max_upload_bytes"`
	// UserQuotaBytes caps what one user's uploads may take in total; 0
	// sets no quota.
	UserQuotaBytes int64 `yaml:"user_quota_bytes"`
	// LegacyFreezeDate (YYYY-MM-DD, UTC) is when unauthenticated media
	// access froze (spec v1.11): the legacy /_matrix/media/v3 download and
	// thumbnail endpoints serve only media stored before it. Empty: they
	// serve everything.
	LegacyFreezeDate string `yaml:"legacy_freeze_date"`
	// ThumbnailSizes are the thumbnails made on request, each
	// "<width>x<height> <crop|scale>".
	ThumbnailSizes []string `yaml:"thumbnail_sizes"`
	// MaxThumbnailSourcePixels is the largest image (width x height, read
	// from its header before decoding) that is thumbnailed.
	MaxThumbnailSourcePixels int64 `yaml:"max_thumbnail_source_pixels"`
	// AnimatedMaxBytes is the largest GIF or WebP returned as is for a
	// thumbnail asked with animated=true; a larger animated GIF gets an
	// animated thumbnail, a larger WebP a still one.
	AnimatedMaxBytes int64 `yaml:"animated_max_bytes"`
	// UnusedExpiry is how long an ID made by /create waits for its upload.
	UnusedExpiry time.Duration `yaml:"unused_expiry"`
	// MaxPendingUploads is how many IDs made by /create a user may hold
	// unused at once.
	MaxPendingUploads int `yaml:"max_pending_uploads"`
	// URLPreview configures GET /preview_url.
	URLPreview URLPreview `yaml:"url_preview"`
}

// URLPreview configures URL previews: the server fetches pages users name
// and reads their OpenGraph metadata. Loopback, private, link-local, CGNAT,
// multicast and other non-public addresses are always refused (checked on
// the address dialled, after DNS), as is IPRangeBlacklist; IPRangeWhitelist
// lets chosen ranges through anyway.
type URLPreview struct {
	// Enabled turns previews on; off, /preview_url answers M_UNRECOGNIZED.
	Enabled bool `yaml:"enabled"`
	// IPRangeBlacklist are more ranges (CIDR) never fetched from.
	IPRangeBlacklist []string `yaml:"ip_range_blacklist"`
	// IPRangeWhitelist are ranges (CIDR) fetched from even when private
	// or blacklisted.
	IPRangeWhitelist []string `yaml:"ip_range_whitelist"`
	// MaxPageBytes is how much of a page is read (the rest is cut off)
	// and the largest image fetched for a preview.
	MaxPageBytes int64 `yaml:"max_page_bytes"`
	// Timeout bounds the fetch of a page, redirects and body included,
	// and again that of its image.
	Timeout time.Duration `yaml:"timeout"`
	// CacheDuration is how long a preview is reused for the same URL.
	CacheDuration time.Duration `yaml:"cache_duration"`
}

// Database names the SQL database all components store their tables in.
type Database struct {
	// URL is a file path for SQLite (default <data_dir>/myelin.db) or a
	// postgres:// DSN.
	URL string `yaml:"url"`
	// MaxOpenConns is PostgreSQL's pool size, and SQLite's reader pool
	// size up to two connections a core (sqldb.SQLiteReaders).
	MaxOpenConns int `yaml:"max_open_conns"`
}

// NATS configures the message bus between components.
type NATS struct {
	// URL of an external NATS cluster; empty runs an embedded server.
	URL string `yaml:"url"`
	// StoreDir is where the embedded server keeps JetStream data
	// (default <data_dir>/nats).
	StoreDir string `yaml:"store_dir"`
	// PublishRetry is how long a write waits for a lost connection to
	// NATS to heal before it answers 503.
	PublishRetry time.Duration `yaml:"publish_retry"`
}

// Registration says who may create accounts.
type Registration struct {
	// Open lets anyone register with m.login.dummy.
	Open bool `yaml:"open"`
	// SharedSecret enables Synapse-compatible /_synapse/admin/v1/register.
	SharedSecret string `yaml:"shared_secret"`
	// BcryptCost is the bcrypt work factor for password hashes.
	BcryptCost int `yaml:"bcrypt_cost"`
	// AllowGuests lets clients register guest accounts (kind=guest), which
	// may join rooms that allow guests and do little else.
	AllowGuests bool `yaml:"allow_guests"`
	// RequiresToken makes open registration ask for a registration token
	// (the m.login.registration_token stage); admins make tokens with
	// `myelin registration-token` or the admin API.
	RequiresToken bool `yaml:"requires_token"`
}

// RateLimits configures per-user and per-IP token buckets.
type RateLimits struct {
	Enabled bool `yaml:"enabled"`
	// Each bucket refills PerSecond tokens a second up to Burst.
	Login    Bucket `yaml:"login"`
	Register Bucket `yaml:"register"`
	Send     Bucket `yaml:"send"`
	// Federation limits the requests of each other server (by its
	// authenticated name; by IP for the key and version endpoints) on the
	// federation listener.
	Federation Bucket `yaml:"federation"`
	// MediaUpload limits each user's uploads and /create calls.
	MediaUpload Bucket `yaml:"media_upload"`
}

// Bucket is one token-bucket limit.
type Bucket struct {
	PerSecond float64 `yaml:"per_second"`
	Burst     int     `yaml:"burst"`
}

// Logging configures logrus.
type Logging struct {
	Level  string `yaml:"level"`  // trace, debug, info, warn, error
	Format string `yaml:"format"` // text or json
	// File, when set, receives the log instead of stderr.
	File string `yaml:"file"`
	// Components gives some components a level of their own, as
	// "component=level,...", e.g. "federationapi=debug".
	Components string `yaml:"components"`
}

// LogComponents are the names logging.components accepts.
var LogComponents = []string{"bus", "userapi", "roomserver", "syncapi", "clientapi", "federationapi", "mediaapi", "http"}

// ComponentLevels parses Components into level names by component.
func (l Logging) ComponentLevels() (map[string]string, error) {
	out := map[string]string{}
	for part := range strings.SplitSeq(l.Components, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, level, ok := strings.Cut(part, "=")
		name, level = strings.TrimSpace(name), strings.TrimSpace(level)
		switch {
		case !ok:
			return nil, fmt.Errorf("%q is not component=level", part)
		case !slices.Contains(LogComponents, name):
			return nil, fmt.Errorf("unknown component %q (one of %s)", name, strings.Join(LogComponents, ", "))
		case !validLogLevel(level):
			return nil, fmt.Errorf("%s: level %q must be one of trace, debug, info, warn, error", name, level)
		}
		out[name] = level
	}
	return out, nil
}

func validLogLevel(l string) bool {
	switch l {
	case "trace", "debug", "info", "warn", "error":
		return true
	}
	return false
}

// Keys locates the server's signing key.
type Keys struct {
	// SigningKeyPath is an ed25519 key in Synapse's format
	// ("ed25519 <id> <base64 seed>"); generated on first start when missing
	// (default <data_dir>/signing.key).
	SigningKeyPath string `yaml:"signing_key_path"`
}

// Rooms configures room defaults.
type Rooms struct {
	// DefaultVersion is the room version for /createRoom without one.
	DefaultVersion string `yaml:"default_version"`
}

// Sync tunes /sync.
type Sync struct {
	// MaxTimeout caps a client's long-poll timeout.
	MaxTimeout time.Duration `yaml:"max_timeout"`
	// PresenceTimeout is how long a user stays online (or unavailable)
	// after its last /sync or presence update.
	PresenceTimeout time.Duration `yaml:"presence_timeout"`
}

// Memory tunes the Go garbage collector and the caches.
type Memory struct {
	// GCPercent is how far the heap may grow past what is live (and the
	// goroutine stacks) before a collection, in percent: Go's GOGC, which
	// wins when it is set. Go's default is 100; a server of mostly idle
	// connections keeps a third less memory at 50 for a little more CPU.
	GCPercent int `yaml:"gc_percent"`
	// LimitMB is a soft cap on the process's memory in MiB (Go's
	// GOMEMLIMIT, which wins when set): the collector works harder as the
	// process nears it. 0 sets none.
	LimitMB int64 `yaml:"limit_mb"`
	// RoomCacheMB bounds what the roomserver keeps of parsed events and
	// room state in memory, in MiB.
	RoomCacheMB int64 `yaml:"room_cache_mb"`
}

// Debug holds operator knobs for investigating the server.
type Debug struct {
	// PprofListen, when set, serves net/http/pprof on that (loopback) address.
	PprofListen string `yaml:"pprof_listen"`
}

// Defaults returns a Config with every field at its default.
func Defaults() *Config {
	return &Config{
		ServerName: "localhost",
		DataDir:    "./data",
		ClientAPI: ClientAPI{
			Listen:               "127.0.0.1:8008",
			MaxRequestBytes:      10 << 20,
			AccessTokenLifetime:  5 * time.Minute,
			LoginTokenLifetime:   2 * time.Minute,
			MaxDelayedEventDelay: 24 * time.Hour,
			TURN:                 TURN{UserLifetime: time.Hour, AllowGuests: true},
		},
		FederationAPI: FederationAPI{Listen: "", MaxRequestBytes: 16 << 20},
		MediaAPI: MediaAPI{
			MaxUploadBytes:           50 << 20,
			ThumbnailSizes:           []string{"32x32 crop", "96x96 crop", "320x240 scale", "640x480 scale", "800x600 scale"},
			MaxThumbnailSourcePixels: 32_000_000,
			AnimatedMaxBytes:         4 << 20,
			UnusedExpiry:             24 * time.Hour,
			MaxPendingUploads:        10,
			URLPreview: URLPreview{
				MaxPageBytes:  10 << 20,
				Timeout:       10 * time.Second,
				CacheDuration: time.Hour,
			},
		},
		Database:     Database{MaxOpenConns: 16},
		NATS:         NATS{PublishRetry: 10 * time.Second},
		Registration: Registration{BcryptCost: 10},
		RateLimits: RateLimits{
			Enabled:     true,
			Login:       Bucket{PerSecond: 0.2, Burst: 5},
			Register:    Bucket{PerSecond: 0.1, Burst: 5},
			Send:        Bucket{PerSecond: 5, Burst: 20},
			Federation:  Bucket{PerSecond: 50, Burst: 200},
			MediaUpload: Bucket{PerSecond: 1, Burst: 10},
		},
		Logging: Logging{Level: "info", Format: "text"},
		Rooms:   Rooms{DefaultVersion: "10"},
		Sync:    Sync{MaxTimeout: 5 * time.Minute, PresenceTimeout: 30 * time.Second},
		Memory:  Memory{GCPercent: 50, RoomCacheMB: 8},
	}
}

// Load reads path (if non-empty) over the defaults, applies environment
// overrides from env (os.Environ() form), fills derived paths and validates.
func Load(path string, env []string) (*Config, error) {
	c := Defaults()
	if path != "" {
		raw, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("read config: %w", err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(raw))
		dec.KnownFields(true)
		if err := dec.Decode(c); err != nil && !errors.Is(err, io.EOF) { // io.EOF: an empty file
			return nil, fmt.Errorf("config %s: %w", path, err)
		}
	}
	if err := applyEnv(c, env); err != nil {
		return nil, err
	}
	c.fillDerived()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Config) fillDerived() {
	if len(c.ClientAPI.TURN.URIs) == 0 {
		c.ClientAPI.TURN.URIs = nil
	}
	if len(c.FederationAPI.TrustedCAFiles) == 0 {
		c.FederationAPI.TrustedCAFiles = nil // "[]" in the file is the default
	}
	if len(c.FederationAPI.KeyServers) == 0 {
		c.FederationAPI.KeyServers = nil
	}
	if len(c.FederationAPI.AllowedServers) == 0 {
		c.FederationAPI.AllowedServers = nil
	}
	if len(c.FederationAPI.DeniedServers) == 0 {
		c.FederationAPI.DeniedServers = nil
	}
	if len(c.MediaAPI.URLPreview.IPRangeBlacklist) == 0 {
		c.MediaAPI.URLPreview.IPRangeBlacklist = nil
	}
	if len(c.MediaAPI.URLPreview.IPRangeWhitelist) == 0 {
		c.MediaAPI.URLPreview.IPRangeWhitelist = nil
	}
	if c.Database.URL == "" {
		c.Database.URL = filepath.Join(c.DataDir, "myelin.db")
	}
	if c.NATS.StoreDir == "" {
		c.NATS.StoreDir = filepath.Join(c.DataDir, "nats")
	}
	if c.MediaAPI.BasePath == "" {
		c.MediaAPI.BasePath = filepath.Join(c.DataDir, "media")
	}
	if c.Keys.SigningKeyPath == "" {
		c.Keys.SigningKeyPath = filepath.Join(c.DataDir, "signing.key")
	}
	if c.ClientAPI.PublicBaseURL == "" {
		scheme := "http"
		if c.ClientAPI.TLSCert != "" {
			scheme = "https"
		}
		c.ClientAPI.PublicBaseURL = scheme + "://" + c.ClientAPI.Listen
	}
}

// Errors is every problem Validate found, one per line.
type Errors []string

func (e Errors) Error() string {
	return "invalid configuration:\n  " + strings.Join(e, "\n  ")
}

// Validate checks every field and reports all problems at once.
func (c *Config) Validate() error {
	var errs Errors
	bad := func(field string, value any, problem string) {
		errs = append(errs, fmt.Sprintf("%s: %v: %s", field, value, problem))
	}
	if c.ServerName == "" {
		bad("server_name", `""`, "must not be empty")
	} else if strings.ContainsAny(c.ServerName, "/ @#!") {
		bad("server_name", c.ServerName, "must be a host name with an optional port")
	}
	if c.DataDir == "" {
		bad("data_dir", `""`, "must not be empty")
	}
	checkListen := func(field, addr string, required bool) {
		if addr == "" {
			if required {
				bad(field, `""`, "must not be empty")
			}
			return
		}
		if _, port, err := net.SplitHostPort(addr); err != nil {
			bad(field, addr, "must be host:port")
		} else if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
			bad(field, addr, "port must be a number from 0 to 65535")
		}
	}
	checkListen("client_api.listen", c.ClientAPI.Listen, true)
	checkListen("federation_api.listen", c.FederationAPI.Listen, false)
	checkListen("debug.pprof_listen", c.Debug.PprofListen, false)
	if c.ClientAPI.MaxRequestBytes < 1024 {
		bad("client_api.max_request_bytes", c.ClientAPI.MaxRequestBytes, "must be at least 1024")
	}
	if (c.ClientAPI.TLSCert == "") != (c.ClientAPI.TLSKey == "") {
		bad("client_api.tls_cert", c.ClientAPI.TLSCert, "tls_cert and tls_key must be set together")
	}
	if (c.FederationAPI.TLSCert == "") != (c.FederationAPI.TLSKey == "") {
		bad("federation_api.tls_cert", c.FederationAPI.TLSCert, "tls_cert and tls_key must be set together")
	}
	if c.ClientAPI.AccessTokenLifetime < 0 {
		bad("client_api.access_token_lifetime", c.ClientAPI.AccessTokenLifetime, "must not be negative")
	}
	if c.ClientAPI.LoginTokenLifetime < 0 || c.ClientAPI.LoginTokenLifetime > time.Hour {
		bad("client_api.login_token_lifetime", c.ClientAPI.LoginTokenLifetime, "must be from 0 to 1h")
	}
	if c.ClientAPI.MaxDelayedEventDelay < 0 || c.ClientAPI.MaxDelayedEventDelay > 30*24*time.Hour {
		bad("client_api.max_delayed_event_delay", c.ClientAPI.MaxDelayedEventDelay, "must be from 0 to 720h")
	}
	turn := c.ClientAPI.TURN
	for _, u := range turn.URIs {
		if !strings.HasPrefix(u, "turn:") && !strings.HasPrefix(u, "turns:") && !strings.HasPrefix(u, "stun:") {
			bad("client_api.turn.uris", u, "must be a turn:, turns: or stun: URI")
		}
	}
	if turn.SharedSecret != "" && (turn.Username != "" || turn.Password != "") {
		bad("client_api.turn.shared_secret", "(set)", "shared_secret and username/password are alternatives: set one")
	}
	if turn.UserLifetime < time.Minute {
		bad("client_api.turn.user_lifetime", turn.UserLifetime, "must be at least 1m")
	}
	if c.FederationAPI.MaxRequestBytes < 65536 {
		bad("federation_api.max_request_bytes", c.FederationAPI.MaxRequestBytes, "must be at least 65536 (one PDU)")
	}
	for _, k := range c.FederationAPI.KeyServers {
		if !validServerName(k) {
			bad("federation_api.key_servers", k, "must be a server name (host with an optional port)")
		} else if k == c.ServerName {
			bad("federation_api.key_servers", k, "must not be this server")
		}
	}
	checkGlobs := func(field string, globs []string) {
		for _, g := range globs {
			if g == "" || strings.ContainsAny(g, " /@#!:") {
				bad(field, fmt.Sprintf("%q", g), "must be a server name glob ('*' and '?' allowed, no port)")
			}
		}
	}
	checkGlobs("federation_api.allowed_servers", c.FederationAPI.AllowedServers)
	checkGlobs("federation_api.denied_servers", c.FederationAPI.DeniedServers)
	if w := c.FederationAPI.WellKnownServer; w != "" && !validServerName(w) {
		bad("federation_api.well_known_server", w, "must be a host with an optional port")
	}
	for _, f := range c.FederationAPI.TrustedCAFiles {
		if _, err := os.Stat(f); err != nil {
			bad("federation_api.trusted_ca_files", f, "cannot be read")
		}
	}
	c.validateMedia(bad)
	if c.Database.MaxOpenConns < 1 {
		bad("database.max_open_conns", c.Database.MaxOpenConns, "must be at least 1")
	}
	if u := c.Database.URL; strings.Contains(u, "://") && !strings.HasPrefix(u, "postgres://") && !strings.HasPrefix(u, "postgresql://") && !strings.HasPrefix(u, "file:") {
		bad("database.url", u, "must be a file path (SQLite) or a postgres:// DSN")
	}
	if u := c.NATS.URL; u != "" && !strings.HasPrefix(u, "nats://") && !strings.HasPrefix(u, "tls://") {
		bad("nats.url", u, "must be empty (embedded) or a nats:// URL")
	}
	if c.NATS.PublishRetry < 100*time.Millisecond || c.NATS.PublishRetry > 5*time.Minute {
		bad("nats.publish_retry", c.NATS.PublishRetry, "must be from 100ms to 5m")
	}
	if c.Registration.BcryptCost < 4 || c.Registration.BcryptCost > 31 {
		bad("registration.bcrypt_cost", c.Registration.BcryptCost, "must be from 4 to 31")
	}
	for name, b := range map[string]Bucket{"login": c.RateLimits.Login, "register": c.RateLimits.Register, "send": c.RateLimits.Send, "federation": c.RateLimits.Federation, "media_upload": c.RateLimits.MediaUpload} {
		if b.PerSecond <= 0 {
			bad("rate_limits."+name+".per_second", b.PerSecond, "must be positive")
		}
		if b.Burst < 1 {
			bad("rate_limits."+name+".burst", b.Burst, "must be at least 1")
		}
	}
	if !validLogLevel(c.Logging.Level) {
		bad("logging.level", c.Logging.Level, "must be one of trace, debug, info, warn, error")
	}
	if _, err := c.Logging.ComponentLevels(); err != nil {
		bad("logging.components", c.Logging.Components, err.Error())
	}
	switch c.Logging.Format {
	case "text", "json":
	default:
		bad("logging.format", c.Logging.Format, "must be text or json")
	}
	if !SupportedRoomVersion(c.Rooms.DefaultVersion) {
		bad("rooms.default_version", c.Rooms.DefaultVersion, "must be a stable room version from 1 to 12")
	}
	if c.Sync.MaxTimeout < time.Second {
		bad("sync.max_timeout", c.Sync.MaxTimeout, "must be at least 1s")
	}
	if c.Sync.PresenceTimeout < time.Second {
		bad("sync.presence_timeout", c.Sync.PresenceTimeout, "must be at least 1s")
	}
	if c.Memory.GCPercent < 10 || c.Memory.GCPercent > 1000 {
		bad("memory.gc_percent", c.Memory.GCPercent, "must be from 10 to 1000")
	}
	if c.Memory.LimitMB < 0 {
		bad("memory.limit_mb", c.Memory.LimitMB, "must not be negative")
	}
	if c.Memory.RoomCacheMB < 1 {
		bad("memory.room_cache_mb", c.Memory.RoomCacheMB, "must be at least 1")
	}
	if len(errs) > 0 {
		sortStable(errs)
		return errs
	}
	return nil
}

func (c *Config) validateMedia(bad func(field string, value any, problem string)) {
	m := c.MediaAPI
	if m.MaxUploadBytes < 1024 {
		bad("media_api.max_upload_bytes", m.MaxUploadBytes, "must be at least 1024")
	}
	if m.UserQuotaBytes < 0 {
		bad("media_api.user_quota_bytes", m.UserQuotaBytes, "must not be negative (0: no quota)")
	}
	if m.LegacyFreezeDate != "" {
		if _, err := time.Parse(time.DateOnly, m.LegacyFreezeDate); err != nil {
			bad("media_api.legacy_freeze_date", m.LegacyFreezeDate, "must be a date YYYY-MM-DD or empty")
		}
	}
	if len(m.ThumbnailSizes) == 0 {
		bad("media_api.thumbnail_sizes", "[]", "must list at least one size")
	}
	for _, t := range m.ThumbnailSizes {
		if _, err := ParseThumbnailSize(t); err != nil {
			bad("media_api.thumbnail_sizes", fmt.Sprintf("%q", t), err.Error())
		}
	}
	if m.MaxThumbnailSourcePixels < 1 {
		bad("media_api.max_thumbnail_source_pixels", m.MaxThumbnailSourcePixels, "must be positive")
	}
	if m.AnimatedMaxBytes < 0 {
		bad("media_api.animated_max_bytes", m.AnimatedMaxBytes, "must not be negative")
	}
	if m.UnusedExpiry < time.Minute {
		bad("media_api.unused_expiry", m.UnusedExpiry, "must be at least 1m")
	}
	if m.MaxPendingUploads < 1 {
		bad("media_api.max_pending_uploads", m.MaxPendingUploads, "must be at least 1")
	}
	p := m.URLPreview
	for name, ranges := range map[string][]string{"ip_range_blacklist": p.IPRangeBlacklist, "ip_range_whitelist": p.IPRangeWhitelist} {
		if _, err := netguard.ParsePrefixes(ranges); err != nil {
			bad("media_api.url_preview."+name, fmt.Sprintf("%q", ranges), err.Error())
		}
	}
	if p.MaxPageBytes < 1024 {
		bad("media_api.url_preview.max_page_bytes", p.MaxPageBytes, "must be at least 1024")
	}
	if p.Timeout < 100*time.Millisecond {
		bad("media_api.url_preview.timeout", p.Timeout, "must be at least 100ms")
	}
	if p.CacheDuration < time.Second {
		bad("media_api.url_preview.cache_duration", p.CacheDuration, "must be at least 1s")
	}
}

// ThumbnailSize is one configured thumbnail: a bounding box and how the
// image is fitted to it.
type ThumbnailSize struct {
	Width, Height int
	// Method is "crop" (fill the box, cut what overflows) or "scale" (fit
	// inside the box, keeping the aspect ratio).
	Method string
}

// ParseThumbnailSize reads "<width>x<height> <crop|scale>".
func ParseThumbnailSize(s string) (ThumbnailSize, error) {
	dims, method, ok := strings.Cut(strings.TrimSpace(s), " ")
	w, h, ok2 := strings.Cut(dims, "x")
	if !ok || !ok2 {
		return ThumbnailSize{}, errors.New(`must be "<width>x<height> <crop|scale>"`)
	}
	wi, err1 := strconv.Atoi(w)
	hi, err2 := strconv.Atoi(h)
	if err1 != nil || err2 != nil || wi < 1 || hi < 1 || wi > 4096 || hi > 4096 {
		return ThumbnailSize{}, errors.New("width and height must be from 1 to 4096")
	}
	method = strings.TrimSpace(method)
	if method != "crop" && method != "scale" {
		return ThumbnailSize{}, errors.New("method must be crop or scale")
	}
	return ThumbnailSize{Width: wi, Height: hi, Method: method}, nil
}

// SupportedRoomVersion reports whether v is one of the room versions Myelin
// creates and joins. An explicit list: gomatrixserverlib's "stable" set
// includes experimental versions.
func SupportedRoomVersion(v string) bool {
	n, err := strconv.Atoi(v)
	return err == nil && n >= 1 && n <= 12 && strconv.Itoa(n) == v
}

// validServerName reports whether s is a server name as the spec's
// grammar has it: a DNS name or an IP literal, with an optional port.
func validServerName(s string) bool {
	_, _, ok := spec.ParseAndValidateServerName(spec.ServerName(s))
	return ok
}

func sortStable(e Errors) {
	for i := 1; i < len(e); i++ {
		for j := i; j > 0 && e[j] < e[j-1]; j-- {
			e[j], e[j-1] = e[j-1], e[j]
		}
	}
}

// EnvName is the environment variable that overrides the field at path.
func EnvName(path string) string {
	return "MYELIN_" + strings.ToUpper(strings.ReplaceAll(path, ".", "_"))
}

// applyEnv sets every field whose MYELIN_* variable is present in env.
func applyEnv(c *Config, env []string) error {
	vars := map[string]string{}
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok && strings.HasPrefix(k, "MYELIN_") {
			vars[k] = v
		}
	}
	if len(vars) == 0 {
		return nil
	}
	var errs Errors
	walkFields(reflect.ValueOf(c).Elem(), "", func(path string, f reflect.Value) {
		name := EnvName(path)
		raw, ok := vars[name]
		if !ok {
			return
		}
		if err := setFromString(f, raw); err != nil {
			errs = append(errs, fmt.Sprintf("%s (from %s): %q: %v", path, name, raw, err))
		}
	})
	if len(errs) > 0 {
		return errs
	}
	return nil
}

// Paths lists every settable field path, for documentation and tests.
func Paths() []string {
	var out []string
	walkFields(reflect.ValueOf(Defaults()).Elem(), "", func(path string, _ reflect.Value) {
		out = append(out, path)
	})
	return out
}

func walkFields(v reflect.Value, prefix string, f func(path string, field reflect.Value)) {
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		tag := strings.Split(t.Field(i).Tag.Get("yaml"), ",")[0]
		if tag == "" || tag == "-" {
			continue
		}
		path := tag
		if prefix != "" {
			path = prefix + "." + tag
		}
		fv := v.Field(i)
		if fv.Kind() == reflect.Struct {
			walkFields(fv, path, f)
			continue
		}
		f(path, fv)
	}
}

var durationType = reflect.TypeOf(time.Duration(0))

func setFromString(f reflect.Value, raw string) error {
	if f.Type() == durationType {
		d, err := time.ParseDuration(raw)
		if err != nil {
			return err
		}
		f.SetInt(int64(d))
		return nil
	}
	switch f.Kind() {
	case reflect.String:
		f.SetString(raw)
	case reflect.Bool:
		b, err := strconv.ParseBool(raw)
		if err != nil {
			return errors.New("want true or false")
		}
		f.SetBool(b)
	case reflect.Int, reflect.Int64:
		n, err := strconv.ParseInt(raw, 10, 64)
		if err != nil {
			return errors.New("want an integer")
		}
		f.SetInt(n)
	case reflect.Slice:
		if f.Type().Elem().Kind() != reflect.String {
			return fmt.Errorf("cannot set a %s from the environment", f.Type())
		}
		var items []string
		for _, s := range strings.Split(raw, ",") {
			if s = strings.TrimSpace(s); s != "" {
				items = append(items, s)
			}
		}
		f.Set(reflect.ValueOf(items))
	case reflect.Float64:
		n, err := strconv.ParseFloat(raw, 64)
		if err != nil {
			return errors.New("want a number")
		}
		f.SetFloat(n)
	default:
		return fmt.Errorf("cannot set a %s from the environment", f.Kind())
	}
	return nil
}
