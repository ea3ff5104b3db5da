package federationapi

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"encoding/pem"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/sirupsen/logrus"

	"myelin/internal/fedhttp"
	"myelin/internal/mxhttp"
	"myelin/internal/signing"
	"myelin/internal/sqldb"
	"myelin/internal/sqldb/sqldbtest"
)

// newAPI makes a FederationAPI named name on a fresh database of dialect,
// whose outbound transport trusts the given certificate files.
func newAPI(t testing.TB, dialect, name string, caFiles ...string) *FederationAPI {
	t.Helper()
	ctx := context.Background()
	db, err := sqldb.Open(ctx, sqldbtest.URL(t, dialect), sqldb.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	key, err := signing.LoadOrGenerate(filepath.Join(t.TempDir(), "key"), name)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := fedhttp.New(fedhttp.Options{CAFiles: caFiles, Timeout: 5 * time.Second, AllowPrivate: true, Resolver: noDNS()})
	if err != nil {
		t.Fatal(err)
	}
	log := logrus.New()
	log.SetOutput(os.Stderr)
	log.SetLevel(logrus.WarnLevel)
	f, err := New(ctx, db, Options{Key: key, Transport: tr, Version: "test", Log: log.WithField("component", "federationapi")})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// noDNS resolves no name: the tests' servers are named by their
// addresses, and a name that would need DNS must not reach the network.
func noDNS() *fedhttp.Resolver {
	return &fedhttp.Resolver{
		LookupSRV: func(context.Context, string, string, string) ([]*net.SRV, error) {
			return nil, &net.DNSError{Err: "no DNS in tests", IsNotFound: true}
		},
		LookupHost: func(_ context.Context, host string) ([]netip.Addr, error) {
			return nil, &net.DNSError{Err: "no DNS in tests", Name: host, IsNotFound: true}
		},
	}
}

func handler(f *FederationAPI) http.Handler {
	r := mxhttp.NewRouter()
	f.Routes(r)
	return r
}

func serve(f *FederationAPI, tls bool) *httptest.Server {
	if tls {
		return httptest.NewTLSServer(handler(f))
	}
	return httptest.NewServer(handler(f))
}

func TestServerKeys(t *testing.T) {
	f := newAPI(t, "sqlite", "example.test")
	srv := serve(f, false)
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL + "/_matrix/key/v2/server")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var raw json.RawMessage
	if err := json.NewDecoder(resp.Body).Decode(&raw); err != nil {
		t.Fatal(err)
	}
	var keys gmsl.ServerKeys
	if err := json.Unmarshal(raw, &keys); err != nil {
		t.Fatal(err)
	}
	if keys.ServerName != "example.test" || time.Until(keys.ValidUntilTS.Time()) < time.Hour {
		t.Fatalf("keys: %s", raw)
	}
	vk, ok := keys.VerifyKeys[f.key.KeyID]
	if !ok || !ed25519.PublicKey(vk.Key).Equal(f.key.Public()) {
		t.Fatalf("verify key missing: %s", raw)
	}
	if err := gmsl.VerifyJSON("example.test", f.key.KeyID, f.key.Public(), raw); err != nil {
		t.Fatalf("self-signature: %v", err)
	}
	var body map[string]any
	_ = json.Unmarshal(raw, &body)
	if _, ok := body["old_verify_keys"].(map[string]any); !ok {
		t.Fatalf("old_verify_keys must be an object: %s", raw)
	}
}

// TestNotary: a notary fetches an origin's keys over TLS (trusting a CA
// from its configuration), serves them with its own signature added, and
// keeps serving them when the origin is gone.
func TestNotary(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		dialect := "sqlite"
		if strings.HasPrefix(dbURL, "postgres") {
			dialect = "postgres"
		}
		// The origin's server name is its address, so resolution needs no DNS.
		origin := serve(newAPI(t, dialect, "placeholder"), true)
		originName := strings.TrimPrefix(origin.URL, "https://")
		originAPI := newAPI(t, dialect, originName)
		origin.Config.Handler = handler(originAPI)

		caFile := filepath.Join(t.TempDir(), "ca.pem")
		pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: origin.Certificate().Raw})
		if err := os.WriteFile(caFile, pemBytes, 0o600); err != nil {
			t.Fatal(err)
		}
		notary := newAPI(t, dialect, "notary.test", caFile)
		ns := serve(notary, false)
		defer ns.Close()

		query := func(body string) []json.RawMessage {
			t.Helper()
			resp, err := ns.Client().Post(ns.URL+"/_matrix/key/v2/query", "application/json", strings.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var out struct {
				ServerKeys []json.RawMessage `json:"server_keys"`
			}
			if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != 200 {
				t.Fatalf("query: %d %v", resp.StatusCode, err)
			}
			return out.ServerKeys
		}
		req := `{"server_keys":{"` + originName + `":{}}}`
		got := query(req)
		if len(got) != 1 {
			t.Fatalf("want one response, got %d", len(got))
		}
		if err := gmsl.VerifyJSON(originName, originAPI.key.KeyID, originAPI.key.Public(), got[0]); err != nil {
			t.Fatalf("origin signature: %v", err)
		}
		if err := gmsl.VerifyJSON("notary.test", notary.key.KeyID, notary.key.Public(), got[0]); err != nil {
			t.Fatalf("notary signature: %v", err)
		}
		// With the origin gone, what was fetched is still served.
		origin.Close()
		far := time.Now().Add(30 * 24 * time.Hour).UnixMilli()
		got = query(`{"server_keys":{"` + originName + `":{"` + string(originAPI.key.KeyID) + `":{"minimum_valid_until_ts":` + itoa(far) + `}}}}`)
		if len(got) != 1 {
			t.Fatalf("after the origin left: %d responses", len(got))
		}
	})
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
