package setup_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"myelin/internal/fedhttp"
	"myelin/internal/signing"
	"myelin/internal/sqldb/sqldbtest"
	"myelin/internal/testca"
	"myelin/internal/testserver"
	"myelin/setup"
	"myelin/setup/config"
)

// fedNet is a private federation of in-process servers: each has its own
// loopback address and a certificate from a test CA, and a fake DNS
// (SRV _matrix-fed._tcp and host records) tells the servers where the
// others are. Nothing reaches the network.
type fedNet struct {
	ca    *testca.CA
	mu    sync.Mutex
	hosts map[string]netip.Addr
	srv   map[string][]*net.SRV
}

func newFedNet(t testing.TB) *fedNet {
	return &fedNet{ca: testca.New(t), hosts: map[string]netip.Addr{}, srv: map[string][]*net.SRV{}}
}

func (n *fedNet) resolver() *fedhttp.Resolver {
	return &fedhttp.Resolver{
		LookupSRV: func(_ context.Context, service, proto, name string) ([]*net.SRV, error) {
			n.mu.Lock()
			defer n.mu.Unlock()
			if r, ok := n.srv["_"+service+"._"+proto+"."+name]; ok {
				return r, nil
			}
			return nil, &net.DNSError{Err: "no such record", Name: name, IsNotFound: true}
		},
		LookupHost: func(_ context.Context, host string) ([]netip.Addr, error) {
			n.mu.Lock()
			defer n.mu.Unlock()
			if a, ok := n.hosts[host]; ok {
				return []netip.Addr{a}, nil
			}
			return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
		},
	}
}

// start runs a server named name with its federation listener on ip (a
// loopback address of its own), over TLS, and publishes it in the DNS.
func (n *fedNet) start(t testing.TB, name, ip, dbURL string, opts ...testserver.Options) *testserver.Server {
	t.Helper()
	cert, key := n.ca.Issue(name)
	all := append([]testserver.Options{func(c *config.Config) {
		c.ServerName = name
		c.FederationAPI.Listen = ip + ":0"
		c.FederationAPI.TLSCert, c.FederationAPI.TLSKey = cert, key
		c.FederationAPI.TrustedCAFiles = []string{n.ca.File}
		c.FederationAPI.AllowPrivateAddresses = true
	}}, opts...)
	srv := testserver.Start(t, testserver.Config(t.TempDir(), dbURL, all...), setup.WithResolver(n.resolver()))
	n.publish(t, name, ip, srv)
	return srv
}

// restart stops srv and starts it again on the same data directory and
// database, published under its name at its new port.
func (n *fedNet) restart(t testing.TB, name, ip string, srv *testserver.Server) *testserver.Server {
	t.Helper()
	srv.Stop()
	srv = testserver.Start(t, srv.Config, setup.WithResolver(n.resolver()))
	n.publish(t, name, ip, srv)
	return srv
}

// publish puts srv's federation listener in the DNS under name.
func (n *fedNet) publish(t testing.TB, name, ip string, srv *testserver.Server) {
	t.Helper()
	_, port, err := net.SplitHostPort(srv.Addr("federation").String())
	if err != nil {
		t.Fatal(err)
	}
	p, _ := strconv.Atoi(port)
	n.mu.Lock()
	n.hosts[name] = netip.MustParseAddr(ip)
	n.srv["_matrix-fed._tcp."+name] = []*net.SRV{{Target: name + ".", Port: uint16(p)}}
	n.mu.Unlock()
}

// httpClient talks to a federation listener as if to server name, over
// TLS from the test CA.
func (n *fedNet) httpClient(name string) *http.Client {
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: n.ca.Pool(), ServerName: name},
		},
	}
}

func dialectOf(dbURL string) string {
	if strings.HasPrefix(dbURL, "postgres") {
		return "postgres"
	}
	return "sqlite"
}

// TestFederationTwoServers: two Myelin servers on their own loopback
// addresses find each other (SRV records of a fake DNS), connect over TLS
// from a test CA and exchange requests signed with X-Matrix, each fetching
// the other's keys; requests with a missing, forged or misdirected
// signature are refused; each listener serves only its own API, with its
// own body limit.
func TestFederationTwoServers(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		fed := newFedNet(t)
		hs1 := fed.start(t, "hs1.test", "127.0.0.2", dbURL)
		hs2 := fed.start(t, "hs2.test", "127.0.0.3", sqldbtest.URL(t, dialectOf(dbURL)), func(c *config.Config) {
			c.FederationAPI.MaxRequestBytes = 65536
			c.FederationAPI.WellKnownServer = "fed.hs2.test:8443"
		})
		alice := hs1.Register(t, "alice")
		bob := hs2.Register(t, "bob")
		alice.Do(t, "PUT", "/_matrix/client/v3/profile/@alice:hs1.test/displayname", map[string]string{"displayname": "Alice"}).MustOK(t)
		bob.Do(t, "PUT", "/_matrix/client/v3/profile/@bob:hs2.test/displayname", map[string]string{"displayname": "Bob"}).MustOK(t)

		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		t.Run("signed requests both ways", func(t *testing.T) {
			p, err := hs1.FederationClient().LookupProfile(ctx, "hs1.test", "hs2.test", "@bob:hs2.test", "")
			if err != nil || p.DisplayName != "Bob" {
				t.Fatalf("hs1 asking hs2: %+v %v", p, err)
			}
			p, err = hs2.FederationClient().LookupProfile(ctx, "hs2.test", "hs1.test", "@alice:hs1.test", "displayname")
			if err != nil || p.DisplayName != "Alice" {
				t.Fatalf("hs2 asking hs1: %+v %v", p, err)
			}
		})

		key1, err := signing.LoadOrGenerate(hs1.Config.Keys.SigningKeyPath, "hs1.test")
		if err != nil {
			t.Fatal(err)
		}
		_, forged, _ := ed25519.GenerateKey(rand.Reader)
		hc := fed.httpClient("hs2.test")
		profileURI := "/_matrix/federation/v1/query/profile?user_id=" + url.QueryEscape("@bob:hs2.test")
		tests := []struct {
			name     string
			dest     spec.ServerName
			keyID    gmsl.KeyID
			priv     ed25519.PrivateKey
			unsigned bool
			wantCode int
			wantErr  string
		}{
			{"signed by hs1", "hs2.test", key1.KeyID, key1.Private, false, 200, ""},
			{"missing Authorization", "hs2.test", key1.KeyID, key1.Private, true, 401, "M_UNAUTHORIZED"},
			{"forged signature", "hs2.test", key1.KeyID, forged, false, 401, "M_UNAUTHORIZED"},
			{"wrong destination", "hs3.test", key1.KeyID, key1.Private, false, 401, "M_UNAUTHORIZED"},
			{"unknown key", "hs2.test", "ed25519:unknown", key1.Private, false, 401, "M_UNAUTHORIZED"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				fr := fclient.NewFederationRequest("GET", "hs1.test", tt.dest, profileURI)
				if !tt.unsigned {
					if err := fr.Sign("hs1.test", tt.keyID, tt.priv); err != nil {
						t.Fatal(err)
					}
				}
				req, err := fr.HTTPRequest()
				if err != nil {
					t.Fatal(err)
				}
				req.URL, _ = url.Parse(hs2.FederationURL() + profileURI)
				code, body := fedDo(t, hc, req)
				if code != tt.wantCode || (tt.wantErr != "" && body["errcode"] != tt.wantErr) {
					t.Fatalf("got %d %v, want %d %s", code, body, tt.wantCode, tt.wantErr)
				}
			})
		}

		t.Run("each listener serves its own API", func(t *testing.T) {
			plain := &http.Client{Timeout: 30 * time.Second}
			checks := []struct {
				client   *http.Client
				url      string
				wantCode int
			}{
				{plain, hs2.URL + "/_matrix/federation/v1/version", 404},
				{plain, hs2.URL + "/_matrix/key/v2/server", 404},
				{plain, hs2.URL + "/_matrix/client/versions", 200},
				{plain, hs2.URL + "/health", 200},
				{hc, hs2.FederationURL() + "/_matrix/client/versions", 404},
				{hc, hs2.FederationURL() + "/.well-known/matrix/client", 404},
				{hc, hs2.FederationURL() + "/_matrix/federation/v1/version", 200},
				{hc, hs2.FederationURL() + "/_matrix/key/v2/server", 200},
				{hc, hs2.FederationURL() + "/health", 200},
				{plain, hs2.URL + "/.well-known/matrix/server", 200},
				{hc, hs2.FederationURL() + "/.well-known/matrix/server", 200},
				{plain, hs1.URL + "/.well-known/matrix/server", 404},
			}
			for _, c := range checks {
				req, _ := http.NewRequest("GET", c.url, nil)
				code, body := fedDo(t, c.client, req)
				if code != c.wantCode {
					t.Errorf("GET %s: %d %v, want %d", c.url, code, body, c.wantCode)
				}
				if strings.HasSuffix(c.url, "/matrix/server") && code == 200 && body["m.server"] != "fed.hs2.test:8443" {
					t.Errorf("GET %s: %v", c.url, body)
				}
			}
		})

		t.Run("each listener has its own body limit", func(t *testing.T) {
			big := `{"pdus":[],"edus":[],"padding":"` + strings.Repeat("x", 100_000) + `"}`
			req, _ := http.NewRequest("PUT", hs2.FederationURL()+"/_matrix/federation/v1/send/t1", strings.NewReader(big))
			req.Header.Set("Content-Type", "application/json")
			if code, body := fedDo(t, hc, req); code != 413 || body["errcode"] != "M_TOO_LARGE" {
				t.Errorf("federation listener: %d %v, want 413 M_TOO_LARGE", code, body)
			}
			// The client listener's limit is its own (10 MiB): the same
			// size passes the edge and is judged by the endpoint.
			r := bob.Do(t, "POST", "/_matrix/client/v3/user/@bob:hs2.test/filter", big)
			if r.Status == 413 {
				t.Errorf("client listener refused %d bytes: %s", len(big), r.Raw)
			}
		})
	})
}

func fedDo(t *testing.T, hc *http.Client, req *http.Request) (int, map[string]any) {
	t.Helper()
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var body map[string]any
	_ = json.Unmarshal(raw, &body)
	return resp.StatusCode, body
}

// TestFederationHostileInput walks every operation of the Server-Server
// API spec on the federation listener with hostile path variables,
// junk or forged authorization and junk bodies: every answer must be a
// Matrix error or a success, never a 5xx, and never a success for an
// endpoint that needs authentication.
func TestFederationHostileInput(t *testing.T) {
	raw, err := os.ReadFile("../../shared/spec/openapi-server-server-v1.19.json")
	if os.IsNotExist(err) {
		if os.Getenv("MYELIN_REQUIRE_SPEC") == "1" {
			t.Fatal("server-server spec not found, and MYELIN_REQUIRE_SPEC=1")
		}
		t.Skip("server-server spec not found")
	}
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		fed := newFedNet(t)
		hs := fed.start(t, "hs1.test", "127.0.0.2", dbURL)
		hc := fed.httpClient("hs1.test")
		vars := regexp.MustCompile(`\{\w+\}`)
		values := []string{"..", strings.Repeat("x", 300), "%00", "%ZZ", "@u:hs1.test", "!r:hs1.test", "$e"}
		auths := []string{"", "Bearer junk", `X-Matrix origin="hs2.test",key="ed25519:a",sig="junk"`, `X-Matrix origin=`}
		bodies := []string{"", "{", `{"a":"\u0000"}`, `[]`, `{"pdus":"x"}`}
		var failures []string
		requests := 0
		for path, ops := range doc.Paths {
			if strings.HasPrefix(path, "/.well-known") {
				continue
			}
			for method := range ops {
				method = strings.ToUpper(method)
				for i, v := range values {
					p := vars.ReplaceAllString(path, v)
					auth := auths[i%len(auths)]
					body := bodies[i%len(bodies)]
					if method == "GET" {
						body = ""
					}
					req, err := http.NewRequest(method, hs.FederationURL()+p, strings.NewReader(body))
					if err != nil {
						continue // a value net/http will not send
					}
					if body != "" {
						req.Header.Set("Content-Type", "application/json")
					}
					if auth != "" {
						req.Header.Set("Authorization", auth)
					}
					requests++
					code, resp := fedDo(t, hc, req)
					errcode, _ := resp["errcode"].(string)
					// Endpoints without X-Matrix: keys, version, and OpenID
					// userinfo (its access_token is the credential).
					open := strings.HasPrefix(path, "/_matrix/key/") || strings.HasSuffix(path, "/version") || strings.HasSuffix(path, "/openid/userinfo")
					switch {
					case code >= 500:
						failures = append(failures, fmt.Sprintf("%s %s: %d %v", method, p, code, resp))
					case code >= 400 && errcode == "":
						failures = append(failures, fmt.Sprintf("%s %s: %d without an errcode", method, p, code))
					case open:
					case code == 401 && errcode == "M_UNAUTHORIZED",
						code == 404 && errcode == "M_UNRECOGNIZED", code == 405,
						code == 400 && (errcode == "M_INVALID_PARAM" || errcode == "M_NOT_JSON"):
						// refused before any handler ran: unknown endpoint,
						// a bad path variable, a body that is not JSON, or
						// the authentication
					default:
						failures = append(failures, fmt.Sprintf("%s %s (authorization %q): %d %v: the handler ran", method, p, auth, code, resp))
					}
				}
			}
		}
		t.Logf("%d hostile requests", requests)
		if len(failures) > 0 {
			sort.Strings(failures)
			t.Errorf("%d answered wrongly:\n%s", len(failures), strings.Join(failures, "\n"))
		}
	})
}
