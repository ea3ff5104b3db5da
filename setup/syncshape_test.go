package setup_test

import (
	"fmt"
	"net/url"
	"slices"
	"testing"

	"myelin/internal/sqldb/sqldbtest"
	"myelin/internal/testserver"
)

// TestSyncShapes checks parts of /sync and /context a filter or the room
// shapes: the room summary's heroes only for unnamed rooms, the
// federation event format, and lazy-loaded members in /context.
func TestSyncShapes(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		srv := testserver.Start(t, testserver.Config(t.TempDir(), dbURL))
		alice, bob := srv.Register(t, "alice"), srv.Register(t, "bob")
		lazy := `{"room":{"state":{"lazy_load_members":true}}}`

		t.Run("summary heroes", func(t *testing.T) {
			for _, tc := range []struct {
				name       string
				create     map[string]any
				wantHeroes bool
			}{
				{"unnamed", map[string]any{"preset": "public_chat"}, true},
				{"named", map[string]any{"preset": "public_chat", "name": "Named"}, false},
				{"alias", map[string]any{"preset": "public_chat", "room_alias_name": "heroes"}, false},
				{"empty name", map[string]any{"preset": "public_chat", "name": ""}, true},
			} {
				t.Run(tc.name, func(t *testing.T) {
					room := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", tc.create).MustOK(t).String("room_id")
					bob.Do(t, "POST", "/_matrix/client/v3/join/"+url.PathEscape(room), map[string]any{}).MustOK(t)
					r := alice.Do(t, "GET", "/_matrix/client/v3/sync?timeout=0&filter="+url.QueryEscape(lazy), nil).MustOK(t)
					jr, _ := syncRooms(r, "join")[room].(map[string]any)
					sum, _ := jr["summary"].(map[string]any)
					_, hasHeroes := sum["m.heroes"]
					if hasHeroes != tc.wantHeroes || sum["m.joined_member_count"] != float64(2) || sum["m.invited_member_count"] != float64(0) {
						t.Fatalf("summary %v, want heroes %v", sum, tc.wantHeroes)
					}
				})
			}
		})

		room := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{"preset": "public_chat"}).MustOK(t).String("room_id")
		bob.Do(t, "POST", "/_matrix/client/v3/join/"+url.PathEscape(room), map[string]any{}).MustOK(t)
		var last string
		for i := range 3 {
			last = alice.Do(t, "PUT", fmt.Sprintf("/_matrix/client/v3/rooms/%s/send/m.room.message/shape%d", url.PathEscape(room), i),
				map[string]any{"msgtype": "m.text", "body": "hello"}).MustOK(t).String("event_id")
		}

		t.Run("event format", func(t *testing.T) {
			for _, tc := range []struct {
				format string
				want   map[string]bool // key -> present
			}{
				{"client", map[string]bool{"event_id": true, "room_id": false, "auth_events": false, "hashes": false, "signatures": false, "depth": false}},
				{"federation", map[string]bool{"event_id": true, "room_id": true, "auth_events": true, "prev_events": true, "hashes": true, "signatures": true, "depth": true}},
			} {
				t.Run(tc.format, func(t *testing.T) {
					f := fmt.Sprintf(`{"event_format":%q,"room":{"timeline":{"limit":1}}}`, tc.format)
					r := alice.Do(t, "GET", "/_matrix/client/v3/sync?timeout=0&filter="+url.QueryEscape(f), nil).MustOK(t)
					jr, _ := syncRooms(r, "join")[room].(map[string]any)
					evs := jr["timeline"].(map[string]any)["events"].([]any)
					ev := evs[len(evs)-1].(map[string]any)
					for k, want := range tc.want {
						if _, ok := ev[k]; ok != want {
							t.Fatalf("%s: key %s present %v, want %v: %v", tc.format, k, ok, want, ev)
						}
					}
				})
			}
			if r := alice.Do(t, "GET", "/_matrix/client/v3/sync?timeout=0&filter="+url.QueryEscape(`{"event_format":"pdu"}`), nil); r.Status != 400 {
				t.Fatalf("unknown event_format: %d %s", r.Status, r.Raw)
			}
		})

		t.Run("use_state_after", func(t *testing.T) {
			stateOf := func(r *testserver.Response, key string) ([]string, bool) {
				jr, _ := syncRooms(r, "join")[room].(map[string]any)
				st, ok := jr[key].(map[string]any)
				if !ok {
					return nil, false
				}
				var types []string
				for _, e := range st["events"].([]any) {
					types = append(types, e.(map[string]any)["type"].(string))
				}
				return types, true
			}
			r := alice.Do(t, "GET", "/_matrix/client/v3/sync?timeout=0&use_state_after=true", nil).MustOK(t)
			after, ok := stateOf(r, "state_after")
			if _, has := stateOf(r, "state"); has || !ok || !slices.Contains(after, "m.room.create") || !slices.Contains(after, "m.room.member") {
				t.Fatalf("initial state_after %v (present %v): %s", after, ok, r.Raw)
			}
			since := r.String("next_batch")
			alice.Do(t, "PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/state/m.room.topic/", map[string]any{"topic": "after"}).MustOK(t)
			for _, tc := range []struct {
				q, key    string
				wantTopic bool
			}{
				{"&use_state_after=true", "state_after", true},
				{"&org.matrix.msc4222.use_state_after=true", "state_after", true},
				{"", "state", false}, // the topic is in the timeline, not before it
			} {
				r := alice.Do(t, "GET", "/_matrix/client/v3/sync?timeout=0&since="+url.QueryEscape(since)+tc.q, nil).MustOK(t)
				types, ok := stateOf(r, tc.key)
				if !ok || slices.Contains(types, "m.room.topic") != tc.wantTopic || slices.Contains(types, "m.room.create") {
					t.Fatalf("%q: %s %v (present %v): %s", tc.q, tc.key, types, ok, r.Raw)
				}
			}
		})

		t.Run("context lazy members", func(t *testing.T) {
			for _, tc := range []struct {
				filter      string
				wantMembers int
			}{
				{`{"lazy_load_members":true}`, 1}, // alice sent every event returned
				{`{}`, 2},
			} {
				r := alice.Do(t, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/context/"+url.PathEscape(last)+
					"?limit=2&filter="+url.QueryEscape(tc.filter), nil).MustOK(t)
				members := 0
				for _, e := range r.Body["state"].([]any) {
					if e.(map[string]any)["type"] == "m.room.member" {
						members++
					}
				}
				if members != tc.wantMembers {
					t.Fatalf("filter %s: %d member events, want %d", tc.filter, members, tc.wantMembers)
				}
			}
		})
	})
}
