package setup_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"

	"myelin/internal/poll"
	"myelin/internal/signing"
	"myelin/internal/sqldb/sqldbtest"
	"myelin/internal/testserver"
	"myelin/setup/config"
)

// TestFederationMembershipEdges covers what sytest found the other tests
// missed in the membership dances: the deprecated v1 endpoints (send_join
// and invite answer [200, body]), v1 rooms' [id, hashes] references in
// make_join's template, an unsigned join refused as forbidden, a room all
// of this server's users left refused to joiners (404), a profile of
// another server's user, and an invite rejected while the inviting server
// is down (the rejection then stays local).
func TestFederationMembershipEdges(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		fed := newFedNet(t)
		hsA := fed.start(t, "hsa.test", "127.0.0.30", dbURL)
		hsB := fed.start(t, "hsb.test", "127.0.0.31", sqldbtest.URL(t, dialectOf(dbURL)))
		alice := hsA.Register(t, "alice")
		gina := hsB.Register(t, "gina")
		hank := hsB.Register(t, "hank")
		keyB, err := signing.LoadOrGenerate(hsB.Config.Keys.SigningKeyPath, "hsb.test")
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		fromB := hsB.FederationClient()

		// signedReq sends a request signed by hsb to hsa's federation
		// listener and returns the status and the raw answer.
		signedReq := func(t *testing.T, method, path string, body any) (int, json.RawMessage) {
			t.Helper()
			fr := fclient.NewFederationRequest(method, "hsb.test", "hsa.test", path)
			if body != nil {
				if err := fr.SetContent(body); err != nil {
					t.Fatal(err)
				}
			}
			if err := fr.Sign("hsb.test", keyB.KeyID, keyB.Private); err != nil {
				t.Fatal(err)
			}
			req, err := fr.HTTPRequest()
			if err != nil {
				t.Fatal(err)
			}
			req.URL, _ = url.Parse(hsA.FederationURL() + req.URL.RequestURI())
			res, err := fed.httpClient("hsa.test").Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			var raw json.RawMessage
			_ = json.NewDecoder(res.Body).Decode(&raw)
			return res.StatusCode, raw
		}

		v1Room := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{"preset": "public_chat", "room_version": "1"}).MustOK(t).String("room_id")

		t.Run("make_join in a v1 room references events as [id, hashes]", func(t *testing.T) {
			code, raw := signedReq(t, http.MethodGet, "/_matrix/federation/v1/make_join/"+url.PathEscape(v1Room)+"/"+url.PathEscape("@gina:hsb.test"), nil)
			if code != 200 {
				t.Fatalf("make_join: %d %s", code, raw)
			}
			var body struct {
				Event struct {
					AuthEvents []json.RawMessage `json:"auth_events"`
					PrevEvents []json.RawMessage `json:"prev_events"`
				} `json:"event"`
			}
			if err := json.Unmarshal(raw, &body); err != nil {
				t.Fatal(err)
			}
			for _, ref := range append(body.Event.AuthEvents, body.Event.PrevEvents...) {
				var pair []json.RawMessage
				if json.Unmarshal(ref, &pair) != nil || len(pair) != 2 {
					t.Fatalf("reference %s is not an [id, hashes] pair: %s", ref, raw)
				}
			}
			if len(body.Event.AuthEvents) == 0 || len(body.Event.PrevEvents) == 0 {
				t.Fatalf("template without references: %s", raw)
			}
		})

		pub := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{"preset": "public_chat"}).MustOK(t).String("room_id")
		mj, err := fromB.MakeJoin(ctx, "hsb.test", "hsa.test", pub, "@gina:hsb.test")
		if err != nil {
			t.Fatalf("make_join: %v", err)
		}
		verImpl, err := gmsl.GetRoomVersion(mj.RoomVersion)
		if err != nil {
			t.Fatal(err)
		}
		join, err := verImpl.NewEventBuilderFromProtoEvent(&mj.JoinEvent).Build(time.Now(), "hsb.test", keyB.KeyID, keyB.Private)
		if err != nil {
			t.Fatal(err)
		}

		t.Run("v1 send_join refuses an unsigned join as forbidden", func(t *testing.T) {
			var unsigned map[string]any
			if err := json.Unmarshal(join.JSON(), &unsigned); err != nil {
				t.Fatal(err)
			}
			delete(unsigned, "signatures")
			delete(unsigned, "hashes")
			code, raw := signedReq(t, http.MethodPut, "/_matrix/federation/v1/send_join/"+url.PathEscape(pub)+"/"+url.PathEscape(join.EventID()), unsigned)
			if code != 403 || !jsonHas(raw, "errcode", "M_FORBIDDEN") {
				t.Fatalf("got %d %s, want 403 M_FORBIDDEN", code, raw)
			}
		})
		t.Run("send_leave answers a bad body before a bad event ID", func(t *testing.T) {
			// A signed event with a float, which room versions 6 and
			// later refuse (canonical JSON has only integers).
			var bad map[string]any
			if err := json.Unmarshal(join.JSON(), &bad); err != nil {
				t.Fatal(err)
			}
			bad["bad_val"] = 1.5
			code, raw := signedReq(t, http.MethodPut, "/_matrix/federation/v2/send_leave/"+url.PathEscape(pub)+"/xxx", bad)
			if code != 400 || !jsonHas(raw, "errcode", "M_BAD_JSON") {
				t.Fatalf("got %d %s, want 400 M_BAD_JSON", code, raw)
			}
		})
		t.Run("v1 send_join answers [200, {state, auth_chain}]", func(t *testing.T) {
			code, raw := signedReq(t, http.MethodPut, "/_matrix/federation/v1/send_join/"+url.PathEscape(pub)+"/"+url.PathEscape(join.EventID()), json.RawMessage(join.JSON()))
			var answer []json.RawMessage
			if code != 200 || json.Unmarshal(raw, &answer) != nil || len(answer) != 2 || string(answer[0]) != "200" {
				t.Fatalf("got %d %s", code, raw)
			}
			var body struct {
				State     []json.RawMessage `json:"state"`
				AuthChain []json.RawMessage `json:"auth_chain"`
			}
			if err := json.Unmarshal(answer[1], &body); err != nil || len(body.State) == 0 || len(body.AuthChain) == 0 {
				t.Fatalf("v1 send_join body: %s", answer[1])
			}
			poll.Until(t, 10*time.Second, func() error {
				if !joinedMembers(t, alice, pub)["@gina:hsb.test"] {
					return fmt.Errorf("alice does not see gina joined")
				}
				return nil
			})
		})

		t.Run("profile of another server's user", func(t *testing.T) {
			gina.Do(t, "PUT", "/_matrix/client/v3/profile/@gina:hsb.test/displayname", map[string]string{"displayname": "Gina B"}).MustOK(t)
			r := alice.Do(t, "GET", "/_matrix/client/v3/profile/@gina:hsb.test/displayname", nil).MustOK(t)
			if r.String("displayname") != "Gina B" {
				t.Fatalf("remote profile: %s", r.Raw)
			}
			if r := alice.Do(t, "GET", "/_matrix/client/v3/profile/@nobody:hsb.test", nil); r.Status != 404 {
				t.Fatalf("profile of a remote user who does not exist: %d %s", r.Status, r.Raw)
			}
		})

		t.Run("make_join of a room this server's users all left is 404", func(t *testing.T) {
			left := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{"preset": "public_chat"}).MustOK(t).String("room_id")
			alice.Do(t, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(left)+"/leave", map[string]any{}).MustOK(t)
			code, raw := signedReq(t, http.MethodGet, "/_matrix/federation/v1/make_join/"+url.PathEscape(left)+"/"+url.PathEscape("@gina:hsb.test")+"?ver="+string(mj.RoomVersion), nil)
			if code != 404 || !jsonHas(raw, "errcode", "M_NOT_FOUND") {
				t.Fatalf("got %d %s, want 404 M_NOT_FOUND", code, raw)
			}
		})

		// rejectShowsLeave has hank reject an invite to a room of hsa and
		// checks that his next /sync lists the room under leave, its
		// timeline starting with his leave.
		// The first invites him through createRoom's invite list, the
		// second through /invite.
		rejectShowsLeave := func(t *testing.T, stopA bool) {
			var private string
			if stopA {
				private = alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{"preset": "private_chat"}).MustOK(t).String("room_id")
				alice.Do(t, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(private)+"/invite", map[string]string{"user_id": "@hank:hsb.test"}).MustOK(t)
			} else {
				private = alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{
					"preset": "private_chat", "invite": []string{"@hank:hsb.test"},
				}).MustOK(t).String("room_id")
			}
			var since string
			poll.Until(t, 10*time.Second, func() error {
				r := hank.Do(t, "GET", "/_matrix/client/v3/sync?timeout=0", nil).MustOK(t)
				since = r.String("next_batch")
				if !strings.Contains(string(r.Raw), private) {
					return fmt.Errorf("no invite in hank's /sync")
				}
				return nil
			})
			if stopA {
				hsA.Stop()
			}
			hank.Do(t, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(private)+"/leave", map[string]any{}).MustOK(t)
			poll.Until(t, 10*time.Second, func() error {
				r := hank.Do(t, "GET", "/_matrix/client/v3/sync?timeout=0&since="+url.QueryEscape(since), nil).MustOK(t)
				var body struct {
					Rooms struct {
						Leave map[string]struct {
							Timeline struct {
								Events []struct {
									Sender  string `json:"sender"`
									Content struct {
										Membership string `json:"membership"`
									} `json:"content"`
								} `json:"events"`
							} `json:"timeline"`
						} `json:"leave"`
					} `json:"rooms"`
				}
				if err := json.Unmarshal(r.Raw, &body); err != nil {
					return err
				}
				lr, ok := body.Rooms.Leave[private]
				if !ok || len(lr.Timeline.Events) == 0 {
					return fmt.Errorf("the room is not under leave: %s", r.Raw)
				}
				if e := lr.Timeline.Events[0]; e.Sender != "@hank:hsb.test" || e.Content.Membership != "leave" {
					return fmt.Errorf("the leave timeline does not start with hank's leave: %s", r.Raw)
				}
				return nil
			})
		}
		t.Run("an invite rejected through the inviter's server", func(t *testing.T) {
			rejectShowsLeave(t, false)
		})
		// Last: it stops hsa. The rejection then stays on hsb (as
		// Synapse does), and hank is rid of the invite all the same.
		t.Run("an invite rejected while the inviter's server is down", func(t *testing.T) {
			rejectShowsLeave(t, true)
		})
	})
}

// jsonHas reports whether the JSON object raw has field set to want.
func jsonHas(raw json.RawMessage, field, want string) bool {
	var body map[string]any
	return json.Unmarshal(raw, &body) == nil && body[field] == want
}

// TestFederationGuestsRemoved: a user of another server closes a room to
// guests, and the guests of this server leave it, as when a local user
// does (spec: "Guest Access").
func TestFederationGuestsRemoved(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		fed := newFedNet(t)
		hsA := fed.start(t, "hsa.test", "127.0.0.32", dbURL, func(c *config.Config) { c.Registration.AllowGuests = true })
		hsB := fed.start(t, "hsb.test", "127.0.0.33", sqldbtest.URL(t, dialectOf(dbURL)))
		alice := hsA.Register(t, "alice")
		bob := hsB.Register(t, "bob")
		room := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{
			"preset":                       "public_chat",
			"power_level_content_override": map[string]any{"users": map[string]int{"@alice:hsa.test": 100, "@bob:hsb.test": 50}},
		}).MustOK(t).String("room_id")
		alice.Do(t, "PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/state/m.room.guest_access/", map[string]any{"guest_access": "can_join"}).MustOK(t)
		bob.Do(t, "POST", "/_matrix/client/v3/join/"+url.PathEscape(room)+"?server_name=hsa.test", map[string]any{}).MustOK(t)
		g := (&testserver.Client{Base: hsA.URL}).Do(t, "POST", "/_matrix/client/v3/register?kind=guest", map[string]any{}).MustOK(t)
		guest := &testserver.Client{Base: hsA.URL, Token: g.String("access_token")}
		guestID := g.String("user_id")
		guest.Do(t, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/join", map[string]any{}).MustOK(t)
		// bob's server must have seen the guest join and alice's power
		// levels before bob may close the room.
		poll.Until(t, 10*time.Second, func() error {
			if !joinedMembers(t, bob, room)[guestID] {
				return fmt.Errorf("hsb does not see the guest joined")
			}
			return nil
		})
		bob.Do(t, "PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/state/m.room.guest_access/", map[string]any{"guest_access": "forbidden"}).MustOK(t)
		poll.Until(t, 10*time.Second, func() error {
			if joinedMembers(t, alice, room)[guestID] {
				return fmt.Errorf("the guest is still in the room")
			}
			return nil
		})
	})
}

// TestFederationRestrictedJoin: a room whose join rule is restricted to
// the members of a space lets in, from either server, a user joined to
// the space, once a member of the resident server vouches for the join
// (join_authorised_via_users_server, signed by that server), and refuses
// the others (spec: "Restricted rooms", room versions 8 and later).
func TestFederationRestrictedJoin(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		fed := newFedNet(t)
		hsA := fed.start(t, "hsa.test", "127.0.0.34", dbURL)
		hsB := fed.start(t, "hsb.test", "127.0.0.35", sqldbtest.URL(t, dialectOf(dbURL)))
		alice := hsA.Register(t, "alice")
		dave := hsA.Register(t, "dave")
		erin := hsA.Register(t, "erin")
		bob := hsB.Register(t, "bob")
		carol := hsB.Register(t, "carol")
		space := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{
			"preset": "public_chat", "creation_content": map[string]any{"type": "m.space"},
		}).MustOK(t).String("room_id")
		room := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{
			"preset": "private_chat", "room_version": "10",
			"initial_state": []map[string]any{{
				"type": "m.room.join_rules", "state_key": "",
				"content": map[string]any{"join_rule": "restricted", "allow": []map[string]string{{"type": "m.room_membership", "room_id": space}}},
			}},
		}).MustOK(t).String("room_id")
		dave.Do(t, "POST", "/_matrix/client/v3/join/"+url.PathEscape(space), map[string]any{}).MustOK(t)
		bob.Do(t, "POST", "/_matrix/client/v3/join/"+url.PathEscape(space)+"?server_name=hsa.test", map[string]any{}).MustOK(t)

		joins := []struct {
			name   string
			who    *testserver.Client
			userID string
			via    string
			status int
		}{
			{"a local member of the space", dave, "@dave:hsa.test", "", 200},
			{"a local user outside the space", erin, "@erin:hsa.test", "", 403},
			{"a remote member of the space", bob, "@bob:hsb.test", "?server_name=hsa.test", 200},
			{"a remote user outside the space", carol, "@carol:hsb.test", "?server_name=hsa.test", 403},
		}
		for _, j := range joins {
			t.Run(j.name, func(t *testing.T) {
				r := j.who.Do(t, "POST", "/_matrix/client/v3/join/"+url.PathEscape(room)+j.via, map[string]any{})
				if r.Status != j.status {
					t.Fatalf("join: %d %s, want %d", r.Status, r.Raw, j.status)
				}
				if j.status != 200 {
					return
				}
				poll.Until(t, 10*time.Second, func() error {
					m := alice.Do(t, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/state/m.room.member/"+j.userID, nil)
					if m.String("membership") != "join" || m.String("join_authorised_via_users_server") != "@alice:hsa.test" {
						return fmt.Errorf("%s's join as alice sees it: %s", j.userID, m.Raw)
					}
					return nil
				})
			})
		}
	})
}
