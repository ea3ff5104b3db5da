package setup_test

import (
	"crypto/hmac"
	"crypto/sha1"
	"encoding/hex"
	"fmt"
	"testing"
	"time"

	"myelin/internal/poll"
	"myelin/internal/sqldb/sqldbtest"
	"myelin/internal/testserver"
	"myelin/setup/config"
)

// TestAccountSpecShapes drives the account endpoints of issue 13 (refresh
// and login tokens, registration tokens, 3PIDs, TURN) through a whole
// server on each database and checks each answer against the spec's
// schema for its endpoint and status.
func TestAccountSpecShapes(t *testing.T) {
	spec := loadClientSpec(t)
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		srv := testserver.Start(t, testserver.Config(t.TempDir(), dbURL, func(c *config.Config) {
			c.Registration.RequiresToken = true
			c.ClientAPI.TURN = config.TURN{URIs: []string{"turn:turn.localhost"}, SharedSecret: "s", UserLifetime: time.Hour}
		}))
		f := &specFlow{t: t, spec: spec, srv: srv, anon: &testserver.Client{Base: srv.URL}, called: map[string]bool{}}
		anon := f.anon
		const v1 = "/_matrix/client/v1"

		// A registration token made by an admin, then a registration that
		// uses it.
		admin := registerAdmin(t, srv, "root")
		tok := admin.Do(t, "POST", "/_synapse/admin/v1/registration_tokens/new", map[string]any{"uses_allowed": 1}).MustOK(t).String("token")
		f.call(anon, "GET", v1+"/register/m.login.registration_token/validity?token="+tok, nil, 200)
		req := map[string]any{"username": "alice", "password": "password-alice", "refresh_token": true}
		challenge := f.call(anon, "POST", clientV3+"/register", req, 401)
		req["auth"] = map[string]any{"type": "m.login.registration_token", "token": tok, "session": challenge.String("session")}
		reg := f.call(anon, "POST", clientV3+"/register", req, 200)
		if reg.String("refresh_token") == "" || reg.Body["expires_in_ms"] == nil {
			t.Fatalf("register with refresh_token: %s", reg.Raw)
		}
		if v := f.call(anon, "GET", v1+"/register/m.login.registration_token/validity?token="+tok, nil, 200); v.Body["valid"] != false {
			t.Fatalf("used-up token: %s", v.Raw)
		}

		// Refresh, then the new access token works.
		ref := f.call(anon, "POST", clientV3+"/refresh", map[string]any{"refresh_token": reg.String("refresh_token")}, 200)
		alice := &testserver.Client{Base: srv.URL, Token: ref.String("access_token")}
		f.call(alice, "GET", clientV3+"/account/whoami", nil, 200)
		f.call(anon, "POST", clientV3+"/refresh", map[string]any{"refresh_token": "nope"}, 401)

		// A login token for a second device.
		f.call(anon, "GET", clientV3+"/login", nil, 200)
		challenge = f.call(alice, "POST", v1+"/login/get_token", map[string]any{}, 401)
		auth := map[string]any{"type": "m.login.password", "identifier": map[string]any{"type": "m.id.user", "user": "alice"},
			"password": "password-alice", "session": challenge.String("session")}
		lt := f.call(alice, "POST", v1+"/login/get_token", map[string]any{"auth": auth}, 200)
		f.call(anon, "POST", clientV3+"/login", map[string]any{"type": "m.login.token", "token": lt.String("login_token")}, 200)
		f.call(anon, "POST", clientV3+"/login", map[string]any{"type": "m.login.token", "token": lt.String("login_token")}, 403)
		caps := f.call(alice, "GET", clientV3+"/capabilities", nil, 200)
		if fmt.Sprint(caps.Body["capabilities"].(map[string]any)["m.get_login_token"]) != "map[enabled:true]" {
			t.Fatalf("capabilities: %s", caps.Raw)
		}
		f.call(anon, "GET", "/_matrix/client/versions", nil, 200)

		// 3PIDs: none, and none can be added.
		f.call(alice, "GET", clientV3+"/account/3pid", nil, 200)
		email := map[string]any{"client_secret": "secret", "email": "alice@example.org", "send_attempt": 1}
		f.call(anon, "POST", clientV3+"/register/email/requestToken", email, 403)
		f.call(anon, "POST", clientV3+"/account/password/email/requestToken", email, 403)
		f.call(anon, "POST", clientV3+"/account/3pid/email/requestToken", email, 403)
		f.call(anon, "POST", clientV3+"/account/3pid/msisdn/requestToken", map[string]any{"client_secret": "secret", "country": "GB", "phone_number": "07700900001", "send_attempt": 1}, 403)
		f.call(alice, "POST", clientV3+"/account/3pid/add", map[string]any{"client_secret": "secret", "sid": "1"}, 401)
		f.call(alice, "POST", clientV3+"/account/3pid/delete", map[string]any{"medium": "email", "address": "alice@example.org"}, 200)
		f.call(alice, "POST", clientV3+"/account/3pid/unbind", map[string]any{"medium": "email", "address": "alice@example.org"}, 200)

		turn := f.call(alice, "GET", clientV3+"/voip/turnServer", nil, 200)
		if turn.Body["ttl"] != float64(3600) || turn.String("password") == "" {
			t.Fatalf("turnServer: %s", turn.Raw)
		}
	})
}

// TestDeactivateErase checks that deactivating with erase clears the
// user's name and avatar from their rooms' member events before they
// leave, as Synapse does, and that without erase the profile in the rooms
// stays as it was.
func TestDeactivateErase(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		srv := testserver.Start(t, testserver.Config(t.TempDir(), dbURL))
		owner := srv.Register(t, "owner")
		room := owner.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{"preset": "public_chat"}).MustOK(t).String("room_id")
		for _, tc := range []struct {
			user  string
			erase bool
		}{{"alice", true}, {"bob", false}} {
			c := srv.Register(t, tc.user)
			userID := "@" + tc.user + ":localhost"
			c.Do(t, "PUT", "/_matrix/client/v3/profile/"+userID+"/displayname", map[string]any{"displayname": "Name of " + tc.user}).MustOK(t)
			c.Do(t, "PUT", "/_matrix/client/v3/profile/"+userID+"/avatar_url", map[string]any{"avatar_url": "mxc://localhost/" + tc.user}).MustOK(t)
			c.Do(t, "POST", "/_matrix/client/v3/rooms/"+room+"/join", map[string]any{}).MustOK(t)
			auth := map[string]any{"type": "m.login.password", "identifier": map[string]any{"type": "m.id.user", "user": tc.user}, "password": "password-" + tc.user}
			c.Do(t, "POST", "/_matrix/client/v3/account/deactivate", map[string]any{"erase": tc.erase, "auth": auth}).MustOK(t)

			// The member events of the room, newest last, as the owner sees
			// them: a join with the profile cleared (erase only), then the
			// leave.
			var members []map[string]any
			poll.Until(t, 10*time.Second, func() error {
				members = members[:0]
				msgs := owner.Do(t, "GET", "/_matrix/client/v3/rooms/"+room+"/messages?dir=b&limit=50", nil).MustOK(t)
				chunk, _ := msgs.Body["chunk"].([]any)
				for i := len(chunk) - 1; i >= 0; i-- {
					ev := chunk[i].(map[string]any)
					if ev["type"] == "m.room.member" && ev["state_key"] == userID {
						members = append(members, ev["content"].(map[string]any))
					}
				}
				if len(members) == 0 || members[len(members)-1]["membership"] != "leave" {
					return fmt.Errorf("no leave yet: %v", members)
				}
				return nil
			})
			before := members[len(members)-2]
			if before["membership"] != "join" {
				t.Fatalf("%s: member events %v", tc.user, members)
			}
			_, hasName := before["displayname"]
			_, hasAvatar := before["avatar_url"]
			if tc.erase && (hasName || hasAvatar) {
				t.Fatalf("%s erased, but the last join still has a profile: %v", tc.user, before)
			}
			if !tc.erase && (!hasName || !hasAvatar) {
				t.Fatalf("%s not erased, but the last join lost its profile: %v", tc.user, before)
			}
			if p := owner.Do(t, "GET", "/_matrix/client/v3/profile/"+userID, nil); p.Status != 404 {
				t.Fatalf("%s: profile after deactivation: %d %s", tc.user, p.Status, p.Raw)
			}
		}
	})
}

// registerAdmin makes a server admin through shared-secret registration
// (testserver's secret) and returns a client logged in as it.
func registerAdmin(t *testing.T, srv *testserver.Server, localpart string) *testserver.Client {
	t.Helper()
	anon := &testserver.Client{Base: srv.URL}
	nonce := anon.Do(t, "GET", "/_synapse/admin/v1/register", nil).MustOK(t).String("nonce")
	password := "password-" + localpart
	m := hmac.New(sha1.New, []byte(srv.Config.Registration.SharedSecret))
	m.Write([]byte(nonce + "\x00" + localpart + "\x00" + password + "\x00admin"))
	r := anon.Do(t, "POST", "/_synapse/admin/v1/register", map[string]any{
		"nonce": nonce, "username": localpart, "password": password, "admin": true, "mac": hex.EncodeToString(m.Sum(nil)),
	}).MustOK(t)
	return &testserver.Client{Base: srv.URL, Token: r.String("access_token")}
}
