package setup_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"myelin/internal/poll"
	"myelin/internal/sqldb/sqldbtest"
	"myelin/internal/testserver"
	uapi "myelin/userapi/api"
)

const pushRulesPath = "/_matrix/client/v3/pushrules/"

// ruleIDs lists the rule IDs of a kind in a GET /pushrules/ response.
func ruleIDs(t *testing.T, body map[string]any, kind string) []string {
	t.Helper()
	global, _ := body["global"].(map[string]any)
	rules, ok := global[kind].([]any)
	if !ok {
		t.Fatalf("no %s rules in %v", kind, body)
	}
	var ids []string
	for _, r := range rules {
		ids = append(ids, r.(map[string]any)["rule_id"].(string))
	}
	return ids
}

func TestPushRules(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		srv := testserver.Start(t, testserver.Config(t.TempDir(), dbURL))
		alice := srv.Register(t, "alice")

		// Every user starts with the default rules, and initial sync has
		// them as m.push_rules account data.
		all := alice.Do(t, "GET", pushRulesPath, nil).MustOK(t)
		over := ruleIDs(t, all.Body, "override")
		if len(over) < 10 || over[0] != ".m.rule.master" {
			t.Fatalf("override rules %v", over)
		}
		if c := ruleIDs(t, all.Body, "content"); len(c) != 1 || c[0] != ".m.rule.contains_user_name" {
			t.Fatalf("content rules %v", c)
		}
		if u := ruleIDs(t, all.Body, "underride"); len(u) != 5 || u[len(u)-1] != ".m.rule.encrypted" {
			t.Fatalf("underride rules %v", u)
		}
		initial := alice.Do(t, "GET", "/_matrix/client/v3/sync", nil).MustOK(t)
		if !strings.Contains(string(initial.Raw), `"type":"m.push_rules"`) {
			t.Fatalf("no m.push_rules in initial sync: %.300s", initial.Raw)
		}
		since := initial.String("next_batch")

		notify := map[string]any{"actions": []any{"notify"}}
		room := func(id string) string { return pushRulesPath + "global/room/" + url.PathEscape(id) }
		steps := []struct {
			name, method, path string
			body               any
			status             int
			errcode            string
		}{
			{"add a", "PUT", room("#a:x"), notify, 200, ""},
			{"add b", "PUT", room("#b:x"), notify, 200, ""},
			{"add c before a", "PUT", room("#c:x") + "?before=" + url.QueryEscape("#a:x"), notify, 200, ""},
			{"add d after b", "PUT", room("#d:x") + "?after=" + url.QueryEscape("#b:x"), notify, 200, ""},
			{"add before an unknown rule", "PUT", room("#e:x") + "?before=nope", notify, 404, "M_NOT_FOUND"},
			{"add again is idempotent", "PUT", room("#b:x"), notify, 200, ""},
			{"sender rule", "PUT", pushRulesPath + "global/sender/%40bob%3Ax", map[string]any{"actions": []any{"dont_notify"}}, 200, ""},
			{"content rule", "PUT", pushRulesPath + "global/content/cake", map[string]any{"pattern": "cake*", "actions": []any{"notify"}}, 200, ""},
			{"override rule", "PUT", pushRulesPath + "global/override/bots", map[string]any{
				"conditions": []any{map[string]any{"kind": "event_match", "key": "content.msgtype", "pattern": "m.notice"}},
				"actions":    []any{"dont_notify"}}, 200, ""},
			{"get a rule", "GET", room("#a:x"), nil, 200, ""},
			{"delete a", "DELETE", room("#a:x"), nil, 200, ""},
			{"delete a again", "DELETE", room("#a:x"), nil, 404, "M_NOT_FOUND"},
			{"get deleted", "GET", room("#a:x"), nil, 404, "M_NOT_FOUND"},
			{"disable", "PUT", room("#b:x") + "/enabled", map[string]any{"enabled": false}, 200, ""},
			{"disable a default", "PUT", pushRulesPath + "global/override/.m.rule.master/enabled", map[string]any{"enabled": true}, 200, ""},
			{"actions of a default", "PUT", pushRulesPath + "global/underride/.m.rule.message/actions", map[string]any{"actions": []any{"dont_notify"}}, 200, ""},
			{"actions of an unknown rule", "PUT", pushRulesPath + "global/override/.not.a.rule/actions", notify, 404, "M_NOT_FOUND"},
			{"enable an unknown default", "PUT", pushRulesPath + "global/override/.not.a.rule/enabled", map[string]any{"enabled": true}, 404, "M_NOT_FOUND"},
			{"delete a default", "DELETE", pushRulesPath + "global/override/.m.rule.master", nil, 400, ""},
			{"unknown rule", "GET", pushRulesPath + "global/override/not_a_rule_id", nil, 404, "M_NOT_FOUND"},
			// Paths of the wrong shape, and bad rules (sytest's 61push/80torture).
			{"no scope", "PUT", pushRulesPath, map[string]any{}, 400, ""},
			{"invalid scope", "PUT", pushRulesPath + "not_a_scope/room/%23spam%3Ax", map[string]any{}, 400, ""},
			{"missing kind", "PUT", pushRulesPath + "global", map[string]any{}, 400, ""},
			{"missing rule ID", "PUT", pushRulesPath + "global/room", map[string]any{}, 400, ""},
			{"empty rule ID", "PUT", pushRulesPath + "global/room/", map[string]any{}, 400, ""},
			{"invalid kind", "PUT", pushRulesPath + "global/not_a_template/foo", map[string]any{}, 400, ""},
			{"backslash in rule ID", "PUT", pushRulesPath + "global/room/%23fo%5Co%3Ax", notify, 400, ""},
			{"reserved rule ID", "PUT", pushRulesPath + "global/override/.mine", map[string]any{"conditions": []any{}, "actions": []any{}}, 400, ""},
			{"override without conditions", "PUT", pushRulesPath + "global/override/my_id", notify, 400, ""},
			{"condition without kind", "PUT", pushRulesPath + "global/underride/my_id", map[string]any{"conditions": []any{map[string]any{}}, "actions": []any{"notify"}}, 400, ""},
			{"content without pattern", "PUT", pushRulesPath + "global/content/my_id", notify, 400, ""},
			{"no actions", "PUT", room("#r:x"), map[string]any{}, 400, ""},
			{"invalid action", "PUT", room("#r:x"), map[string]any{"actions": []any{"not_an_action"}}, 400, ""},
			{"invalid attribute", "PUT", pushRulesPath + "global/override/.m.rule.master/not_an_attr", map[string]any{"enabled": true}, 400, ""},
			{"enabled not a boolean", "PUT", pushRulesPath + "global/override/.m.rule.master/enabled", map[string]any{"enabled": "yes"}, 400, ""},
			{"get scope without slash", "GET", pushRulesPath + "global", nil, 400, ""},
			{"get kind without slash", "GET", pushRulesPath + "global/room", nil, 400, ""},
			{"get unknown scope", "GET", pushRulesPath + "not_a_scope/", nil, 400, ""},
			{"get unknown kind", "GET", pushRulesPath + "global/not_a_template/", nil, 400, ""},
			{"get unknown attribute", "GET", pushRulesPath + "global/override/.m.rule.master/not_an_attr", nil, 400, ""},
			{"no trailing slash at all", "GET", "/_matrix/client/v3/pushrules", nil, 404, ""},
		}
		for _, s := range steps {
			r := alice.Do(t, s.method, s.path, s.body)
			if r.Status != s.status || (s.errcode != "" && r.String("errcode") != s.errcode) {
				t.Fatalf("%s: %d %s, want %d %s", s.name, r.Status, r.Raw, s.status, s.errcode)
			}
		}

		all = alice.Do(t, "GET", pushRulesPath, nil).MustOK(t)
		if got, want := strings.Join(ruleIDs(t, all.Body, "room"), " "), "#b:x #d:x #c:x"; got != want {
			t.Fatalf("room rules %q, want %q", got, want)
		}
		if over := ruleIDs(t, all.Body, "override"); over[0] != ".m.rule.master" || over[1] != "bots" {
			t.Fatalf("override rules %v", over)
		}
		var kindList []map[string]any
		if err := json.Unmarshal(alice.Do(t, "GET", pushRulesPath+"global/room/", nil).MustOK(t).Raw, &kindList); err != nil || len(kindList) != 3 {
			t.Fatalf("GET of a kind: %v %v", err, kindList)
		}
		scope := alice.Do(t, "GET", pushRulesPath+"global/", nil).MustOK(t)
		if _, ok := scope.Body["sender"].([]any); !ok {
			t.Fatalf("GET of a scope: %s", scope.Raw)
		}
		en := alice.Do(t, "GET", room("#b:x")+"/enabled", nil).MustOK(t)
		if en.Body["enabled"] != false {
			t.Fatalf("enabled: %s", en.Raw)
		}
		acts := alice.Do(t, "GET", pushRulesPath+"global/underride/.m.rule.message/actions", nil).MustOK(t)
		if string(acts.Raw) != "{\"actions\":[\"dont_notify\"]}\n" {
			t.Fatalf("actions: %s", acts.Raw)
		}
		master := alice.Do(t, "GET", pushRulesPath+"global/override/.m.rule.master", nil).MustOK(t)
		if master.Body["enabled"] != true || master.Body["default"] != true {
			t.Fatalf("master: %s", master.Raw)
		}

		// The changes reach /sync as m.push_rules account data.
		inc := alice.Do(t, "GET", "/_matrix/client/v3/sync?since="+url.QueryEscape(since), nil).MustOK(t)
		if !strings.Contains(string(inc.Raw), `"#d:x"`) {
			t.Fatalf("rules not in incremental sync: %.500s", inc.Raw)
		}
		// And clients cannot write m.push_rules around the API.
		if r := alice.Do(t, "PUT", "/_matrix/client/v3/user/@alice:localhost/account_data/m.push_rules", map[string]any{}); r.Status != 405 {
			t.Fatalf("setting m.push_rules as account data: %d", r.Status)
		}
	})
}

func TestPushers(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		srv := testserver.Start(t, testserver.Config(t.TempDir(), dbURL))
		alice := srv.Register(t, "alice")
		pusher := func(key, gw string) map[string]any {
			return map[string]any{
				"pushkey": key, "kind": "http", "app_id": "m.test", "app_display_name": "Test",
				"device_display_name": "Phone", "profile_tag": "tag", "lang": "en",
				"data": map[string]any{"url": gw, "format": "event_id_only"},
			}
		}
		const gw = "https://push.example.org/_matrix/push/v1/notify"
		alice.Do(t, "POST", "/_matrix/client/v3/pushers/set", pusher("k1", gw)).MustOK(t)
		for _, bad := range []struct {
			name string
			body map[string]any
		}{
			{"wrong path", pusher("k2", "https://push.example.org/notify")},
			{"not http", pusher("k2", "ftp://push.example.org/_matrix/push/v1/notify")},
			{"no url", func() map[string]any { p := pusher("k2", gw); p["data"] = map[string]any{}; return p }()},
			{"email", func() map[string]any { p := pusher("k2", gw); p["kind"] = "email"; return p }()},
			{"no pushkey", func() map[string]any { p := pusher("k2", gw); delete(p, "pushkey"); return p }()},
			{"no kind", func() map[string]any { p := pusher("k2", gw); delete(p, "kind"); return p }()},
			{"no lang", func() map[string]any { p := pusher("k2", gw); delete(p, "lang"); return p }()},
			{"long pushkey", pusher(strings.Repeat("k", 513), gw)},
		} {
			if r := alice.Do(t, "POST", "/_matrix/client/v3/pushers/set", bad.body); r.Status != 400 {
				t.Fatalf("%s: %d %s", bad.name, r.Status, r.Raw)
			}
		}
		got := alice.Do(t, "GET", "/_matrix/client/v3/pushers", nil).MustOK(t)
		list, _ := got.Body["pushers"].([]any)
		if len(list) != 1 {
			t.Fatalf("pushers: %s", got.Raw)
		}
		p := list[0].(map[string]any)
		data, _ := p["data"].(map[string]any)
		if p["pushkey"] != "k1" || p["kind"] != "http" || p["profile_tag"] != "tag" || data["url"] != gw || data["format"] != "event_id_only" {
			t.Fatalf("pusher: %v", p)
		}
		count := func(c *testserver.Client) int {
			l, _ := c.Do(t, "GET", "/_matrix/client/v3/pushers", nil).MustOK(t).Body["pushers"].([]any)
			return len(l)
		}

		// Another user setting the same app ID and pushkey takes it over,
		// unless it appends.
		bob := srv.Register(t, "bob")
		bob.Do(t, "POST", "/_matrix/client/v3/pushers/set", pusher("k1", gw)).MustOK(t)
		if count(alice) != 0 || count(bob) != 1 {
			t.Fatalf("take-over: alice %d, bob %d", count(alice), count(bob))
		}
		appended := pusher("k1", gw)
		appended["append"] = true
		alice.Do(t, "POST", "/_matrix/client/v3/pushers/set", appended).MustOK(t)
		if count(alice) != 1 || count(bob) != 1 {
			t.Fatalf("append: alice %d, bob %d", count(alice), count(bob))
		}
		// kind null deletes.
		bob.Do(t, "POST", "/_matrix/client/v3/pushers/set", map[string]any{"pushkey": "k1", "app_id": "m.test", "kind": nil}).MustOK(t)
		if count(bob) != 0 {
			t.Fatal("pusher not deleted")
		}

		// A pusher goes with the device that set it: a password change
		// logging out the other devices deletes theirs, and keeps the
		// caller's.
		login := func() *testserver.Client {
			r := (&testserver.Client{Base: srv.URL}).Do(t, "POST", "/_matrix/client/v3/login", map[string]any{
				"type": "m.login.password", "user": "alice", "password": "password-alice"}).MustOK(t)
			return &testserver.Client{Base: srv.URL, Token: r.String("access_token")}
		}
		phone := login()
		phone.Do(t, "POST", "/_matrix/client/v3/pushers/set", pusher("phone", gw)).MustOK(t)
		if count(alice) != 2 {
			t.Fatalf("pushers before the password change: %d", count(alice))
		}
		alice.Do(t, "POST", "/_matrix/client/v3/account/password", map[string]any{
			"new_password": "better",
			"auth":         map[string]any{"type": "m.login.password", "identifier": map[string]any{"type": "m.id.user", "user": "alice"}, "password": "password-alice"},
		}).MustOK(t)
		after := alice.Do(t, "GET", "/_matrix/client/v3/pushers", nil).MustOK(t)
		if l, _ := after.Body["pushers"].([]any); len(l) != 1 || l[0].(map[string]any)["pushkey"] != "k1" {
			t.Fatalf("after the password change: %s", after.Raw)
		}
		// Logging out deletes the device's pushers.
		alice.Do(t, "POST", "/_matrix/client/v3/logout", map[string]any{}).MustOK(t)
		again := &testserver.Client{Base: srv.URL}
		r := again.Do(t, "POST", "/_matrix/client/v3/login", map[string]any{"type": "m.login.password", "user": "alice", "password": "better"}).MustOK(t)
		again.Token = r.String("access_token")
		if count(again) != 0 {
			t.Fatal("pusher of a logged-out device kept")
		}
	})
}

// gateway is a push gateway that records what it is sent and answers
// with reply.
type gateway struct {
	*httptest.Server
	mu     sync.Mutex
	got    []map[string]any
	reject map[string]bool
}

func newGateway(t *testing.T) *gateway {
	g := &gateway{reject: map[string]bool{}}
	g.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/_matrix/push/v1/notify" || r.Method != "POST" {
			http.NotFound(w, r)
			return
		}
		raw, _ := io.ReadAll(r.Body)
		var body struct {
			Notification map[string]any `json:"notification"`
		}
		if err := json.Unmarshal(raw, &body); err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		g.mu.Lock()
		g.got = append(g.got, body.Notification)
		rejected := []string{}
		for _, d := range body.Notification["devices"].([]any) {
			if k := d.(map[string]any)["pushkey"].(string); g.reject[k] {
				rejected = append(rejected, k)
			}
		}
		g.mu.Unlock()
		_ = json.NewEncoder(w).Encode(map[string]any{"rejected": rejected})
	}))
	t.Cleanup(g.Close)
	return g
}

// find returns the first push for which ok holds.
func (g *gateway) find(ok func(n map[string]any) bool) map[string]any {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, n := range g.got {
		if ok(n) {
			return n
		}
	}
	return nil
}

func TestPushNotifications(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		srv := testserver.Start(t, testserver.Config(t.TempDir(), dbURL))
		gw := newGateway(t)
		alice, bob := srv.Register(t, "alice"), srv.Register(t, "bob")
		alice.Do(t, "POST", "/_matrix/client/v3/pushers/set", map[string]any{
			"pushkey": "alice-phone", "kind": "http", "app_id": "m.test", "app_display_name": "Test",
			"device_display_name": "Phone", "lang": "en",
			"data": map[string]any{"url": gw.URL + "/_matrix/push/v1/notify", "extra": "kept"},
		}).MustOK(t)
		room := bob.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{"name": "Cake club"}).MustOK(t).String("room_id")
		bob.Do(t, "POST", "/_matrix/client/v3/rooms/"+room+"/invite", map[string]any{"user_id": "@alice:localhost"}).MustOK(t)

		var invite map[string]any
		poll.Until(t, 10*time.Second, func() error {
			invite = gw.find(func(n map[string]any) bool { return n["type"] == "m.room.member" })
			if invite == nil {
				return fmt.Errorf("no invite pushed")
			}
			return nil
		})
		if invite["membership"] != "invite" || invite["user_is_target"] != true || invite["room_name"] != "Cake club" || invite["sender"] != "@bob:localhost" {
			t.Fatalf("invite push: %v", invite)
		}
		alice.Do(t, "POST", "/_matrix/client/v3/join/"+room, map[string]any{}).MustOK(t)
		send := func(c *testserver.Client, body string) string {
			return c.Do(t, "PUT", fmt.Sprintf("/_matrix/client/v3/rooms/%s/send/m.room.message/%d", room, time.Now().UnixNano()),
				map[string]any{"msgtype": "m.text", "body": body}).MustOK(t).String("event_id")
		}
		msg := send(bob, "who wants cake")

		var pushed map[string]any
		poll.Until(t, 10*time.Second, func() error {
			pushed = gw.find(func(n map[string]any) bool { return n["event_id"] == msg })
			if pushed == nil {
				return fmt.Errorf("message not pushed")
			}
			return nil
		})
		counts, _ := pushed["counts"].(map[string]any)
		devices, _ := pushed["devices"].([]any)
		content, _ := pushed["content"].(map[string]any)
		if pushed["id"] != msg || pushed["room_id"] != room || content["body"] != "who wants cake" || counts["unread"] != float64(1) || len(devices) != 1 {
			t.Fatalf("message push: %v", pushed)
		}
		dev := devices[0].(map[string]any)
		data, _ := dev["data"].(map[string]any)
		tweaks, _ := dev["tweaks"].(map[string]any)
		if dev["pushkey"] != "alice-phone" || dev["app_id"] != "m.test" || data["url"] != nil || data["extra"] != "kept" || tweaks["sound"] != "default" {
			t.Fatalf("push device: %v", dev)
		}

		// The counts: the invite and the message notified alice; a message
		// naming her highlights; her own messages do not count.
		users := srv.Users()
		ctx := context.Background()
		send(alice, "me too")
		hl := send(bob, "alice, here is yours")
		poll.Until(t, 10*time.Second, func() error {
			c, err := users.NotificationCounts(ctx, "@alice:localhost", room)
			if err != nil || c != (uapi.NotificationCounts{Notifications: 3, Highlights: 1}) {
				return fmt.Errorf("counts %+v, %v", c, err)
			}
			return nil
		})
		if c, _ := users.NotificationCounts(ctx, "@bob:localhost", room); c.Notifications != 1 {
			t.Fatalf("bob's counts %+v", c)
		}
		notifs := alice.Do(t, "GET", "/_matrix/client/v3/notifications", nil).MustOK(t)
		list, _ := notifs.Body["notifications"].([]any)
		if len(list) != 3 {
			t.Fatalf("notifications: %s", notifs.Raw)
		}
		first := list[0].(map[string]any)
		ev, _ := first["event"].(map[string]any)
		if ev["event_id"] != hl || first["read"] != false || first["room_id"] != room || first["ts"] == nil {
			t.Fatalf("newest notification: %v", first)
		}
		highlights := alice.Do(t, "GET", "/_matrix/client/v3/notifications?only=highlight", nil).MustOK(t)
		if l, _ := highlights.Body["notifications"].([]any); len(l) != 1 {
			t.Fatalf("only=highlight: %s", highlights.Raw)
		}
		page := alice.Do(t, "GET", "/_matrix/client/v3/notifications?limit=2", nil).MustOK(t)
		next := page.String("next_token")
		rest := alice.Do(t, "GET", "/_matrix/client/v3/notifications?from="+next, nil).MustOK(t)
		if l, _ := rest.Body["notifications"].([]any); next == "" || len(l) != 1 {
			t.Fatalf("second page from %q: %s", next, rest.Raw)
		}

		// A read receipt up to the message clears what came before it, and
		// pushes the new badge.
		if err := users.ClearNotifications(ctx, "@alice:localhost", room, "", msg); err != nil {
			t.Fatal(err)
		}
		if c, _ := users.NotificationCounts(ctx, "@alice:localhost", room); c != (uapi.NotificationCounts{Notifications: 1, Highlights: 1}) {
			t.Fatalf("counts after reading up to the message: %+v", c)
		}
		if err := users.ClearNotifications(ctx, "@alice:localhost", room, "", hl); err != nil {
			t.Fatal(err)
		}
		if c, _ := users.NotificationCounts(ctx, "@alice:localhost", room); c != (uapi.NotificationCounts{}) {
			t.Fatalf("counts after reading all: %+v", c)
		}
		poll.Until(t, 10*time.Second, func() error {
			if gw.find(func(n map[string]any) bool {
				c, _ := n["counts"].(map[string]any)
				return n["id"] == "" && c["unread"] == float64(0)
			}) == nil {
				return fmt.Errorf("no zero badge pushed")
			}
			return nil
		})
		read := alice.Do(t, "GET", "/_matrix/client/v3/notifications", nil).MustOK(t)
		if l, _ := read.Body["notifications"].([]any); len(l) != 3 || l[0].(map[string]any)["read"] != true {
			t.Fatalf("notifications after reading: %s", read.Raw)
		}

		// A muted room does not notify, but a mention still does (content
		// and override rules come before room rules); a gateway rejecting
		// the pushkey removes the pusher.
		alice.Do(t, "PUT", pushRulesPath+"global/room/"+url.PathEscape(room), map[string]any{"actions": []any{"dont_notify"}}).MustOK(t)
		muted := send(bob, "nobody hears this")
		gw.mu.Lock()
		gw.reject["alice-phone"] = true
		gw.mu.Unlock()
		mention := send(bob, "but alice does")
		poll.Until(t, 10*time.Second, func() error {
			if gw.find(func(n map[string]any) bool { return n["event_id"] == mention }) == nil {
				return fmt.Errorf("mention in a muted room not pushed")
			}
			l, _ := alice.Do(t, "GET", "/_matrix/client/v3/pushers", nil).MustOK(t).Body["pushers"].([]any)
			if len(l) != 0 {
				return fmt.Errorf("rejected pusher kept")
			}
			return nil
		})
		if gw.find(func(n map[string]any) bool { return n["event_id"] == muted }) != nil {
			t.Fatal("message in a muted room pushed")
		}
	})
}

// TestPushRulesFollowUpgrade: the room rules of the old room's local
// members are copied to the replacement room, as sytest's "local user
// has push rules copied to upgraded room" checks.
func TestPushRulesFollowUpgrade(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		srv := testserver.Start(t, testserver.Config(t.TempDir(), dbURL))
		alice, bob := srv.Register(t, "alice"), srv.Register(t, "bob")
		room := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{"preset": "public_chat"}).MustOK(t).String("room_id")
		bob.Do(t, "POST", "/_matrix/client/v3/join/"+room, map[string]any{}).MustOK(t)
		bob.Do(t, "PUT", pushRulesPath+"global/room/"+url.PathEscape(room), map[string]any{"actions": []any{"dont_notify"}}).MustOK(t)
		bob.Do(t, "PUT", pushRulesPath+"global/room/"+url.PathEscape(room)+"/enabled", map[string]any{"enabled": false}).MustOK(t)
		newRoom := alice.Do(t, "POST", "/_matrix/client/v3/rooms/"+room+"/upgrade", map[string]any{"new_version": "10"}).MustOK(t).String("replacement_room")
		rules := bob.Do(t, "GET", pushRulesPath, nil).MustOK(t)
		if got := strings.Join(ruleIDs(t, rules.Body, "room"), " "); got != newRoom+" "+room {
			t.Fatalf("bob's room rules %q, want the new room's before the old one's", got)
		}
		copied := bob.Do(t, "GET", pushRulesPath+"global/room/"+url.PathEscape(newRoom), nil).MustOK(t)
		if copied.Body["enabled"] != false || fmt.Sprint(copied.Body["actions"]) != "[dont_notify]" {
			t.Fatalf("copied rule: %s", copied.Raw)
		}
		if got := ruleIDs(t, alice.Do(t, "GET", pushRulesPath, nil).MustOK(t).Body, "room"); len(got) != 0 {
			t.Fatalf("alice got room rules she never had: %v", got)
		}
	})
}

// TestUnreadCountsInSync: /sync shows the userapi's counts, and a read
// receipt clears them.
func TestUnreadCountsInSync(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		srv := testserver.Start(t, testserver.Config(t.TempDir(), dbURL))
		alice, bob := srv.Register(t, "alice"), srv.Register(t, "bob")
		room := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{"preset": "public_chat"}).MustOK(t).String("room_id")
		bob.Do(t, "POST", "/_matrix/client/v3/join/"+room, map[string]any{}).MustOK(t)
		var last string
		for i, body := range []string{"hello", "alice, look"} {
			last = bob.Do(t, "PUT", fmt.Sprintf("/_matrix/client/v3/rooms/%s/send/m.room.message/t%d", room, i),
				map[string]any{"msgtype": "m.text", "body": body}).MustOK(t).String("event_id")
		}
		unread := func(want string) func() error {
			return func() error {
				r := alice.Do(t, "GET", "/_matrix/client/v3/sync", nil).MustOK(t)
				rooms, _ := r.Body["rooms"].(map[string]any)
				join, _ := rooms["join"].(map[string]any)
				jr, _ := join[room].(map[string]any)
				got, _ := json.Marshal(jr["unread_notifications"])
				if string(got) != want {
					return fmt.Errorf("unread_notifications %s, want %s", got, want)
				}
				return nil
			}
		}
		poll.Until(t, 10*time.Second, unread(`{"highlight_count":1,"notification_count":2}`))
		alice.Do(t, "POST", "/_matrix/client/v3/rooms/"+room+"/receipt/m.read/"+url.PathEscape(last), map[string]any{}).MustOK(t)
		poll.Until(t, 10*time.Second, unread(`{"highlight_count":0,"notification_count":0}`))
	})
}

// TestThreadedReceipts: a receipt in a thread clears only that thread's
// notifications, one on the main timeline only the main timeline's, an
// unthreaded one everything up to its event.
func TestThreadedReceipts(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		srv := testserver.Start(t, testserver.Config(t.TempDir(), dbURL))
		alice, bob := srv.Register(t, "alice"), srv.Register(t, "bob")
		room := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{"preset": "public_chat"}).MustOK(t).String("room_id")
		bob.Do(t, "POST", "/_matrix/client/v3/join/"+room, map[string]any{}).MustOK(t)
		n := 0
		send := func(content map[string]any) string {
			n++
			return bob.Do(t, "PUT", fmt.Sprintf("/_matrix/client/v3/rooms/%s/send/m.room.message/th%d", room, n), content).MustOK(t).String("event_id")
		}
		root := send(map[string]any{"msgtype": "m.text", "body": "root"})
		reply := send(map[string]any{"msgtype": "m.text", "body": "in the thread",
			"m.relates_to": map[string]any{"rel_type": "m.thread", "event_id": root}})
		main := send(map[string]any{"msgtype": "m.text", "body": "main again"})
		users, ctx := srv.Users(), context.Background()
		count := func() int64 {
			c, err := users.NotificationCounts(ctx, "@alice:localhost", room)
			if err != nil {
				t.Fatal(err)
			}
			return c.Notifications
		}
		poll.Until(t, 10*time.Second, func() error {
			if c := count(); c != 3 {
				return fmt.Errorf("%d notifications, want 3", c)
			}
			return nil
		})
		// /sync with unread_thread_notifications: the main timeline's
		// counts, and each thread's apart; without it, all in one.
		threadFilter := url.QueryEscape(`{"room":{"timeline":{"unread_thread_notifications":true}}}`)
		syncCounts := func(filter string) (main, threads string) {
			path := "/_matrix/client/v3/sync"
			if filter != "" {
				path += "?filter=" + filter
			}
			r := alice.Do(t, "GET", path, nil).MustOK(t)
			rooms, _ := r.Body["rooms"].(map[string]any)
			join, _ := rooms["join"].(map[string]any)
			jr, _ := join[room].(map[string]any)
			m, _ := json.Marshal(jr["unread_notifications"])
			th, _ := json.Marshal(jr["unread_thread_notifications"])
			return string(m), string(th)
		}
		thread := func(n int) string {
			return fmt.Sprintf(`{%q:{"highlight_count":0,"notification_count":%d}}`, root, n)
		}
		steps := []struct {
			thread, upTo     string
			want             int64
			main, threads    string
			unthreadedCounts string
		}{
			{"", "", 3, `{"highlight_count":0,"notification_count":2}`, thread(1), `{"highlight_count":0,"notification_count":3}`},
			{"main", main, 1, `{"highlight_count":0,"notification_count":0}`, thread(1), `{"highlight_count":0,"notification_count":1}`}, // the thread reply stays unread
			{root, reply, 0, `{"highlight_count":0,"notification_count":0}`, "null", `{"highlight_count":0,"notification_count":0}`},
		}
		for _, s := range steps {
			if s.upTo != "" {
				if err := users.ClearNotifications(ctx, "@alice:localhost", room, s.thread, s.upTo); err != nil {
					t.Fatal(err)
				}
			}
			if c := count(); c != s.want {
				t.Fatalf("after a receipt in thread %q: %d notifications, want %d", s.thread, c, s.want)
			}
			if m, th := syncCounts(threadFilter); m != s.main || th != s.threads {
				t.Fatalf("after a receipt in thread %q: /sync with thread counts: main %s, threads %s; want %s, %s", s.thread, m, th, s.main, s.threads)
			}
			if m, th := syncCounts(""); m != s.unthreadedCounts || th != "null" {
				t.Fatalf("after a receipt in thread %q: /sync: %s, threads %s; want %s and none", s.thread, m, th, s.unthreadedCounts)
			}
		}
	})
}
