package setup_test

import (
	"fmt"
	"net/url"
	"testing"
	"time"

	"myelin/internal/poll"
	"myelin/internal/sqldb/sqldbtest"
	"myelin/internal/testserver"
)

// TestPeek checks peeking (MSC2753): a device follows a world-readable
// room through /sync's rooms.peek without joining it, that device alone,
// across a restart, until it unpeeks.
func TestPeek(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		cfg := testserver.Config(t.TempDir(), dbURL)
		srv := testserver.Start(t, cfg)
		alice, bob := srv.Register(t, "alice"), srv.Register(t, "bob")
		bob2 := srv.Login(t, "bob")
		open := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{
			"preset": "public_chat", "room_alias_name": "peekable",
			"initial_state": []any{map[string]any{"type": "m.room.history_visibility", "state_key": "",
				"content": map[string]any{"history_visibility": "world_readable"}}},
		}).MustOK(t).String("room_id")
		shared := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{"preset": "public_chat"}).MustOK(t).String("room_id")

		for _, tc := range []struct {
			name, target string
			status       int
			errcode      string
		}{
			{"shared history", shared, 403, "M_FORBIDDEN"},
			{"unknown room", "!nowhere:localhost", 404, "M_NOT_FOUND"},
			{"unknown alias", "#nowhere:localhost", 404, "M_NOT_FOUND"},
			{"not an ID", "nowhere", 400, "M_INVALID_PARAM"},
			{"by alias", "#peekable:localhost", 200, ""},
		} {
			t.Run(tc.name, func(t *testing.T) {
				r := bob.Do(t, "POST", "/_matrix/client/v3/peek/"+url.PathEscape(tc.target), map[string]any{})
				if r.Status != tc.status || (tc.errcode != "" && r.String("errcode") != tc.errcode) {
					t.Fatalf("peek %s: %d %s", tc.target, r.Status, r.Raw)
				}
				if tc.status == 200 && r.String("room_id") != open {
					t.Fatalf("peek answered room %s, want %s", r.String("room_id"), open)
				}
			})
		}

		n := 0
		say := func(body string) {
			n++
			alice.Do(t, "PUT", fmt.Sprintf("/_matrix/client/v3/rooms/%s/send/m.room.message/peek%d", url.PathEscape(open), n),
				map[string]any{"msgtype": "m.text", "body": body}).MustOK(t)
		}
		// peekSync long-polls c from since until the peeked room shows
		// body, and returns the next token.
		peekSync := func(c *testserver.Client, since, body string) string {
			t.Helper()
			var next string
			poll.Until(t, 10*time.Second, func() error {
				q := "/_matrix/client/v3/sync?timeout=1000"
				if since != "" {
					q += "&since=" + url.QueryEscape(since)
				}
				r := c.Do(t, "GET", q, nil).MustOK(t)
				next = r.String("next_batch")
				tl := timelineOf(t, &testserver.Response{Body: map[string]any{"rooms": map[string]any{"join": syncRooms(r, "peek")}}}, open)
				if len(tl.bodies) == 0 || tl.bodies[len(tl.bodies)-1] != body {
					since = next
					return fmt.Errorf("peeked room's timeline %v", tl.bodies)
				}
				if len(syncRooms(r, "join")) != 0 {
					t.Fatalf("a peeked room in rooms.join: %s", r.Raw)
				}
				return nil
			})
			return next
		}
		say("first")
		since := peekSync(bob, "", "first")
		since2 := bob2.Do(t, "GET", "/_matrix/client/v3/sync?timeout=0", nil).MustOK(t).String("next_batch")
		say("second")
		since = peekSync(bob, since, "second")
		if r := bob2.Do(t, "GET", "/_matrix/client/v3/sync?timeout=0&since="+url.QueryEscape(since2), nil).MustOK(t); len(syncRooms(r, "peek")) != 0 {
			t.Fatalf("another device of the peeker sees the peek: %s", r.Raw)
		}

		// A restart keeps the peek.
		srv.Stop()
		srv = testserver.Start(t, cfg)
		alice.Base, bob.Base = srv.URL, srv.URL
		say("after restart")
		since = peekSync(bob, since, "after restart")

		// Unpeeking ends it.
		bob.Do(t, "POST", "/_matrix/client/v3/unpeek/"+url.PathEscape(open), map[string]any{}).MustOK(t)
		say("unseen")
		r := bob.Do(t, "GET", "/_matrix/client/v3/sync?timeout=0&since="+url.QueryEscape(since), nil).MustOK(t)
		if len(syncRooms(r, "peek")) != 0 {
			t.Fatalf("peek after unpeek: %s", r.Raw)
		}
	})
}
