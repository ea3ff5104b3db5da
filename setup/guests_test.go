package setup_test

import (
	"fmt"
	"net/url"
	"testing"
	"time"

	"myelin/internal/poll"
	"myelin/internal/sqldb/sqldbtest"
	"myelin/internal/testserver"
	"myelin/setup/config"
)

// TestGuests registers a guest, checks what it may and may not do, and
// upgrades it to a full account that keeps its user ID.
func TestGuests(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		srv := testserver.Start(t, testserver.Config(t.TempDir(), dbURL, func(c *config.Config) { c.Registration.AllowGuests = true }))
		alice := srv.Register(t, "alice")
		room := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{"preset": "public_chat"}).MustOK(t).String("room_id")

		anon := &testserver.Client{Base: srv.URL}
		g := anon.Do(t, "POST", "/_matrix/client/v3/register?kind=guest", map[string]any{}).MustOK(t)
		guest := &testserver.Client{Base: srv.URL, Token: g.String("access_token")}
		guestID := g.String("user_id")
		who := guest.Do(t, "GET", "/_matrix/client/v3/account/whoami", nil).MustOK(t)
		if who.Body["is_guest"] != true {
			t.Fatalf("whoami: %s", who.Raw)
		}
		checks := []struct {
			name   string
			method string
			path   string
			body   any
			status int
		}{
			{"no room creation", "POST", "/_matrix/client/v3/createRoom", map[string]any{}, 403},
			{"no joining rooms closed to guests", "POST", "/_matrix/client/v3/rooms/" + room + "/join", map[string]any{}, 403},
			{"may set a display name", "PUT", "/_matrix/client/v3/profile/" + guestID + "/displayname", map[string]any{"displayname": "visitor"}, 200},
			{"may sync", "GET", "/_matrix/client/v3/sync?timeout=0", nil, 200},
		}
		for _, c := range checks {
			if r := guest.Do(t, c.method, c.path, c.body); r.Status != c.status {
				t.Fatalf("%s: got %d, want %d: %s", c.name, r.Status, c.status, r.Raw)
			}
		}
		alice.Do(t, "PUT", "/_matrix/client/v3/rooms/"+room+"/state/m.room.guest_access/", map[string]any{"guest_access": "can_join"}).MustOK(t)
		guest.Do(t, "POST", "/_matrix/client/v3/rooms/"+room+"/join", map[string]any{}).MustOK(t)
		guest.Do(t, "PUT", "/_matrix/client/v3/rooms/"+room+"/send/m.room.message/1", map[string]any{"msgtype": "m.text", "body": "hi"}).MustOK(t)

		// Closing the room to guests removes them.
		alice.Do(t, "PUT", "/_matrix/client/v3/rooms/"+room+"/state/m.room.guest_access/", map[string]any{"guest_access": "forbidden"}).MustOK(t)
		poll.Until(t, 10*time.Second, func() error {
			m := alice.Do(t, "GET", "/_matrix/client/v3/rooms/"+room+"/state/m.room.member/"+guestID, nil).MustOK(t)
			if m.String("membership") != "leave" {
				return fmt.Errorf("guest still in the room: %s", m.Raw)
			}
			return nil
		})

		// Upgrade: the same user ID, now a full account.
		other := anon.Do(t, "POST", "/_matrix/client/v3/register?kind=guest", map[string]any{}).MustOK(t)
		req := map[string]any{"username": guestID[1 : len(guestID)-len(":localhost")], "password": "secret-pw",
			"guest_access_token": other.String("access_token"), "auth": map[string]string{"type": "m.login.dummy"}}
		if r := anon.Do(t, "POST", "/_matrix/client/v3/register", req); r.Status != 403 {
			t.Fatalf("upgrading another guest: %d %s", r.Status, r.Raw)
		}
		req["guest_access_token"] = guest.Token
		up := anon.Do(t, "POST", "/_matrix/client/v3/register", req).MustOK(t)
		if up.String("user_id") != guestID {
			t.Fatalf("upgrade gave %s, want %s", up.String("user_id"), guestID)
		}
		full := &testserver.Client{Base: srv.URL, Token: up.String("access_token")}
		full.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{}).MustOK(t)
	})
}

// TestGuestsFederated: a guest of hsb invited to a room of hsa joins it
// when the invite's stripped state shows guest access can_join, and is
// refused otherwise (hsb cannot read the room's state before joining, and
// hsa cannot tell a guest from another user); perform's tests refuse a
// guest with no invite.
func TestGuestsFederated(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		fed := newFedNet(t)
		guests := func(c *config.Config) { c.Registration.AllowGuests = true }
		hsA := fed.start(t, "hsa.test", "127.0.0.4", dbURL)
		hsB := fed.start(t, "hsb.test", "127.0.0.5", sqldbtest.URL(t, dialectOf(dbURL)), guests)
		alice := hsA.Register(t, "alice")
		anon := &testserver.Client{Base: hsB.URL}
		g := anon.Do(t, "POST", "/_matrix/client/v3/register?kind=guest", map[string]any{}).MustOK(t)
		guest := &testserver.Client{Base: hsB.URL, Token: g.String("access_token")}
		guestID := g.String("user_id")
		for _, tc := range []struct {
			access string
			status int
		}{{"can_join", 200}, {"forbidden", 403}} {
			t.Run("guest access "+tc.access, func(t *testing.T) {
				req := map[string]any{"preset": "private_chat", "initial_state": []any{map[string]any{
					"type": "m.room.guest_access", "state_key": "", "content": map[string]string{"guest_access": tc.access}}}}
				room := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", req).MustOK(t).String("room_id")
				alice.Do(t, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/invite", map[string]string{"user_id": guestID}).MustOK(t)
				r := guest.Do(t, "POST", "/_matrix/client/v3/join/"+url.PathEscape(room), map[string]any{})
				if r.Status != tc.status {
					t.Fatalf("guest's join: %d %s, want %d", r.Status, r.Raw, tc.status)
				}
				if tc.status != 200 && r.String("errcode") != "M_GUEST_ACCESS_FORBIDDEN" {
					t.Fatalf("guest's refused join: %s", r.Raw)
				}
			})
		}
	})
}
