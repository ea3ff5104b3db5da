package setup_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"myelin/internal/signing"
	"myelin/internal/sqldb/sqldbtest"
	"myelin/internal/testserver"
	rsapi "myelin/roomserver/api"
)

const serverSpecFile = "../../shared/spec/openapi-server-server-v1.19.json"
const serverSpecURL = "https://spec.matrix.org/v1.19/server-server-api/openapi.json"

// fedRoom is a room on one server, as the test knows it.
type fedRoom struct {
	id, version string
	create      string   // the create event
	msgs        []string // messages sent, in order
}

// makeFedRoom creates a room with the history visibility given and sends
// n messages in it.
func makeFedRoom(t *testing.T, c *testserver.Client, visibility string, n int) fedRoom {
	t.Helper()
	r := c.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{
		"preset": "private_chat",
		"initial_state": []any{map[string]any{
			"type": "m.room.history_visibility", "state_key": "",
			"content": map[string]string{"history_visibility": visibility},
		}},
	}).MustOK(t)
	room := fedRoom{id: r.String("room_id")}
	esc := url.PathEscape(room.id)
	cr := c.Do(t, "GET", "/_matrix/client/v3/rooms/"+esc+"/state/m.room.create/?format=event", nil).MustOK(t)
	room.create = cr.String("event_id")
	room.version, _ = cr.Body["content"].(map[string]any)["room_version"].(string)
	for i := range n {
		s := c.Do(t, "PUT", "/_matrix/client/v3/rooms/"+esc+"/send/m.room.message/m"+strconv.Itoa(i),
			map[string]string{"msgtype": "m.text", "body": "message " + strconv.Itoa(i)}).MustOK(t)
		room.msgs = append(room.msgs, s.String("event_id"))
	}
	return room
}

// fedCaller sends requests signed by one server to another's federation
// listener and reads the raw answers.
type fedCaller struct {
	key    *signing.Key
	dest   spec.ServerName
	base   string
	client *http.Client
}

func (c *fedCaller) do(t testing.TB, method, uri string, body any) (int, []byte) {
	t.Helper()
	fr := fclient.NewFederationRequest(method, c.key.ServerName, c.dest, uri)
	if body != nil {
		if err := fr.SetContent(body); err != nil {
			t.Fatal(err)
		}
	}
	if err := fr.Sign(c.key.ServerName, c.key.KeyID, c.key.Private); err != nil {
		t.Fatal(err)
	}
	req, err := fr.HTTPRequest()
	if err != nil {
		t.Fatal(err)
	}
	req.URL, _ = url.Parse(c.base + uri)
	resp, err := c.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, uri, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, raw
}

// idsOf returns the event IDs of the PDUs under key of a JSON answer, as
// the room's version computes them.
func idsOf(t *testing.T, version string, raw []byte, key string) []string {
	t.Helper()
	var body map[string]json.RawMessage
	var pdus []json.RawMessage
	if err := json.Unmarshal(raw, &body); err != nil {
		t.Fatalf("%s: %v", raw, err)
	}
	if err := json.Unmarshal(body[key], &pdus); err != nil {
		t.Fatalf("%s: %v", raw, err)
	}
	ver := gmsl.MustGetRoomVersion(gmsl.RoomVersion(version))
	var ids []string
	for _, p := range pdus {
		ev, err := ver.NewEventFromUntrustedJSON(p)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		ids = append(ids, ev.EventID())
	}
	return ids
}

// TestFederationServeEvents: server hs2 reads events, state, auth chains,
// missing events and backfill of a world_readable room of hs1 over the
// federation API, in the spec's shapes, and is refused a room whose
// history it may not see; hs2's Fetcher gets events of hs1's room checked,
// and refuses what a lying server changed.
func TestFederationServeEvents(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		fed := newFedNet(t)
		hs1 := fed.start(t, "hs1.test", "127.0.0.2", dbURL)
		hs2 := fed.start(t, "hs2.test", "127.0.0.3", sqldbtest.URL(t, dialectOf(dbURL)))
		alice := hs1.Register(t, "alice")
		open := makeFedRoom(t, alice, "world_readable", 4)
		closed := makeFedRoom(t, alice, "shared", 1)
		key2, err := signing.LoadOrGenerate(hs2.Config.Keys.SigningKeyPath, "hs2.test")
		if err != nil {
			t.Fatal(err)
		}
		asHS2 := &fedCaller{key: key2, dest: "hs1.test", base: hs1.FederationURL(), client: fed.httpClient("hs1.test")}
		shapes := loadSpec(t, serverSpecFile, serverSpecURL)
		const v1 = "/_matrix/federation/v1"
		esc := url.PathEscape
		gme := func(earliest, latest []string, limit int) map[string]any {
			if earliest == nil {
				earliest = []string{}
			}
			return map[string]any{"earliest_events": earliest, "latest_events": latest, "limit": limit}
		}

		t.Run("shapes and contents", func(t *testing.T) {
			m := open.msgs
			tests := []struct {
				name, method, tmpl, uri string
				body                    any
				key                     string   // where the events are
				want                    []string // events that must be there
				not                     []string // events that must not
			}{
				{"event", "GET", v1 + "/event/{eventId}", v1 + "/event/" + esc(m[1]), nil, "pdus", []string{m[1]}, nil},
				{"state", "GET", v1 + "/state/{roomId}", v1 + "/state/" + esc(open.id) + "?event_id=" + esc(m[2]), nil, "pdus", []string{open.create}, m},
				{"state auth chain", "GET", v1 + "/state/{roomId}", v1 + "/state/" + esc(open.id) + "?event_id=" + esc(m[2]), nil, "auth_chain", []string{open.create}, m},
				{"event_auth", "GET", v1 + "/event_auth/{roomId}/{eventId}", v1 + "/event_auth/" + esc(open.id) + "/" + esc(m[1]), nil, "auth_chain", []string{open.create}, m},
				{"get_missing_events", "POST", v1 + "/get_missing_events/{roomId}", v1 + "/get_missing_events/" + esc(open.id), gme(m[:1], m[3:], 10), "events", m[1:3], []string{m[0], m[3], open.create}},
				{"get_missing_events limit", "POST", v1 + "/get_missing_events/{roomId}", v1 + "/get_missing_events/" + esc(open.id), gme(m[:1], m[3:], 1), "events", m[2:3], m[:2]},
				{"backfill", "GET", v1 + "/backfill/{roomId}", v1 + "/backfill/" + esc(open.id) + "?limit=2&v=" + esc(m[3]), nil, "pdus", m[2:4], m[:2]},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					code, raw := asHS2.do(t, tt.method, tt.uri, tt.body)
					if code != 200 {
						t.Fatalf("%d %s", code, raw)
					}
					if err := shapes.check(t, tt.method, tt.tmpl, "", code, raw); err != nil {
						t.Errorf("not the spec's shape: %v\n%.2000s", err, raw)
					}
					ids := idsOf(t, open.version, raw, tt.key)
					for _, id := range tt.want {
						if !slices.Contains(ids, id) {
							t.Errorf("%s lacks %s: %v", tt.key, id, ids)
						}
					}
					for _, id := range tt.not {
						if slices.Contains(ids, id) {
							t.Errorf("%s has %s: %v", tt.key, id, ids)
						}
					}
				})
			}
			code, raw := asHS2.do(t, "GET", v1+"/state_ids/"+esc(open.id)+"?event_id="+esc(m[2]), nil)
			if err := shapes.check(t, "GET", v1+"/state_ids/{roomId}", "", code, raw); code != 200 || err != nil {
				t.Fatalf("state_ids: %d %v %s", code, err, raw)
			}
			var ids struct {
				PDUs  []string `json:"pdu_ids"`
				Chain []string `json:"auth_chain_ids"`
			}
			_ = json.Unmarshal(raw, &ids)
			if !slices.Contains(ids.PDUs, open.create) || !slices.Contains(ids.Chain, open.create) {
				t.Errorf("state_ids: %s", raw)
			}
		})

		t.Run("refused", func(t *testing.T) {
			c := closed.msgs[0]
			tests := []struct {
				name, method, uri string
				body              any
				code              int
				errcode           string
			}{
				{"event", "GET", v1 + "/event/" + esc(c), nil, 403, "M_FORBIDDEN"},
				{"state", "GET", v1 + "/state/" + esc(closed.id) + "?event_id=" + esc(c), nil, 403, "M_FORBIDDEN"},
				{"state_ids", "GET", v1 + "/state_ids/" + esc(closed.id) + "?event_id=" + esc(c), nil, 403, "M_FORBIDDEN"},
				{"event_auth", "GET", v1 + "/event_auth/" + esc(closed.id) + "/" + esc(c), nil, 403, "M_FORBIDDEN"},
				{"get_missing_events leaves out", "POST", v1 + "/get_missing_events/" + esc(closed.id), gme(nil, []string{c}, 10), 200, ""},
				{"backfill leaves out", "GET", v1 + "/backfill/" + esc(closed.id) + "?limit=5&v=" + esc(c), nil, 200, ""},
				{"unknown event", "GET", v1 + "/event/" + esc("$"+strings.Repeat("A", 43)), nil, 404, "M_NOT_FOUND"},
				{"unknown room", "GET", v1 + "/state_ids/" + esc("!nope:hs1.test") + "?event_id=" + esc(c), nil, 404, "M_NOT_FOUND"},
				{"event of another room", "GET", v1 + "/state_ids/" + esc(open.id) + "?event_id=" + esc(c), nil, 404, "M_NOT_FOUND"},
				{"event_auth of another room", "GET", v1 + "/event_auth/" + esc(open.id) + "/" + esc(c), nil, 404, "M_NOT_FOUND"},
				{"state without event_id", "GET", v1 + "/state/" + esc(open.id), nil, 400, "M_MISSING_PARAM"},
				{"backfill without limit", "GET", v1 + "/backfill/" + esc(open.id) + "?v=" + esc(c), nil, 400, "M_MISSING_PARAM"},
				{"backfill bad limit", "GET", v1 + "/backfill/" + esc(open.id) + "?limit=x&v=" + esc(c), nil, 400, "M_INVALID_PARAM"},
				{"backfill bad v", "GET", v1 + "/backfill/" + esc(open.id) + "?limit=1&v=nope", nil, 400, "M_INVALID_PARAM"},
				{"get_missing_events without latest", "POST", v1 + "/get_missing_events/" + esc(open.id), map[string]any{"earliest_events": []string{}}, 200, ""},
				{"get_missing_events latest not a list", "POST", v1 + "/get_missing_events/" + esc(open.id), map[string]any{"latest_events": "$x"}, 400, "M_BAD_JSON"},
				{"get_missing_events too many", "POST", v1 + "/get_missing_events/" + esc(open.id), gme(nil, slices.Repeat([]string{c}, 51), 10), 400, "M_INVALID_PARAM"},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					code, raw := asHS2.do(t, tt.method, tt.uri, tt.body)
					var body map[string]any
					_ = json.Unmarshal(raw, &body)
					if code != tt.code || (tt.errcode != "" && body["errcode"] != tt.errcode) {
						t.Fatalf("got %d %s, want %d %s", code, raw, tt.code, tt.errcode)
					}
					events, _ := body["events"].([]any)
					pdus, _ := body["pdus"].([]any)
					if code == 200 && len(events)+len(pdus) > 0 {
						t.Fatalf("the answer holds hidden events: %s", raw)
					}
				})
			}
		})

		// hs2 has a member invited to rooms of each visibility: the
		// events after the invite are visible to hs2 where invited
		// members may see them, and only there.
		t.Run("visibility", func(t *testing.T) {
			tests := []struct {
				visibility    string
				before, after int
			}{
				{"world_readable", 200, 200},
				{"shared", 403, 403},
				{"invited", 403, 200},
				{"joined", 403, 403},
			}
			for _, tt := range tests {
				t.Run(tt.visibility, func(t *testing.T) {
					room := makeFedRoom(t, alice, tt.visibility, 1)
					alice.Do(t, "POST", "/_matrix/client/v3/rooms/"+esc(room.id)+"/invite", map[string]string{"user_id": "@bob:hs2.test"}).MustOK(t)
					after := alice.Do(t, "PUT", "/_matrix/client/v3/rooms/"+esc(room.id)+"/send/m.room.message/after",
						map[string]string{"msgtype": "m.text", "body": "after"}).MustOK(t).String("event_id")
					for _, c := range []struct {
						id   string
						want int
					}{{room.msgs[0], tt.before}, {after, tt.after}} {
						if code, raw := asHS2.do(t, "GET", v1+"/event/"+esc(c.id), nil); code != c.want {
							t.Errorf("event %s: %d %s, want %d", c.id, code, raw, c.want)
						}
					}
				})
			}
		})

		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		scope := rsapi.FetchScope{RoomID: open.id, RoomVersion: gmsl.RoomVersion(open.version), Servers: []spec.ServerName{"hs1.test"}}
		fetcher := hs2.Fetcher()

		t.Run("fetcher", func(t *testing.T) {
			ev, err := fetcher.Event(ctx, scope, open.msgs[1])
			if err != nil || ev.EventID() != open.msgs[1] {
				t.Fatalf("Event: %v %v", ev, err)
			}
			missing, err := fetcher.MissingEvents(ctx, scope, open.msgs[:1], open.msgs[3:], 10)
			if err != nil || !sameIDs(missing, open.msgs[1:3]) {
				t.Fatalf("MissingEvents: %v %v", missing, err)
			}
			chain, err := fetcher.AuthChain(ctx, scope, open.msgs[1])
			if err != nil || !slices.Contains(pduIDs(chain), open.create) {
				t.Fatalf("AuthChain: %v %v", pduIDs(chain), err)
			}
			state, chain, err := fetcher.StateBefore(ctx, scope, open.msgs[2])
			if err != nil || !slices.Contains(pduIDs(state), open.create) || len(chain) == 0 {
				t.Fatalf("StateBefore: %v %v %v", pduIDs(state), pduIDs(chain), err)
			}
			ids, err := fetcher.StateIDsBefore(ctx, scope, open.msgs[2])
			if err != nil || !slices.Contains(ids, open.create) || len(ids) != len(state) {
				t.Fatalf("StateIDsBefore: %v %v", ids, err)
			}
			back, by, err := fetcher.Backfill(ctx, scope, open.msgs[3:], 3)
			if err != nil || by != "hs1.test" || !sameIDs(back, open.msgs[1:4]) {
				t.Fatalf("Backfill: %v from %q, %v", pduIDs(back), by, err)
			}
			closedScope := rsapi.FetchScope{RoomID: closed.id, RoomVersion: gmsl.RoomVersion(closed.version), Servers: []spec.ServerName{"hs1.test"}}
			if ev, err := fetcher.Event(ctx, closedScope, closed.msgs[0]); err == nil {
				t.Fatalf("Event of a room hs2 may not see: %v", ev.EventID())
			}
		})

		// A lying server, evil.test, answers with hs1's events, changed.
		originals := map[string]json.RawMessage{}
		// (The create event, before the room was world_readable, is
		// hidden from hs2: history before a history_visibility event is
		// "shared".)
		for _, id := range open.msgs {
			code, raw := asHS2.do(t, "GET", v1+"/event/"+esc(id), nil)
			var txn struct{ PDUs []json.RawMessage }
			if err := json.Unmarshal(raw, &txn); code != 200 || err != nil || len(txn.PDUs) != 1 {
				t.Fatalf("event %s: %d %s", id, code, raw)
			}
			originals[id] = txn.PDUs[0]
		}
		evil := startEvil(t, fed, "evil.test", "127.0.0.4")
		evilScope := scope
		evilScope.Servers = []spec.ServerName{"evil.test"}
		edit := func(id string, change func(map[string]any)) json.RawMessage {
			var m map[string]any
			if err := json.Unmarshal(originals[id], &m); err != nil {
				t.Fatal(err)
			}
			change(m)
			b, err := json.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			return b
		}
		forgedSig := func(m map[string]any) {
			sigs := m["signatures"].(map[string]any)["hs1.test"].(map[string]any)
			for k := range sigs {
				sigs[k] = strings.TrimRight(base64.StdEncoding.EncodeToString(make([]byte, 64)), "=")
			}
		}
		otherContent := func(m map[string]any) { m["content"].(map[string]any)["body"] = "forged" }
		m := open.msgs
		tests := []struct {
			name  string
			pdus  []json.RawMessage
			fetch func() error
		}{
			{"the event, unchanged", []json.RawMessage{originals[m[1]]}, nil},
			{"content changed (hash mismatch)", []json.RawMessage{edit(m[1], otherContent)}, func() error {
				_, err := fetcher.Event(ctx, evilScope, m[1])
				return err
			}},
			{"signature forged", []json.RawMessage{edit(m[1], forgedSig)}, func() error {
				_, err := fetcher.Event(ctx, evilScope, m[1])
				return err
			}},
			{"another event than asked", []json.RawMessage{originals[m[2]]}, func() error {
				_, err := fetcher.Event(ctx, evilScope, m[1])
				return err
			}},
			{"an event of another room", []json.RawMessage{originals[m[1]]}, func() error {
				s := evilScope
				s.RoomID = closed.id
				_, err := fetcher.Event(ctx, s, m[1])
				return err
			}},
			{"more missing events than asked", []json.RawMessage{originals[m[1]], originals[m[2]]}, func() error {
				_, err := fetcher.MissingEvents(ctx, evilScope, m[:1], m[3:], 1)
				return err
			}},
			{"one missing event forged", []json.RawMessage{originals[m[1]], edit(m[2], forgedSig)}, func() error {
				_, err := fetcher.MissingEvents(ctx, evilScope, m[:1], m[3:], 10)
				return err
			}},
			{"auth chain with a changed event", []json.RawMessage{edit(m[0], otherContent)}, func() error {
				_, err := fetcher.AuthChain(ctx, evilScope, m[1])
				return err
			}},
			{"state with a forged event", []json.RawMessage{edit(m[0], forgedSig)}, func() error {
				_, _, err := fetcher.StateBefore(ctx, evilScope, m[1])
				return err
			}},
			{"backfill with a changed event", []json.RawMessage{originals[m[2]], edit(m[1], otherContent)}, func() error {
				_, _, err := fetcher.Backfill(ctx, evilScope, m[2:3], 10)
				return err
			}},
			{"more backfilled events than asked", []json.RawMessage{originals[m[2]], originals[m[1]]}, func() error {
				_, _, err := fetcher.Backfill(ctx, evilScope, m[2:3], 1)
				return err
			}},
		}
		for _, tt := range tests {
			t.Run("evil/"+tt.name, func(t *testing.T) {
				evil.set(tt.pdus)
				if tt.fetch == nil {
					// The check of the lies below is not vacuous: what
					// evil.test serves unchanged passes.
					if ev, err := fetcher.Event(ctx, evilScope, m[1]); err != nil || ev.EventID() != m[1] {
						t.Fatalf("%v %v", ev, err)
					}
					return
				}
				if err := tt.fetch(); err == nil {
					t.Fatal("accepted")
				}
			})
		}
		t.Run("backfill: evil has nothing or lies, then hs1", func(t *testing.T) {
			s := evilScope
			s.Servers = []spec.ServerName{"evil.test", "hs1.test"}
			for _, pdus := range [][]json.RawMessage{{}, {edit(m[1], forgedSig)}} {
				evil.set(pdus)
				back, by, err := fetcher.Backfill(ctx, s, m[1:2], 10)
				if err != nil || by != "hs1.test" || !slices.Contains(pduIDs(back), m[1]) {
					t.Fatalf("%v from %q, %v", pduIDs(back), by, err)
				}
			}
		})
		t.Run("evil first, then hs1", func(t *testing.T) {
			evil.set([]json.RawMessage{edit(m[1], otherContent)})
			s := evilScope
			s.Servers = []spec.ServerName{"evil.test", "hs1.test"}
			ev, err := fetcher.Event(ctx, s, m[1])
			if err != nil || ev.Content() == nil || strings.Contains(string(ev.Content()), "forged") {
				t.Fatalf("%v %v", ev, err)
			}
		})
	})
}

func pduIDs(evs []gmsl.PDU) []string {
	ids := make([]string, len(evs))
	for i, ev := range evs {
		ids[i] = ev.EventID()
	}
	return ids
}

func sameIDs(evs []gmsl.PDU, want []string) bool {
	got := pduIDs(evs)
	slices.Sort(got)
	w := slices.Clone(want)
	slices.Sort(w)
	return slices.Equal(got, w)
}

// evilServer speaks the federation API without checking anything, and
// answers every event request with the PDUs it was last given.
type evilServer struct {
	mu   sync.Mutex
	pdus []json.RawMessage
}

func (e *evilServer) set(pdus []json.RawMessage) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.pdus = pdus
}

func startEvil(t *testing.T, fed *fedNet, name, ip string) *evilServer {
	t.Helper()
	e := &evilServer{}
	fed.serveFake(t, name, ip, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.mu.Lock()
		pdus := e.pdus
		e.mu.Unlock()
		var body any
		p := r.URL.Path
		switch {
		case strings.HasPrefix(p, "/_matrix/federation/v1/event/"), strings.HasPrefix(p, "/_matrix/federation/v1/backfill/"):
			body = map[string]any{"origin": name, "origin_server_ts": 1, "pdus": pdus}
		case strings.HasPrefix(p, "/_matrix/federation/v1/get_missing_events/"):
			body = map[string]any{"events": pdus}
		case strings.HasPrefix(p, "/_matrix/federation/v1/event_auth/"):
			body = map[string]any{"auth_chain": pdus}
		case strings.HasPrefix(p, "/_matrix/federation/v1/state/"):
			body = map[string]any{"pdus": pdus, "auth_chain": []any{}}
		default:
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(body)
	}))
	return e
}
