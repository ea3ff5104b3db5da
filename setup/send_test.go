package setup_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	gmsl "github.com/matrix-org/gomatrixserverlib"

	"myelin/internal/poll"
	"myelin/internal/signing"
	"myelin/internal/sqldb/sqldbtest"
	"myelin/internal/testserver"
)

// say sends a text message to roomID as c and returns its event ID.
func say(t testing.TB, c *testserver.Client, roomID, body string) string {
	t.Helper()
	txn := strconv.FormatInt(time.Now().UnixNano(), 36)
	return c.Do(t, "PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/send/m.room.message/"+txn,
		map[string]string{"msgtype": "m.text", "body": body}).MustOK(t).String("event_id")
}

// timeline is the bodies of the messages of roomID that c sees, oldest
// first (at most 200).
func timeline(t *testing.T, c *testserver.Client, roomID string) []string {
	t.Helper()
	r := c.Do(t, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/messages?dir=b&limit=200", nil).MustOK(t)
	var body struct {
		Chunk []struct {
			Type    string `json:"type"`
			Content struct {
				Body string `json:"body"`
			} `json:"content"`
		} `json:"chunk"`
	}
	if err := json.Unmarshal(r.Raw, &body); err != nil {
		t.Fatal(err)
	}
	var out []string
	for i := len(body.Chunk) - 1; i >= 0; i-- {
		if e := body.Chunk[i]; e.Type == "m.room.message" {
			out = append(out, e.Content.Body)
		}
	}
	return out
}

// syncBodies is the bodies of the messages of roomID in one full /sync of c.
func syncBodies(t *testing.T, c *testserver.Client, roomID string) []string {
	t.Helper()
	raw, ok := fullSyncRooms(t, c)["join"][roomID]
	if !ok {
		return nil
	}
	var room struct {
		Timeline struct {
			Events []struct {
				Type    string `json:"type"`
				Content struct {
					Body string `json:"body"`
				} `json:"content"`
			} `json:"events"`
		} `json:"timeline"`
	}
	if err := json.Unmarshal(raw, &room); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range room.Timeline.Events {
		if e.Type == "m.room.message" {
			out = append(out, e.Content.Body)
		}
	}
	return out
}

// waitTimeline waits until every client sees want as roomID's messages.
func waitTimeline(t *testing.T, roomID string, want []string, cs ...*testserver.Client) {
	t.Helper()
	for i, c := range cs {
		poll.Until(t, 20*time.Second, func() error {
			if got := timeline(t, c, roomID); !slices.Equal(got, want) {
				return fmt.Errorf("client %d sees %q, want %q", i, got, want)
			}
			return nil
		})
	}
}

// TestFederationSend: once a user of another server joined a room, its
// events reach the resident server through /send and the resident's
// reach it: messages both ways arrive in order in each side's /sync and
// /messages; a leave, a kick and a ban travel across too.
func TestFederationSend(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		fed := newFedNet(t)
		hsA := fed.start(t, "hsa.test", "127.0.0.10", dbURL)
		hsB := fed.start(t, "hsb.test", "127.0.0.11", sqldbtest.URL(t, dialectOf(dbURL)))
		alice := hsA.Register(t, "alice")
		bob := hsB.Register(t, "bob")
		carol := hsB.Register(t, "carol")
		room := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{"preset": "public_chat"}).MustOK(t).String("room_id")
		for _, c := range []*testserver.Client{bob, carol} {
			c.Do(t, "POST", "/_matrix/client/v3/join/"+url.PathEscape(room)+"?server_name=hsa.test", map[string]any{}).MustOK(t)
		}
		poll.Until(t, 20*time.Second, func() error {
			if m := joinedMembers(t, bob, room); !m["@carol:hsb.test"] {
				return fmt.Errorf("bob sees members %v", m)
			}
			return nil
		})

		var want []string
		t.Run("messages both ways, in order", func(t *testing.T) {
			for i := range 5 {
				want = append(want, "bob "+strconv.Itoa(i))
				say(t, bob, room, want[len(want)-1])
			}
			// Sends on both sides at once would fork the room, each
			// server ordering the fork its own way: alice answers once
			// she has seen bob's messages.
			waitTimeline(t, room, want, alice)
			for i := range 5 {
				want = append(want, "alice "+strconv.Itoa(i))
				say(t, alice, room, want[len(want)-1])
			}
			waitTimeline(t, room, want, alice, bob, carol)
			for _, c := range []*testserver.Client{alice, bob} {
				if got := syncBodies(t, c, room); !slices.Equal(got, want) {
					t.Fatalf("/sync shows %q, want %q", got, want)
				}
			}
		})

		t.Run("leave, kick and ban across servers", func(t *testing.T) {
			carol.Do(t, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/leave", map[string]any{}).MustOK(t)
			poll.Until(t, 20*time.Second, func() error {
				if joinedMembers(t, alice, room)["@carol:hsb.test"] {
					return fmt.Errorf("alice still sees carol joined")
				}
				return nil
			})
			alice.Do(t, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/kick", map[string]string{"user_id": "@bob:hsb.test"}).MustOK(t)
			poll.Until(t, 20*time.Second, func() error {
				r := bob.Do(t, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/state/m.room.member/@bob:hsb.test", nil)
				if r.Status != 200 || r.String("membership") != "leave" {
					return fmt.Errorf("hsb does not see bob kicked: %d %s", r.Status, r.Raw)
				}
				return nil
			})
			bob.Do(t, "POST", "/_matrix/client/v3/join/"+url.PathEscape(room)+"?server_name=hsa.test", map[string]any{}).MustOK(t)
			say(t, bob, room, "bob is back")
			want = append(want, "bob is back")
			waitTimeline(t, room, want, alice)
			alice.Do(t, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/ban", map[string]string{"user_id": "@bob:hsb.test"}).MustOK(t)
			poll.Until(t, 20*time.Second, func() error {
				// A banned user may not read the room's state.
				r := bob.Do(t, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/state/m.room.member/@bob:hsb.test", nil)
				if r.Status != 403 {
					return fmt.Errorf("hsb does not see bob banned: %d %s", r.Status, r.Raw)
				}
				return nil
			})
			r := bob.Do(t, "POST", "/_matrix/client/v3/join/"+url.PathEscape(room)+"?server_name=hsa.test", map[string]any{})
			if r.Status != 403 {
				t.Fatalf("a banned user joined again: %d %s", r.Status, r.Raw)
			}
		})
	})
}

// sendFixture crafts events of a room of hsa as hsb would, and sends them
// to hsa in transactions signed as hsb.
type sendFixture struct {
	room    string
	ver     gmsl.IRoomVersion
	key     *signing.Key
	as      *fedCaller
	auth    []string // create, power levels, bob's join
	prev    string
	depth   int64
	viewer  *testserver.Client
	txnSeen int
}

func newSendFixture(t testing.TB, fed *fedNet, hsA, hsB *testserver.Server, alice *testserver.Client, room string) *sendFixture {
	t.Helper()
	key, err := signing.LoadOrGenerate(hsB.Config.Keys.SigningKeyPath, "hsb.test")
	if err != nil {
		t.Fatal(err)
	}
	fx := &sendFixture{room: room, key: key, viewer: alice,
		as: &fedCaller{key: key, dest: "hsa.test", base: hsA.FederationURL(), client: fed.httpClient("hsa.test")}}
	r := alice.Do(t, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/state", nil).MustOK(t)
	var state []struct {
		ID       string         `json:"event_id"`
		Type     string         `json:"type"`
		StateKey string         `json:"state_key"`
		Content  map[string]any `json:"content"`
	}
	if err := json.Unmarshal(r.Raw, &state); err != nil {
		t.Fatal(err)
	}
	for _, e := range state {
		switch {
		case e.Type == "m.room.create":
			v, _ := e.Content["room_version"].(string)
			fx.ver = gmsl.MustGetRoomVersion(gmsl.RoomVersion(v))
			fx.auth = append(fx.auth, e.ID)
		case e.Type == "m.room.power_levels", e.Type == "m.room.member" && e.StateKey == "@bob:hsb.test":
			fx.auth = append(fx.auth, e.ID)
		}
	}
	fx.refresh(t)
	return fx
}

// refresh takes the room's latest event on hsa as the next prev event.
func (fx *sendFixture) refresh(t testing.TB) {
	t.Helper()
	r := fx.viewer.Do(t, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(fx.room)+"/messages?dir=b&limit=1", nil).MustOK(t)
	var body struct {
		Chunk []struct {
			ID string `json:"event_id"`
		} `json:"chunk"`
	}
	if err := json.Unmarshal(r.Raw, &body); err != nil || len(body.Chunk) == 0 {
		t.Fatalf("latest event: %v %s", err, r.Raw)
	}
	code, raw := fx.as.do(t, "GET", "/_matrix/federation/v1/event/"+url.PathEscape(body.Chunk[0].ID), nil)
	var txn struct {
		PDUs []json.RawMessage `json:"pdus"`
	}
	if err := json.Unmarshal(raw, &txn); code != 200 || err != nil || len(txn.PDUs) != 1 {
		t.Fatalf("GET /event: %d %s", code, raw)
	}
	ev, err := fx.ver.NewEventFromUntrustedJSON(txn.PDUs[0])
	if err != nil {
		t.Fatal(err)
	}
	fx.prev, fx.depth = ev.EventID(), ev.Depth()
}

// msg builds a message of bob (or of sender) signed with priv (hsb's key
// when nil), on the latest event.
func (fx *sendFixture) msg(t testing.TB, body, sender string, priv ed25519.PrivateKey) gmsl.PDU {
	t.Helper()
	if sender == "" {
		sender = "@bob:hsb.test"
	}
	if priv == nil {
		priv = fx.key.Private
	}
	content, _ := json.Marshal(map[string]string{"msgtype": "m.text", "body": body})
	proto := gmsl.ProtoEvent{SenderID: sender, RoomID: fx.room, Type: "m.room.message", Content: content,
		PrevEvents: []string{fx.prev}, AuthEvents: fx.auth, Depth: fx.depth + 1}
	ev, err := fx.ver.NewEventBuilderFromProtoEvent(&proto).Build(time.Now(), fx.key.ServerName, fx.key.KeyID, priv)
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

// send sends a transaction of pdus (and edus) as hsb.
func (fx *sendFixture) send(t testing.TB, txnID string, pdus []json.RawMessage, edus []any) (int, []byte) {
	t.Helper()
	if pdus == nil {
		pdus = []json.RawMessage{}
	}
	if edus == nil {
		edus = []any{}
	}
	return fx.as.do(t, "PUT", "/_matrix/federation/v1/send/"+url.PathEscape(txnID),
		map[string]any{"origin": "hsb.test", "origin_server_ts": time.Now().UnixMilli(), "pdus": pdus, "edus": edus})
}

// stored is the event as hsa serves it to alice (nil when it has none).
func (fx *sendFixture) stored(t testing.TB, eventID string) map[string]any {
	t.Helper()
	r := fx.viewer.Do(t, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(fx.room)+"/event/"+url.PathEscape(eventID), nil)
	if r.Status != 200 {
		return nil
	}
	return r.Body
}

func raws(evs ...gmsl.PDU) []json.RawMessage {
	out := make([]json.RawMessage, len(evs))
	for i, e := range evs {
		out[i] = json.RawMessage(e.JSON())
	}
	return out
}

// TestFederationSendChecks: what another server sends to /send is checked
// as the spec says. Each PDU stands alone: one with a forged signature, or
// whose sender's server did not sign it, or of an unknown room, gets an
// error while the others of its transaction are stored; one whose content
// does not match its hash is stored redacted. A replayed transaction gets
// the same response and is not processed again, even when its copies
// arrive at once. A transaction not from its signer, too large, or
// malformed is refused whole with its Matrix error.
func TestFederationSendChecks(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		fed := newFedNet(t)
		hsA := fed.start(t, "hsa.test", "127.0.0.12", dbURL)
		hsB := fed.start(t, "hsb.test", "127.0.0.13", sqldbtest.URL(t, dialectOf(dbURL)))
		alice := hsA.Register(t, "alice")
		bob := hsB.Register(t, "bob")
		room := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{"preset": "public_chat"}).MustOK(t).String("room_id")
		bob.Do(t, "POST", "/_matrix/client/v3/join/"+url.PathEscape(room)+"?server_name=hsa.test", map[string]any{}).MustOK(t)
		fx := newSendFixture(t, fed, hsA, hsB, alice, room)
		shapes := loadSpec(t, serverSpecFile, serverSpecURL)
		const sendTmpl = "/_matrix/federation/v1/send/{txnId}"
		_, forgedKey, _ := ed25519.GenerateKey(rand.Reader)

		// A PDU and what must come of it.
		type pduCase struct {
			ev       gmsl.PDU
			wantErr  bool // an error in the response for it
			stored   bool
			redacted bool
		}
		tamper := func(ev gmsl.PDU) gmsl.PDU {
			js := strings.Replace(string(ev.JSON()), `"body":"`, `"body":"changed `, 1)
			out, err := fx.ver.NewEventFromTrustedJSON([]byte(js), false)
			if err != nil {
				t.Fatal(err)
			}
			return out
		}
		otherRoom := func(ev gmsl.PDU) gmsl.PDU {
			js := strings.Replace(string(ev.JSON()), room, "!nosuchroom:hsa.test", 1)
			out, err := fx.ver.NewEventFromTrustedJSON([]byte(js), false)
			if err != nil {
				t.Fatal(err)
			}
			return out
		}
		tests := []struct {
			name string
			pdus func() []pduCase
		}{
			{"a good message", func() []pduCase {
				return []pduCase{{ev: fx.msg(t, "good", "", nil), stored: true}}
			}},
			{"a forged signature, beside a good message", func() []pduCase {
				return []pduCase{
					{ev: fx.msg(t, "forged", "", forgedKey), wantErr: true},
					{ev: fx.msg(t, "good beside forged", "", nil), stored: true},
				}
			}},
			{"a sender whose server did not sign", func() []pduCase {
				return []pduCase{{ev: fx.msg(t, "not mine", "@zed:hsc.test", nil), wantErr: true}}
			}},
			{"content changed after signing: stored redacted", func() []pduCase {
				return []pduCase{{ev: tamper(fx.msg(t, "original", "", nil)), stored: true, redacted: true}}
			}},
			{"a chain with a non-member's message inside: each PDU has its own result", func() []pduCase {
				// The room's PDUs of a transaction are stored in one write
				// transaction: the rejected one must not take the others
				// with it, nor the ones after it be refused.
				var out []pduCase
				for i, sender := range []string{"", "", "@carol:hsb.test", "", ""} {
					ev := fx.msg(t, "chain "+strconv.Itoa(i), sender, nil)
					if sender == "" {
						fx.prev, fx.depth = ev.EventID(), ev.Depth()
					}
					out = append(out, pduCase{ev: ev, stored: sender == ""})
				}
				return out
			}},
			{"an unknown room", func() []pduCase {
				return []pduCase{{ev: otherRoom(fx.msg(t, "elsewhere", "", nil)), wantErr: true}}
			}},
		}
		for i, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				fx.refresh(t)
				cases := tt.pdus()
				var evs []gmsl.PDU
				for _, c := range cases {
					evs = append(evs, c.ev)
				}
				code, raw := fx.send(t, "checks-"+strconv.Itoa(i), raws(evs...), nil)
				if code != 200 {
					t.Fatalf("%d %s", code, raw)
				}
				if err := shapes.check(t, "PUT", sendTmpl, "", code, raw); err != nil {
					t.Errorf("not the spec's shape: %v\n%s", err, raw)
				}
				var resp struct {
					PDUs map[string]struct {
						Error *string `json:"error"`
					} `json:"pdus"`
				}
				if err := json.Unmarshal(raw, &resp); err != nil {
					t.Fatal(err)
				}
				for _, c := range cases {
					id := c.ev.EventID()
					res, ok := resp.PDUs[id]
					if !ok {
						t.Errorf("%s: no result in %s", id, raw)
					} else if (res.Error != nil) != c.wantErr {
						t.Errorf("%s: result %s, want error %v", id, raw, c.wantErr)
					}
					got := fx.stored(t, id)
					if (got != nil) != c.stored {
						t.Errorf("%s: stored %v, want %v", id, got != nil, c.stored)
					}
					if got != nil {
						content, _ := got["content"].(map[string]any)
						if _, has := content["body"]; has == c.redacted {
							t.Errorf("%s: content %v, redacted want %v", id, content, c.redacted)
						}
					}
				}
			})
		}

		t.Run("a replayed transaction is answered again, not processed", func(t *testing.T) {
			fx.refresh(t)
			first := fx.msg(t, "first", "", nil)
			code, raw := fx.send(t, "replay", raws(first), nil)
			if code != 200 {
				t.Fatalf("%d %s", code, raw)
			}
			// The same ID with other PDUs: the recorded answer, and the
			// new PDU is not taken in.
			other := fx.msg(t, "second", "", nil)
			code2, raw2 := fx.send(t, "replay", raws(other), nil)
			if code2 != 200 || string(raw2) != string(raw) {
				t.Fatalf("replay answered %d %s, first %s", code2, raw2, raw)
			}
			if fx.stored(t, other.EventID()) != nil {
				t.Fatalf("the replay's PDU was processed")
			}
		})

		t.Run("copies of a transaction at once are processed once", func(t *testing.T) {
			fx.refresh(t)
			const n = 4
			evs := make([]gmsl.PDU, n)
			for i := range evs {
				evs[i] = fx.msg(t, "copy "+strconv.Itoa(i), "", nil)
			}
			answers := make([]string, n)
			var wg sync.WaitGroup
			for i := range n {
				wg.Go(func() {
					code, raw := fx.send(t, "concurrent", raws(evs[i]), nil)
					answers[i] = strconv.Itoa(code) + " " + string(raw)
				})
			}
			wg.Wait()
			for _, a := range answers[1:] {
				if a != answers[0] {
					t.Fatalf("answers differ: %q", answers)
				}
			}
			stored := 0
			for _, ev := range evs {
				if fx.stored(t, ev.EventID()) != nil {
					stored++
				}
			}
			if stored != 1 {
				t.Fatalf("%d of the copies' PDUs stored, want 1 (answers %q)", stored, answers)
			}
		})

		t.Run("refused whole", func(t *testing.T) {
			pdus := func(n int) []json.RawMessage {
				out := make([]json.RawMessage, n)
				for i := range out {
					out[i] = json.RawMessage(`{}`)
				}
				return out
			}
			edus := make([]any, 101)
			for i := range edus {
				edus[i] = map[string]any{"edu_type": "m.typing", "content": map[string]any{}}
			}
			now := time.Now().UnixMilli()
			tests := []struct {
				name     string
				body     any
				wantCode int
				wantErr  string
			}{
				{"origin is not the signer", map[string]any{"origin": "hsc.test", "origin_server_ts": now, "pdus": []any{}}, 403, "M_FORBIDDEN"},
				{"no origin", map[string]any{"origin_server_ts": now, "pdus": []any{}}, 400, "M_BAD_JSON"},
				{"51 PDUs", map[string]any{"origin": "hsb.test", "origin_server_ts": now, "pdus": pdus(51)}, 400, "M_BAD_JSON"},
				{"101 EDUs", map[string]any{"origin": "hsb.test", "origin_server_ts": now, "pdus": []any{}, "edus": edus}, 400, "M_BAD_JSON"},
				{"pdus not a list", map[string]any{"origin": "hsb.test", "origin_server_ts": now, "pdus": "x"}, 400, "M_BAD_JSON"},
				{"an EDU not an object", map[string]any{"origin": "hsb.test", "origin_server_ts": now, "pdus": []any{}, "edus": []any{1}}, 400, "M_BAD_JSON"},
			}
			for i, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					code, raw := fx.as.do(t, "PUT", "/_matrix/federation/v1/send/whole-"+strconv.Itoa(i), tt.body)
					var body map[string]any
					_ = json.Unmarshal(raw, &body)
					if code != tt.wantCode || body["errcode"] != tt.wantErr {
						t.Fatalf("got %d %s, want %d %s", code, raw, tt.wantCode, tt.wantErr)
					}
				})
			}
			// Without a signature, and not JSON: refused before anything
			// else is looked at.
			raw := []struct {
				name, body, authz string
				wantCode          int
				wantErr           string
			}{
				{"no X-Matrix authorization", `{"origin":"hsb.test","origin_server_ts":1,"pdus":[]}`, "", 401, "M_UNAUTHORIZED"},
				{"a forged X-Matrix signature", `{"origin":"hsb.test","origin_server_ts":1,"pdus":[]}`,
					`X-Matrix origin="hsb.test",destination="hsa.test",key="` + string(fx.key.KeyID) + `",sig="bm90IGEgc2lnbmF0dXJl"`, 401, "M_UNAUTHORIZED"},
				{"malformed JSON", `{"origin":`, "", 400, "M_NOT_JSON"},
			}
			for _, tt := range raw {
				t.Run(tt.name, func(t *testing.T) {
					req, _ := http.NewRequest("PUT", hsA.FederationURL()+"/_matrix/federation/v1/send/raw", strings.NewReader(tt.body))
					req.Header.Set("Content-Type", "application/json")
					if tt.authz != "" {
						req.Header.Set("Authorization", tt.authz)
					}
					code, body := fedDo(t, fed.httpClient("hsa.test"), req)
					if code != tt.wantCode || body["errcode"] != tt.wantErr {
						t.Fatalf("got %d %v, want %d %s", code, body, tt.wantCode, tt.wantErr)
					}
				})
			}
		})
	})
}

// stateIDs is the event IDs of roomID's current state as c sees it, sorted.
func stateIDs(t *testing.T, c *testserver.Client, roomID string) []string {
	t.Helper()
	r := c.Do(t, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/state", nil).MustOK(t)
	var state []struct {
		ID string `json:"event_id"`
	}
	if err := json.Unmarshal(r.Raw, &state); err != nil {
		t.Fatal(err)
	}
	out := make([]string, len(state))
	for i, e := range state {
		out[i] = e.ID
	}
	slices.Sort(out)
	return out
}

// sorted is a sorted copy of s.
func sorted(s []string) []string {
	out := slices.Clone(s)
	slices.Sort(out)
	return out
}

// TestFederationSendThree: a room on three servers, where each server's
// user sends, one after the other and then all at once: every server ends
// with the same messages and the same state. A server stopped while the
// others go on catches up when it is back, losing no event (the others'
// queues send again when it reaches them, and what lies between is
// fetched with /get_missing_events).
func TestFederationSendThree(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		fed := newFedNet(t)
		hsA := fed.start(t, "hsa.test", "127.0.0.14", dbURL)
		hsB := fed.start(t, "hsb.test", "127.0.0.15", sqldbtest.URL(t, dialectOf(dbURL)))
		hsC := fed.start(t, "hsc.test", "127.0.0.16", sqldbtest.URL(t, dialectOf(dbURL)))
		alice := hsA.Register(t, "alice")
		bob := hsB.Register(t, "bob")
		carol := hsC.Register(t, "carol")
		all := []*testserver.Client{alice, bob, carol}
		room := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{"preset": "public_chat"}).MustOK(t).String("room_id")
		for _, c := range []*testserver.Client{bob, carol} {
			c.Do(t, "POST", "/_matrix/client/v3/join/"+url.PathEscape(room)+"?server_name=hsa.test", map[string]any{}).MustOK(t)
		}
		for i, c := range all {
			poll.Until(t, 20*time.Second, func() error {
				if m := joinedMembers(t, c, room); len(m) != 3 {
					return fmt.Errorf("client %d sees members %v", i, m)
				}
				return nil
			})
		}

		var want []string
		t.Run("one after the other", func(t *testing.T) {
			for round := range 2 {
				for i, c := range all {
					want = append(want, fmt.Sprintf("turn %d of %d", round, i))
					say(t, c, room, want[len(want)-1])
					waitTimeline(t, room, want, all...)
				}
			}
		})

		// sameEverywhere waits until every client sees the messages of
		// want, in any order, and the same state. A transaction that
		// failed is sent again after a backoff doubling from 2 s: on a
		// loaded machine, allow for a few.
		sameEverywhere := func(t *testing.T, want []string, cs ...*testserver.Client) {
			t.Helper()
			for i, c := range cs {
				poll.Until(t, 60*time.Second, func() error {
					if got := sorted(timeline(t, c, room)); !slices.Equal(got, sorted(want)) {
						return fmt.Errorf("client %d sees %q, want %q", i, got, sorted(want))
					}
					return nil
				})
			}
			poll.Until(t, 60*time.Second, func() error {
				first := stateIDs(t, cs[0], room)
				for i, c := range cs[1:] {
					if got := stateIDs(t, c, room); !slices.Equal(got, first) {
						return fmt.Errorf("client %d sees state %q, client 0 %q", i+1, got, first)
					}
				}
				return nil
			})
		}

		t.Run("all at once", func(t *testing.T) {
			var wg sync.WaitGroup
			var mu sync.Mutex
			for i, c := range all {
				wg.Go(func() {
					for n := range 3 {
						body := fmt.Sprintf("burst %d of %d", n, i)
						say(t, c, room, body)
						mu.Lock()
						want = append(want, body)
						mu.Unlock()
					}
				})
			}
			wg.Wait()
			sameEverywhere(t, want, all...)
			// A state change after the forks: resolved alike everywhere.
			alice.Do(t, "PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/state/m.room.topic/", map[string]string{"topic": "after the burst"}).MustOK(t)
			sameEverywhere(t, want, all...)
		})

		t.Run("a server down for a while catches up", func(t *testing.T) {
			hsB.Stop()
			for n := range 3 {
				for _, c := range []*testserver.Client{alice, carol} {
					body := fmt.Sprintf("while hsb is down %d", n)
					if c == carol {
						body += " (carol)"
					}
					say(t, c, room, body)
					want = append(want, body)
				}
			}
			sameEverywhere(t, want, alice, carol)
			hsB = fed.restart(t, "hsb.test", "127.0.0.15", hsB)
			bob.Base = hsB.URL
			// Bob speaking reaches the others, which then know hsb is
			// back and send it what it missed.
			say(t, bob, room, "bob is back")
			want = append(want, "bob is back")
			sameEverywhere(t, want, all...)
		})
	})
}

// BenchmarkFederationSend measures the intake of /send: transactions of 50
// messages of a joined user of hsb, each on the one before, into a room
// of hsa, over TLS on loopback. Building and signing the events is not
// timed; each transaction is answered once hsa stored its PDUs.
func BenchmarkFederationSend(b *testing.B) {
	for i, dialect := range []string{"sqlite", "postgres"} {
		b.Run(dialect, func(b *testing.B) {
			fed := newFedNet(b)
			hsA := fed.start(b, "hsa.test", "127.0.0."+strconv.Itoa(17+2*i), sqldbtest.URL(b, dialect))
			hsB := fed.start(b, "hsb.test", "127.0.0."+strconv.Itoa(18+2*i), sqldbtest.URL(b, dialect))
			alice := hsA.Register(b, "alice")
			bob := hsB.Register(b, "bob")
			room := alice.Do(b, "POST", "/_matrix/client/v3/createRoom", map[string]any{"preset": "public_chat"}).MustOK(b).String("room_id")
			bob.Do(b, "POST", "/_matrix/client/v3/join/"+url.PathEscape(room)+"?server_name=hsa.test", map[string]any{}).MustOK(b)
			fx := newSendFixture(b, fed, hsA, hsB, alice, room)
			const perTxn = 50
			b.ReportAllocs()
			b.ResetTimer()
			var cpu time.Duration
			for n := range b.N {
				b.StopTimer()
				evs := make([]gmsl.PDU, perTxn)
				for j := range evs {
					evs[j] = fx.msg(b, fmt.Sprintf("bench %d.%d", n, j), "", nil)
					fx.prev, fx.depth = evs[j].EventID(), evs[j].Depth()
				}
				b.StartTimer()
				start := processCPU(b)
				code, raw := fx.send(b, "bench-"+strconv.Itoa(n), raws(evs...), nil)
				if code != 200 || strings.Contains(string(raw), `"error"`) {
					b.Fatalf("%d %s", code, raw)
				}
				cpu += processCPU(b) - start
			}
			b.ReportMetric(float64(b.N*perTxn)/b.Elapsed().Seconds(), "pdus/s")
			// On a shared machine the wall time measures the neighbours
			// too; the CPU taken (both servers, the client) does not.
			b.ReportMetric(float64(cpu.Microseconds())/1000/float64(b.N), "cpu-ms/txn")
		})
	}
}

// processCPU is the CPU time (user and system) this process has used.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
