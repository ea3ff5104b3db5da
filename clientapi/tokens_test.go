package clientapi_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"myelin/internal/poll"
	"myelin/internal/sqldb/sqldbtest"
	"myelin/setup/config"
	uapi "myelin/userapi/api"
)

// registerAdmin makes a server admin through shared-secret registration
// and returns its access token.
func (s *acctServer) registerAdmin(t *testing.T, localpart, password string) string {
	t.Helper()
	_, got, _ := s.do(t, "GET", "/_synapse/admin/v1/register", "", nil)
	nonce, _ := got["nonce"].(string)
	status, got, _ := s.do(t, "POST", "/_synapse/admin/v1/register", "", map[string]any{
		"nonce": nonce, "username": localpart, "password": password, "admin": true,
		"mac": sharedSecretMAC(acctSecret, nonce, localpart, password, true),
	})
	if status != 200 {
		t.Fatalf("register admin %s: %d %v", localpart, status, got)
	}
	return got["access_token"].(string)
}

func passwordLogin(user, password string, extra map[string]any) map[string]any {
	b := map[string]any{"type": "m.login.password", "identifier": map[string]any{"type": "m.id.user", "user": user}, "password": password}
	for k, v := range extra {
		b[k] = v
	}
	return b
}

// keep stores a response field in dst.
func keep(field string, dst *string) func(t *testing.T, got map[string]any, h http.Header) {
	return func(t *testing.T, got map[string]any, _ http.Header) {
		t.Helper()
		if *dst = str(got, field); *dst == "" {
			t.Fatalf("no %s in %v", field, got)
		}
	}
}

func TestRefreshTokens(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		s := newAcctServer(t, dbURL, acctOptions{})
		s.register(t, "alice", "secret")
		var a1, r1, a2, r2, a3, r3, plain string
		refreshed := func(access, refresh *string) func(t *testing.T, got map[string]any, h http.Header) {
			return func(t *testing.T, got map[string]any, h http.Header) {
				t.Helper()
				keep("access_token", access)(t, got, h)
				keep("refresh_token", refresh)(t, got, h)
				// The default lifetime is 5 minutes.
				if ms, _ := got["expires_in_ms"].(float64); ms < 290_000 || ms > 300_000 {
					t.Fatalf("expires_in_ms %v, want about 300000", got["expires_in_ms"])
				}
			}
		}
		runAcctCases(t, s, []acctCase{
			{name: "login asking for a refresh token", method: "POST", path: "/login", status: 200,
				body: passwordLogin("alice", "secret", map[string]any{"refresh_token": true}), check: refreshed(&a1, &r1)},
			{name: "login without asking", method: "POST", path: "/login", status: 200,
				body: passwordLogin("alice", "secret", nil), check: func(t *testing.T, got map[string]any, h http.Header) {
					keep("access_token", &plain)(t, got, h)
					want(map[string]any{"refresh_token": nil, "expires_in_ms": nil})(t, got, h)
				}},
			{name: "refreshable token works", method: "GET", path: "/account/whoami", token: &a1, status: 200},
			{name: "refresh", method: "POST", path: "/refresh", body: func() any { return map[string]any{"refresh_token": r1} }, status: 200, check: refreshed(&a2, &r2)},
			{name: "old access token revoked", method: "GET", path: "/account/whoami", token: &a1, status: 401, errcode: "M_UNKNOWN_TOKEN",
				check: want(map[string]any{"soft_logout": nil})},
			// The client lost the answer: the old refresh token still works
			// while the new access token is unused.
			{name: "old refresh token again", method: "POST", path: "/refresh", body: func() any { return map[string]any{"refresh_token": r1} }, status: 200, check: refreshed(&a3, &r3)},
			{name: "the newest access token", method: "GET", path: "/account/whoami", token: &a3, status: 200, check: want(map[string]any{"user_id": "@alice:test.local"})},
			{name: "old refresh token revoked once the new access token is used", method: "POST", path: "/refresh", body: func() any { return map[string]any{"refresh_token": r1} }, status: 401, errcode: "M_UNKNOWN_TOKEN"},
			{name: "superseded refresh token", method: "POST", path: "/refresh", body: func() any { return map[string]any{"refresh_token": r2} }, status: 401, errcode: "M_UNKNOWN_TOKEN"},
			{name: "plain access token still works", method: "GET", path: "/account/whoami", token: &plain, status: 200},
			{name: "plain token is no refresh token", method: "POST", path: "/refresh", body: func() any { return map[string]any{"refresh_token": plain} }, status: 401, errcode: "M_UNKNOWN_TOKEN"},
			{name: "missing refresh token", method: "POST", path: "/refresh", body: `{}`, status: 400, errcode: "M_MISSING_PARAM"},
			{name: "refresh token of the wrong type", method: "POST", path: "/refresh", body: `{"refresh_token":5}`, status: 400, errcode: "M_BAD_JSON"},
			{name: "not JSON", method: "POST", path: "/refresh", body: `{`, status: 400, errcode: "M_NOT_JSON"},
			{name: "very long refresh token", method: "POST", path: "/refresh", body: map[string]any{"refresh_token": strings.Repeat("x", 5000)}, status: 401, errcode: "M_UNKNOWN_TOKEN"},
			{name: "register asking for a refresh token", method: "POST", path: "/register", status: 200,
				body:  map[string]any{"username": "bob", "password": "pw", "refresh_token": true, "auth": map[string]any{"type": "m.login.dummy"}},
				check: refreshed(new(string), new(string))},
			{name: "logout ends the refresh token", method: "POST", path: "/logout", token: &a3, body: `{}`, status: 200},
			{name: "refresh after logout", method: "POST", path: "/refresh", body: func() any { return map[string]any{"refresh_token": r3} }, status: 401, errcode: "M_UNKNOWN_TOKEN"},
		})
	})
}

// TestAccessTokenExpiry checks that an expired access token answers 401
// with soft_logout, also once it sits in the token cache, and that its
// refresh token still gives a working one.
func TestAccessTokenExpiry(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		s := newAcctServer(t, dbURL, acctOptions{config: func(c *config.Config) { c.ClientAPI.AccessTokenLifetime = time.Second }})
		s.register(t, "alice", "secret")
		status, got, _ := s.do(t, "POST", "/login", "", passwordLogin("alice", "secret", map[string]any{"refresh_token": true}))
		if status != 200 || got["expires_in_ms"] == nil {
			t.Fatalf("login: %d %v", status, got)
		}
		access, refresh := str(got, "access_token"), str(got, "refresh_token")
		// This use caches the token.
		if status, got, _ := s.do(t, "GET", "/account/whoami", access, nil); status != 200 {
			t.Fatalf("whoami: %d %v", status, got)
		}
		poll.Until(t, 10*time.Second, func() error {
			status, got, _ := s.do(t, "GET", "/account/whoami", access, nil)
			if status != 401 {
				return fmt.Errorf("still %d %v", status, got)
			}
			if str(got, "errcode") != "M_UNKNOWN_TOKEN" || got["soft_logout"] != true {
				t.Fatalf("expired token: %v, want M_UNKNOWN_TOKEN with soft_logout", got)
			}
			return nil
		})
		status, got, _ = s.do(t, "POST", "/refresh", "", map[string]any{"refresh_token": refresh})
		if status != 200 {
			t.Fatalf("refresh of an expired token: %d %v", status, got)
		}
		fresh := str(got, "access_token")
		if status, got, _ := s.do(t, "GET", "/account/whoami", fresh, nil); status != 200 {
			t.Fatalf("whoami with the refreshed token: %d %v", status, got)
		}
		// An expired token may still log out (its device goes).
		poll.Until(t, 10*time.Second, func() error {
			if status, _, _ := s.do(t, "GET", "/account/whoami", fresh, nil); status != 401 {
				return fmt.Errorf("not expired yet")
			}
			return nil
		})
		if status, got, _ := s.do(t, "POST", "/logout", fresh, `{}`); status != 200 {
			t.Fatalf("logout with an expired token: %d %v", status, got)
		}
		if status, got, _ := s.do(t, "POST", "/logout", fresh, `{}`); status != 401 || got["soft_logout"] != nil {
			t.Fatalf("logout with a logged-out token: %d %v", status, got)
		}
		devs, err := s.users.Devices(context.Background(), "@alice:test.local")
		if err != nil || len(devs) != 1 {
			t.Fatalf("devices after the logout: %v %v, want only the shared-secret one", devs, err)
		}
	})
}

func TestLoginToken(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		s := newAcctServer(t, dbURL, acctOptions{config: func(c *config.Config) { c.Registration.AllowGuests = true }})
		tok := s.register(t, "alice", "secret")
		_, got, _ := s.do(t, "POST", "/register?kind=guest", "", `{}`)
		guestTok := str(got, "access_token")
		var session, loginToken string
		const getToken = "/_matrix/client/v1/login/get_token"
		runAcctCases(t, s, []acctCase{
			{name: "flows", method: "GET", path: "/login", status: 200,
				check: exactly(`{"flows":[{"type":"m.login.password"},{"type":"m.login.token","get_login_token":true}]}`)},
			{name: "capability", method: "GET", path: "/capabilities", token: &tok, status: 200, check: func(t *testing.T, got map[string]any, _ http.Header) {
				caps := got["capabilities"].(map[string]any)
				if fmt.Sprint(caps["m.get_login_token"]) != "map[enabled:true]" {
					t.Fatalf("m.get_login_token %v", caps["m.get_login_token"])
				}
			}},
			{name: "versions", method: "GET", path: "/_matrix/client/versions", status: 200, check: func(t *testing.T, got map[string]any, _ http.Header) {
				if f := got["unstable_features"].(map[string]any); f["org.matrix.msc3882"] != true {
					t.Fatalf("unstable_features %v", f)
				}
			}},
			{name: "a guest's capabilities", method: "GET", path: "/capabilities", token: &guestTok, status: 200, check: func(t *testing.T, got map[string]any, _ http.Header) {
				caps := got["capabilities"].(map[string]any)
				if fmt.Sprint(caps["m.get_login_token"], caps["m.change_password"]) != "map[enabled:false] map[enabled:false]" {
					t.Fatalf("guest capabilities %v", caps)
				}
			}},
			{name: "without a token", method: "POST", path: getToken, body: `{}`, status: 401, errcode: "M_MISSING_TOKEN"},
			{name: "guest", method: "POST", path: getToken, token: &guestTok, body: `{}`, status: 403, errcode: "M_GUEST_ACCESS_FORBIDDEN"},
			{name: "challenge", method: "POST", path: getToken, token: &tok, body: `{}`, status: 401, check: func(t *testing.T, got map[string]any, h http.Header) {
				keep("session", &session)(t, got, h)
				want(map[string]any{"flows": []any{map[string]any{"stages": []any{"m.login.password"}}}})(t, got, h)
			}},
			{name: "wrong password", method: "POST", path: getToken, token: &tok, status: 401, errcode: "M_FORBIDDEN", body: func() any {
				return map[string]any{"auth": map[string]any{"type": "m.login.password", "user": "alice", "password": "nope", "session": session}}
			}},
			{name: "token", method: "POST", path: getToken, token: &tok, status: 200, body: func() any {
				return map[string]any{"auth": map[string]any{"type": "m.login.password", "user": "alice", "password": "secret", "session": session}}
			}, check: func(t *testing.T, got map[string]any, h http.Header) {
				keep("login_token", &loginToken)(t, got, h)
				want(map[string]any{"expires_in_ms": float64(120000)})(t, got, h)
			}},
			{name: "log in with it", method: "POST", path: "/login", status: 200, body: func() any {
				return map[string]any{"type": "m.login.token", "token": loginToken, "initial_device_display_name": "second"}
			}, check: want(map[string]any{"user_id": "@alice:test.local"})},
			{name: "the unstable path", method: "POST", path: "/_matrix/client/unstable/org.matrix.msc3882/login/get_token", token: &tok, status: 401, body: `{}`,
				check: want(map[string]any{"flows": []any{map[string]any{"stages": []any{"m.login.password"}}}})},
			{name: "only once", method: "POST", path: "/login", status: 403, errcode: "M_FORBIDDEN", body: func() any {
				return map[string]any{"type": "m.login.token", "token": loginToken}
			}},
			{name: "unknown token", method: "POST", path: "/login", body: `{"type":"m.login.token","token":"nope"}`, status: 403, errcode: "M_FORBIDDEN"},
			{name: "missing token", method: "POST", path: "/login", body: `{"type":"m.login.token"}`, status: 400, errcode: "M_MISSING_PARAM"},
			{name: "token of the wrong type", method: "POST", path: "/login", body: `{"type":"m.login.token","token":7}`, status: 400, errcode: "M_BAD_JSON"},
		})
	})
	t.Run("off", func(t *testing.T) {
		s := newAcctServer(t, sqldbtest.URL(t, "sqlite"), acctOptions{config: func(c *config.Config) { c.ClientAPI.LoginTokenLifetime = 0 }})
		tok := s.register(t, "alice", "secret")
		runAcctCases(t, s, []acctCase{
			{name: "flows", method: "GET", path: "/login", status: 200, check: exactly(`{"flows":[{"type":"m.login.password"}]}`)},
			{name: "get_token", method: "POST", path: "/_matrix/client/v1/login/get_token", token: &tok, body: `{}`, status: 404, errcode: "M_UNRECOGNIZED"},
			{name: "login type", method: "POST", path: "/login", body: `{"type":"m.login.token","token":"x"}`, status: 400, errcode: "M_UNKNOWN"},
			{name: "capability", method: "GET", path: "/capabilities", token: &tok, status: 200, check: func(t *testing.T, got map[string]any, _ http.Header) {
				if caps := got["capabilities"].(map[string]any); fmt.Sprint(caps["m.get_login_token"]) != "map[enabled:false]" {
					t.Fatalf("m.get_login_token %v", caps["m.get_login_token"])
				}
			}},
			{name: "versions", method: "GET", path: "/_matrix/client/versions", status: 200, check: func(t *testing.T, got map[string]any, _ http.Header) {
				if f := got["unstable_features"].(map[string]any); f["org.matrix.msc3882"] != false {
					t.Fatalf("unstable_features %v", f)
				}
			}},
		})
	})
}

func TestRegistrationTokens(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		s := newAcctServer(t, dbURL, acctOptions{config: func(c *config.Config) { c.Registration.RequiresToken = true }})
		admin := s.registerAdmin(t, "root", "rootpw")
		user := s.register(t, "alice", "secret")
		const admin1 = "/_synapse/admin/v1/registration_tokens"
		const validity = "/_matrix/client/v1/register/m.login.registration_token/validity?token="
		future := time.Now().Add(time.Hour).UnixMilli()
		var once, session string
		regBody := func(name, token string) func() any {
			return func() any {
				b := map[string]any{"username": name, "password": "pw"}
				auth := map[string]any{"type": "m.login.registration_token", "session": session}
				if token != "-" {
					auth["token"] = token
				}
				b["auth"] = auth
				return b
			}
		}
		runAcctCases(t, s, []acctCase{
			{name: "create: not an admin", method: "POST", path: admin1 + "/new", token: &user, body: `{}`, status: 403, errcode: "M_FORBIDDEN"},
			{name: "create: no token", method: "POST", path: admin1 + "/new", body: `{}`, status: 401, errcode: "M_MISSING_TOKEN"},
			{name: "create: random, one use", method: "POST", path: admin1 + "/new", token: &admin, body: `{"uses_allowed":1}`, status: 200,
				check: func(t *testing.T, got map[string]any, h http.Header) {
					keep("token", &once)(t, got, h)
					if len(once) != 16 {
						t.Fatalf("token %q, want 16 characters", once)
					}
					want(map[string]any{"uses_allowed": float64(1), "pending": float64(0), "completed": float64(0)})(t, got, h)
					if v, ok := got["expiry_time"]; !ok || v != nil {
						t.Fatalf("expiry_time %v, want null", v)
					}
				}},
			{name: "create: named", method: "POST", path: admin1 + "/new", token: &admin, status: 200,
				body:  map[string]any{"token": "abc", "uses_allowed": 2, "expiry_time": future},
				check: want(map[string]any{"token": "abc", "uses_allowed": float64(2), "expiry_time": float64(future)})},
			{name: "create: length", method: "POST", path: admin1 + "/new", token: &admin, body: `{"length":5}`, status: 200, check: func(t *testing.T, got map[string]any, _ http.Header) {
				if len(str(got, "token")) != 5 || got["uses_allowed"] != nil {
					t.Fatalf("token %v", got)
				}
			}},
			{name: "create: taken", method: "POST", path: admin1 + "/new", token: &admin, body: `{"token":"abc"}`, status: 400, errcode: "M_INVALID_PARAM"},
			{name: "create: bad characters", method: "POST", path: admin1 + "/new", token: &admin, body: `{"token":"a b"}`, status: 400, errcode: "M_INVALID_PARAM"},
			{name: "create: too long", method: "POST", path: admin1 + "/new", token: &admin, body: map[string]any{"token": strings.Repeat("a", 65)}, status: 400, errcode: "M_INVALID_PARAM"},
			{name: "create: negative uses", method: "POST", path: admin1 + "/new", token: &admin, body: `{"uses_allowed":-1}`, status: 400, errcode: "M_INVALID_PARAM"},
			{name: "create: uses not a number", method: "POST", path: admin1 + "/new", token: &admin, body: `{"uses_allowed":"2"}`, status: 400, errcode: "M_INVALID_PARAM"},
			{name: "create: expired", method: "POST", path: admin1 + "/new", token: &admin, body: `{"expiry_time":1000}`, status: 400, errcode: "M_INVALID_PARAM"},
			{name: "create: length 65", method: "POST", path: admin1 + "/new", token: &admin, body: `{"length":65}`, status: 400, errcode: "M_INVALID_PARAM"},
			{name: "list", method: "GET", path: admin1, token: &admin, status: 200, check: func(t *testing.T, got map[string]any, _ http.Header) {
				if l := got["registration_tokens"].([]any); len(l) != 3 {
					t.Fatalf("%d tokens, want 3: %v", len(l), l)
				}
			}},
			{name: "list: not an admin", method: "GET", path: admin1, token: &user, status: 403, errcode: "M_FORBIDDEN"},
			{name: "list: bad valid", method: "GET", path: admin1 + "?valid=maybe", token: &admin, status: 400, errcode: "M_INVALID_PARAM"},
			{name: "get", method: "GET", path: admin1 + "/abc", token: &admin, status: 200, check: want(map[string]any{"token": "abc", "pending": float64(0)})},
			{name: "get: unknown", method: "GET", path: admin1 + "/nope", token: &admin, status: 404, errcode: "M_NOT_FOUND"},

			{name: "validity: missing token", method: "GET", path: validity, status: 400, errcode: "M_MISSING_PARAM"},
			{name: "validity: unknown", method: "GET", path: validity + "nope", status: 200, check: exactly(`{"valid":false}`)},
			{name: "validity: malformed", method: "GET", path: validity + "a%20b", status: 200, check: exactly(`{"valid":false}`)},
			{name: "validity: valid", method: "GET", path: validity + "abc", status: 200, check: exactly(`{"valid":true}`)},

			{name: "register: challenge", method: "POST", path: "/register", body: map[string]any{"username": "bob", "password": "pw"}, status: 401,
				check: func(t *testing.T, got map[string]any, h http.Header) {
					keep("session", &session)(t, got, h)
					want(map[string]any{"flows": []any{map[string]any{"stages": []any{"m.login.registration_token"}}}})(t, got, h)
				}},
			{name: "register: dummy is not enough", method: "POST", path: "/register", status: 400, errcode: "M_UNRECOGNIZED",
				body: func() any { return map[string]any{"auth": map[string]any{"type": "m.login.dummy", "session": session}} }},
			{name: "register: missing token", method: "POST", path: "/register", body: regBody("bob", "-"), status: 400, errcode: "M_MISSING_PARAM"},
			{name: "register: wrong token", method: "POST", path: "/register", body: regBody("bob", "nope"), status: 401, errcode: "M_UNAUTHORIZED"},
			{name: "register: token of the wrong type", method: "POST", path: "/register", body: `{"auth":{"type":"m.login.registration_token","token":1}}`, status: 400, errcode: "M_BAD_JSON"},
			{name: "register with the one-use token", method: "POST", path: "/register", body: func() any { return regBody("bob", once)() }, status: 200,
				check: want(map[string]any{"user_id": "@bob:test.local"})},
			{name: "register: the same again is idempotent", method: "POST", path: "/register", body: func() any { return regBody("bob", once)() }, status: 200,
				check: want(map[string]any{"user_id": "@bob:test.local"})},
		})
		status, got, _ := s.do(t, "GET", admin1+"/"+once, admin, nil)
		if status != 200 || got["completed"] != float64(1) || got["pending"] != float64(0) {
			t.Fatalf("used token: %d %v, want completed 1, pending 0", status, got)
		}
		session = ""
		runAcctCases(t, s, []acctCase{
			{name: "used up", method: "GET", path: validity + once, status: 200, check: exactly(`{"valid":false}`)},
			{name: "register with a used-up token", method: "POST", path: "/register", body: func() any { return regBody("carol", once)() }, status: 401, errcode: "M_UNAUTHORIZED"},
			{name: "list valid", method: "GET", path: admin1 + "?valid=true", token: &admin, status: 200, check: func(t *testing.T, got map[string]any, _ http.Header) {
				for _, tk := range got["registration_tokens"].([]any) {
					if tk.(map[string]any)["token"] == once {
						t.Fatalf("used-up token listed as valid: %v", got)
					}
				}
			}},
			{name: "list invalid", method: "GET", path: admin1 + "?valid=false", token: &admin, status: 200, check: func(t *testing.T, got map[string]any, _ http.Header) {
				if l := got["registration_tokens"].([]any); len(l) != 1 || l[0].(map[string]any)["token"] != once {
					t.Fatalf("invalid tokens %v", l)
				}
			}},
			{name: "update: unlimited", method: "PUT", path: admin1 + "/" + once, token: &admin, body: `{"uses_allowed":null}`, status: 200,
				check: func(t *testing.T, got map[string]any, h http.Header) {
					if v, ok := got["uses_allowed"]; !ok || v != nil || got["completed"] != float64(1) {
						t.Fatalf("token %v, want uses_allowed null, completed 1", got)
					}
				}},
			{name: "update: keeps what is not named", method: "PUT", path: admin1 + "/abc", token: &admin, body: `{}`, status: 200,
				check: want(map[string]any{"uses_allowed": float64(2), "expiry_time": float64(future)})},
			{name: "update: expiry in the past", method: "PUT", path: admin1 + "/abc", token: &admin, body: `{"expiry_time":5}`, status: 400, errcode: "M_INVALID_PARAM"},
			{name: "update: unknown", method: "PUT", path: admin1 + "/nope", token: &admin, body: `{}`, status: 404, errcode: "M_NOT_FOUND"},
			{name: "valid again", method: "GET", path: validity + once, status: 200, check: exactly(`{"valid":true}`)},
			{name: "delete: not an admin", method: "DELETE", path: admin1 + "/abc", token: &user, status: 403, errcode: "M_FORBIDDEN"},
			{name: "delete", method: "DELETE", path: admin1 + "/abc", token: &admin, status: 200, check: exactly(`{}`)},
			{name: "delete again", method: "DELETE", path: admin1 + "/abc", token: &admin, status: 404, errcode: "M_NOT_FOUND"},
			{name: "deleted is invalid", method: "GET", path: validity + "abc", status: 200, check: exactly(`{"valid":false}`)},

			// A session that passed the stage but made no account holds no
			// use of the token; if the token is used up meanwhile, its
			// registration is refused.
			{name: "a one-use token", method: "POST", path: admin1 + "/new", token: &admin, body: `{"token":"solo","uses_allowed":1}`, status: 200},
			{name: "dan: challenge", method: "POST", path: "/register", body: `{"username":"dan"}`, status: 401, check: keep("session", &session)},
			{name: "dan: the stage, but no password", method: "POST", path: "/register", status: 400, errcode: "M_MISSING_PARAM", body: func() any {
				return map[string]any{"auth": map[string]any{"type": "m.login.registration_token", "token": "solo", "session": session}}
			}},
			{name: "no use held", method: "GET", path: admin1 + "/solo", token: &admin, status: 200, check: want(map[string]any{"pending": float64(0), "completed": float64(0)})},
			{name: "erin uses it up", method: "POST", path: "/register", status: 200,
				body: `{"username":"erin","password":"pw","auth":{"type":"m.login.registration_token","token":"solo"}}`},
			{name: "dan: used up meanwhile", method: "POST", path: "/register", status: 403, errcode: "M_FORBIDDEN", body: func() any {
				return map[string]any{"username": "dan", "password": "pw", "auth": map[string]any{"session": session}}
			}},
			{name: "counted once", method: "GET", path: admin1 + "/solo", token: &admin, status: 200, check: want(map[string]any{"pending": float64(0), "completed": float64(1)})},
			{name: "dan was not made", method: "GET", path: "/register/available?username=dan", status: 200, check: exactly(`{"available":true}`)},
		})
	})
	t.Run("not required", func(t *testing.T) {
		s := newAcctServer(t, sqldbtest.URL(t, "sqlite"), acctOptions{})
		runAcctCases(t, s, []acctCase{
			{name: "validity", method: "GET", path: "/_matrix/client/v1/register/m.login.registration_token/validity?token=abc", status: 403, errcode: "M_FORBIDDEN"},
			{name: "dummy flow", method: "POST", path: "/register", body: `{"username":"x","password":"y"}`, status: 401,
				check: want(map[string]any{"flows": []any{map[string]any{"stages": []any{"m.login.dummy"}}}})},
		})
	})
}

func TestThreepids(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		s := newAcctServer(t, dbURL, acctOptions{})
		tok := s.register(t, "alice", "secret")
		var session string
		email := `{"client_secret":"s3cr.t","email":"a@example.org","send_attempt":1}`
		phone := `{"client_secret":"s3cr.t","country":"GB","phone_number":"07700900001","send_attempt":1}`
		cases := []acctCase{
			{name: "list", method: "GET", path: "/account/3pid", token: &tok, status: 200, check: exactly(`{"threepids":[]}`)},
			{name: "list without a token", method: "GET", path: "/account/3pid", status: 401, errcode: "M_MISSING_TOKEN"},
			{name: "add: challenge", method: "POST", path: "/account/3pid/add", token: &tok, body: `{"client_secret":"c","sid":"1"}`, status: 401, check: keep("session", &session)},
			{name: "add: not validated", method: "POST", path: "/account/3pid/add", token: &tok, status: 400, errcode: "M_THREEPID_AUTH_FAILED", body: func() any {
				return map[string]any{"client_secret": "c", "sid": "1", "auth": map[string]any{"type": "m.login.password", "user": "alice", "password": "secret", "session": session}}
			}},
			{name: "add: bad client secret", method: "POST", path: "/account/3pid/add", token: &tok, status: 400, errcode: "M_INVALID_PARAM",
				body: map[string]any{"client_secret": "a b", "sid": "1", "auth": map[string]any{"type": "m.login.password", "user": "alice", "password": "secret"}}},
			{name: "add (deprecated)", method: "POST", path: "/account/3pid", token: &tok, body: `{"three_pid_creds":{"client_secret":"c","sid":"1"}}`, status: 403, errcode: "M_THREEPID_AUTH_FAILED"},
			{name: "add (deprecated): no creds", method: "POST", path: "/account/3pid", token: &tok, body: `{}`, status: 400, errcode: "M_MISSING_PARAM"},
			{name: "bind", method: "POST", path: "/account/3pid/bind", token: &tok, body: `{"client_secret":"c","id_server":"id.example.org","id_access_token":"t","sid":"1"}`, status: 403, errcode: "M_THREEPID_DENIED"},
			{name: "bind: missing sid", method: "POST", path: "/account/3pid/bind", token: &tok, body: `{"client_secret":"c","id_server":"id.example.org","id_access_token":"t"}`, status: 400, errcode: "M_MISSING_PARAM"},
			{name: "delete", method: "POST", path: "/account/3pid/delete", token: &tok, body: `{"medium":"email","address":"a@example.org"}`, status: 200, check: exactly(`{"id_server_unbind_result":"no-support"}`)},
			{name: "delete: missing address", method: "POST", path: "/account/3pid/delete", token: &tok, body: `{"medium":"email"}`, status: 400, errcode: "M_MISSING_PARAM"},
			{name: "unbind", method: "POST", path: "/account/3pid/unbind", token: &tok, body: `{"medium":"email","address":"a@example.org","id_server":"id.example.org"}`, status: 200, check: exactly(`{"id_server_unbind_result":"no-support"}`)},
			{name: "unbind: medium of the wrong type", method: "POST", path: "/account/3pid/unbind", token: &tok, body: `{"medium":1,"address":"a"}`, status: 400, errcode: "M_BAD_JSON"},
		}
		for _, p := range []string{"/register", "/account/3pid", "/account/password"} {
			cases = append(cases,
				acctCase{name: p + " email", method: "POST", path: p + "/email/requestToken", body: email, status: 403, errcode: "M_THREEPID_DENIED"},
				acctCase{name: p + " msisdn", method: "POST", path: p + "/msisdn/requestToken", body: phone, status: 403, errcode: "M_THREEPID_DENIED"},
				acctCase{name: p + " email: no address", method: "POST", path: p + "/email/requestToken", body: `{"client_secret":"c","send_attempt":1}`, status: 400, errcode: "M_MISSING_PARAM"},
				acctCase{name: p + " msisdn: no number", method: "POST", path: p + "/msisdn/requestToken", body: `{"client_secret":"c","country":"GB","send_attempt":1}`, status: 400, errcode: "M_MISSING_PARAM"},
				acctCase{name: p + " no client secret", method: "POST", path: p + "/email/requestToken", body: `{"email":"a@b.c","send_attempt":1}`, status: 400, errcode: "M_MISSING_PARAM"},
				acctCase{name: p + " bad client secret", method: "POST", path: p + "/email/requestToken", body: `{"client_secret":"a/b","email":"a@b.c","send_attempt":1}`, status: 400, errcode: "M_INVALID_PARAM"},
				acctCase{name: p + " no send_attempt", method: "POST", path: p + "/email/requestToken", body: `{"client_secret":"c","email":"a@b.c"}`, status: 400, errcode: "M_MISSING_PARAM"},
				acctCase{name: p + " send_attempt not a number", method: "POST", path: p + "/email/requestToken", body: `{"client_secret":"c","email":"a@b.c","send_attempt":"1"}`, status: 400, errcode: "M_BAD_JSON"},
				acctCase{name: p + " not JSON", method: "POST", path: p + "/email/requestToken", body: `nope`, status: 400, errcode: "M_NOT_JSON"},
			)
		}
		runAcctCases(t, s, cases)
	})
}

func TestTURNServer(t *testing.T) {
	const secret = "turn-secret"
	for _, tc := range []struct {
		name  string
		turn  config.TURN
		guest bool
		check func(t *testing.T, status int, got map[string]any)
	}{
		{name: "unconfigured", check: func(t *testing.T, status int, got map[string]any) {
			if status != 200 || len(got) != 0 {
				t.Fatalf("%d %v, want 200 {}", status, got)
			}
		}},
		{name: "shared secret", turn: config.TURN{URIs: []string{"turn:turn.test.local:3478?transport=udp"}, SharedSecret: secret, UserLifetime: time.Hour},
			check: func(t *testing.T, status int, got map[string]any) {
				user := str(got, "username")
				expiry, userID, _ := strings.Cut(user, ":")
				exp, err := strconv.ParseInt(expiry, 10, 64)
				if status != 200 || err != nil || userID != "@alice:test.local" {
					t.Fatalf("%d %v", status, got)
				}
				if d := exp - time.Now().Add(time.Hour).Unix(); d < -60 || d > 60 {
					t.Fatalf("username expiry %d, want an hour from now", exp)
				}
				m := hmac.New(sha1.New, []byte(secret))
				m.Write([]byte(user))
				want(map[string]any{"password": base64.StdEncoding.EncodeToString(m.Sum(nil)), "ttl": float64(3600),
					"uris": []any{"turn:turn.test.local:3478?transport=udp"}})(t, got, nil)
			}},
		{name: "fixed credentials", turn: config.TURN{URIs: []string{"turns:t.test.local"}, Username: "u", Password: "p", UserLifetime: 10 * time.Minute},
			check: func(t *testing.T, status int, got map[string]any) {
				if status != 200 {
					t.Fatalf("%d %v", status, got)
				}
				exactly(`{"username":"u","password":"p","uris":["turns:t.test.local"],"ttl":600}`)(t, got, nil)
			}},
		{name: "guest refused", guest: true, turn: config.TURN{URIs: []string{"turn:t"}, SharedSecret: secret, UserLifetime: time.Hour},
			check: func(t *testing.T, status int, got map[string]any) {
				if status != 403 || str(got, "errcode") != "M_GUEST_ACCESS_FORBIDDEN" {
					t.Fatalf("%d %v, want 403 M_GUEST_ACCESS_FORBIDDEN", status, got)
				}
			}},
		{name: "guest allowed", guest: true, turn: config.TURN{URIs: []string{"turn:t"}, SharedSecret: secret, UserLifetime: time.Hour, AllowGuests: true},
			check: func(t *testing.T, status int, got map[string]any) {
				if status != 200 || str(got, "password") == "" {
					t.Fatalf("%d %v", status, got)
				}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newAcctServer(t, sqldbtest.URL(t, "sqlite"), acctOptions{config: func(c *config.Config) {
				c.ClientAPI.TURN = tc.turn
				c.Registration.AllowGuests = true
			}})
			tok := s.register(t, "alice", "secret")
			if tc.guest {
				_, got, _ := s.do(t, "POST", "/register?kind=guest", "", `{}`)
				tok = str(got, "access_token")
			}
			status, got, _ := s.do(t, "GET", "/voip/turnServer", tok, nil)
			tc.check(t, status, got)
		})
	}
	t.Run("without a token", func(t *testing.T) {
		s := newAcctServer(t, sqldbtest.URL(t, "sqlite"), acctOptions{})
		if status, got, _ := s.do(t, "GET", "/voip/turnServer", "", nil); status != 401 || str(got, "errcode") != "M_MISSING_TOKEN" {
			t.Fatalf("%d %v", status, got)
		}
	})
}

func TestDeactivateErase(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		s := newAcctServer(t, dbURL, acctOptions{})
		ctx := context.Background()
		for _, tc := range []struct {
			user  string
			erase any
		}{{"alice", true}, {"bob", false}, {"carol", nil}} {
			tok := s.register(t, tc.user, "pw")
			userID := "@" + tc.user + ":test.local"
			if _, err := s.users.SetAccountData(ctx, userID, "", "m.direct", []byte(`{}`)); err != nil {
				t.Fatal(err)
			}
			body := map[string]any{"auth": map[string]any{"type": "m.login.password", "user": tc.user, "password": "pw"}}
			if tc.erase != nil {
				body["erase"] = tc.erase
			}
			if status, got, _ := s.do(t, "POST", "/account/deactivate", tok, body); status != 200 {
				t.Fatalf("deactivate %s: %d %v", tc.user, status, got)
			}
			a, err := s.users.Account(ctx, userID)
			if err != nil {
				t.Fatal(err)
			}
			erased := tc.erase == true
			if !a.Deactivated || a.Erased != erased {
				t.Fatalf("%s: deactivated %v erased %v, want true %v", tc.user, a.Deactivated, a.Erased, erased)
			}
			_, err = s.users.AccountData(ctx, userID, "", "m.direct")
			if gone := uapi.IsNotFound(err); gone != erased {
				t.Fatalf("%s: account data gone %v (%v), want %v", tc.user, gone, err, erased)
			}
		}
		tok := s.register(t, "dave", "pw")
		if status, got, _ := s.do(t, "POST", "/account/deactivate", tok, `{"erase":"yes","auth":{"type":"m.login.password","user":"dave","password":"pw"}}`); status != 400 || str(got, "errcode") != "M_BAD_JSON" {
			t.Fatalf("erase of the wrong type: %d %v", status, got)
		}
	})
}
