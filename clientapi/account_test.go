package clientapi_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/sirupsen/logrus"

	"myelin/clientapi"
	"myelin/internal/bus"
	"myelin/internal/mxhttp"
	"myelin/internal/poll"
	"myelin/internal/sqldb"
	"myelin/internal/sqldb/sqldbtest"
	"myelin/setup/config"
	"myelin/userapi"
	uapi "myelin/userapi/api"
)

const acctSecret = "test-shared-secret"

// acctServer is a Myelin client API with a real userapi behind it, served
// on a loopback port.
type acctServer struct {
	url   string
	users *userapi.UserAPI
	bus   *bus.Bus // nil unless started withBus
	http  *http.Client
}

type acctOptions struct {
	withBus bool
	config  func(cfg *config.Config)
}

func newAcctServer(t *testing.T, dbURL string, opts acctOptions) *acctServer {
	t.Helper()
	checkGoroutines(t)
	ctx := context.Background()
	cfg := config.Defaults()
	cfg.ServerName = "test.local"
	cfg.Registration.Open = true
	cfg.Registration.SharedSecret = acctSecret
	cfg.Registration.BcryptCost = 4
	cfg.RateLimits.Enabled = false
	cfg.ClientAPI.MaxRequestBytes = 64 << 10
	if opts.config != nil {
		opts.config(cfg)
	}
	l := logrus.New()
	l.SetOutput(io.Discard)
	log := logrus.NewEntry(l)

	db, err := sqldb.Open(ctx, dbURL, sqldb.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	s := &acctServer{}
	if opts.withBus {
		if s.bus, err = bus.Open(ctx, bus.Options{StoreDir: t.TempDir(), Name: "test"}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.bus.Close)
	}
	if s.users, err = userapi.New(ctx, db, s.bus, cfg, log); err != nil {
		t.Fatal(err)
	}
	router := mxhttp.NewRouter()
	clientapi.New(cfg, s.users, nil, log).Routes(router)
	srv := httptest.NewServer(mxhttp.Serve(log, cfg.ClientAPI.MaxRequestBytes, nil, router))
	t.Cleanup(srv.Close)
	s.url = srv.URL
	s.http = srv.Client()
	return s
}

// checkGoroutines fails t if, once its cleanups have run, more goroutines
// are left than when it was called (a server that did not stop them all).
func checkGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		err := poll.Wait(5*time.Second, func() error {
			if n := runtime.NumGoroutine(); n > before {
				return fmt.Errorf("%d goroutines, %d before", n, before)
			}
			return nil
		})
		if err != nil {
			buf := make([]byte, 1<<20)
			t.Errorf("goroutines leaked: %v\n%s", err, buf[:runtime.Stack(buf, true)])
		}
	})
}

// do sends a request: body is nil (none), a string (sent as is) or a value
// to encode. path is under /_matrix/client/v3 unless it starts with "/_".
func (s *acctServer) do(t *testing.T, method, path, token string, body any) (int, map[string]any, http.Header) {
	t.Helper()
	if !strings.HasPrefix(path, "/_") {
		path = "/_matrix/client/v3" + path
	}
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		enc, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(enc)
	}
	req, err := http.NewRequest(method, s.url+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := s.http.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var out map[string]any
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatalf("%s %s: response %d is not a JSON object: %q", method, path, resp.StatusCode, raw)
	}
	return resp.StatusCode, out, resp.Header
}

// register makes an account through shared-secret registration and
// returns its access token.
func (s *acctServer) register(t *testing.T, localpart, password string) string {
	t.Helper()
	_, got, _ := s.do(t, "GET", "/_synapse/admin/v1/register", "", nil)
	nonce, _ := got["nonce"].(string)
	status, got, _ := s.do(t, "POST", "/_synapse/admin/v1/register", "", map[string]any{
		"nonce": nonce, "username": localpart, "password": password,
		"mac": sharedSecretMAC(acctSecret, nonce, localpart, password, false),
	})
	if status != 200 {
		t.Fatalf("register %s: %d %v", localpart, status, got)
	}
	return got["access_token"].(string)
}

func sharedSecretMAC(secret, nonce, user, password string, admin bool) string {
	m := hmac.New(sha1.New, []byte(secret))
	a := "notadmin"
	if admin {
		a = "admin"
	}
	m.Write([]byte(nonce + "\x00" + user + "\x00" + password + "\x00" + a))
	return hex.EncodeToString(m.Sum(nil))
}

// acctCase is one request of a scripted conversation. Cases of a table run
// in order and share state through the variables their closures capture.
type acctCase struct {
	name   string
	method string
	path   string
	token  *string // read when the case runs; nil for none
	// body is nil, a string, a value to encode, or a func() any giving one
	body    any
	status  int
	errcode string
	check   func(t *testing.T, got map[string]any, h http.Header)
}

func runAcctCases(t *testing.T, s *acctServer, cases []acctCase) {
	t.Helper()
	for _, tc := range cases {
		ok := t.Run(tc.name, func(t *testing.T) {
			token := ""
			if tc.token != nil {
				token = *tc.token
			}
			body := tc.body
			if f, ok := body.(func() any); ok {
				body = f()
			}
			status, got, h := s.do(t, tc.method, tc.path, token, body)
			if status != tc.status {
				t.Fatalf("status %d, want %d; body %v", status, tc.status, got)
			}
			if ec, _ := got["errcode"].(string); ec != tc.errcode {
				t.Fatalf("errcode %q, want %q; body %v", ec, tc.errcode, got)
			}
			if tc.check != nil {
				tc.check(t, got, h)
			}
		})
		if !ok {
			t.FailNow() // later cases depend on this one
		}
	}
}

// want checks that got has the fields of want (and, for keys mapped to
// nil, that they are absent).
func want(fields map[string]any) func(t *testing.T, got map[string]any, h http.Header) {
	return func(t *testing.T, got map[string]any, _ http.Header) {
		t.Helper()
		for k, v := range fields {
			g, present := got[k]
			if v == nil {
				if present {
					t.Fatalf("%s = %v, want absent; body %v", k, g, got)
				}
				continue
			}
			if !reflect.DeepEqual(g, v) {
				t.Fatalf("%s = %#v, want %#v; body %v", k, g, v, got)
			}
		}
	}
}

func exactly(body string) func(t *testing.T, got map[string]any, h http.Header) {
	return func(t *testing.T, got map[string]any, _ http.Header) {
		t.Helper()
		var w map[string]any
		if err := json.Unmarshal([]byte(body), &w); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, w) {
			t.Fatalf("body %v, want %v", got, w)
		}
	}
}

func str(m map[string]any, k string) string { s, _ := m[k].(string); return s }

func TestRegisterAndLogin(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		s := newAcctServer(t, dbURL, acctOptions{})
		var session, aliceTok, aliceOldTok, aliceDev, erinTok, numericID string
		dummy := map[string]any{"type": "m.login.dummy"}
		login := func(user, password string) map[string]any {
			return map[string]any{"type": "m.login.password", "identifier": map[string]any{"type": "m.id.user", "user": user}, "password": password}
		}
		gotToken := func(dst *string, userID string) func(t *testing.T, got map[string]any, h http.Header) {
			return func(t *testing.T, got map[string]any, _ http.Header) {
				if str(got, "user_id") != userID || len(str(got, "access_token")) < 40 || str(got, "device_id") == "" || str(got, "home_server") != "test.local" {
					t.Fatalf("login response %v", got)
				}
				if dst != nil {
					*dst = str(got, "access_token")
				}
			}
		}
		runAcctCases(t, s, []acctCase{
			{name: "available", method: "GET", path: "/register/available?username=alice", status: 200, check: exactly(`{"available":true}`)},
			{name: "available: invalid", method: "GET", path: "/register/available?username=Al%20ice", status: 400, errcode: "M_INVALID_USERNAME"},
			{name: "available: missing username", method: "GET", path: "/register/available", status: 400, errcode: "M_MISSING_PARAM"},
			{name: "guest registration", method: "POST", path: "/register?kind=guest", body: `{}`, status: 403, errcode: "M_GUEST_ACCESS_FORBIDDEN"},
			{name: "unknown kind", method: "POST", path: "/register?kind=robot", body: `{}`, status: 400, errcode: "M_INVALID_PARAM"},
			{name: "not JSON", method: "POST", path: "/register", body: `{"username":`, status: 400, errcode: "M_NOT_JSON"},
			{name: "wrong type", method: "POST", path: "/register", body: `{"username":5}`, status: 400, errcode: "M_BAD_JSON"},
			{name: "auth of the wrong type", method: "POST", path: "/register", body: `{"auth":"dummy"}`, status: 400, errcode: "M_BAD_JSON"},
			{name: "invalid username", method: "POST", path: "/register", body: map[string]any{"username": "a:b", "password": "pw"}, status: 400, errcode: "M_INVALID_USERNAME"},
			{
				name: "challenge", method: "POST", path: "/register", body: map[string]any{"username": "bob", "password": "pw"}, status: 401,
				check: func(t *testing.T, got map[string]any, _ http.Header) {
					session = str(got, "session")
					if session == "" {
						t.Fatalf("no session in %v", got)
					}
					exactly(`{"flows":[{"stages":["m.login.dummy"]}],"params":{},"session":"`+session+`","completed":[]}`)(t, got, nil)
				},
			},
			{
				name: "dummy stage with the session", method: "POST", path: "/register", status: 200,
				body: func() any {
					return map[string]any{"username": "bob", "password": "pw", "device_id": "BOBDEV", "auth": map[string]any{"type": "m.login.dummy", "session": session}}
				},
				check: want(map[string]any{"user_id": "@bob:test.local", "device_id": "BOBDEV", "home_server": "test.local"}),
			},
			{
				name: "repeated: the same account", method: "POST", path: "/register", status: 200,
				body: func() any {
					return map[string]any{"username": "bob", "password": "pw", "device_id": "BOBDEV", "auth": map[string]any{"type": "m.login.dummy", "session": session}}
				},
				check: want(map[string]any{"user_id": "@bob:test.local", "device_id": "BOBDEV"}),
			},
			{
				name: "repeated with only the session", method: "POST", path: "/register", status: 200,
				body:  func() any { return map[string]any{"auth": map[string]any{"session": session}} },
				check: want(map[string]any{"user_id": "@bob:test.local", "device_id": "BOBDEV"}),
			},
			{
				name: "another name in a used session", method: "POST", path: "/register", status: 403, errcode: "M_FORBIDDEN",
				body: func() any {
					return map[string]any{"username": "bob2", "password": "pw", "auth": map[string]any{"type": "m.login.dummy", "session": session}}
				},
			},
			{
				name: "remembered parameters: challenge", method: "POST", path: "/register", status: 401,
				body: map[string]any{"username": "Erin", "password": "übers3kr1t", "device_id": "ERINDEV", "initial_device_display_name": "Erin's phone"},
				check: func(t *testing.T, got map[string]any, _ http.Header) {
					session = str(got, "session")
				},
			},
			{
				name: "remembered parameters: only auth", method: "POST", path: "/register", status: 200,
				body: func() any {
					return map[string]any{"auth": map[string]any{"type": "m.login.dummy", "session": session}}
				},
				check: gotToken(&erinTok, "@erin:test.local"),
			},
			{name: "remembered parameters: the device", method: "GET", path: "/devices/ERINDEV", token: &erinTok, status: 200, check: want(map[string]any{"display_name": "Erin's phone"})},
			{name: "remembered parameters: the password", method: "POST", path: "/login", body: login("erin", "übers3kr1t"), status: 200},
			{
				name: "remembered inhibit_login: challenge", method: "POST", path: "/register", status: 401,
				body: map[string]any{"username": "frank", "password": "pw", "inhibit_login": true},
				check: func(t *testing.T, got map[string]any, _ http.Header) {
					session = str(got, "session")
				},
			},
			{
				name: "remembered inhibit_login", method: "POST", path: "/register", status: 200,
				body: func() any {
					return map[string]any{"auth": map[string]any{"type": "m.login.dummy", "session": session}}
				},
				check: want(map[string]any{"user_id": "@frank:test.local", "access_token": nil, "device_id": nil}),
			},
			{
				name: "no username, repeated: challenge", method: "POST", path: "/register", status: 401,
				body: map[string]any{"password": "pw"},
				check: func(t *testing.T, got map[string]any, _ http.Header) {
					session = str(got, "session")
				},
			},
			{
				name: "no username, repeated: first", method: "POST", path: "/register", status: 200,
				body: func() any {
					return map[string]any{"password": "pw", "auth": map[string]any{"type": "m.login.dummy", "session": session}}
				},
				check: func(t *testing.T, got map[string]any, _ http.Header) {
					numericID = str(got, "user_id")
				},
			},
			{
				name: "no username, repeated: the same account", method: "POST", path: "/register", status: 200,
				body: func() any {
					return map[string]any{"password": "pw", "auth": map[string]any{"type": "m.login.dummy", "session": session}}
				},
				check: func(t *testing.T, got map[string]any, h http.Header) {
					gotToken(nil, numericID)(t, got, h)
				},
			},
			{
				name: "dummy stage without a session (sytest)", method: "POST", path: "/register", status: 200,
				body:  map[string]any{"username": "alice", "password": "secret", "auth": dummy},
				check: gotToken(&aliceOldTok, "@alice:test.local"),
			},
			{name: "taken", method: "POST", path: "/register", body: map[string]any{"username": "alice", "password": "pw", "auth": dummy}, status: 400, errcode: "M_USER_IN_USE"},
			{name: "taken, before any stage", method: "POST", path: "/register", body: map[string]any{"username": "alice", "password": "pw"}, status: 400, errcode: "M_USER_IN_USE"},
			{name: "available: taken", method: "GET", path: "/register/available?username=alice", status: 400, errcode: "M_USER_IN_USE"},
			{
				name: "upper case is lowercased, inhibit_login", method: "POST", path: "/register", status: 200,
				body:  map[string]any{"username": "Carol", "password": "pw", "inhibit_login": true, "auth": dummy},
				check: want(map[string]any{"user_id": "@carol:test.local", "access_token": nil, "device_id": nil}),
			},
			{
				name: "no username: a number", method: "POST", path: "/register", status: 200,
				body: map[string]any{"password": "pw", "auth": dummy},
				check: func(t *testing.T, got map[string]any, _ http.Header) {
					lp := strings.TrimSuffix(strings.TrimPrefix(str(got, "user_id"), "@"), ":test.local")
					if lp == "" || strings.Trim(lp, "0123456789") != "" {
						t.Fatalf("user_id %q", got["user_id"])
					}
				},
			},
			{name: "no password", method: "POST", path: "/register", body: map[string]any{"username": "dan", "auth": dummy}, status: 400, errcode: "M_MISSING_PARAM"},
			{name: "a stage not offered", method: "POST", path: "/register", body: map[string]any{"username": "dan", "password": "pw", "auth": map[string]any{"type": "m.login.password"}}, status: 400, errcode: "M_UNRECOGNIZED"},
			{name: "unknown session", method: "POST", path: "/register", body: map[string]any{"username": "dan", "password": "pw", "auth": map[string]any{"type": "m.login.dummy", "session": "nope"}}, status: 400, errcode: "M_UNKNOWN"},
			{name: "body too large", method: "POST", path: "/register", body: `{"username":"` + strings.Repeat("a", 70<<10) + `"}`, status: 413, errcode: "M_TOO_LARGE"},

			{name: "login flows", method: "GET", path: "/login", status: 200, check: exactly(`{"flows":[{"type":"m.login.password"},{"type":"m.login.token","get_login_token":true}]}`)},
			{name: "login flows on r0", method: "GET", path: "/_matrix/client/r0/login", status: 200, check: exactly(`{"flows":[{"type":"m.login.password"},{"type":"m.login.token","get_login_token":true}]}`)},
			{name: "login by localpart", method: "POST", path: "/login", body: login("alice", "secret"), status: 200, check: gotToken(&aliceTok, "@alice:test.local")},
			{name: "login by user ID", method: "POST", path: "/login", body: login("@alice:test.local", "secret"), status: 200, check: gotToken(nil, "@alice:test.local")},
			{name: "login with capitals", method: "POST", path: "/login", body: login("ALICE", "secret"), status: 200, check: gotToken(nil, "@alice:test.local")},
			{name: "legacy user field", method: "POST", path: "/login", body: map[string]any{"type": "m.login.password", "user": "alice", "password": "secret"}, status: 200, check: gotToken(nil, "@alice:test.local")},
			{name: "wrong password", method: "POST", path: "/login", body: login("alice", "Secret"), status: 403, errcode: "M_FORBIDDEN"},
			{name: "unknown user", method: "POST", path: "/login", body: login("nobody", "secret"), status: 403, errcode: "M_FORBIDDEN"},
			{name: "other server's user", method: "POST", path: "/login", body: login("@alice:elsewhere", "secret"), status: 403, errcode: "M_FORBIDDEN"},
			{name: "unknown login type", method: "POST", path: "/login", body: map[string]any{"type": "m.login.sso", "token": "x"}, status: 400, errcode: "M_UNKNOWN"},
			{name: "no login type", method: "POST", path: "/login", body: map[string]any{"user": "alice", "password": "secret"}, status: 400, errcode: "M_UNKNOWN"},
			{name: "password of the wrong type", method: "POST", path: "/login", body: `{"type":"m.login.password","user":"alice","password":1}`, status: 400, errcode: "M_BAD_JSON"},
			{name: "identifier of the wrong type", method: "POST", path: "/login", body: `{"type":"m.login.password","identifier":"alice","password":"secret"}`, status: 400, errcode: "M_BAD_JSON"},
			{name: "third-party identifier", method: "POST", path: "/login", body: map[string]any{"type": "m.login.password", "identifier": map[string]any{"type": "m.id.thirdparty", "medium": "email", "address": "a@b"}, "password": "x"}, status: 400, errcode: "M_UNKNOWN"},
			{name: "no user", method: "POST", path: "/login", body: map[string]any{"type": "m.login.password", "password": "secret"}, status: 400, errcode: "M_MISSING_PARAM"},
			{
				name: "login with a device ID", method: "POST", path: "/login", status: 200,
				body: map[string]any{"type": "m.login.password", "user": "alice", "password": "secret", "device_id": "ALICEDEV", "initial_device_display_name": "Laptop"},
				check: func(t *testing.T, got map[string]any, h http.Header) {
					want(map[string]any{"device_id": "ALICEDEV"})(t, got, h)
					aliceDev = str(got, "access_token")
				},
			},
			{
				name: "again on the same device", method: "POST", path: "/login", status: 200,
				body:  map[string]any{"type": "m.login.password", "user": "alice", "password": "secret", "device_id": "ALICEDEV"},
				check: want(map[string]any{"device_id": "ALICEDEV"}),
			},
			{name: "the device's old token is revoked", method: "GET", path: "/account/whoami", token: &aliceDev, status: 401, errcode: "M_UNKNOWN_TOKEN"},

			{name: "whoami", method: "GET", path: "/account/whoami", token: &aliceTok, status: 200, check: func(t *testing.T, got map[string]any, h http.Header) {
				want(map[string]any{"user_id": "@alice:test.local", "is_guest": false})(t, got, h)
				if str(got, "device_id") == "" {
					t.Fatalf("no device_id in %v", got)
				}
			}},
			{name: "whoami without a token", method: "GET", path: "/account/whoami", status: 401, errcode: "M_MISSING_TOKEN"},
			{name: "whoami with an unknown token", method: "GET", path: "/account/whoami", token: ptr("not-a-token"), status: 401, errcode: "M_UNKNOWN_TOKEN"},
			{name: "logout", method: "POST", path: "/logout", token: &aliceTok, body: `{}`, status: 200, check: exactly(`{}`)},
			{name: "logged-out token", method: "GET", path: "/account/whoami", token: &aliceTok, status: 401, errcode: "M_UNKNOWN_TOKEN"},
			{name: "other sessions still work", method: "GET", path: "/account/whoami", token: &aliceOldTok, status: 200},
			{name: "logout all", method: "POST", path: "/logout/all", token: &aliceOldTok, body: `{}`, status: 200},
			{name: "every session is gone", method: "GET", path: "/account/whoami", token: &aliceOldTok, status: 401, errcode: "M_UNKNOWN_TOKEN"},
		})

		t.Run("token in the query string", func(t *testing.T) {
			tok := s.register(t, "querytok", "pw")
			if status, got, _ := s.do(t, "GET", "/account/whoami?access_token="+tok, "", nil); status != 200 || got["user_id"] != "@querytok:test.local" {
				t.Fatalf("whoami: %d %v", status, got)
			}
		})
	})
}

func ptr(s string) *string { return &s }

func TestDevicesAndPassword(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		s := newAcctServer(t, dbURL, acctOptions{})
		tok := s.register(t, "alice", "secret")
		s.register(t, "bob", "bobpw")
		var phoneTok, tabletTok, session string
		for _, d := range []struct {
			id  string
			dst *string
		}{{"PHONE", &phoneTok}, {"TABLET", &tabletTok}, {"WATCH", nil}, {"TV", nil}} {
			_, got, _ := s.do(t, "POST", "/login", "", map[string]any{"type": "m.login.password", "user": "alice", "password": "secret", "device_id": d.id, "initial_device_display_name": "My " + d.id})
			if d.dst != nil {
				*d.dst = str(got, "access_token")
			}
		}
		auth := func(password string, sess *string) func() any {
			return func() any {
				a := map[string]any{"type": "m.login.password", "identifier": map[string]any{"type": "m.id.user", "user": "alice"}, "password": password}
				if sess != nil {
					a["session"] = *sess
				}
				return map[string]any{"auth": a}
			}
		}
		passwordChallenge := func(t *testing.T, got map[string]any, _ http.Header) {
			session = str(got, "session")
			if session == "" || !reflect.DeepEqual(got["flows"], []any{map[string]any{"stages": []any{"m.login.password"}}}) {
				t.Fatalf("challenge %v", got)
			}
		}
		runAcctCases(t, s, []acctCase{
			{name: "list", method: "GET", path: "/devices", token: &tok, status: 200, check: func(t *testing.T, got map[string]any, _ http.Header) {
				devs, _ := got["devices"].([]any)
				if len(devs) != 5 {
					t.Fatalf("devices %v", got)
				}
				for _, d := range devs {
					d := d.(map[string]any)
					if d["device_id"] == "PHONE" && (d["display_name"] != "My PHONE" || d["last_seen_ip"] != "127.0.0.1" || d["last_seen_ts"] == nil) {
						t.Fatalf("device %v", d)
					}
				}
			}},
			{name: "whois self", method: "GET", path: "/admin/whois/@alice:test.local", token: &tok, status: 200, check: func(t *testing.T, got map[string]any, _ http.Header) {
				devs, _ := got["devices"].(map[string]any)
				phone, _ := devs["PHONE"].(map[string]any)
				conns := phone["sessions"].([]any)[0].(map[string]any)["connections"].([]any)
				c := conns[0].(map[string]any)
				if got["user_id"] != "@alice:test.local" || len(devs) != 5 || c["ip"] != "127.0.0.1" || c["last_seen"] == nil || c["user_agent"] != "Go-http-client/1.1" {
					t.Fatalf("whois %v", got)
				}
			}},
			{name: "whois of another user", method: "GET", path: "/admin/whois/@bob:test.local", token: &tok, status: 403, errcode: "M_FORBIDDEN"},
			{name: "get", method: "GET", path: "/devices/PHONE", token: &tok, status: 200, check: want(map[string]any{"device_id": "PHONE", "display_name": "My PHONE"})},
			{name: "get unknown", method: "GET", path: "/devices/NOPE", token: &tok, status: 404, errcode: "M_NOT_FOUND"},
			{name: "rename", method: "PUT", path: "/devices/PHONE", token: &tok, body: `{"display_name":"Pocket"}`, status: 200},
			{name: "renamed", method: "GET", path: "/devices/PHONE", token: &tok, status: 200, check: want(map[string]any{"display_name": "Pocket"})},
			{name: "rename with the wrong type", method: "PUT", path: "/devices/PHONE", token: &tok, body: `{"display_name":5}`, status: 400, errcode: "M_BAD_JSON"},
			{name: "rename unknown", method: "PUT", path: "/devices/NOPE", token: &tok, body: `{"display_name":"x"}`, status: 404, errcode: "M_NOT_FOUND"},
			{name: "no access to another user's device", method: "GET", path: "/devices/BOBDEV", token: &tok, status: 404, errcode: "M_NOT_FOUND"},

			{name: "delete: no body", method: "DELETE", path: "/devices/PHONE", token: &tok, status: 401, check: passwordChallenge},
			{name: "delete: wrong password", method: "DELETE", path: "/devices/PHONE", token: &tok, body: auth("wrong", &session), status: 401, errcode: "M_FORBIDDEN", check: func(t *testing.T, got map[string]any, h http.Header) {
				want(map[string]any{"flows": []any{map[string]any{"stages": []any{"m.login.password"}}}})(t, got, h)
				if str(got, "session") != session {
					t.Fatalf("session changed: %v", got)
				}
			}},
			{name: "delete: another user's credentials", method: "DELETE", path: "/devices/PHONE", token: &tok, status: 403, errcode: "M_FORBIDDEN", body: map[string]any{"auth": map[string]any{"type": "m.login.password", "user": "bob", "password": "bobpw"}}},
			{name: "delete: the session of another operation", method: "POST", path: "/delete_devices", token: &tok, status: 403, errcode: "M_FORBIDDEN", body: func() any {
				b := auth("secret", &session)().(map[string]any)
				b["devices"] = []string{"TV"}
				return b
			}},
			{name: "delete", method: "DELETE", path: "/devices/PHONE", token: &tok, body: auth("secret", &session), status: 200},
			{name: "deleted", method: "GET", path: "/devices/PHONE", token: &tok, status: 404, errcode: "M_NOT_FOUND"},
			{name: "deleted device's token", method: "GET", path: "/account/whoami", token: &phoneTok, status: 401, errcode: "M_UNKNOWN_TOKEN"},
			// spec: "The device was successfully removed, or had been removed previously."
			{name: "delete again", method: "DELETE", path: "/devices/PHONE", token: &tok, body: auth("secret", nil), status: 200},
			{name: "delete again: still behind a password", method: "DELETE", path: "/devices/PHONE", token: &tok, status: 401, check: passwordChallenge},
			{name: "bulk delete: no list", method: "POST", path: "/delete_devices", token: &tok, body: `{}`, status: 400, errcode: "M_MISSING_PARAM"},
			{name: "bulk delete: challenge", method: "POST", path: "/delete_devices", token: &tok, body: `{"devices":["WATCH","TV"]}`, status: 401, check: passwordChallenge},
			// The list is remembered from the challenge, as Synapse does.
			{name: "bulk delete with only auth", method: "POST", path: "/delete_devices", token: &tok, body: auth("secret", &session), status: 200},
			{name: "bulk deleted", method: "GET", path: "/devices", token: &tok, status: 200, check: func(t *testing.T, got map[string]any, _ http.Header) {
				if devs, _ := got["devices"].([]any); len(devs) != 2 {
					t.Fatalf("devices %v", got)
				}
			}},

			{name: "password: challenge", method: "POST", path: "/account/password", token: &tok, body: `{"new_password":"better"}`, status: 401, check: passwordChallenge},
			{name: "password: wrong", method: "POST", path: "/account/password", token: &tok, status: 401, errcode: "M_FORBIDDEN", body: func() any {
				b := auth("wrong", &session)().(map[string]any)
				b["new_password"] = "better"
				return b
			}},
			{name: "password: no new password", method: "POST", path: "/account/password", token: &tok, body: auth("secret", nil), status: 400, errcode: "M_MISSING_PARAM"},
			{name: "password: new password of the wrong type", method: "POST", path: "/account/password", token: &tok, body: `{"new_password":1}`, status: 400, errcode: "M_BAD_JSON"},
			{name: "password: keep other devices", method: "POST", path: "/account/password", token: &tok, status: 200, body: func() any {
				b := auth("secret", nil)().(map[string]any)
				b["new_password"] = "better"
				b["logout_devices"] = false
				return b
			}},
			{name: "other device kept", method: "GET", path: "/account/whoami", token: &tabletTok, status: 200},
			{name: "old password refused", method: "POST", path: "/login", body: map[string]any{"type": "m.login.password", "user": "alice", "password": "secret"}, status: 403, errcode: "M_FORBIDDEN"},
			{name: "password: log out others", method: "POST", path: "/account/password", token: &tok, status: 200, body: func() any {
				b := auth("better", nil)().(map[string]any)
				b["new_password"] = "best"
				return b
			}},
			{name: "other device logged out", method: "GET", path: "/account/whoami", token: &tabletTok, status: 401, errcode: "M_UNKNOWN_TOKEN"},
			{name: "this device kept", method: "GET", path: "/account/whoami", token: &tok, status: 200},
			{name: "new password works", method: "POST", path: "/login", body: map[string]any{"type": "m.login.password", "user": "alice", "password": "best"}, status: 200},
		})
	})
}

func TestProfileAccountDataDeactivate(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		s := newAcctServer(t, dbURL, acctOptions{withBus: true})
		tok := s.register(t, "alice", "secret")
		bobTok := s.register(t, "bob", "pw")
		var session string
		runAcctCases(t, s, []acctCase{
			{name: "new profile", method: "GET", path: "/profile/@alice:test.local", status: 200, check: exactly(`{"displayname":"alice"}`)},
			{name: "encoded user ID", method: "GET", path: "/profile/%40alice%3Atest.local/displayname", status: 200, check: exactly(`{"displayname":"alice"}`)},
			{name: "unset field", method: "GET", path: "/profile/@alice:test.local/avatar_url", status: 200, check: exactly(`{}`)},
			{name: "unknown user", method: "GET", path: "/profile/@nobody:test.local", status: 404, errcode: "M_NOT_FOUND"},
			{name: "unknown user's field", method: "GET", path: "/profile/@nobody:test.local/displayname", status: 404, errcode: "M_NOT_FOUND"},
			{name: "not a user ID", method: "GET", path: "/profile/alice", status: 400, errcode: "M_INVALID_PARAM"},
			{name: "set display name", method: "PUT", path: "/profile/@alice:test.local/displayname", token: &tok, body: `{"displayname":"Alice A."}`, status: 200, check: exactly(`{}`)},
			{name: "set avatar", method: "PUT", path: "/profile/@alice:test.local/avatar_url", token: &tok, body: `{"avatar_url":"mxc://test.local/a"}`, status: 200},
			{name: "both set", method: "GET", path: "/profile/@alice:test.local", status: 200, check: exactly(`{"displayname":"Alice A.","avatar_url":"mxc://test.local/a"}`)},
			{name: "another user's profile", method: "PUT", path: "/profile/@bob:test.local/displayname", token: &tok, body: `{"displayname":"Mallory"}`, status: 403, errcode: "M_FORBIDDEN"},
			{name: "without a token", method: "PUT", path: "/profile/@alice:test.local/displayname", body: `{"displayname":"x"}`, status: 401, errcode: "M_MISSING_TOKEN"},
			{name: "wrong type", method: "PUT", path: "/profile/@alice:test.local/displayname", token: &tok, body: `{"displayname":5}`, status: 400, errcode: "M_BAD_JSON"},
			{name: "missing field", method: "PUT", path: "/profile/@alice:test.local/displayname", token: &tok, body: `{"avatar_url":"x"}`, status: 400, errcode: "M_MISSING_PARAM"},
			{name: "clear with null", method: "PUT", path: "/profile/@alice:test.local/avatar_url", token: &tok, body: `{"avatar_url":null}`, status: 200},
			{name: "cleared", method: "GET", path: "/profile/@alice:test.local", status: 200, check: exactly(`{"displayname":"Alice A."}`)},

			{name: "account data: unset", method: "GET", path: "/user/@alice:test.local/account_data/m.direct", token: &tok, status: 404, errcode: "M_NOT_FOUND"},
			{name: "account data: set", method: "PUT", path: "/user/@alice:test.local/account_data/m.direct", token: &tok, body: `{"@bob:test.local":["!r:test.local"]}`, status: 200, check: exactly(`{}`)},
			{name: "account data: get", method: "GET", path: "/user/@alice:test.local/account_data/m.direct", token: &tok, status: 200, check: exactly(`{"@bob:test.local":["!r:test.local"]}`)},
			{name: "account data: another user's", method: "GET", path: "/user/@alice:test.local/account_data/m.direct", token: &bobTok, status: 403, errcode: "M_FORBIDDEN"},
			{name: "account data: set another user's", method: "PUT", path: "/user/@alice:test.local/account_data/x", token: &bobTok, body: `{}`, status: 403, errcode: "M_FORBIDDEN"},
			{name: "account data: not an object", method: "PUT", path: "/user/@alice:test.local/account_data/x", token: &tok, body: `[1]`, status: 400, errcode: "M_BAD_JSON"},
			{name: "account data: not JSON", method: "PUT", path: "/user/@alice:test.local/account_data/x", token: &tok, body: `nope`, status: 400, errcode: "M_NOT_JSON"},
			{name: "account data: server-managed type", method: "PUT", path: "/user/@alice:test.local/account_data/m.push_rules", token: &tok, body: `{}`, status: 405, errcode: "M_BAD_JSON"},
			{name: "room account data: set", method: "PUT", path: "/user/@alice:test.local/rooms/!r:test.local/account_data/m.tag", token: &tok, body: `{"tags":{"u.work":{}}}`, status: 200},
			{name: "room account data: get", method: "GET", path: "/user/@alice:test.local/rooms/!r:test.local/account_data/m.tag", token: &tok, status: 200, check: exactly(`{"tags":{"u.work":{}}}`)},
			{name: "room account data: not global", method: "GET", path: "/user/@alice:test.local/account_data/m.tag", token: &tok, status: 404, errcode: "M_NOT_FOUND"},
			{name: "room account data: other room", method: "GET", path: "/user/@alice:test.local/rooms/!s:test.local/account_data/m.tag", token: &tok, status: 404, errcode: "M_NOT_FOUND"},
			{name: "room account data: bad room ID", method: "PUT", path: "/user/@alice:test.local/rooms/room/account_data/m.tag", token: &tok, body: `{}`, status: 400, errcode: "M_INVALID_PARAM"},
			{name: "room account data: m.fully_read", method: "PUT", path: "/user/@alice:test.local/rooms/!r:test.local/account_data/m.fully_read", token: &tok, body: `{"event_id":"$e"}`, status: 405, errcode: "M_BAD_JSON"},
			{name: "account data: overwrite", method: "PUT", path: "/user/@alice:test.local/account_data/m.direct", token: &tok, body: `{}`, status: 200},

			{name: "deactivate: wrong password, no session", method: "POST", path: "/account/deactivate", token: &tok, status: 401, errcode: "M_FORBIDDEN", body: map[string]any{
				"auth": map[string]any{"type": "m.login.password", "identifier": map[string]any{"type": "m.id.user", "user": "@alice:test.local"}, "password": "x"},
			}, check: func(t *testing.T, got map[string]any, h http.Header) {
				want(map[string]any{"flows": []any{map[string]any{"stages": []any{"m.login.password"}}}, "params": map[string]any{}, "completed": []any{}, "error": "Invalid password"})(t, got, h)
				if str(got, "session") == "" {
					t.Fatalf("no session in %v", got)
				}
			}},
			{name: "deactivate: challenge", method: "POST", path: "/account/deactivate", token: &tok, body: `{}`, status: 401, check: func(t *testing.T, got map[string]any, _ http.Header) {
				session = str(got, "session")
			}},
			{name: "deactivate: wrong password", method: "POST", path: "/account/deactivate", token: &tok, status: 401, errcode: "M_FORBIDDEN", body: func() any {
				return map[string]any{"auth": map[string]any{"type": "m.login.password", "user": "@alice:test.local", "password": "x", "session": session}}
			}},
			{name: "deactivate", method: "POST", path: "/account/deactivate", token: &tok, status: 200, check: exactly(`{"id_server_unbind_result":"no-support"}`), body: func() any {
				return map[string]any{"auth": map[string]any{"type": "m.login.password", "user": "@alice:test.local", "password": "secret", "session": session}}
			}},
			{name: "deactivated: token refused", method: "GET", path: "/account/whoami", token: &tok, status: 401, errcode: "M_UNKNOWN_TOKEN"},
			{name: "deactivated: login refused", method: "POST", path: "/login", body: map[string]any{"type": "m.login.password", "user": "alice", "password": "secret"}, status: 403, errcode: "M_USER_DEACTIVATED"},
			{name: "deactivated: wrong password is still just wrong", method: "POST", path: "/login", body: map[string]any{"type": "m.login.password", "user": "alice", "password": "nope"}, status: 403, errcode: "M_FORBIDDEN"},
			{name: "deactivated: name not reusable", method: "POST", path: "/register", body: map[string]any{"username": "alice", "password": "pw", "auth": map[string]any{"type": "m.login.dummy"}}, status: 400, errcode: "M_USER_IN_USE"},
			{name: "deactivated: profile gone", method: "GET", path: "/profile/@alice:test.local", status: 404, errcode: "M_NOT_FOUND"},
		})

		t.Run("account data changes are published", func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			stream, err := s.bus.JetStream().Stream(ctx, bus.OutputUserData)
			if err != nil {
				t.Fatal(err)
			}
			// Device list changes go on OutputUserData.device_lists.
			info, err := stream.Info(ctx, jetstream.WithSubjectFilter(bus.OutputUserData))
			if err != nil {
				t.Fatal(err)
			}
			if n := info.State.Subjects[bus.OutputUserData]; n != 3 {
				t.Fatalf("%d messages published, want 3 (one per change)", n)
			}
			cons, err := s.bus.JetStream().OrderedConsumer(ctx, bus.OutputUserData, jetstream.OrderedConsumerConfig{FilterSubjects: []string{bus.OutputUserData}})
			if err != nil {
				t.Fatal(err)
			}
			batch, err := cons.Fetch(3, jetstream.FetchMaxWait(5*time.Second))
			if err != nil {
				t.Fatal(err)
			}
			var got []uapi.UserDataUpdate
			for msg := range batch.Messages() {
				var u uapi.UserDataUpdate
				if err := json.Unmarshal(msg.Data(), &u); err != nil {
					t.Fatal(err)
				}
				got = append(got, u)
			}
			want := []uapi.UserDataUpdate{
				{UserID: "@alice:test.local", Stream: "account_data", Pos: 1},
				{UserID: "@alice:test.local", Stream: "account_data", Pos: 2},
				{UserID: "@alice:test.local", Stream: "account_data", Pos: 3},
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("published %+v, want %+v", got, want)
			}
		})
	})
}

func TestSharedSecretRegistration(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		// Registration is closed: the shared secret is the only way in.
		s := newAcctServer(t, dbURL, acctOptions{config: func(cfg *config.Config) { cfg.Registration.Open = false }})
		const path = "/_synapse/admin/v1/register"
		var nonce, adminTok string
		getNonce := acctCase{name: "nonce", method: "GET", path: path, status: 200, check: func(t *testing.T, got map[string]any, _ http.Header) {
			if nonce = str(got, "nonce"); len(nonce) < 16 {
				t.Fatalf("nonce %v", got)
			}
		}}
		signed := func(user, password string, admin bool, secret string) func() any {
			return func() any {
				return map[string]any{"nonce": nonce, "username": user, "password": password, "admin": admin, "mac": sharedSecretMAC(secret, nonce, user, password, admin)}
			}
		}
		runAcctCases(t, s, []acctCase{
			{name: "open registration is closed", method: "POST", path: "/register", body: map[string]any{"username": "x", "password": "pw", "auth": map[string]any{"type": "m.login.dummy"}}, status: 403, errcode: "M_FORBIDDEN"},
			{name: "availability too", method: "GET", path: "/register/available?username=x", status: 403, errcode: "M_FORBIDDEN"},
			getNonce,
			{name: "bad MAC", method: "POST", path: path, body: signed("admin", "pw", true, "wrong-secret"), status: 403, errcode: "M_FORBIDDEN"},
			{name: "nonce used up by the failure", method: "POST", path: path, body: signed("admin", "pw", true, acctSecret), status: 400, errcode: "M_UNKNOWN"},
			{name: "unknown nonce", method: "POST", path: path, body: map[string]any{"nonce": "made-up", "username": "a", "password": "b", "mac": "00"}, status: 400, errcode: "M_UNKNOWN"},
			{name: "missing fields", method: "POST", path: path, body: map[string]any{"nonce": "x"}, status: 400, errcode: "M_MISSING_PARAM"},
			{name: "not JSON", method: "POST", path: path, body: `admin`, status: 400, errcode: "M_NOT_JSON"},
			getNonce,
			{name: "MAC over other fields", method: "POST", path: path, status: 403, errcode: "M_FORBIDDEN", body: func() any {
				b := signed("admin", "pw", false, acctSecret)().(map[string]any)
				b["admin"] = true // signed as notadmin
				return b
			}},
			getNonce,
			{name: "register an admin", method: "POST", path: path, body: signed("Admin", "pw", true, acctSecret), status: 200, check: func(t *testing.T, got map[string]any, h http.Header) {
				want(map[string]any{"user_id": "@admin:test.local", "home_server": "test.local"})(t, got, h)
				if adminTok = str(got, "access_token"); adminTok == "" || str(got, "device_id") == "" {
					t.Fatalf("response %v", got)
				}
			}},
			{name: "the token works", method: "GET", path: "/account/whoami", token: &adminTok, status: 200, check: want(map[string]any{"user_id": "@admin:test.local"})},
			getNonce,
			{name: "taken", method: "POST", path: path, body: signed("admin", "pw", false, acctSecret), status: 400, errcode: "M_USER_IN_USE"},
			getNonce,
			{name: "invalid name", method: "POST", path: path, body: signed("a b", "pw", false, acctSecret), status: 400, errcode: "M_INVALID_USERNAME"},
		})
		a, err := s.users.Account(context.Background(), "@admin:test.local")
		if err != nil || !a.IsAdmin {
			t.Fatalf("account %+v, %v; want an admin", a, err)
		}

		t.Run("disabled without a secret", func(t *testing.T) {
			off := newAcctServer(t, sqldbtest.URL(t, "sqlite"), acctOptions{config: func(cfg *config.Config) { cfg.Registration.SharedSecret = "" }})
			runAcctCases(t, off, []acctCase{
				{name: "nonce", method: "GET", path: path, status: 400, errcode: "M_UNKNOWN"},
				{name: "register", method: "POST", path: path, body: map[string]any{"nonce": "x", "username": "a", "password": "b", "mac": "00"}, status: 400, errcode: "M_UNKNOWN"},
			})
		})
	})
}

func TestRateLimits(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		s := newAcctServer(t, dbURL, acctOptions{config: func(cfg *config.Config) {
			cfg.RateLimits.Enabled = true
			cfg.RateLimits.Login = config.Bucket{PerSecond: 0.001, Burst: 2}
			cfg.RateLimits.Register = config.Bucket{PerSecond: 0.001, Burst: 1}
		}})
		limited := func(t *testing.T, got map[string]any, h http.Header) {
			if ms, _ := got["retry_after_ms"].(float64); ms <= 0 {
				t.Fatalf("retry_after_ms missing in %v", got)
			}
			if h.Get("Retry-After") == "" {
				t.Fatal("no Retry-After header")
			}
		}
		reg := func(name string) map[string]any {
			return map[string]any{"username": name, "password": "pw", "inhibit_login": true, "auth": map[string]any{"type": "m.login.dummy"}}
		}
		login := map[string]any{"type": "m.login.password", "user": "alice", "password": "wrong"}
		runAcctCases(t, s, []acctCase{
			{name: "register", method: "POST", path: "/register", body: reg("alice"), status: 200},
			{name: "register again", method: "POST", path: "/register", body: reg("bob"), status: 429, errcode: "M_LIMIT_EXCEEDED", check: limited},
			{name: "login 1", method: "POST", path: "/login", body: login, status: 403, errcode: "M_FORBIDDEN"},
			{name: "login 2", method: "POST", path: "/login", body: login, status: 403, errcode: "M_FORBIDDEN"},
			{name: "login 3", method: "POST", path: "/login", body: login, status: 429, errcode: "M_LIMIT_EXCEEDED", check: limited},
		})
	})
}

// TestBadInput sends malformed bodies to every account endpoint: each must
// be refused with a 4xx, never a 500.
func TestBadInput(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		s := newAcctServer(t, dbURL, acctOptions{})
		tok := s.register(t, "alice", "secret")
		endpoints := []struct{ method, path string }{
			{"POST", "/register"},
			{"POST", "/login"},
			{"POST", "/account/password"},
			{"POST", "/account/deactivate"},
			{"PUT", "/devices/X"},
			{"DELETE", "/devices/X"},
			{"POST", "/delete_devices"},
			{"PUT", "/profile/@alice:test.local/displayname"},
			{"PUT", "/profile/@alice:test.local/avatar_url"},
			{"PUT", "/user/@alice:test.local/account_data/t"},
			{"PUT", "/user/@alice:test.local/rooms/!r:x/account_data/t"},
			{"POST", "/_synapse/admin/v1/register"},
		}
		bodies := []string{
			``, `null`, `[]`, `"x"`, `1`, `{`, "\xff\xfe", `{"a":"\ud800"}`,
			`{"auth":5}`, `{"auth":{"type":5}}`, `{"auth":{"type":"m.login.password","identifier":"x"}}`,
			`{"auth":{"type":"m.login.password","identifier":{"type":"m.id.user","user":5}}}`,
			`{"auth":{"type":"m.login.password","session":["x"]}}`,
			`{"devices":"x"}`, `{"devices":[1]}`, `{"identifier":{}}`, `{"type":"m.login.password","identifier":{"type":"m.id.user"}}`,
			`{"device_id":{}}`, `{"displayname":[]}`, `{"avatar_url":{}}`, `{"new_password":null}`, `{"logout_devices":"yes"}`,
			`{"username":"` + strings.Repeat("a", 300) + `","password":"x","auth":{"type":"m.login.dummy"}}`,
			`{"type":"m.login.password","user":"alice","password":"secret","device_id":"` + strings.Repeat("D", 300) + `"}`,
			`{"nonce":"a","username":"b","password":"c","mac":"d","admin":"yes"}`,
		}
		for _, e := range endpoints {
			for _, b := range bodies {
				status, got, _ := s.do(t, e.method, e.path, tok, b)
				if status >= 500 {
					t.Errorf("%s %s %q: %d %v", e.method, e.path, b, status, got)
				}
			}
		}
	})
}
