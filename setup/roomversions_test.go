package setup_test

import (
	"fmt"
	"net/url"
	"strings"
	"testing"

	"myelin/internal/sqldb/sqldbtest"
	"myelin/internal/testserver"
)

// TestRoomVersions creates a room of every supported version and uses it:
// a second user is invited and joins, both send, the creator changes the
// topic and redacts a message, and /sync and /messages show it all.
func TestRoomVersions(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		srv := testserver.Start(t, testserver.Config(t.TempDir(), dbURL))
		alice := srv.Register(t, "alice")
		bob := srv.Register(t, "bob")
		bobID := "@bob:localhost"
		for v := 1; v <= 12; v++ {
			t.Run(fmt.Sprint("v", v), func(t *testing.T) {
				r := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{
					"room_version": fmt.Sprint(v), "name": fmt.Sprintf("room v%d", v), "invite": []string{bobID},
				}).MustOK(t)
				room := r.String("room_id")
				if v == 12 {
					if strings.Contains(room, ":") {
						t.Fatalf("v12 room ID %s has a server part", room)
					}
				} else if !strings.HasSuffix(room, ":localhost") {
					t.Fatalf("room ID %s", room)
				}
				bob.Do(t, "POST", "/_matrix/client/v3/join/"+room, map[string]any{}).MustOK(t)
				send := func(c *testserver.Client, txn, body string) string {
					return c.Do(t, "PUT", "/_matrix/client/v3/rooms/"+room+"/send/m.room.message/"+txn,
						map[string]any{"msgtype": "m.text", "body": body}).MustOK(t).String("event_id")
				}
				send(alice, "a1", "from alice")
				secret := send(bob, "b1", "from bob")
				alice.Do(t, "PUT", "/_matrix/client/v3/rooms/"+room+"/state/m.room.topic/", map[string]any{"topic": "new topic"}).MustOK(t)
				alice.Do(t, "PUT", "/_matrix/client/v3/rooms/"+room+"/redact/"+url.PathEscape(secret)+"/r1", map[string]any{"reason": "test"}).MustOK(t)

				topic := bob.Do(t, "GET", "/_matrix/client/v3/rooms/"+room+"/state/m.room.topic", nil).MustOK(t)
				if topic.String("topic") != "new topic" {
					t.Fatalf("topic: %s", topic.Raw)
				}
				ev := bob.Do(t, "GET", "/_matrix/client/v3/rooms/"+room+"/event/"+url.PathEscape(secret), nil).MustOK(t)
				if c, _ := ev.Body["content"].(map[string]any); len(c) != 0 {
					t.Fatalf("redacted event still has content: %s", ev.Raw)
				}
				msgs := bob.Do(t, "GET", "/_matrix/client/v3/rooms/"+room+"/messages?dir=b&limit=50", nil).MustOK(t)
				if !strings.Contains(string(msgs.Raw), "from alice") || strings.Contains(string(msgs.Raw), "from bob") {
					t.Fatalf("messages: %s", msgs.Raw)
				}
				sync := bob.Do(t, "GET", "/_matrix/client/v3/sync", nil).MustOK(t)
				if !strings.Contains(string(sync.Raw), room) || !strings.Contains(string(sync.Raw), "new topic") {
					t.Fatalf("sync lacks the room: %.500s", sync.Raw)
				}
			})
		}
	})
}
