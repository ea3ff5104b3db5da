package setup_test

import (
	"encoding/json"
	"net/url"
	"testing"
	"time"

	"myelin/internal/poll"
	"myelin/internal/sqldb/sqldbtest"
	"myelin/internal/testserver"
)

// TestEventStream drives the deprecated GET /events: a token from a first
// call, then messages, typing, invites, and a long-poll woken by a send.
func TestEventStream(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		srv := testserver.Start(t, testserver.Config(t.TempDir(), dbURL))
		alice := srv.Register(t, "alice")
		bob := srv.Register(t, "bob")
		room := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{"preset": "public_chat"}).MustOK(t).String("room_id")
		bob.Do(t, "POST", "/_matrix/client/v3/join/"+room, map[string]any{}).MustOK(t)

		first := bob.Do(t, "GET", "/_matrix/client/r0/events?timeout=0", nil).MustOK(t)
		if chunk, ok := first.Body["chunk"].([]any); !ok || len(chunk) != 0 || first.String("start") == "" || first.String("end") == "" {
			t.Fatalf("first /events: %s", first.Raw)
		}
		token := first.String("end")

		alice.Do(t, "PUT", "/_matrix/client/v3/rooms/"+room+"/send/m.room.message/t1", map[string]any{"msgtype": "m.text", "body": "hi"}).MustOK(t)
		alice.Do(t, "PUT", "/_matrix/client/v3/rooms/"+room+"/typing/@alice:localhost", map[string]any{"typing": true, "timeout": 30000}).MustOK(t)
		dm := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{"invite": []string{"@bob:localhost"}}).MustOK(t).String("room_id")

		// Everything arrives, possibly over several calls.
		seen := map[string]map[string]any{}
		deadline := time.Now().Add(10 * time.Second)
		for len(seen) < 3 && time.Now().Before(deadline) {
			r := bob.Do(t, "GET", "/_matrix/client/r0/events?timeout=2000&from="+url.QueryEscape(token), nil).MustOK(t)
			if r.String("start") != token {
				t.Fatalf("start %q, want the from token %q", r.String("start"), token)
			}
			token = r.String("end")
			for _, e := range r.Body["chunk"].([]any) {
				ev := e.(map[string]any)
				switch {
				case ev["type"] == "m.room.message":
					seen["message"] = ev
				case ev["type"] == "m.typing":
					seen["typing"] = ev
				case ev["type"] == "m.room.member" && ev["state_key"] == "@bob:localhost" && ev["room_id"] == dm:
					seen["invite"] = ev
				}
			}
		}
		for _, c := range []struct{ kind, room string }{{"message", room}, {"typing", room}, {"invite", dm}} {
			ev, ok := seen[c.kind]
			if !ok {
				t.Fatalf("no %s event in the stream; saw %v", c.kind, seen)
			}
			if ev["room_id"] != c.room {
				t.Errorf("%s event room_id %v, want %s", c.kind, ev["room_id"], c.room)
			}
		}
		if c, _ := seen["invite"]["content"].(map[string]any); c["membership"] != "invite" {
			t.Errorf("invite event: %v", seen["invite"])
		}

		// A long-poll waits for the next event.
		before := srv.SyncWaiters()
		done := make(chan *testserver.Response, 1)
		go func() {
			done <- bob.Do(t, "GET", "/_matrix/client/r0/events?timeout=10000&room_id="+url.QueryEscape(room)+"&from="+url.QueryEscape(token), nil)
		}()
		poll.True(t, 10*time.Second, "the /events long-poll to wait", func() bool { return srv.SyncWaiters() > before })
		alice.Do(t, "PUT", "/_matrix/client/v3/rooms/"+room+"/send/m.room.message/t2", map[string]any{"msgtype": "m.text", "body": "again"}).MustOK(t)
		r := (<-done).MustOK(t)
		var got []struct {
			Type    string          `json:"type"`
			RoomID  string          `json:"room_id"`
			Content json.RawMessage `json:"content"`
		}
		raw, _ := json.Marshal(r.Body["chunk"])
		_ = json.Unmarshal(raw, &got)
		found := false
		for _, e := range got {
			found = found || (e.Type == "m.room.message" && e.RoomID == room && string(e.Content) != "" && json.Valid(e.Content))
		}
		if !found {
			t.Fatalf("long-poll did not return the message: %s", r.Raw)
		}

		for _, bad := range []string{"timeout=-1", "timeout=x", "from=nonsense"} {
			if r := bob.Do(t, "GET", "/_matrix/client/v3/events?"+bad, nil); r.Status != 400 {
				t.Errorf("GET /events?%s: %d %s", bad, r.Status, r.Raw)
			}
		}
		if r := (&testserver.Client{Base: srv.URL}).Do(t, "GET", "/_matrix/client/v3/events", nil); r.Status != 401 {
			t.Errorf("GET /events without a token: %d", r.Status)
		}
	})
}
