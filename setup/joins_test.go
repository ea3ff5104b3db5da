package setup_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/matrix-org/gomatrix"
	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"

	"myelin/internal/poll"
	"myelin/internal/signing"
	"myelin/internal/sqldb/sqldbtest"
	"myelin/internal/testserver"
)

// joinedMembers lists a room's joined members as c sees them.
func joinedMembers(t testing.TB, c *testserver.Client, roomID string) map[string]bool {
	t.Helper()
	r := c.Do(t, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(roomID)+"/joined_members", nil)
	var body struct {
		Joined map[string]json.RawMessage `json:"joined"`
	}
	_ = json.Unmarshal(r.Raw, &body)
	out := map[string]bool{}
	for u := range body.Joined {
		out[u] = true
	}
	return out
}

// fullSyncRooms is the rooms section of one full /sync of c.
func fullSyncRooms(t *testing.T, c *testserver.Client) map[string]map[string]json.RawMessage {
	t.Helper()
	r := c.Do(t, "GET", "/_matrix/client/v3/sync?timeout=0", nil).MustOK(t)
	var body struct {
		Rooms map[string]map[string]json.RawMessage `json:"rooms"`
	}
	if err := json.Unmarshal(r.Raw, &body); err != nil {
		t.Fatal(err)
	}
	return body.Rooms
}

// inviteAcceptReject has inviter invite two users of another server into
// room, which that server is not in: the invites reach it only through
// /invite, and the answers go back through make_join/send_join and
// make_leave/send_leave. One accepts by room ID alone, one rejects.
func inviteAcceptReject(t *testing.T, inviter *testserver.Client, room string, acceptor *testserver.Client, acceptorID string, rejector *testserver.Client, rejectorID string) {
	t.Helper()
	for _, u := range []string{acceptorID, rejectorID} {
		inviter.Do(t, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/invite", map[string]string{"user_id": u}).MustOK(t)
	}
	for _, c := range []*testserver.Client{acceptor, rejector} {
		poll.Until(t, 10*time.Second, func() error {
			raw, ok := fullSyncRooms(t, c)["invite"][room]
			if !ok || !strings.Contains(string(raw), `"m.room.join_rules"`) {
				return fmt.Errorf("no invite with its room state in /sync: %s", raw)
			}
			return nil
		})
	}
	// The rejection comes first: once the acceptor is in, its server is
	// in the room, and its users' leaves travel as any event of the room
	// (the outbound queue), not through make_leave.
	rejector.Do(t, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/leave", map[string]any{}).MustOK(t)
	acceptor.Do(t, "POST", "/_matrix/client/v3/join/"+url.PathEscape(room), map[string]any{}).MustOK(t)
	poll.Until(t, 10*time.Second, func() error {
		if !joinedMembers(t, inviter, room)[acceptorID] {
			return fmt.Errorf("the inviter does not see %s joined", acceptorID)
		}
		r := inviter.Do(t, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/state/m.room.member/"+rejectorID, nil)
		if r.String("membership") != "leave" {
			return fmt.Errorf("%s's membership on the inviter's server: %s", rejectorID, r.Raw)
		}
		return nil
	})
	poll.Until(t, 10*time.Second, func() error {
		if _, ok := fullSyncRooms(t, rejector)["invite"][room]; ok {
			return fmt.Errorf("%s still sees the invite", rejectorID)
		}
		if _, ok := fullSyncRooms(t, acceptor)["join"][room]; !ok {
			return fmt.Errorf("%s's sync does not list the room as joined", acceptorID)
		}
		return nil
	})
}

// TestFederationJoins: users of one Myelin server join, leave and are
// refused rooms of another, over signed requests (make_join, send_join,
// make_leave, send_leave): the resident server sees them, and the joining
// server takes the room in from the send_join answer, so its /sync shows
// the room with its state.
func TestFederationJoins(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		fed := newFedNet(t)
		hsA := fed.start(t, "hsa.test", "127.0.0.4", dbURL)
		hsB := fed.start(t, "hsb.test", "127.0.0.5", sqldbtest.URL(t, dialectOf(dbURL)))
		alice := hsA.Register(t, "alice")
		bob := hsB.Register(t, "bob")
		carol := hsB.Register(t, "carol")
		dave := hsB.Register(t, "dave")
		erin := hsB.Register(t, "erin")
		frank := hsB.Register(t, "frank")
		gus := hsB.Register(t, "gus")

		pub := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{
			"preset": "public_chat", "name": "Public", "room_alias_name": "pub",
		}).MustOK(t).String("room_id")
		private := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{
			"preset": "private_chat",
		}).MustOK(t).String("room_id")
		alice.Do(t, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(pub)+"/ban", map[string]string{"user_id": "@dave:hsb.test"}).MustOK(t)

		t.Run("join a public room by ID", func(t *testing.T) {
			r := bob.Do(t, "POST", "/_matrix/client/v3/join/"+url.PathEscape(pub)+"?server_name=hsa.test", map[string]any{})
			r.MustOK(t)
			if r.String("room_id") != pub {
				t.Fatalf("joined %s, want %s", r.String("room_id"), pub)
			}
			poll.Until(t, 10*time.Second, func() error {
				if !joinedMembers(t, alice, pub)["@bob:hsb.test"] {
					return fmt.Errorf("alice does not see bob joined")
				}
				return nil
			})
			// hsb took the room in: its state is there, and bob's /sync
			// lists the room with it.
			if m := joinedMembers(t, bob, pub); !m["@alice:hsa.test"] || !m["@bob:hsb.test"] {
				t.Fatalf("bob sees members %v", m)
			}
			r = bob.Do(t, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(pub)+"/state/m.room.name/", nil).MustOK(t)
			if r.String("name") != "Public" {
				t.Fatalf("room name on hsb: %s", r.Raw)
			}
			poll.Until(t, 10*time.Second, func() error {
				joined := fullSyncRooms(t, bob)["join"]
				raw, ok := joined[pub]
				if !ok {
					return fmt.Errorf("bob's sync does not list the room")
				}
				if !strings.Contains(string(raw), `"m.room.create"`) || !strings.Contains(string(raw), `"m.room.name"`) {
					return fmt.Errorf("bob's sync lacks the room's state: %s", raw)
				}
				return nil
			})
		})

		t.Run("join by alias", func(t *testing.T) {
			// hsb asks the alias's server which room it names
			// (/query/directory), then joins through that server.
			byAlias := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{
				"preset": "public_chat", "room_alias_name": "lobby",
			}).MustOK(t).String("room_id")
			r := carol.Do(t, "POST", "/_matrix/client/v3/join/"+url.PathEscape("#lobby:hsa.test"), map[string]any{}).MustOK(t)
			if r.String("room_id") != byAlias {
				t.Fatalf("joined %s, want %s", r.String("room_id"), byAlias)
			}
			poll.Until(t, 10*time.Second, func() error {
				if !joinedMembers(t, alice, byAlias)["@carol:hsb.test"] {
					return fmt.Errorf("alice does not see carol joined")
				}
				return nil
			})
			r = carol.Do(t, "POST", "/_matrix/client/v3/join/"+url.PathEscape("#nosuchalias:hsa.test"), map[string]any{})
			if r.Status != 404 || r.String("errcode") != "M_NOT_FOUND" {
				t.Fatalf("unknown remote alias: %d %s", r.Status, r.Raw)
			}
		})

		t.Run("invite, accept and reject", func(t *testing.T) {
			inviteAcceptReject(t, alice, private, erin, "@erin:hsb.test", frank, "@frank:hsb.test")
		})

		t.Run("createRoom invites of another server", func(t *testing.T) {
			// The invites of /createRoom reach the invitee's server as
			// /invite does: it signs them, and its users see them and
			// can join (sytest's "If remote user leaves room..." rooms).
			room := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{
				"preset": "private_chat", "invite": []string{"@erin:hsb.test", "@frank:hsb.test"},
			}).MustOK(t).String("room_id")
			for _, c := range []*testserver.Client{erin, frank} {
				poll.Until(t, 10*time.Second, func() error {
					if _, ok := fullSyncRooms(t, c)["invite"][room]; !ok {
						return fmt.Errorf("no invite in /sync")
					}
					return nil
				})
			}
			erin.Do(t, "POST", "/_matrix/client/v3/join/"+url.PathEscape(room), map[string]any{}).MustOK(t)
			poll.Until(t, 10*time.Second, func() error {
				if _, ok := fullSyncRooms(t, erin)["join"][room]; !ok {
					return fmt.Errorf("erin's sync does not list the room as joined")
				}
				if !joinedMembers(t, alice, room)["@erin:hsb.test"] {
					return fmt.Errorf("alice does not see erin joined")
				}
				return nil
			})
		})

		t.Run("invite, accept and reject in a room version 12 room", func(t *testing.T) {
			// The room ID names no server: hsb must reach the room through
			// the inviter's server.
			v12 := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{
				"preset": "private_chat", "room_version": "12",
			}).MustOK(t).String("room_id")
			inviteAcceptReject(t, alice, v12, erin, "@erin:hsb.test", frank, "@frank:hsb.test")
		})

		t.Run("knock", func(t *testing.T) {
			knockRoom := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{
				"preset": "private_chat", "room_version": "10", "name": "Knock here",
				"initial_state": []map[string]any{{"type": "m.room.join_rules", "state_key": "", "content": map[string]string{"join_rule": "knock"}}},
			}).MustOK(t).String("room_id")
			gus.Do(t, "POST", "/_matrix/client/v3/knock/"+url.PathEscape(knockRoom)+"?via=hsa.test", map[string]any{}).MustOK(t)
			poll.Until(t, 10*time.Second, func() error {
				r := alice.Do(t, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(knockRoom)+"/state/m.room.member/@gus:hsb.test", nil)
				if r.String("membership") != "knock" {
					return fmt.Errorf("gus's membership on hsa: %s", r.Raw)
				}
				raw, ok := fullSyncRooms(t, gus)["knock"][knockRoom]
				if !ok || !strings.Contains(string(raw), "Knock here") {
					return fmt.Errorf("gus's sync does not show the knock with the room's state: %s", raw)
				}
				return nil
			})
		})

		refusals := []struct {
			name     string
			who      *testserver.Client
			roomID   string
			wantCode int
			wantErr  string
		}{
			{"a banned user", dave, pub, 403, "M_FORBIDDEN"},
			{"an invite-only room", bob, private, 403, "M_FORBIDDEN"},
			{"an unknown room", bob, "!nosuchroom:hsa.test", 404, "M_NOT_FOUND"},
		}
		for _, tt := range refusals {
			t.Run("refuses "+tt.name, func(t *testing.T) {
				r := tt.who.Do(t, "POST", "/_matrix/client/v3/join/"+url.PathEscape(tt.roomID)+"?server_name=hsa.test", map[string]any{})
				if r.Status != tt.wantCode || r.String("errcode") != tt.wantErr {
					t.Fatalf("got %d %s, want %d %s", r.Status, r.Raw, tt.wantCode, tt.wantErr)
				}
			})
		}
	})
}

// TestFederationJoinsRefused: what another server sends to the membership
// endpoints is checked as the spec says: a user of another server than
// the origin, an event changed after it was signed or claiming another
// sender, an invite of a user who is not of the receiving server, an
// unsupported room version. Each is refused with its Matrix error.
func TestFederationJoinsRefused(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		fed := newFedNet(t)
		hsA := fed.start(t, "hsa.test", "127.0.0.6", dbURL)
		hsB := fed.start(t, "hsb.test", "127.0.0.7", sqldbtest.URL(t, dialectOf(dbURL)))
		alice := hsA.Register(t, "alice")
		hsB.Register(t, "gina")
		room := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{"preset": "public_chat"}).MustOK(t).String("room_id")
		keyA, err := signing.LoadOrGenerate(hsA.Config.Keys.SigningKeyPath, "hsa.test")
		if err != nil {
			t.Fatal(err)
		}
		keyB, err := signing.LoadOrGenerate(hsB.Config.Keys.SigningKeyPath, "hsb.test")
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		fromB := hsB.FederationClient()

		mj, err := fromB.MakeJoin(ctx, "hsb.test", "hsa.test", room, "@gina:hsb.test")
		if err != nil {
			t.Fatalf("make_join: %v", err)
		}
		verImpl, err := gmsl.GetRoomVersion(mj.RoomVersion)
		if err != nil {
			t.Fatal(err)
		}
		build := func(t *testing.T, proto gmsl.ProtoEvent, key *signing.Key) gmsl.PDU {
			t.Helper()
			ev, err := verImpl.NewEventBuilderFromProtoEvent(&proto).Build(time.Now(), key.ServerName, key.KeyID, key.Private)
			if err != nil {
				t.Fatal(err)
			}
			return ev
		}
		// changed: the join with its content altered after signing.
		good := build(t, mj.JoinEvent, keyB)
		changedJSON := strings.Replace(string(good.JSON()), `"membership":"join"`, `"membership":"join","displayname":"Mallory"`, 1)
		changed, err := verImpl.NewEventFromTrustedJSON([]byte(changedJSON), false)
		if err != nil {
			t.Fatal(err)
		}
		// otherSender: a join of a user of hsc, sent by hsb.
		other := mj.JoinEvent
		zed := "@zed:hsc.test"
		other.SenderID, other.StateKey = zed, &zed
		otherSender := build(t, other, keyB)

		code := func(err error) (int, string) {
			var he gomatrix.HTTPError
			if !errors.As(err, &he) {
				return 0, fmt.Sprint(err)
			}
			var body struct {
				Code string `json:"errcode"`
			}
			_ = json.Unmarshal(he.Contents, &body)
			return he.Code, body.Code
		}
		joins := []struct {
			name     string
			ev       gmsl.PDU
			wantCode int
			wantErr  string
		}{
			{"an event changed after signing", changed, 400, "M_BAD_JSON"},
			{"a sender of another server than the origin", otherSender, 403, "M_FORBIDDEN"},
		}
		for _, tt := range joins {
			t.Run("send_join refuses "+tt.name, func(t *testing.T) {
				_, err := fromB.SendJoin(ctx, "hsb.test", "hsa.test", tt.ev)
				if c, e := code(err); c != tt.wantCode || e != tt.wantErr {
					t.Fatalf("got %d %s, want %d %s", c, e, tt.wantCode, tt.wantErr)
				}
			})
		}
		t.Run("make_join refuses a user of another server than the origin", func(t *testing.T) {
			_, err := fromB.MakeJoin(ctx, "hsb.test", "hsa.test", room, "@zed:hsc.test")
			if c, e := code(err); c != 403 || e != "M_FORBIDDEN" {
				t.Fatalf("got %d %s, want 403 M_FORBIDDEN", c, e)
			}
		})
		t.Run("make_join refuses a server without the room's version", func(t *testing.T) {
			fr := fclient.NewFederationRequest("GET", "hsb.test", "hsa.test",
				"/_matrix/federation/v1/make_join/"+url.PathEscape(room)+"/"+url.PathEscape("@gina:hsb.test")+"?ver=1")
			if err := fr.Sign("hsb.test", keyB.KeyID, keyB.Private); err != nil {
				t.Fatal(err)
			}
			req, err := fr.HTTPRequest()
			if err != nil {
				t.Fatal(err)
			}
			req.URL, _ = url.Parse(hsA.FederationURL() + req.URL.RequestURI())
			c, body := fedDo(t, fed.httpClient("hsa.test"), req)
			if c != 400 || body["errcode"] != "M_INCOMPATIBLE_ROOM_VERSION" || body["room_version"] != string(mj.RoomVersion) {
				t.Fatalf("got %d %v", c, body)
			}
		})
		t.Run("the changed and forged joins were not stored", func(t *testing.T) {
			for _, u := range []string{"@gina:hsb.test", zed} {
				r := alice.Do(t, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/state/m.room.member/"+u, nil)
				if r.Status != 404 {
					t.Errorf("%s: %s", u, r.Raw)
				}
			}
		})

		invites := []struct {
			name     string
			invitee  string
			sender   string
			wantCode int
			wantErr  string
		}{
			{"an invitee of another server", "@alice:hsa.test", "@alice:hsa.test", 403, "M_FORBIDDEN"},
			{"a sender of another server than the origin", "@gina:hsb.test", "@zed:hsc.test", 403, "M_FORBIDDEN"},
		}
		for _, tt := range invites {
			t.Run("invite refuses "+tt.name, func(t *testing.T) {
				invitee := tt.invitee
				ev := build(t, gmsl.ProtoEvent{
					SenderID: tt.sender, RoomID: room, Type: "m.room.member", StateKey: &invitee,
					Content: []byte(`{"membership":"invite"}`), PrevEvents: mj.JoinEvent.PrevEvents,
					AuthEvents: mj.JoinEvent.AuthEvents, Depth: mj.JoinEvent.Depth,
				}, keyA)
				req, err := fclient.NewInviteV2Request(ev, nil)
				if err != nil {
					t.Fatal(err)
				}
				_, err = hsA.FederationClient().SendInviteV2(ctx, "hsa.test", "hsb.test", req)
				if c, e := code(err); c != tt.wantCode || e != tt.wantErr {
					t.Fatalf("got %d %s, want %d %s", c, e, tt.wantCode, tt.wantErr)
				}
			})
		}
	})
}
