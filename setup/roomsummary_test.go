package setup_test

import (
	"net/url"
	"testing"

	"myelin/internal/sqldb/sqldbtest"
	"myelin/internal/testserver"
)

// TestRoomSummary checks GET /_matrix/client/v1/room_summary (MSC3266)
// and its unstable paths: who may see which room, with and without an
// access token, by ID and alias, and a room of another server through
// via.
func TestRoomSummary(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		fed := newFedNet(t)
		hsA := fed.start(t, "hsa.test", "127.0.0.4", dbURL)
		hsB := fed.start(t, "hsb.test", "127.0.0.5", sqldbtest.URL(t, dialectOf(dbURL)))
		alice, bob, carol := hsA.Register(t, "alice"), hsA.Register(t, "bob"), hsA.Register(t, "carol")
		anon := &testserver.Client{Base: hsA.URL}
		dave := hsB.Register(t, "dave")

		public := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{
			"preset": "public_chat", "name": "Cheese", "topic": "Tasty", "room_alias_name": "cheese",
		}).MustOK(t).String("room_id")
		private := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{
			"preset": "private_chat", "name": "Secret", "invite": []string{"@carol:hsa.test"},
		}).MustOK(t).String("room_id")
		readable := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{
			"preset": "private_chat", "initial_state": []any{map[string]any{"type": "m.room.history_visibility",
				"state_key": "", "content": map[string]any{"history_visibility": "world_readable"}}},
		}).MustOK(t).String("room_id")
		knock := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{
			"preset": "private_chat", "room_version": "10", "initial_state": []any{map[string]any{"type": "m.room.join_rules",
				"state_key": "", "content": map[string]any{"join_rule": "knock"}}},
		}).MustOK(t).String("room_id")

		const v1 = "/_matrix/client/v1/room_summary/"
		for _, tc := range []struct {
			name   string
			c      *testserver.Client
			path   string
			status int
			check  map[string]any // fields the answer must have
		}{
			{"member", alice, v1 + esc(public), 200, map[string]any{"room_id": public, "name": "Cheese", "topic": "Tasty",
				"join_rule": "public", "num_joined_members": float64(1), "world_readable": false, "guest_can_join": false,
				"membership": "join", "room_version": "10", "canonical_alias": "#cheese:hsa.test"}},
			{"by alias", bob, v1 + esc("#cheese:hsa.test"), 200, map[string]any{"room_id": public, "membership": "leave"}},
			{"anonymous public", anon, v1 + esc(public), 200, map[string]any{"room_id": public, "membership": nil}},
			{"unstable rooms path", bob, "/_matrix/client/unstable/im.nheko.summary/rooms/" + esc(public) + "/summary", 200, map[string]any{"room_id": public}},
			{"unstable summary path", bob, "/_matrix/client/unstable/im.nheko.summary/summary/" + esc(public), 200, map[string]any{"room_id": public}},
			{"private, member", alice, v1 + esc(private), 200, map[string]any{"name": "Secret", "join_rule": "invite", "membership": "join"}},
			{"private, invited", carol, v1 + esc(private), 200, map[string]any{"membership": "invite"}},
			{"private, stranger", bob, v1 + esc(private), 404, map[string]any{"errcode": "M_NOT_FOUND"}},
			{"private, anonymous", anon, v1 + esc(private), 404, map[string]any{"errcode": "M_NOT_FOUND"}},
			{"world readable, anonymous", anon, v1 + esc(readable), 200, map[string]any{"world_readable": true}},
			{"knock, stranger", bob, v1 + esc(knock), 200, map[string]any{"join_rule": "knock", "membership": "leave"}},
			{"unknown room", bob, v1 + esc("!nowhere:hsa.test"), 404, map[string]any{"errcode": "M_NOT_FOUND"}},
			{"unknown alias", bob, v1 + esc("#nowhere:hsa.test"), 404, map[string]any{"errcode": "M_NOT_FOUND"}},
			{"not an ID", bob, v1 + "nowhere", 400, map[string]any{"errcode": "M_INVALID_PARAM"}},
			{"bad token", &testserver.Client{Base: hsA.URL, Token: "nope"}, v1 + esc(public), 401, map[string]any{"errcode": "M_UNKNOWN_TOKEN"}},
			{"remote via", dave, v1 + esc(public) + "?via=hsa.test", 200, map[string]any{"room_id": public, "name": "Cheese", "membership": "leave"}},
			{"remote without via", dave, v1 + esc(public), 404, map[string]any{"errcode": "M_NOT_FOUND"}},
			{"remote private", dave, v1 + esc(private) + "?via=hsa.test", 404, map[string]any{"errcode": "M_NOT_FOUND"}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				r := tc.c.Do(t, "GET", tc.path, nil)
				if r.Status != tc.status {
					t.Fatalf("status %d, want %d: %s", r.Status, tc.status, r.Raw)
				}
				for k, want := range tc.check {
					if got := r.Body[k]; got != want {
						t.Fatalf("%s = %v, want %v: %s", k, got, want, r.Raw)
					}
				}
				if _, ok := r.Body["children_state"]; ok {
					t.Fatalf("children_state in a room summary: %s", r.Raw)
				}
			})
		}
	})
}

func esc(s string) string { return url.PathEscape(s) }
