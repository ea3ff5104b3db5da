package setup_test

import (
	"net/url"
	"slices"
	"testing"

	"myelin/internal/sqldb/sqldbtest"
	"myelin/internal/testserver"
)

// TestRoomGaps checks smaller parts of rooms: room version 12's default
// power levels and its creators kept out of them, createRoom's topic with
// its rich representation (and over initial_state's), and /members?at=.
func TestRoomGaps(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		srv := testserver.Start(t, testserver.Config(t.TempDir(), dbURL))
		alice, bob, carol := srv.Register(t, "alice"), srv.Register(t, "bob"), srv.Register(t, "carol")
		state := func(room, evType string) map[string]any {
			t.Helper()
			return alice.Do(t, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/state/"+evType+"/", nil).MustOK(t).Body
		}

		t.Run("power levels", func(t *testing.T) {
			for _, tc := range []struct {
				version   string
				tombstone float64
			}{{"10", 100}, {"11", 100}, {"12", 150}} {
				room := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{"room_version": tc.version}).MustOK(t).String("room_id")
				events := state(room, "m.room.power_levels")["events"].(map[string]any)
				if events["m.room.tombstone"] != tc.tombstone {
					t.Fatalf("v%s: tombstone level %v, want %v", tc.version, events["m.room.tombstone"], tc.tombstone)
				}
			}
			for _, tc := range []struct {
				name   string
				body   map[string]any
				status int
			}{
				{"creator listed", map[string]any{"room_version": "12", "power_level_content_override": map[string]any{
					"users": map[string]any{"@alice:localhost": 100}}}, 400},
				{"additional creator listed", map[string]any{"room_version": "12", "creation_content": map[string]any{
					"additional_creators": []string{"@bob:localhost"}},
					"power_level_content_override": map[string]any{"users": map[string]any{"@bob:localhost": 50}}}, 400},
				{"another user listed", map[string]any{"room_version": "12", "power_level_content_override": map[string]any{
					"users": map[string]any{"@bob:localhost": 50}}}, 200},
				{"creator listed before v12", map[string]any{"room_version": "11", "power_level_content_override": map[string]any{
					"users": map[string]any{"@alice:localhost": 100}}}, 200},
			} {
				if r := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", tc.body); r.Status != tc.status {
					t.Fatalf("%s: %d %s", tc.name, r.Status, r.Raw)
				}
			}
		})

		t.Run("topic", func(t *testing.T) {
			room := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{
				"topic": "the new topic",
				"initial_state": []any{map[string]any{"type": "m.room.topic", "state_key": "",
					"content": map[string]any{"topic": "the initial_state topic"}}},
			}).MustOK(t).String("room_id")
			topic := state(room, "m.room.topic")
			rich, _ := topic["m.topic"].(map[string]any)
			texts, _ := rich["m.text"].([]any)
			if topic["topic"] != "the new topic" || len(texts) != 1 ||
				texts[0].(map[string]any)["body"] != "the new topic" || texts[0].(map[string]any)["mimetype"] != "text/plain" {
				t.Fatalf("topic %v", topic)
			}
		})

		t.Run("forgotten room's leave", func(t *testing.T) {
			room := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{"preset": "public_chat"}).MustOK(t).String("room_id")
			carol.Do(t, "POST", "/_matrix/client/v3/join/"+url.PathEscape(room), map[string]any{}).MustOK(t)
			since := carol.Do(t, "GET", "/_matrix/client/v3/sync?timeout=0", nil).MustOK(t).String("next_batch")
			carol.Do(t, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/leave", map[string]any{}).MustOK(t)
			carol.Do(t, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/forget", map[string]any{}).MustOK(t)
			r := carol.Do(t, "GET", "/_matrix/client/v3/sync?timeout=0&since="+url.QueryEscape(since), nil).MustOK(t)
			if _, ok := syncRooms(r, "leave")[room]; !ok {
				t.Fatalf("the leave of a room forgotten since the token is missing: %s", r.Raw)
			}
			next := r.String("next_batch")
			for name, q := range map[string]string{
				"next incremental":       "&since=" + url.QueryEscape(next),
				"initial with leaves":    "&filter=" + url.QueryEscape(`{"room":{"include_leave":true}}`),
				"full state with leaves": "&full_state=true&since=" + url.QueryEscape(since) + "&filter=" + url.QueryEscape(`{"room":{"include_leave":true}}`),
			} {
				r := carol.Do(t, "GET", "/_matrix/client/v3/sync?timeout=0"+q, nil).MustOK(t)
				if _, ok := syncRooms(r, "leave")[room]; ok {
					t.Fatalf("%s: a forgotten room shown: %s", name, r.Raw)
				}
			}
		})

		t.Run("redaction of an unknown event", func(t *testing.T) {
			room := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{"preset": "public_chat"}).MustOK(t).String("room_id")
			since := alice.Do(t, "GET", "/_matrix/client/v3/sync?timeout=0", nil).MustOK(t).String("next_batch")
			red := alice.Do(t, "PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/redact/"+url.PathEscape("$unknown:localhost")+"/red1",
				map[string]any{"reason": "gone"}).MustOK(t).String("event_id")
			r := alice.Do(t, "GET", "/_matrix/client/v3/sync?timeout=0&since="+url.QueryEscape(since), nil).MustOK(t)
			tl := timelineOf(t, r, room)
			if !slices.Contains(tl.types, "m.room.redaction") {
				t.Fatalf("redaction not in the timeline: %s", r.Raw)
			}
			after := r.String("next_batch")
			alice.Do(t, "GET", "/_matrix/client/v3/sync?timeout=0&since="+url.QueryEscape(after), nil).MustOK(t)
			for _, q := range []string{"?dir=b&from=" + url.QueryEscape(after), "?dir=f&from=" + url.QueryEscape(since)} {
				alice.Do(t, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/messages"+q, nil).MustOK(t)
			}
			alice.Do(t, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/context/"+url.PathEscape(red), nil).MustOK(t)
		})

		t.Run("members at", func(t *testing.T) {
			room := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{"preset": "public_chat"}).MustOK(t).String("room_id")
			bob.Do(t, "POST", "/_matrix/client/v3/join/"+url.PathEscape(room), map[string]any{}).MustOK(t)
			then := alice.Do(t, "GET", "/_matrix/client/v3/sync?timeout=0", nil).MustOK(t).String("next_batch")
			carol.Do(t, "POST", "/_matrix/client/v3/join/"+url.PathEscape(room), map[string]any{}).MustOK(t)
			bob.Do(t, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/leave", map[string]any{}).MustOK(t)
			members := func(c *testserver.Client, q string) []string {
				t.Helper()
				r := c.Do(t, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/members"+q, nil).MustOK(t)
				var out []string
				for _, e := range r.Body["chunk"].([]any) {
					ev := e.(map[string]any)
					out = append(out, ev["state_key"].(string)+"="+ev["content"].(map[string]any)["membership"].(string))
				}
				slices.Sort(out)
				return out
			}
			for _, tc := range []struct {
				name string
				c    *testserver.Client
				q    string
				want []string
			}{
				{"now", alice, "", []string{"@alice:localhost=join", "@bob:localhost=leave", "@carol:localhost=join"}},
				{"at a sync token", alice, "?at=" + url.QueryEscape(then), []string{"@alice:localhost=join", "@bob:localhost=join"}},
				{"at, joined only", alice, "?membership=join&at=" + url.QueryEscape(then), []string{"@alice:localhost=join", "@bob:localhost=join"}},
				// bob left: never later than his leave.
				{"a leaver at now", bob, "?at=" + url.QueryEscape(alice.Do(t, "GET", "/_matrix/client/v3/sync?timeout=0", nil).MustOK(t).String("next_batch")),
					[]string{"@alice:localhost=join", "@bob:localhost=leave", "@carol:localhost=join"}},
			} {
				if got := members(tc.c, tc.q); !slices.Equal(got, tc.want) {
					t.Fatalf("%s: %v, want %v", tc.name, got, tc.want)
				}
			}
			if r := alice.Do(t, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/members?at=nonsense", nil); r.Status != 400 {
				t.Fatalf("bad at: %d %s", r.Status, r.Raw)
			}
		})
	})
}
