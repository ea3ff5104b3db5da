package setup_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"myelin/internal/poll"
	"myelin/internal/sqldb/sqldbtest"
	"myelin/internal/testserver"
	"myelin/setup/config"
)

// TestDelayedEvents checks delayed events (MSC4140): scheduled with the
// delay parameter of send and state requests, listed, cancelled,
// restarted and sent at once, refused past the configured maximum, and
// sent after a restart of the server.
func TestDelayedEvents(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		cfg := testserver.Config(t.TempDir(), dbURL, func(c *config.Config) {
			c.ClientAPI.MaxDelayedEventDelay = time.Hour
		})
		srv := testserver.Start(t, cfg)
		alice, bob := srv.Register(t, "alice"), srv.Register(t, "bob")
		room := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{"preset": "public_chat"}).MustOK(t).String("room_id")
		const list = "/_matrix/client/unstable/org.matrix.msc4140/delayed_events"
		n := 0
		delayedSend := func(c *testserver.Client, param string, body string) *testserver.Response {
			n++
			return c.Do(t, "PUT", fmt.Sprintf("/_matrix/client/v3/rooms/%s/send/m.room.message/d%d?%s", esc(room), n, param),
				map[string]any{"msgtype": "m.text", "body": body})
		}
		bodies := func() []string {
			r := alice.Do(t, "GET", "/_matrix/client/v3/rooms/"+esc(room)+"/messages?dir=b&limit=100", nil).MustOK(t)
			var out []string
			for _, e := range r.Body["chunk"].([]any) {
				if c, ok := e.(map[string]any)["content"].(map[string]any); ok && c["body"] != nil {
					out = append(out, fmt.Sprint(c["body"]))
				}
			}
			return out
		}
		waitFor := func(body string) {
			t.Helper()
			poll.Until(t, 15*time.Second, func() error {
				if got := bodies(); !slices.Contains(got, body) {
					return fmt.Errorf("%q not sent yet: %v", body, got)
				}
				return nil
			})
		}
		pending := func(c *testserver.Client) []map[string]any {
			var out []map[string]any
			for _, d := range c.Do(t, "GET", list, nil).MustOK(t).Body["delayed_events"].([]any) {
				out = append(out, d.(map[string]any))
			}
			return out
		}

		flags := (&testserver.Client{Base: srv.URL}).Do(t, "GET", "/_matrix/client/versions", nil).MustOK(t).Body["unstable_features"].(map[string]any)
		if flags["org.matrix.msc4140"] != true || flags["org.matrix.msc3266"] != true {
			t.Fatalf("unstable_features %v", flags)
		}

		t.Run("refusals", func(t *testing.T) {
			for _, tc := range []struct {
				name, param string
				c           *testserver.Client
				status      int
				errcode     string
			}{
				{"over the maximum", "org.matrix.msc4140.delay=3600001", alice, 400, "M_MAX_DELAY_EXCEEDED"},
				{"negative", "org.matrix.msc4140.delay=-1", alice, 400, "M_INVALID_PARAM"},
				{"not a number", "delay=soon", alice, 400, "M_INVALID_PARAM"},
				{"not joined", "org.matrix.msc4140.delay=1000", bob, 403, "M_FORBIDDEN"},
			} {
				r := delayedSend(tc.c, tc.param, "refused")
				if r.Status != tc.status || r.String("errcode") != tc.errcode {
					t.Fatalf("%s: %d %s", tc.name, r.Status, r.Raw)
				}
				if tc.errcode == "M_MAX_DELAY_EXCEEDED" && r.Body["max_delay"] != float64(3600000) {
					t.Fatalf("max_delay: %s", r.Raw)
				}
			}
			for _, tc := range []struct {
				name, path string
				body       any
				status     int
			}{
				{"unknown ID", list + "/syd_nope", map[string]any{"action": "send"}, 404},
				{"unknown ID, action in path", list + "/syd_nope/cancel", map[string]any{}, 404},
				{"bad action", list + "/syd_nope", map[string]any{"action": "explode"}, 400},
				{"no action", list + "/syd_nope", map[string]any{}, 400},
			} {
				if r := alice.Do(t, "POST", tc.path, tc.body); r.Status != tc.status {
					t.Fatalf("%s: %d %s", tc.name, r.Status, r.Raw)
				}
			}
		})

		t.Run("sent when due, cancel, send, restart", func(t *testing.T) {
			cancelled := delayedSend(alice, "org.matrix.msc4140.delay=200", "cancelled").MustOK(t).String("delay_id")
			alice.Do(t, "POST", list+"/"+esc(cancelled), map[string]any{"action": "cancel"}).MustOK(t)
			delayedSend(alice, "delay=400", "due").MustOK(t)
			waitFor("due")
			if slices.Contains(bodies(), "cancelled") {
				t.Fatal("a cancelled delayed event was sent")
			}

			key := "@alice:localhost"
			st := alice.Do(t, "PUT", "/_matrix/client/v3/rooms/"+esc(room)+"/state/m.call.member/"+esc(key)+"?org.matrix.msc4140.delay=600000",
				map[string]any{}).MustOK(t).String("delay_id")
			got := pending(alice)
			if len(got) != 1 || got[0]["delay_id"] != st || got[0]["state_key"] != key || got[0]["type"] != "m.call.member" || got[0]["delay"] != float64(600000) {
				t.Fatalf("pending: %v", got)
			}
			if len(pending(bob)) != 0 {
				t.Fatal("bob sees alice's delayed events")
			}
			if r := bob.Do(t, "POST", list+"/"+esc(st)+"/send", map[string]any{}); r.Status != 404 {
				t.Fatalf("bob sends alice's delayed event: %d", r.Status)
			}
			since := got[0]["running_since"].(float64)
			poll.Until(t, 5*time.Second, func() error {
				alice.Do(t, "POST", list+"/"+esc(st)+"/restart", map[string]any{}).MustOK(t)
				if now := pending(alice)[0]["running_since"].(float64); now <= since {
					return fmt.Errorf("running_since %v not after %v", now, since)
				}
				return nil
			})
			alice.Do(t, "POST", list+"/"+esc(st), map[string]any{"action": "send"}).MustOK(t)
			alice.Do(t, "GET", "/_matrix/client/v3/rooms/"+esc(room)+"/state/m.call.member/"+esc(key), nil).MustOK(t)
			if len(pending(alice)) != 0 {
				t.Fatalf("still pending after send: %v", pending(alice))
			}
		})

		t.Run("turned off", func(t *testing.T) {
			off := testserver.Start(t, testserver.Config(t.TempDir(), sqldbtest.URL(t, dialectOf(dbURL)), func(c *config.Config) {
				c.ClientAPI.MaxDelayedEventDelay = 0
			}))
			defer off.Stop()
			flags := (&testserver.Client{Base: off.URL}).Do(t, "GET", "/_matrix/client/versions", nil).MustOK(t).Body["unstable_features"].(map[string]any)
			if flags["org.matrix.msc4140"] != false {
				t.Fatalf("unstable_features %v", flags)
			}
			carol := off.Register(t, "carol")
			r := carol.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{}).MustOK(t)
			if r := carol.Do(t, "PUT", "/_matrix/client/v3/rooms/"+esc(r.String("room_id"))+"/send/m.room.message/x?delay=10",
				map[string]any{"body": "x"}); r.Status != 400 {
				t.Fatalf("a delayed event with delayed events off: %d %s", r.Status, r.Raw)
			}
		})

		t.Run("after a restart", func(t *testing.T) {
			delayedSend(alice, "org.matrix.msc4140.delay=3000", "survives").MustOK(t)
			srv.Stop()
			srv = testserver.Start(t, cfg)
			alice.Base, bob.Base = srv.URL, srv.URL
			waitFor("survives")
		})
	})
}
