package setup_test

import (
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"testing"
	"time"

	"myelin/internal/poll"
	"myelin/internal/sqldb/sqldbtest"
	"myelin/internal/testserver"
)

// say sends a text message to roomID as c and returns its event ID.
func say(t *testing.T, c *testserver.Client, roomID, body string) string {
	t.Helper()
	txn := strconv.FormatInt(time.Now().UnixNano(), 36)
	return c.Do(t, "PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/send/m.room.message/"+txn,
		map[string]string{"msgtype": "m.text", "body": body}).MustOK(t).String("event_id")
}

// timeline is the bodies of the messages of roomID that c sees, oldest
// first (at most 200).
func timeline(t *testing.T, c *testserver.Client, roomID string) []string {
	t.Helper()
	r := c.Do(t, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/messages?dir=b&limit=200", nil).MustOK(t)
	var body struct {
		Chunk []struct {
			Type    string `json:"type"`
			Content struct {
				Body string `json:"body"`
			} `json:"content"`
		} `json:"chunk"`
	}
	if err := json.Unmarshal(r.Raw, &body); err != nil {
		t.Fatal(err)
	}
	var out []string
	for i := len(body.Chunk) - 1; i >= 0; i-- {
		if e := body.Chunk[i]; e.Type == "m.room.message" {
			out = append(out, e.Content.Body)
		}
	}
	return out
}

// syncBodies is the bodies of the messages of roomID in one full /sync of c.
func syncBodies(t *testing.T, c *testserver.Client, roomID string) []string {
	t.Helper()
	raw, ok := fullSyncRooms(t, c)["join"][roomID]
	if !ok {
		return nil
	}
	var room struct {
		Timeline struct {
			Events []struct {
				Type    string `json:"type"`
				Content struct {
					Body string `json:"body"`
				} `json:"content"`
			} `json:"events"`
		} `json:"timeline"`
	}
	if err := json.Unmarshal(raw, &room); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range room.Timeline.Events {
		if e.Type == "m.room.message" {
			out = append(out, e.Content.Body)
		}
	}
	return out
}

// waitTimeline waits until every client sees want as roomID's messages.
func waitTimeline(t *testing.T, roomID string, want []string, cs ...*testserver.Client) {
	t.Helper()
	for i, c := range cs {
		poll.Until(t, 20*time.Second, func() error {
			if got := timeline(t, c, roomID); !slices.Equal(got, want) {
				return fmt.Errorf("client %d sees %q, want %q", i, got, want)
			}
			return nil
		})
	}
}

// TestFederationSend: once a user of another server joined a room, its
// events reach the resident server through /send and the resident's
// reach it: messages both ways arrive in order in each side's /sync and
// /messages; a leave, a kick and a ban travel across too.
func TestFederationSend(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		fed := newFedNet(t)
		hsA := fed.start(t, "hsa.test", "127.0.0.10", dbURL)
		hsB := fed.start(t, "hsb.test", "127.0.0.11", sqldbtest.URL(t, dialectOf(dbURL)))
		alice := hsA.Register(t, "alice")
		bob := hsB.Register(t, "bob")
		carol := hsB.Register(t, "carol")
		room := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{"preset": "public_chat"}).MustOK(t).String("room_id")
		for _, c := range []*testserver.Client{bob, carol} {
			c.Do(t, "POST", "/_matrix/client/v3/join/"+url.PathEscape(room)+"?server_name=hsa.test", map[string]any{}).MustOK(t)
		}
		poll.Until(t, 20*time.Second, func() error {
			if m := joinedMembers(t, bob, room); !m["@carol:hsb.test"] {
				return fmt.Errorf("bob sees members %v", m)
			}
			return nil
		})

		var want []string
		t.Run("messages both ways, in order", func(t *testing.T) {
			for i := range 5 {
				want = append(want, "bob "+strconv.Itoa(i))
				say(t, bob, room, want[len(want)-1])
			}
			// Sends on both sides at once would fork the room, each
			// server ordering the fork its own way: alice answers once
			// she has seen bob's messages.
			waitTimeline(t, room, want, alice)
			for i := range 5 {
				want = append(want, "alice "+strconv.Itoa(i))
				say(t, alice, room, want[len(want)-1])
			}
			waitTimeline(t, room, want, alice, bob, carol)
			for _, c := range []*testserver.Client{alice, bob} {
				if got := syncBodies(t, c, room); !slices.Equal(got, want) {
					t.Fatalf("/sync shows %q, want %q", got, want)
				}
			}
		})

		t.Run("leave, kick and ban across servers", func(t *testing.T) {
			carol.Do(t, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/leave", map[string]any{}).MustOK(t)
			poll.Until(t, 20*time.Second, func() error {
				if joinedMembers(t, alice, room)["@carol:hsb.test"] {
					return fmt.Errorf("alice still sees carol joined")
				}
				return nil
			})
			alice.Do(t, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/kick", map[string]string{"user_id": "@bob:hsb.test"}).MustOK(t)
			poll.Until(t, 20*time.Second, func() error {
				r := bob.Do(t, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/state/m.room.member/@bob:hsb.test", nil)
				if r.Status != 200 || r.String("membership") != "leave" {
					return fmt.Errorf("hsb does not see bob kicked: %d %s", r.Status, r.Raw)
				}
				return nil
			})
			bob.Do(t, "POST", "/_matrix/client/v3/join/"+url.PathEscape(room)+"?server_name=hsa.test", map[string]any{}).MustOK(t)
			say(t, bob, room, "bob is back")
			want = append(want, "bob is back")
			waitTimeline(t, room, want, alice)
			alice.Do(t, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/ban", map[string]string{"user_id": "@bob:hsb.test"}).MustOK(t)
			poll.Until(t, 20*time.Second, func() error {
				r := bob.Do(t, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/state/m.room.member/@bob:hsb.test", nil)
				if r.Status != 200 || r.String("membership") != "ban" {
					return fmt.Errorf("hsb does not see bob banned: %d %s", r.Status, r.Raw)
				}
				return nil
			})
			r := bob.Do(t, "POST", "/_matrix/client/v3/join/"+url.PathEscape(room)+"?server_name=hsa.test", map[string]any{})
			if r.Status != 403 {
				t.Fatalf("a banned user joined again: %d %s", r.Status, r.Raw)
			}
		})
	})
}
