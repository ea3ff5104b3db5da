package setup_test

import (
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"myelin/internal/poll"
	"myelin/internal/sqldb/sqldbtest"
	"myelin/internal/testserver"
)

// joinedMembers lists a room's joined members as c sees them.
func joinedMembers(t *testing.T, c *testserver.Client, roomID string) map[string]bool {
	t.Helper()
	r := c.Do(t, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/joined_members", nil)
	var body struct {
		Joined map[string]json.RawMessage `json:"joined"`
	}
	_ = json.Unmarshal(r.Raw, &body)
	out := map[string]bool{}
	for u := range body.Joined {
		out[u] = true
	}
	return out
}

// fullSyncRooms is the rooms section of one full /sync of c.
func fullSyncRooms(t *testing.T, c *testserver.Client) map[string]map[string]json.RawMessage {
	t.Helper()
	r := c.Do(t, "GET", "/_matrix/client/v3/sync?timeout=0", nil).MustOK(t)
	var body struct {
		Rooms map[string]map[string]json.RawMessage `json:"rooms"`
	}
	if err := json.Unmarshal(r.Raw, &body); err != nil {
		t.Fatal(err)
	}
	return body.Rooms
}

// TestFederationJoins: users of one Myelin server join, leave and are
// refused rooms of another, over signed requests (make_join, send_join,
// make_leave, send_leave): the resident server sees them, and the joining
// server takes the room in from the send_join answer, so its /sync shows
// the room with its state.
func TestFederationJoins(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		fed := newFedNet(t)
		hsA := fed.start(t, "hsa.test", "127.0.0.4", dbURL)
		hsB := fed.start(t, "hsb.test", "127.0.0.5", sqldbtest.URL(t, dialectOf(dbURL)))
		alice := hsA.Register(t, "alice")
		bob := hsB.Register(t, "bob")
		dave := hsB.Register(t, "dave")
		erin := hsB.Register(t, "erin")
		frank := hsB.Register(t, "frank")

		pub := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{
			"preset": "public_chat", "name": "Public", "room_alias_name": "pub",
		}).MustOK(t).String("room_id")
		private := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{
			"preset": "private_chat",
		}).MustOK(t).String("room_id")
		alice.Do(t, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(pub)+"/ban", map[string]string{"user_id": "@dave:hsb.test"}).MustOK(t)

		t.Run("join a public room by ID", func(t *testing.T) {
			r := bob.Do(t, "POST", "/_matrix/client/v3/join/"+url.PathEscape(pub)+"?server_name=hsa.test", map[string]any{})
			r.MustOK(t)
			if r.String("room_id") != pub {
				t.Fatalf("joined %s, want %s", r.String("room_id"), pub)
			}
			poll.Until(t, 10*time.Second, func() error {
				if !joinedMembers(t, alice, pub)["@bob:hsb.test"] {
					return fmt.Errorf("alice does not see bob joined")
				}
				return nil
			})
			// hsb took the room in: its state is there, and bob's /sync
			// lists the room with it.
			if m := joinedMembers(t, bob, pub); !m["@alice:hsa.test"] || !m["@bob:hsb.test"] {
				t.Fatalf("bob sees members %v", m)
			}
			r = bob.Do(t, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(pub)+"/state/m.room.name/", nil).MustOK(t)
			if r.String("name") != "Public" {
				t.Fatalf("room name on hsb: %s", r.Raw)
			}
			poll.Until(t, 10*time.Second, func() error {
				joined := fullSyncRooms(t, bob)["join"]
				raw, ok := joined[pub]
				if !ok {
					return fmt.Errorf("bob's sync does not list the room")
				}
				if !strings.Contains(string(raw), `"m.room.create"`) || !strings.Contains(string(raw), `"m.room.name"`) {
					return fmt.Errorf("bob's sync lacks the room's state: %s", raw)
				}
				return nil
			})
		})

		t.Run("invite, accept and reject", func(t *testing.T) {
			// hsb is not in the private room: the invites reach it only
			// through /invite, and the answers go back through
			// make_join/send_join and make_leave/send_leave.
			for _, u := range []string{"@erin:hsb.test", "@frank:hsb.test"} {
				alice.Do(t, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(private)+"/invite", map[string]string{"user_id": u}).MustOK(t)
			}
			for _, c := range []*testserver.Client{erin, frank} {
				poll.Until(t, 10*time.Second, func() error {
					raw, ok := fullSyncRooms(t, c)["invite"][private]
					if !ok || !strings.Contains(string(raw), `"m.room.join_rules"`) {
						return fmt.Errorf("no invite with its room state in /sync: %s", raw)
					}
					return nil
				})
			}
			// Frank rejects first: once erin is in, hsb is in the room, and
			// its users' leaves travel as any event of the room (the
			// outbound queue), not through make_leave.
			frank.Do(t, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(private)+"/leave", map[string]any{}).MustOK(t)
			erin.Do(t, "POST", "/_matrix/client/v3/join/"+url.PathEscape(private), map[string]any{}).MustOK(t)
			poll.Until(t, 10*time.Second, func() error {
				if !joinedMembers(t, alice, private)["@erin:hsb.test"] {
					return fmt.Errorf("alice does not see erin joined")
				}
				r := alice.Do(t, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(private)+"/state/m.room.member/@frank:hsb.test", nil)
				if r.String("membership") != "leave" {
					return fmt.Errorf("frank's membership on hsa: %s", r.Raw)
				}
				return nil
			})
			poll.Until(t, 10*time.Second, func() error {
				rooms := fullSyncRooms(t, frank)
				if _, ok := rooms["invite"][private]; ok {
					return fmt.Errorf("frank still sees the invite")
				}
				if _, ok := fullSyncRooms(t, erin)["join"][private]; !ok {
					return fmt.Errorf("erin's sync does not list the room as joined")
				}
				return nil
			})
		})

		refusals := []struct {
			name     string
			who      *testserver.Client
			roomID   string
			wantCode int
			wantErr  string
		}{
			{"a banned user", dave, pub, 403, "M_FORBIDDEN"},
			{"an invite-only room", bob, private, 403, "M_FORBIDDEN"},
			{"an unknown room", bob, "!nosuchroom:hsa.test", 404, "M_NOT_FOUND"},
		}
		for _, tt := range refusals {
			t.Run("refuses "+tt.name, func(t *testing.T) {
				r := tt.who.Do(t, "POST", "/_matrix/client/v3/join/"+url.PathEscape(tt.roomID)+"?server_name=hsa.test", map[string]any{})
				if r.Status != tt.wantCode || r.String("errcode") != tt.wantErr {
					t.Fatalf("got %d %s, want %d %s", r.Status, r.Raw, tt.wantCode, tt.wantErr)
				}
			})
		}
	})
}
