// Package testserver starts real Myelin homeservers in-process for tests:
// loopback listener, a fresh data directory, the database URL given (see
// sqldbtest), embedded NATS, open registration, no rate limits and cheap
// password hashing.
package testserver

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"myelin/setup"
	"myelin/setup/config"
)

// Server is a running test homeserver.
type Server struct {
	*setup.Server
	Config *config.Config
	URL    string
	t      testing.TB
	stop   sync.Once
}

// Options adjust the configuration before start.
type Options func(*config.Config)

// Config returns the test configuration for a server storing its data in
// dataDir and its tables at dbURL.
func Config(dataDir, dbURL string, opts ...Options) *config.Config {
	cfg := config.Defaults()
	cfg.ServerName = "localhost"
	cfg.DataDir = dataDir
	cfg.Database.URL = dbURL
	cfg.ClientAPI.Listen = "127.0.0.1:0"
	cfg.Registration.Open = true
	cfg.Registration.BcryptCost = 4
	cfg.Registration.SharedSecret = "test-secret"
	cfg.RateLimits.Enabled = false
	cfg.Logging.Level = "warn"
	for _, o := range opts {
		o(cfg)
	}
	return cfg
}

// Start runs a server with cfg until the test ends; opts adjust what
// the configuration cannot say (a fake DNS for federation tests).
func Start(t testing.TB, cfg *config.Config, opts ...setup.Option) *Server {
	t.Helper()
	cfg.NATS.StoreDir = ""
	cfg.Keys.SigningKeyPath = ""
	if err := cfg.Validate(); err != nil {
		t.Fatalf("test config: %v", err)
	}
	filled, err := config.Load("", []string{
		"MYELIN_DATA_DIR=" + cfg.DataDir,
	})
	if err != nil {
		t.Fatal(err)
	}
	cfg.NATS.StoreDir = filled.NATS.StoreDir
	cfg.Keys.SigningKeyPath = filled.Keys.SigningKeyPath
	if cfg.MediaAPI.BasePath == "" {
		cfg.MediaAPI.BasePath = filled.MediaAPI.BasePath
	}
	log := logrus.New()
	lvl, _ := logrus.ParseLevel(cfg.Logging.Level)
	log.SetLevel(lvl)
	log.SetOutput(testWriter{t})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	serverStarted()
	srv, err := setup.New(ctx, cfg, log, opts...)
	if err != nil {
		serverStopped(t)
		t.Fatalf("start server: %v", err)
	}
	s := &Server{Server: srv, Config: cfg, t: t}
	t.Cleanup(s.Stop)
	if err := srv.Start(); err != nil {
		t.Fatalf("start server: %v", err)
	}
	s.URL = srv.ClientURL()
	return s
}

// Stop stops the server gracefully and, when no other test server runs,
// checks that it left no goroutine behind; later calls do nothing.
func (s *Server) Stop() {
	s.stop.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = s.Server.Stop(ctx)
		serverStopped(s.t)
	})
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

// Client is a minimal JSON HTTP client for tests that check exact
// responses.
type Client struct {
	Base  string
	Token string
	HTTP  *http.Client
}

// Response is a decoded response.
type Response struct {
	Status int
	Body   map[string]any
	Raw    []byte
}

// Do sends a request with an optional body (a string is sent as is) and
// decodes the JSON answer.
func (c *Client) Do(t testing.TB, method, path string, body any) *Response {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = bytes.NewBufferString(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, c.Base+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	out := &Response{Status: resp.StatusCode, Raw: raw}
	_ = json.Unmarshal(raw, &out.Body)
	return out
}

// Register creates a user with open registration and returns a client
// logged in as it.
func (s *Server) Register(t testing.TB, localpart string) *Client {
	t.Helper()
	c := &Client{Base: s.URL}
	r := c.Do(t, "POST", "/_matrix/client/v3/register", map[string]any{
		"username": localpart, "password": "password-" + localpart,
		"auth": map[string]string{"type": "m.login.dummy"},
	})
	if r.Status != 200 {
		t.Fatalf("register %s: %d %s", localpart, r.Status, r.Raw)
	}
	c.Token, _ = r.Body["access_token"].(string)
	return c
}

// Login signs in a user made by Register again: a client for a new
// device of the same user.
func (s *Server) Login(t testing.TB, localpart string) *Client {
	t.Helper()
	c := &Client{Base: s.URL}
	r := c.Do(t, "POST", "/_matrix/client/v3/login", map[string]any{
		"type":       "m.login.password",
		"identifier": map[string]string{"type": "m.id.user", "user": localpart},
		"password":   "password-" + localpart,
	})
	if r.Status != 200 {
		t.Fatalf("log in %s: %d %s", localpart, r.Status, r.Raw)
	}
	c.Token, _ = r.Body["access_token"].(string)
	return c
}

// MustOK fails the test unless the response status is 200.
func (r *Response) MustOK(t testing.TB) *Response {
	t.Helper()
	if r.Status != 200 {
		t.Fatalf("want 200, got %d: %s", r.Status, r.Raw)
	}
	return r
}

// String returns a top-level string field of the body.
func (r *Response) String(key string) string {
	s, _ := r.Body[key].(string)
	return s
}

func (r *Response) GoString() string { return fmt.Sprintf("%d %s", r.Status, r.Raw) }
