package setup_test

import (
	"fmt"
	"testing"

	"myelin/internal/sqldb/sqldbtest"
	"myelin/internal/testserver"
)

// TestReports checks reporting content (spec: "Reporting content"):
// event, room and user reports with their refusals, and Synapse's admin
// API listing, reading and deleting them, for server admins only.
func TestReports(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		srv := testserver.Start(t, testserver.Config(t.TempDir(), dbURL))
		alice, bob, carol := srv.Register(t, "alice"), srv.Register(t, "bob"), srv.Register(t, "carol")
		admin := registerAdmin(t, srv, "root")
		room := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{"preset": "public_chat", "name": "Reported"}).MustOK(t).String("room_id")
		bob.Do(t, "POST", "/_matrix/client/v3/join/"+esc(room), map[string]any{}).MustOK(t)
		ev := bob.Do(t, "PUT", "/_matrix/client/v3/rooms/"+esc(room)+"/send/m.room.message/r1",
			map[string]any{"msgtype": "m.text", "body": "rude"}).MustOK(t).String("event_id")
		other := carol.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{}).MustOK(t).String("room_id")
		otherEv := carol.Do(t, "PUT", "/_matrix/client/v3/rooms/"+esc(other)+"/send/m.room.message/r2",
			map[string]any{"msgtype": "m.text", "body": "elsewhere"}).MustOK(t).String("event_id")

		const v3 = "/_matrix/client/v3"
		for _, tc := range []struct {
			name    string
			c       *testserver.Client
			path    string
			body    any
			status  int
			errcode string
		}{
			{"event", alice, v3 + "/rooms/" + esc(room) + "/report/" + esc(ev), map[string]any{"reason": "rude", "score": -100}, 200, ""},
			{"event without reason", alice, v3 + "/rooms/" + esc(room) + "/report/" + esc(ev), map[string]any{}, 200, ""},
			{"event, not joined", carol, v3 + "/rooms/" + esc(room) + "/report/" + esc(ev), map[string]any{"reason": "x"}, 404, "M_NOT_FOUND"},
			{"event of another room", alice, v3 + "/rooms/" + esc(room) + "/report/" + esc(otherEv), map[string]any{"reason": "x"}, 404, "M_NOT_FOUND"},
			{"unknown event", alice, v3 + "/rooms/" + esc(room) + "/report/" + esc("$nope:localhost"), map[string]any{"reason": "x"}, 404, "M_NOT_FOUND"},
			{"score out of range", alice, v3 + "/rooms/" + esc(room) + "/report/" + esc(ev), map[string]any{"reason": "x", "score": 5}, 400, "M_INVALID_PARAM"},
			{"reason not a string", alice, v3 + "/rooms/" + esc(room) + "/report/" + esc(ev), map[string]any{"reason": 5}, 400, "M_BAD_JSON"},
			{"bad event ID", alice, v3 + "/rooms/" + esc(room) + "/report/nope", map[string]any{"reason": "x"}, 400, "M_INVALID_PARAM"},
			{"room, not a member", carol, v3 + "/rooms/" + esc(room) + "/report", map[string]any{"reason": "spam room"}, 200, ""},
			{"room without reason", carol, v3 + "/rooms/" + esc(room) + "/report", map[string]any{}, 400, "M_MISSING_PARAM"},
			{"unknown room", carol, v3 + "/rooms/" + esc("!nope:localhost") + "/report", map[string]any{"reason": "x"}, 404, "M_NOT_FOUND"},
			{"user", alice, v3 + "/users/@bob:localhost/report", map[string]any{"reason": "harassment"}, 200, ""},
			{"remote user", alice, v3 + "/users/@eve:elsewhere.test/report", map[string]any{"reason": "spam"}, 200, ""},
			{"unknown local user", alice, v3 + "/users/@nobody:localhost/report", map[string]any{"reason": "x"}, 404, "M_NOT_FOUND"},
			{"bad user ID", alice, v3 + "/users/nobody/report", map[string]any{"reason": "x"}, 400, "M_INVALID_PARAM"},
			{"no token", &testserver.Client{Base: srv.URL}, v3 + "/users/@bob:localhost/report", map[string]any{"reason": "x"}, 401, "M_MISSING_TOKEN"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				r := tc.c.Do(t, "POST", tc.path, tc.body)
				if r.Status != tc.status || (tc.errcode != "" && r.String("errcode") != tc.errcode) {
					t.Fatalf("%s: %d %s, want %d %s", tc.path, r.Status, r.Raw, tc.status, tc.errcode)
				}
			})
		}

		const a = "/_synapse/admin/v1/"
		if r := alice.Do(t, "GET", a+"event_reports", nil); r.Status != 403 {
			t.Fatalf("a user lists reports: %d %s", r.Status, r.Raw)
		}
		for _, tc := range []struct {
			kind, query string
			total       int
			check       func(first map[string]any) error
		}{
			{"event", "", 2, func(f map[string]any) error {
				if f["event_id"] != ev || f["room_id"] != room || f["sender"] != "@bob:localhost" || f["user_id"] != "@alice:localhost" || f["name"] != "Reported" {
					return fmt.Errorf("event report %v", f)
				}
				return nil
			}},
			{"event", "?dir=f&limit=1", 2, func(f map[string]any) error {
				if f["reason"] != "rude" || f["score"] != float64(-100) {
					return fmt.Errorf("oldest event report %v", f)
				}
				return nil
			}},
			{"event", "?user_id=@carol:localhost", 0, nil},
			{"room", "", 1, func(f map[string]any) error {
				if f["room_id"] != room || f["user_id"] != "@carol:localhost" || f["reason"] != "spam room" {
					return fmt.Errorf("room report %v", f)
				}
				return nil
			}},
			{"user", "?target_user_id=@bob:localhost", 1, func(f map[string]any) error {
				if f["target_user_id"] != "@bob:localhost" || f["reason"] != "harassment" {
					return fmt.Errorf("user report %v", f)
				}
				return nil
			}},
			{"user", "", 2, nil},
		} {
			r := admin.Do(t, "GET", a+tc.kind+"_reports"+tc.query, nil).MustOK(t)
			list, _ := r.Body[tc.kind+"_reports"].([]any)
			if r.Body["total"] != float64(tc.total) {
				t.Fatalf("%s reports%s: total %v, want %d: %s", tc.kind, tc.query, r.Body["total"], tc.total, r.Raw)
			}
			if tc.check != nil {
				if err := tc.check(list[0].(map[string]any)); err != nil {
					t.Fatal(err)
				}
			}
		}
		if r := admin.Do(t, "GET", a+"event_reports?dir=x", nil); r.Status != 400 {
			t.Fatalf("bad dir: %d", r.Status)
		}

		// One report, with its event; then deleted.
		first := admin.Do(t, "GET", a+"event_reports?dir=f&limit=1", nil).MustOK(t).Body["event_reports"].([]any)[0].(map[string]any)
		id := fmt.Sprint(first["id"])
		one := admin.Do(t, "GET", a+"event_reports/"+id, nil).MustOK(t)
		if js, _ := one.Body["event_json"].(map[string]any); js["type"] != "m.room.message" {
			t.Fatalf("event report: %s", one.Raw)
		}
		if r := admin.Do(t, "GET", a+"room_reports/"+id, nil); r.Status != 404 {
			t.Fatalf("an event report read as a room report: %d", r.Status)
		}
		admin.Do(t, "DELETE", a+"event_reports/"+id, nil).MustOK(t)
		for _, path := range []string{a + "event_reports/" + id, a + "event_reports/0"} {
			if r := admin.Do(t, "GET", path, nil); r.Status/100 != 4 {
				t.Fatalf("%s: %d", path, r.Status)
			}
		}
		if r := admin.Do(t, "GET", a+"event_reports", nil).MustOK(t); r.Body["total"] != float64(1) {
			t.Fatalf("after delete: %s", r.Raw)
		}
	})
}
