package setup_test

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	gmsl "github.com/matrix-org/gomatrixserverlib"

	"myelin/internal/poll"
	"myelin/internal/signing"
	"myelin/internal/sqldb/sqldbtest"
	"myelin/setup/config"
)

// startWatcher runs a TLS server named name on ip that answers every
// request 404 and counts them: a server this one must never contact.
func startWatcher(t *testing.T, n *fedNet, name, ip string) *atomic.Int64 {
	t.Helper()
	var hits atomic.Int64
	n.serveFake(t, name, ip, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		http.NotFound(w, r)
	}))
	return &hits
}

// serveFake serves h over TLS as server name, on ip, and publishes it in
// the DNS: a federation peer that is not a Myelin.
func (n *fedNet) serveFake(t *testing.T, name, ip string, h http.Handler) {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	l, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	srv.Listener = l
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{n.ca.TLS(name)}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	n.mu.Lock()
	n.hosts[name] = netip.MustParseAddr(ip)
	n.srv["_matrix-fed._tcp."+name] = []*net.SRV{{Target: name + ".", Port: uint16(l.Addr().(*net.TCPAddr).Port)}}
	n.mu.Unlock()
}

// errcodeOf is the Matrix error code of an answer.
func errcodeOf(raw []byte) string {
	var body struct {
		Code string `json:"errcode"`
	}
	_ = json.Unmarshal(raw, &body)
	return body.Code
}

// TestFederationPolicy: a room's server ACL shuts the server it names out
// of the room's federation endpoints, and lets it back in when changed; a
// server the operator denies (federation_api.denied_servers) is refused on
// every authenticated endpoint and never contacted, neither for its keys
// nor for an invite or a join.
func TestFederationPolicy(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		fed := newFedNet(t)
		hsA := fed.start(t, "hsa.test", "127.0.0.8", dbURL, func(c *config.Config) {
			c.FederationAPI.DeniedServers = []string{"*.denied.test"}
		})
		hsB := fed.start(t, "hsb.test", "127.0.0.9", sqldbtest.URL(t, dialectOf(dbURL)))
		watched := startWatcher(t, fed, "w.denied.test", "127.0.0.10")
		alice := hsA.Register(t, "alice")
		bob := hsB.Register(t, "bob")
		keyB, err := signing.LoadOrGenerate(hsB.Config.Keys.SigningKeyPath, "hsb.test")
		if err != nil {
			t.Fatal(err)
		}
		asB := &fedCaller{key: keyB, dest: "hsa.test", base: hsA.FederationURL(), client: fed.httpClient("hsa.test")}
		room := makeFedRoom(t, alice, "world_readable", 3)
		esc := url.PathEscape
		alice.Do(t, "PUT", "/_matrix/client/v3/rooms/"+esc(room.id)+"/state/m.room.join_rules/", map[string]string{"join_rule": "public"}).MustOK(t)
		const v1 = "/_matrix/federation/v1"
		m := room.msgs

		// The room's endpoints, each as hsb asks them.
		endpoints := []struct {
			name, method, uri string
			body              any
		}{
			{"make_join", "GET", v1 + "/make_join/" + esc(room.id) + "/" + esc("@bob:hsb.test") + "?ver=" + room.version, nil},
			{"state", "GET", v1 + "/state/" + esc(room.id) + "?event_id=" + esc(m[1]), nil},
			{"state_ids", "GET", v1 + "/state_ids/" + esc(room.id) + "?event_id=" + esc(m[1]), nil},
			{"event", "GET", v1 + "/event/" + esc(m[1]), nil},
			{"event_auth", "GET", v1 + "/event_auth/" + esc(room.id) + "/" + esc(m[1]), nil},
			{"backfill", "GET", v1 + "/backfill/" + esc(room.id) + "?limit=5&v=" + esc(m[2]), nil},
			{"get_missing_events", "POST", v1 + "/get_missing_events/" + esc(room.id),
				map[string]any{"earliest_events": []string{m[0]}, "latest_events": []string{m[2]}, "limit": 5}},
		}
		setACL := func(content map[string]any) {
			t.Helper()
			alice.Do(t, "PUT", "/_matrix/client/v3/rooms/"+esc(room.id)+"/state/m.room.server_acl/", content).MustOK(t)
		}
		// waitFor polls hsb's /state until it answers want: the ACL
		// cache is refreshed by the output stream, a moment after the
		// event is accepted.
		waitFor := func(want int) {
			t.Helper()
			poll.Until(t, 10*time.Second, func() error {
				if code, raw := asB.do(t, "GET", endpoints[1].uri, nil); code != want {
					return fmt.Errorf("state: %d %s, want %d", code, raw, want)
				}
				return nil
			})
		}

		t.Run("server ACL", func(t *testing.T) {
			for _, e := range endpoints {
				if code, raw := asB.do(t, e.method, e.uri, e.body); code != 200 {
					t.Fatalf("before any ACL, %s: %d %s", e.name, code, raw)
				}
			}
			setACL(map[string]any{"allow": []string{"*"}, "deny": []string{"HSB.test"}})
			waitFor(403)
			for _, e := range endpoints {
				code, raw := asB.do(t, e.method, e.uri, e.body)
				if code != 403 || errcodeOf(raw) != "M_FORBIDDEN" {
					t.Errorf("%s while denied by the ACL: %d %s, want 403 M_FORBIDDEN", e.name, code, raw)
				}
			}
			// bob's join through hsa is refused in make_join.
			r := bob.Do(t, "POST", "/_matrix/client/v3/join/"+esc(room.id)+"?server_name=hsa.test", map[string]any{})
			if r.Status != 403 {
				t.Errorf("bob joined a room whose ACL denies his server: %#v", r)
			}
			// An allow list naming hsb by a glob lets it back in.
			setACL(map[string]any{"allow": []string{"hs?.test"}, "allow_ip_literals": false})
			waitFor(200)
			for _, e := range endpoints {
				if code, raw := asB.do(t, e.method, e.uri, e.body); code != 200 {
					t.Errorf("%s once allowed again: %d %s", e.name, code, raw)
				}
			}
			bob.Do(t, "POST", "/_matrix/client/v3/join/"+esc(room.id)+"?server_name=hsa.test", map[string]any{}).MustOK(t)
		})

		// /send: hsb's PDUs in the room are refused one by one while
		// the ACL denies hsb (bob joined above).
		t.Run("send", func(t *testing.T) {
			fx := newSendFixture(t, fed, hsA, hsB, alice, room.id)
			result := func(txnID string, ev gmsl.PDU) (refused bool) {
				t.Helper()
				code, raw := fx.send(t, txnID, raws(ev), nil)
				var resp struct {
					PDUs map[string]struct {
						Error *string `json:"error"`
					} `json:"pdus"`
				}
				if err := json.Unmarshal(raw, &resp); code != 200 || err != nil {
					t.Fatalf("send: %d %s", code, raw)
				}
				res, ok := resp.PDUs[ev.EventID()]
				if !ok {
					t.Fatalf("no result for %s: %s", ev.EventID(), raw)
				}
				return res.Error != nil
			}
			setACL(map[string]any{"allow": []string{"*"}, "deny": []string{"hsb.test"}})
			waitFor(403)
			denied := fx.msg(t, "while denied", "", nil)
			if !result("acl-denied", denied) || fx.stored(t, denied.EventID()) != nil {
				t.Errorf("a PDU of a server the ACL denies was taken in")
			}
			// Its room EDUs are dropped too: bob's typing in the room
			// must not show, while his presence (no room, no ACL), sent
			// after it in the same transaction, does.
			const bobID = "@bob:hsb.test"
			code, raw := fx.send(t, "acl-edus", nil, []any{
				map[string]any{"edu_type": "m.typing", "content": map[string]any{"room_id": room.id, "user_id": bobID, "typing": true}},
				map[string]any{"edu_type": "m.presence", "content": map[string]any{"push": []any{
					map[string]any{"user_id": bobID, "presence": "online", "status_msg": "acl sentinel", "last_active_ago": 0},
				}}},
			})
			if code != 200 {
				t.Fatalf("send EDUs: %d %s", code, raw)
			}
			poll.Until(t, 10*time.Second, func() error {
				r := alice.Do(t, "GET", "/_matrix/client/v3/presence/"+esc(bobID)+"/status", nil)
				if r.String("status_msg") != "acl sentinel" {
					return fmt.Errorf("bob's presence: %s", r.Raw)
				}
				return nil
			})
			if got := stringsOf(ephemeralOf(fullSync(t, alice), room.id, "m.typing").Get("content.user_ids")); slices.Contains(got, bobID) {
				t.Errorf("typing of a server the ACL denies was taken: %v", got)
			}
			setACL(map[string]any{"allow": []string{"*"}})
			waitFor(200)
			fx.refresh(t)
			allowed := fx.msg(t, "allowed again", "", nil)
			if result("acl-allowed", allowed) || fx.stored(t, allowed.EventID()) == nil {
				t.Errorf("a PDU of a server the ACL allows was refused")
			}
		})

		t.Run("denied server", func(t *testing.T) {
			keyW, err := signing.LoadOrGenerate(filepath.Join(t.TempDir(), "w.key"), "w.denied.test")
			if err != nil {
				t.Fatal(err)
			}
			asW := &fedCaller{key: keyW, dest: "hsa.test", base: hsA.FederationURL(), client: fed.httpClient("hsa.test")}
			uris := []string{
				v1 + "/query/profile?user_id=" + esc("@alice:hsa.test"),
				endpoints[0].uri, endpoints[1].uri, endpoints[3].uri,
			}
			for _, uri := range uris {
				code, raw := asW.do(t, "GET", uri, nil)
				if code != 403 || errcodeOf(raw) != "M_FORBIDDEN" {
					t.Errorf("GET %s from a denied server: %d %s, want 403 M_FORBIDDEN", uri, code, raw)
				}
			}
			// An allowed server is still answered.
			if code, raw := asB.do(t, "GET", uris[0], nil); code != 200 {
				t.Errorf("profile query from hsb: %d %s", code, raw)
			}
			// Nothing goes out to it: no invite, no join.
			if r := alice.Do(t, "POST", "/_matrix/client/v3/rooms/"+esc(room.id)+"/invite", map[string]string{"user_id": "@eve:w.denied.test"}); r.Status == 200 {
				t.Errorf("invite of a user of a denied server: %#v", r)
			}
			if r := alice.Do(t, "POST", "/_matrix/client/v3/join/"+esc("!room:w.denied.test")+"?server_name=w.denied.test", map[string]any{}); r.Status == 200 {
				t.Errorf("join through a denied server: %#v", r)
			}
			if n := watched.Load(); n != 0 {
				t.Errorf("the denied server was contacted %d times", n)
			}
		})
	})
}
