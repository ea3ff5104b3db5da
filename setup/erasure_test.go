package setup_test

import (
	"encoding/json"
	"net/url"
	"testing"

	"myelin/internal/signing"
	"myelin/internal/sqldb/sqldbtest"
	"myelin/internal/testserver"
)

// TestErasure: alice sends a message, then deactivates asking to be
// erased. Bob, a member when she sent it, still reads it; carol, who
// joined after, reads it redacted (/messages, /event, /context), and so
// does another server fetching it (GET /event, /get_missing_events).
func TestErasure(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		fed := newFedNet(t)
		hs1 := fed.start(t, "hs1.test", "127.0.0.2", dbURL)
		hs2 := fed.start(t, "hs2.test", "127.0.0.3", sqldbtest.URL(t, dialectOf(dbURL)))
		alice := hs1.Register(t, "alice")
		bob := hs1.Register(t, "bob")
		carol := hs1.Register(t, "carol")
		room := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{
			"preset": "public_chat",
			"initial_state": []any{map[string]any{"type": "m.room.history_visibility", "state_key": "",
				"content": map[string]string{"history_visibility": "world_readable"}}},
		}).MustOK(t).String("room_id")
		esc := url.PathEscape(room)
		bob.Do(t, "POST", "/_matrix/client/v3/join/"+esc, map[string]any{}).MustOK(t)
		msg := alice.Do(t, "PUT", "/_matrix/client/v3/rooms/"+esc+"/send/m.room.message/1",
			map[string]string{"msgtype": "m.text", "body": "secret"}).MustOK(t).String("event_id")
		carol.Do(t, "POST", "/_matrix/client/v3/join/"+esc, map[string]any{}).MustOK(t)
		alice.Do(t, "POST", "/_matrix/client/v3/account/deactivate", map[string]any{"erase": true,
			"auth": map[string]any{"type": "m.login.password", "identifier": map[string]any{"type": "m.id.user", "user": "alice"}, "password": "password-alice"},
		}).MustOK(t)

		body := func(c *testserver.Client, path string) string {
			t.Helper()
			r := c.Do(t, "GET", path, nil).MustOK(t)
			var ev struct {
				Content struct {
					Body string `json:"body"`
				} `json:"content"`
			}
			_ = json.Unmarshal(r.Raw, &ev)
			return ev.Content.Body
		}
		messages := func(c *testserver.Client) string {
			t.Helper()
			r := c.Do(t, "GET", "/_matrix/client/v3/rooms/"+esc+"/messages?dir=b&limit=50", nil).MustOK(t)
			var page struct {
				Chunk []struct {
					EventID string          `json:"event_id"`
					Content json.RawMessage `json:"content"`
				} `json:"chunk"`
			}
			_ = json.Unmarshal(r.Raw, &page)
			for _, e := range page.Chunk {
				if e.EventID == msg {
					return string(e.Content)
				}
			}
			return "(missing)"
		}
		event := "/_matrix/client/v3/rooms/" + esc + "/event/" + url.PathEscape(msg)
		if got := body(bob, event); got != "secret" {
			t.Fatalf("bob, a member then, reads %q", got)
		}
		if got := messages(bob); got != `{"msgtype":"m.text","body":"secret"}` && got != `{"body":"secret","msgtype":"m.text"}` {
			t.Fatalf("bob's /messages: %s", got)
		}
		if got := body(carol, event); got != "" {
			t.Fatalf("carol, who joined later, reads %q", got)
		}
		if got := messages(carol); got != "{}" {
			t.Fatalf("carol's /messages: %s", got)
		}
		for c, want := range map[*testserver.Client]string{bob: "secret", carol: ""} {
			r := c.Do(t, "GET", "/_matrix/client/v3/rooms/"+esc+"/context/"+url.PathEscape(msg), nil).MustOK(t)
			var cx struct {
				Event struct {
					Content struct {
						Body string `json:"body"`
					} `json:"content"`
				} `json:"event"`
			}
			if err := json.Unmarshal(r.Raw, &cx); err != nil || cx.Event.Content.Body != want {
				t.Fatalf("/context: %s, want body %q", r.Raw, want)
			}
		}

		key2, err := signing.LoadOrGenerate(hs2.Config.Keys.SigningKeyPath, "hs2.test")
		if err != nil {
			t.Fatal(err)
		}
		asHS2 := &fedCaller{key: key2, dest: "hs1.test", base: hs1.FederationURL(), client: fed.httpClient("hs1.test")}
		status, raw := asHS2.do(t, "GET", "/_matrix/federation/v1/event/"+url.PathEscape(msg), nil)
		var tx struct {
			PDUs []struct {
				Content map[string]any `json:"content"`
			} `json:"pdus"`
		}
		if err := json.Unmarshal(raw, &tx); status != 200 || err != nil || len(tx.PDUs) != 1 || len(tx.PDUs[0].Content) != 0 {
			t.Fatalf("hs2 fetching the erased user's event: %d %s", status, raw)
		}
	})
}
