package setup_test

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"testing"
	"time"

	"myelin/internal/poll"
	"myelin/internal/sqldb/sqldbtest"
	"myelin/internal/testserver"
)

// TestIgnoredUsers checks m.ignored_user_list (spec: "Ignoring Users"):
// an ignored user's events, its state events aside, leave /sync,
// /messages and the notification counts, its invites are dropped, and
// un-ignoring shows its events again.
func TestIgnoredUsers(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		srv := testserver.Start(t, testserver.Config(t.TempDir(), dbURL))
		alice, bob, carol := srv.Register(t, "alice"), srv.Register(t, "bob"), srv.Register(t, "carol")
		room := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{"preset": "public_chat"}).MustOK(t).String("room_id")
		for _, c := range []*testserver.Client{bob, carol} {
			c.Do(t, "POST", "/_matrix/client/v3/join/"+url.PathEscape(room), map[string]any{}).MustOK(t)
		}
		n := 0
		send := func(c *testserver.Client, body string) string {
			n++
			return c.Do(t, "PUT", fmt.Sprintf("/_matrix/client/v3/rooms/%s/send/m.room.message/ig%d", url.PathEscape(room), n),
				map[string]any{"msgtype": "m.text", "body": body}).MustOK(t).String("event_id")
		}
		send(bob, "bob before")
		send(carol, "carol before")
		if got := syncBodies(t, alice, room); !slices.Contains(got, "bob before") {
			t.Fatalf("before ignoring, bob's message is missing: %v", got)
		}
		since := alice.Do(t, "GET", "/_matrix/client/v3/sync?timeout=0", nil).MustOK(t).String("next_batch")

		ignore := func(users ...string) {
			list := map[string]any{}
			for _, u := range users {
				list[u] = map[string]any{}
			}
			alice.Do(t, "PUT", "/_matrix/client/v3/user/@alice:localhost/account_data/m.ignored_user_list",
				map[string]any{"ignored_users": list}).MustOK(t)
		}
		// Unread counts: bob's message after the ignore notifies nobody who
		// ignores him; carol's does. The two messages before are counted
		// first: the push rules run behind the events, with the ignore
		// list as it is when they do.
		ctx := context.Background()
		counted := func(want int64) {
			t.Helper()
			poll.Until(t, 10*time.Second, func() error {
				c, err := srv.Users().NotificationCounts(ctx, "@alice:localhost", room)
				if err != nil || c.Notifications != want {
					return fmt.Errorf("counts %+v, %v; want %d notifications", c, err, want)
				}
				return nil
			})
		}
		counted(2)
		ignore("@bob:localhost")
		send(bob, "bob ignored")
		send(bob, "bob ignored too")
		bob.Do(t, "PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/state/m.room.member/@bob:localhost",
			map[string]any{"membership": "join", "displayname": "Bobby"}).MustOK(t)
		send(carol, "carol after")
		counted(3)

		// Initial and incremental sync: no message of bob's, his state
		// event still there.
		for name, q := range map[string]string{"initial": "", "incremental": "&since=" + url.QueryEscape(since)} {
			r := alice.Do(t, "GET", "/_matrix/client/v3/sync?timeout=0"+q, nil).MustOK(t)
			tl := timelineOf(t, r, room)
			if slices.Contains(tl.bodies, "bob before") || slices.Contains(tl.bodies, "bob ignored") || !slices.Contains(tl.bodies, "carol after") {
				t.Fatalf("%s sync timeline: %v", name, tl.bodies)
			}
			if !slices.Contains(tl.types, "m.room.member") {
				t.Fatalf("%s sync lost bob's state event: %v", name, tl.types)
			}
		}
		msgs := alice.Do(t, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/messages?dir=b&limit=50", nil).MustOK(t)
		for _, e := range msgs.Body["chunk"].([]any) {
			ev := e.(map[string]any)
			if ev["sender"] == "@bob:localhost" && ev["state_key"] == nil {
				t.Fatalf("/messages shows an ignored user's event: %v", ev)
			}
		}

		// An invite from bob is dropped; one from carol is not.
		for _, c := range []*testserver.Client{bob, carol} {
			other := c.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{}).MustOK(t).String("room_id")
			c.Do(t, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(other)+"/invite", map[string]any{"user_id": "@alice:localhost"}).MustOK(t)
			invites := syncRooms(alice.Do(t, "GET", "/_matrix/client/v3/sync?timeout=0", nil).MustOK(t), "invite")
			if _, ok := invites[other]; ok != (c == carol) {
				t.Fatalf("invite from %s shown: %v", c.Token, ok)
			}
		}

		// Un-ignoring shows bob's events again.
		ignore()
		if got := syncBodies(t, alice, room); !slices.Contains(got, "bob ignored too") {
			t.Fatalf("after un-ignoring, bob's message is missing: %v", got)
		}
	})
}

// syncTimeline is the types and message bodies of a room's timeline.
type syncTimeline struct {
	types, bodies []string
}

func timelineOf(t *testing.T, r *testserver.Response, roomID string) syncTimeline {
	t.Helper()
	room, _ := syncRooms(r, "join")[roomID].(map[string]any)
	tl, _ := room["timeline"].(map[string]any)
	evs, _ := tl["events"].([]any)
	var out syncTimeline
	for _, e := range evs {
		ev := e.(map[string]any)
		out.types = append(out.types, fmt.Sprint(ev["type"]))
		if c, ok := ev["content"].(map[string]any); ok && c["body"] != nil {
			out.bodies = append(out.bodies, fmt.Sprint(c["body"]))
		}
	}
	return out
}
