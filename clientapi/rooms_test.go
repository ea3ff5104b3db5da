package clientapi_test

import (
	"encoding/json"
	"net/url"
	"testing"

	"myelin/internal/sqldb/sqldbtest"
	"myelin/internal/testserver"
)

// TestKnock knocks on rooms through POST /knock/{roomIdOrAlias} (spec:
// client-server API, "Knocking on rooms"): by room ID and by alias, with a
// reason, and each refusal with its error; then the knock is answered by
// an invite and the knocker joins.
func TestKnock(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		srv := testserver.Start(t, testserver.Config(t.TempDir(), dbURL))
		alice, bob := srv.Register(t, "alice"), srv.Register(t, "bob")
		bobID := bob.Do(t, "GET", "/_matrix/client/v3/account/whoami", nil).MustOK(t).String("user_id")
		room := func(version, joinRule, alias string) string {
			body := map[string]any{
				"room_version":  version,
				"initial_state": []any{map[string]any{"type": "m.room.join_rules", "content": map[string]any{"join_rule": joinRule}}},
			}
			if alias != "" {
				body["room_alias_name"] = alias
			}
			return alice.Do(t, "POST", "/_matrix/client/v3/createRoom", body).MustOK(t).String("room_id")
		}
		knock := room("10", "knock", "")
		byAlias := room("11", "knock", "knockme")
		public := room("10", "public", "")
		old := room("6", "knock", "")

		cases := []struct {
			name       string
			target     string
			query      string
			body       any
			wantStatus int
			wantCode   string
		}{
			{"by room ID with a reason", knock, "", map[string]any{"reason": "let me in"}, 200, ""},
			{"again, the same way", knock, "", map[string]any{"reason": "let me in"}, 200, ""},
			{"by alias, with via", "#knockme:localhost", "?via=localhost&via=elsewhere.test", nil, 200, ""},
			{"a public room", public, "", map[string]any{}, 403, "M_FORBIDDEN"},
			{"a room version without knocking", old, "", map[string]any{}, 403, "M_FORBIDDEN"},
			// Asked of elsewhere.test, which does not answer: it may later.
			{"a room not known here", "!nowhere:localhost", "?server_name=elsewhere.test", map[string]any{}, 503, "M_UNKNOWN"},
			{"an alias not known here", "#nowhere:localhost", "", map[string]any{}, 404, "M_NOT_FOUND"},
			{"neither a room ID nor an alias", "@bob:localhost", "", map[string]any{}, 400, "M_INVALID_PARAM"},
			{"a reason that is not a string", knock, "", map[string]any{"reason": 7}, 400, "M_BAD_JSON"},
			{"a body that is not an object", knock, "", "[]", 400, "M_BAD_JSON"},
		}
		since := bob.Do(t, "GET", "/_matrix/client/v3/sync", nil).MustOK(t).String("next_batch")
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				r := bob.Do(t, "POST", "/_matrix/client/v3/knock/"+url.PathEscape(c.target)+c.query, c.body)
				if r.Status != c.wantStatus || r.String("errcode") != c.wantCode {
					t.Fatalf("%d %s, want %d %q", r.Status, r.Raw, c.wantStatus, c.wantCode)
				}
				if c.wantStatus == 200 && r.String("room_id") == "" {
					t.Fatalf("no room_id in %s", r.Raw)
				}
			})
		}

		member := alice.Do(t, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(knock)+"/state/m.room.member/"+url.PathEscape(bobID), nil).MustOK(t)
		if member.String("membership") != "knock" || member.String("reason") != "let me in" {
			t.Fatalf("bob's member event after knocking: %s", member.Raw)
		}
		// The knocker's /sync lists the room under rooms.knock, with the
		// stripped state and the knock: an initial sync, and one since
		// before the knocks.
		for _, path := range []string{"/_matrix/client/v3/sync", "/_matrix/client/v3/sync?since=" + url.QueryEscape(since)} {
			checkKnockSync(t, bob.Do(t, "GET", path, nil).MustOK(t), knock, bobID)
		}
		if r := alice.Do(t, "POST", "/_matrix/client/v3/knock/"+url.PathEscape(knock), map[string]any{}); r.Status != 403 {
			t.Fatalf("a member knocks: %d %s, want 403", r.Status, r.Raw)
		}
		alice.Do(t, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(knock)+"/invite", map[string]any{"user_id": bobID}).MustOK(t)
		bob.Do(t, "POST", "/_matrix/client/v3/join/"+url.PathEscape(knock), map[string]any{}).MustOK(t)
		// A knock withdrawn is a leave.
		bob.Do(t, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(byAlias)+"/leave", map[string]any{}).MustOK(t)
	})
}

// checkKnockSync checks that a /sync response lists two knocked rooms,
// room among them with its join rules and the knock of userID.
func checkKnockSync(t *testing.T, sync *testserver.Response, room, userID string) {
	t.Helper()
	var body struct {
		Rooms struct {
			Knock map[string]struct {
				KnockState struct {
					Events []struct {
						Type     string         `json:"type"`
						StateKey string         `json:"state_key"`
						Content  map[string]any `json:"content"`
					} `json:"events"`
				} `json:"knock_state"`
			} `json:"knock"`
		} `json:"rooms"`
	}
	if err := json.Unmarshal(sync.Raw, &body); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, ev := range body.Rooms.Knock[room].KnockState.Events {
		seen[ev.Type] = true
		if ev.Type == "m.room.member" && (ev.StateKey != userID || ev.Content["membership"] != "knock") {
			t.Errorf("knock_state member event %+v", ev)
		}
	}
	if !seen["m.room.join_rules"] || !seen["m.room.member"] || len(body.Rooms.Knock) != 2 {
		t.Fatalf("rooms.knock of the knocker's sync: %s", sync.Raw)
	}
}
