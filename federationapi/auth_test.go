package federationapi

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"myelin/internal/mxhttp"
	"myelin/internal/ratelimit"
	"myelin/internal/sqldb/sqldbtest"
	uapi "myelin/userapi/api"
)

// profiles is a fixed set of profiles, standing in for the userapi.
type profiles map[string]uapi.Profile

func (p profiles) Profile(_ context.Context, userID string) (*uapi.Profile, error) {
	if pr, ok := p[userID]; ok {
		return &pr, nil
	}
	return nil, uapi.ErrNotFound
}

func (p profiles) Account(_ context.Context, userID string) (*uapi.Account, error) {
	if _, ok := p[userID]; ok {
		return &uapi.Account{UserID: userID}, nil
	}
	return nil, uapi.ErrNotFound
}

// originEcho is a test-only authenticated endpoint answering what the
// authentication found: the origin, and the body the handler reads.
func originEcho(r *http.Request) (any, error) {
	var body map[string]any
	if err := mxhttp.ReadJSON(r, &body); err != nil {
		return nil, err
	}
	return map[string]any{"origin": string(Origin(r.Context())), "body": body}, nil
}

// fedPair is an origin server (serving its keys over TLS; its name is its
// address) and a receiving server behind a real listener.
type fedPair struct {
	origin     *FederationAPI
	originSrv  *httptest.Server
	originName spec.ServerName
	recv       *FederationAPI
	recvURL    string
	client     *http.Client
}

func newFedPair(t testing.TB, dialect string, limit *ratelimit.Limiter) *fedPair {
	t.Helper()
	originSrv := serve(newAPI(t, dialect, "placeholder"), true)
	t.Cleanup(originSrv.Close)
	originName := spec.ServerName(strings.TrimPrefix(originSrv.URL, "https://"))
	origin := newAPI(t, dialect, string(originName))
	originSrv.Config.Handler = handler(origin)

	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: originSrv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	recv := newAPI(t, dialect, "recv.test", caFile)
	recv.limit = limit
	recv.profiles = profiles{"@bob:recv.test": {DisplayName: "Bob"}, "@nobody:recv.test": {}}
	r := mxhttp.NewRouter()
	recv.Routes(r)
	r.Handle("/_matrix/federation/v1/test/echo/{txnId}", recv.authed(originEcho)).Methods(http.MethodPut)
	if err := mxhttp.CheckRouteVars(r); err != nil {
		t.Fatal(err)
	}
	recvSrv := httptest.NewServer(mxhttp.Serve(recv.log, 1<<20, nil, r))
	t.Cleanup(recvSrv.Close)
	return &fedPair{origin: origin, originSrv: originSrv, originName: originName, recv: recv, recvURL: recvSrv.URL, client: recvSrv.Client()}
}

// signed builds a request from the origin, signed as it would sign it,
// then lets mutate change it before it is sent.
type signedReq struct {
	method, uri string
	content     any
	origin      spec.ServerName
	dest        spec.ServerName
	keyID       gmsl.KeyID
	priv        ed25519.PrivateKey
}

func (p *fedPair) send(t *testing.T, s signedReq, mutate func(*http.Request)) (int, map[string]any) {
	t.Helper()
	fr := fclient.NewFederationRequest(s.method, s.origin, s.dest, s.uri)
	if s.content != nil {
		if err := fr.SetContent(s.content); err != nil {
			t.Fatal(err)
		}
	}
	if err := fr.Sign(s.origin, s.keyID, s.priv); err != nil {
		t.Fatal(err)
	}
	req, err := fr.HTTPRequest()
	if err != nil {
		t.Fatal(err)
	}
	if req.URL, err = url.Parse(p.recvURL + s.uri); err != nil {
		t.Fatal(err)
	}
	req.Host = req.URL.Host
	if mutate != nil {
		mutate(req)
	}
	resp, err := p.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var body map[string]any
	if err := json.Unmarshal(raw, &body); err != nil {
		t.Fatalf("answer is not JSON: %d %s", resp.StatusCode, raw)
	}
	return resp.StatusCode, body
}

func setBody(req *http.Request, b string) {
	req.Body = io.NopCloser(strings.NewReader(b))
	req.ContentLength = int64(len(b))
}

// TestXMatrixAuth: a request signed by its origin is served with the
// origin in its context and its body intact; every fault in the
// authorization is refused with the Matrix error the spec asks for.
func TestXMatrixAuth(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		dialect := "sqlite"
		if strings.HasPrefix(dbURL, "postgres") {
			dialect = "postgres"
		}
		p := newFedPair(t, dialect, nil)
		_, otherKey, _ := ed25519.GenerateKey(rand.Reader)
		echo := func() signedReq {
			return signedReq{
				method: "PUT", uri: "/_matrix/federation/v1/test/echo/t1", content: map[string]any{"n": 1},
				origin: p.originName, dest: "recv.test", keyID: p.origin.key.KeyID, priv: p.origin.key.Private,
			}
		}
		tests := []struct {
			name     string
			req      func() signedReq
			mutate   func(*http.Request)
			wantCode int
			wantErr  string
		}{
			{"signed by the origin", echo, nil, 200, ""},
			{"missing Authorization", echo, func(r *http.Request) { r.Header.Del("Authorization") }, 401, "M_UNAUTHORIZED"},
			{"other scheme only", echo, func(r *http.Request) { r.Header.Set("Authorization", "Bearer abc") }, 401, "M_UNAUTHORIZED"},
			{"forged signature", func() signedReq { s := echo(); s.priv = otherKey; return s }, nil, 401, "M_UNAUTHORIZED"},
			{"wrong destination", func() signedReq { s := echo(); s.dest = "elsewhere.test"; return s }, nil, 401, "M_UNAUTHORIZED"},
			{"body changed after signing", echo, func(r *http.Request) { setBody(r, `{"n":2}`) }, 401, "M_UNAUTHORIZED"},
			{"path changed after signing", echo, func(r *http.Request) { r.URL.Path = "/_matrix/federation/v1/test/echo/t2" }, 401, "M_UNAUTHORIZED"},
			{"unknown key", func() signedReq { s := echo(); s.keyID = "ed25519:nope"; return s }, nil, 401, "M_UNAUTHORIZED"},
			{"origin claims another server", func() signedReq { s := echo(); s.origin = "other.test"; return s }, nil, 401, "M_UNAUTHORIZED"},
			{"origin is not a server name", echo, func(r *http.Request) {
				r.Header.Set("Authorization", strings.Replace(r.Header.Get("Authorization"), string(p.originName), "bad name!", 1))
			}, 400, "M_UNAUTHORIZED"},
			{"origin with a non-numeric port", echo, func(r *http.Request) {
				r.Header.Set("Authorization", strings.Replace(r.Header.Get("Authorization"), string(p.originName), "localhost:http", 1))
			}, 400, "M_UNAUTHORIZED"},
			{"origin is this server", func() signedReq { s := echo(); s.origin = "recv.test"; return s }, nil, 401, "M_UNAUTHORIZED"},
			{"two origins", echo, func(r *http.Request) {
				r.Header.Add("Authorization", `X-Matrix origin="other.test",destination="recv.test",key="ed25519:a",sig="abc"`)
			}, 401, "M_UNAUTHORIZED"},
			{"body not JSON", echo, func(r *http.Request) { setBody(r, `{"n":`) }, 400, "M_NOT_JSON"},
			{"body too large", echo, func(r *http.Request) { setBody(r, `{"n":"`+strings.Repeat("x", 2<<20)+`"}`) }, 413, "M_TOO_LARGE"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				code, body := p.send(t, tt.req(), tt.mutate)
				if code != tt.wantCode || (tt.wantErr != "" && body["errcode"] != tt.wantErr) {
					t.Fatalf("got %d %v, want %d %s", code, body, tt.wantCode, tt.wantErr)
				}
				if code == 200 {
					if body["origin"] != string(p.originName) {
						t.Errorf("origin in context: %v", body["origin"])
					}
					if b, _ := body["body"].(map[string]any); b["n"] != float64(1) {
						t.Errorf("handler read body %v", body["body"])
					}
				}
			})
		}
	})
}

// TestQueryProfile: GET /query/profile through a signed request.
func TestQueryProfile(t *testing.T) {
	p := newFedPair(t, "sqlite", nil)
	get := func(query string) signedReq {
		return signedReq{
			method: "GET", uri: "/_matrix/federation/v1/query/profile?" + query,
			origin: p.originName, dest: "recv.test", keyID: p.origin.key.KeyID, priv: p.origin.key.Private,
		}
	}
	tests := []struct {
		name     string
		query    string
		wantCode int
		want     string // errcode, or the display name
	}{
		{"whole profile", "user_id=" + url.QueryEscape("@bob:recv.test"), 200, "Bob"},
		{"one field", "user_id=" + url.QueryEscape("@bob:recv.test") + "&field=displayname", 200, "Bob"},
		{"unset field", "user_id=" + url.QueryEscape("@bob:recv.test") + "&field=avatar_url", 404, "M_NOT_FOUND"},
		{"empty profile", "user_id=" + url.QueryEscape("@nobody:recv.test"), 404, "M_NOT_FOUND"},
		{"unknown user", "user_id=" + url.QueryEscape("@who:recv.test"), 404, "M_NOT_FOUND"},
		{"user of another server", "user_id=" + url.QueryEscape("@bob:elsewhere.test"), 400, "M_INVALID_PARAM"},
		{"no user", "field=displayname", 400, "M_MISSING_PARAM"},
		{"not a user ID", "user_id=bob", 400, "M_INVALID_PARAM"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := p.send(t, get(tt.query), nil)
			got, _ := body["errcode"].(string)
			if code == 200 {
				got, _ = body["displayname"].(string)
			}
			if code != tt.wantCode || got != tt.want {
				t.Fatalf("got %d %v, want %d %s", code, body, tt.wantCode, tt.want)
			}
		})
	}
}

// TestOriginRateLimit: each origin has its own bucket.
func TestOriginRateLimit(t *testing.T) {
	p := newFedPair(t, "sqlite", ratelimit.New(0.001, 2, nil))
	req := signedReq{
		method: "GET", uri: "/_matrix/federation/v1/query/profile?user_id=" + url.QueryEscape("@bob:recv.test"),
		origin: p.originName, dest: "recv.test", keyID: p.origin.key.KeyID, priv: p.origin.key.Private,
	}
	for i, want := range []int{200, 200, 429} {
		if code, body := p.send(t, req, nil); code != want {
			t.Fatalf("request %d: %d %v, want %d", i, code, body, want)
		}
	}
}

// TestNotaryFallback: when the origin does not answer for its keys, they
// come from a configured notary, which must sign what it relays.
func TestNotaryFallback(t *testing.T) {
	p := newFedPair(t, "sqlite", nil)
	// The notary has the origin's keys, fetched while the origin was up.
	notarySrv := serve(newAPI(t, "sqlite", "placeholder"), true)
	defer notarySrv.Close()
	notaryName := spec.ServerName(strings.TrimPrefix(notarySrv.URL, "https://"))
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	var pemBytes []byte
	for _, c := range [][]byte{notarySrv.Certificate().Raw} {
		pemBytes = append(pemBytes, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c})...)
	}
	if err := os.WriteFile(caFile, pemBytes, 0o600); err != nil {
		t.Fatal(err)
	}
	notary := newAPI(t, "sqlite", string(notaryName), caFile)
	notarySrv.Config.Handler = handler(notary)
	raw, err := p.origin.ownKeys()
	if err != nil {
		t.Fatal(err)
	}
	var keys gmsl.ServerKeys
	if err := json.Unmarshal(raw, &keys); err != nil {
		t.Fatal(err)
	}
	if err := notary.storeKeys(context.Background(), p.originName, keys); err != nil {
		t.Fatal(err)
	}
	// A receiver trusting the notary, and the origin gone.
	p.originSrv.Close()
	recv := newAPI(t, "sqlite", "recv2.test", caFile)
	recv.keys = newKeyRing(recv, []spec.ServerName{notaryName})
	msg := p.signedByOrigin(t)
	res, err := verifyOriginJSON(recv, p, msg)
	if err != nil || res[0].Error != nil {
		t.Fatalf("verify through the notary: %v %v", err, res)
	}
	// Without the notary, the same check fails: the origin is unreachable.
	alone := newAPI(t, "sqlite", "recv3.test", caFile)
	res, err = verifyOriginJSON(alone, p, msg)
	if err != nil || res[0].Error == nil {
		t.Fatalf("verified without a notary and without the origin: %v %v", err, res)
	}
}

// TestKeyFetchBurst: a burst of requests from a server not seen before
// makes one fetch of its keys, and every request of the burst is served.
func TestKeyFetchBurst(t *testing.T) {
	p := newFedPair(t, "sqlite", nil)
	// A slow origin: the burst arrives while it answers.
	fetches := p.countKeyFetches(50 * time.Millisecond)
	uri := "/_matrix/federation/v1/query/profile?user_id=" + url.QueryEscape("@bob:recv.test")
	var reqs []*http.Request
	for range 10 {
		fr := fclient.NewFederationRequest("GET", p.originName, "recv.test", uri)
		if err := fr.Sign(p.originName, p.origin.key.KeyID, p.origin.key.Private); err != nil {
			t.Fatal(err)
		}
		req, err := fr.HTTPRequest()
		if err != nil {
			t.Fatal(err)
		}
		req.URL, _ = url.Parse(p.recvURL + uri)
		reqs = append(reqs, req)
	}
	codes := make([]int, len(reqs))
	var wg sync.WaitGroup
	for i, req := range reqs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := p.client.Do(req)
			if err != nil {
				return
			}
			codes[i] = resp.StatusCode
			resp.Body.Close()
		}()
	}
	wg.Wait()
	for i, c := range codes {
		if c != 200 {
			t.Errorf("request %d of the burst: %d", i, c)
		}
	}
	if n := fetches.Load(); n != 1 {
		t.Errorf("the origin's keys were fetched %d times, want 1", n)
	}
}

// TestExpiredKeyRefetched: a stored key whose valid_until_ts has passed
// is not used as it is: the origin is asked again, and without a fresh
// answer the request is refused.
func TestExpiredKeyRefetched(t *testing.T) {
	tests := []struct {
		name      string
		originUp  bool
		wantCode  int
		wantFetch int32
	}{
		{"origin answers with fresh keys", true, 200, 1},
		{"origin gone", false, 401, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newFedPair(t, "sqlite", nil)
			// What the receiver has stored expired an hour ago.
			p.origin.now = func() time.Time { return time.Now().Add(-25 * time.Hour) }
			raw, err := p.origin.ownKeys()
			if err != nil {
				t.Fatal(err)
			}
			p.origin.now = time.Now
			var keys gmsl.ServerKeys
			if err := json.Unmarshal(raw, &keys); err != nil {
				t.Fatal(err)
			}
			if err := p.recv.storeKeys(context.Background(), p.originName, keys); err != nil {
				t.Fatal(err)
			}
			fetches := p.countKeyFetches(0)
			if !tt.originUp {
				p.originSrv.Close()
			}
			code, body := p.send(t, signedReq{
				method: "GET", uri: "/_matrix/federation/v1/query/profile?user_id=" + url.QueryEscape("@bob:recv.test"),
				origin: p.originName, dest: "recv.test", keyID: p.origin.key.KeyID, priv: p.origin.key.Private,
			}, nil)
			if code != tt.wantCode {
				t.Fatalf("got %d %v, want %d", code, body, tt.wantCode)
			}
			if n := fetches.Load(); n != tt.wantFetch {
				t.Errorf("origin asked %d times, want %d", n, tt.wantFetch)
			}
		})
	}
}

// TestNotaryMustSign: keys a notary relays without its own signature are
// not used.
func TestNotaryMustSign(t *testing.T) {
	p := newFedPair(t, "sqlite", nil)
	raw, err := p.origin.ownKeys()
	if err != nil {
		t.Fatal(err)
	}
	// A notary serving its own keys, but relaying the origin's response
	// without signing it.
	notarySrv := serve(newAPI(t, "sqlite", "placeholder"), true)
	defer notarySrv.Close()
	notaryName := spec.ServerName(strings.TrimPrefix(notarySrv.URL, "https://"))
	notary := newAPI(t, "sqlite", string(notaryName))
	own := handler(notary)
	notarySrv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/_matrix/key/v2/query" {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(`{"server_keys":[` + string(raw) + `]}`))
			return
		}
		own.ServeHTTP(w, r)
	})
	p.originSrv.Close()
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: notarySrv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	recv := newAPI(t, "sqlite", "recv2.test", caFile)
	recv.keys = newKeyRing(recv, []spec.ServerName{notaryName})
	msg := p.signedByOrigin(t)
	res, err := verifyOriginJSON(recv, p, msg)
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Error == nil {
		t.Fatal("keys relayed without the notary's signature were used")
	}
}

// TestNotaryAsksAgain: each notary query asking for keys valid longer
// than what is stored makes the notary ask the origin again (sytest's
// notary tests wait for those requests), not only once in a while.
func TestNotaryAsksAgain(t *testing.T) {
	p := newFedPair(t, "sqlite", nil)
	fetches := p.countKeyFetches(0)
	far := time.Now().Add(30 * 24 * time.Hour).UnixMilli()
	body := `{"server_keys":{"` + string(p.originName) + `":{"` + string(p.origin.key.KeyID) + `":{"minimum_valid_until_ts":` + itoa(far) + `}}}}`
	for i := 1; i <= 3; i++ {
		resp, err := p.client.Post(p.recvURL+"/_matrix/key/v2/query", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("query %d: %d", i, resp.StatusCode)
		}
		if n := fetches.Load(); n != int32(i) {
			t.Fatalf("after query %d the origin was asked %d times", i, n)
		}
	}
}

// signedByOrigin is a small JSON object signed with the origin's key.
func (p *fedPair) signedByOrigin(t testing.TB) []byte {
	t.Helper()
	msg, err := gmsl.SignJSON(string(p.originName), p.origin.key.KeyID, p.origin.key.Private, []byte(`{"hello":"world"}`))
	if err != nil {
		t.Fatal(err)
	}
	return msg
}

// verifyOriginJSON checks msg's origin signature with f's key ring.
func verifyOriginJSON(f *FederationAPI, p *fedPair, msg []byte) ([]gmsl.VerifyJSONResult, error) {
	return f.keys.ring.VerifyJSONs(context.Background(), []gmsl.VerifyJSONRequest{{
		ServerName: p.originName, AtTS: spec.AsTimestamp(time.Now()), Message: msg,
		ValidityCheckingFunc: gmsl.StrictValiditySignatureCheck,
	}})
}

// countKeyFetches counts the requests for the origin's keys from now on,
// each answered after delay.
func (p *fedPair) countKeyFetches(delay time.Duration) *atomic.Int32 {
	var fetches atomic.Int32
	keysHandler := p.originSrv.Config.Handler
	p.originSrv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/_matrix/key/v2/server" {
			fetches.Add(1)
			time.Sleep(delay)
		}
		keysHandler.ServeHTTP(w, r)
	})
	return &fetches
}
