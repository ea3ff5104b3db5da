package setup_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/tidwall/gjson"

	"myelin/internal/poll"
	"myelin/internal/signing"
	"myelin/internal/sqldb/sqldbtest"
	"myelin/internal/testserver"
)

// hierarchyRooms lists the room IDs of a client /hierarchy answer.
func hierarchyRooms(t *testing.T, r *testserver.Response) []string {
	t.Helper()
	var body struct {
		Rooms []struct {
			RoomID string `json:"room_id"`
		} `json:"rooms"`
	}
	if err := json.Unmarshal(r.Raw, &body); err != nil {
		t.Fatalf("%s: %v", r.Raw, err)
	}
	var ids []string
	for _, room := range body.Rooms {
		ids = append(ids, room.RoomID)
	}
	slices.Sort(ids)
	return ids
}

// TestFederationReadEndpoints: two Myelin servers read each other's
// public room directory, space hierarchies, OpenID tokens and events by
// time, over the federation API and through the client API, in the
// spec's shapes.
func TestFederationReadEndpoints(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		fed := newFedNet(t)
		hsC := fed.start(t, "hsc.test", "127.0.0.11", dbURL)
		hsD := fed.start(t, "hsd.test", "127.0.0.12", sqldbtest.URL(t, dialectOf(dbURL)))
		alice := hsC.Register(t, "alice")
		bob := hsD.Register(t, "bob")
		keyD, err := signing.LoadOrGenerate(hsD.Config.Keys.SigningKeyPath, "hsd.test")
		if err != nil {
			t.Fatal(err)
		}
		asD := &fedCaller{key: keyD, dest: "hsc.test", base: hsC.FederationURL(), client: fed.httpClient("hsc.test")}
		fedShapes := loadSpec(t, serverSpecFile, serverSpecURL)
		clientShapes := loadClientSpec(t)
		esc := url.PathEscape
		const v1 = "/_matrix/federation/v1"
		createRoom := func(c *testserver.Client, body map[string]any) string {
			t.Helper()
			return c.Do(t, "POST", "/_matrix/client/v3/createRoom", body).MustOK(t).String("room_id")
		}

		t.Run("publicRooms", func(t *testing.T) {
			lobby := createRoom(alice, map[string]any{"preset": "public_chat", "visibility": "public", "name": "The Lobby", "topic": "say hello"})
			createRoom(alice, map[string]any{"preset": "public_chat", "visibility": "public", "name": "Kitchen"})
			createRoom(alice, map[string]any{"preset": "private_chat", "name": "Secret lobby"})
			for _, tt := range []struct {
				name, method string
				body         any
				want         int
			}{
				{"GET", "GET", nil, 2},
				{"POST", "POST", map[string]any{}, 2},
				{"POST filtered", "POST", map[string]any{"filter": map[string]any{"generic_search_term": "LOBBY"}}, 1},
				{"POST limit", "POST", map[string]any{"limit": 1}, 1},
			} {
				t.Run("federation "+tt.name, func(t *testing.T) {
					code, raw := asD.do(t, tt.method, v1+"/publicRooms", tt.body)
					if err := fedShapes.check(t, tt.method, v1+"/publicRooms", "", code, raw); code != 200 || err != nil {
						t.Fatalf("%d %v %s", code, err, raw)
					}
					var page struct {
						Chunk []map[string]any `json:"chunk"`
					}
					_ = json.Unmarshal(raw, &page)
					if len(page.Chunk) != tt.want {
						t.Fatalf("%d rooms, want %d: %s", len(page.Chunk), tt.want, raw)
					}
				})
			}
			// bob reads hsc's directory through his own server.
			r := bob.Do(t, "GET", "/_matrix/client/v3/publicRooms?server=hsc.test", nil).MustOK(t)
			clientShapes.validate(t, "GET", clientV3+"/publicRooms", "server=hsc.test", r)
			if n := len(r.Body["chunk"].([]any)); n != 2 {
				t.Fatalf("bob sees %d rooms of hsc: %s", n, r.Raw)
			}
			r = bob.Do(t, "POST", "/_matrix/client/v3/publicRooms?server=hsc.test", map[string]any{"filter": map[string]any{"generic_search_term": "hello"}, "limit": 5}).MustOK(t)
			chunk := r.Body["chunk"].([]any)
			if len(chunk) != 1 || chunk[0].(map[string]any)["room_id"] != lobby {
				t.Fatalf("bob's search of hsc's directory: %s", r.Raw)
			}
			// Paging is hsc's, carried through.
			r = bob.Do(t, "POST", "/_matrix/client/v3/publicRooms?server=hsc.test", map[string]any{"limit": 1}).MustOK(t)
			next := r.String("next_batch")
			r2 := bob.Do(t, "POST", "/_matrix/client/v3/publicRooms?server=hsc.test", map[string]any{"limit": 1, "since": next}).MustOK(t)
			if next == "" || r2.Raw == nil || string(r.Raw) == string(r2.Raw) {
				t.Fatalf("pages: %s then %s", r.Raw, r2.Raw)
			}
			for _, tt := range []struct {
				name, path string
				status     int
				errcode    string
			}{
				{"bad since", "/_matrix/client/v3/publicRooms?server=hsc.test&since=zzz", 400, "M_INVALID_PARAM"},
				{"unknown server", "/_matrix/client/v3/publicRooms?server=nowhere.test", 502, "M_UNKNOWN"},
				{"bad server", "/_matrix/client/v3/publicRooms?server=a%20b", 400, "M_INVALID_PARAM"},
			} {
				if r := bob.Do(t, "GET", tt.path, nil); r.Status != tt.status || r.String("errcode") != tt.errcode {
					t.Errorf("%s: %d %s, want %d %s", tt.name, r.Status, r.Raw, tt.status, tt.errcode)
				}
			}
		})

		t.Run("openid", func(t *testing.T) {
			r := bob.Do(t, "POST", "/_matrix/client/v3/user/"+esc("@bob:hsd.test")+"/openid/request_token", map[string]any{}).MustOK(t)
			clientShapes.validate(t, "POST", clientV3+"/user/{userId}/openid/request_token", "", r)
			if r.String("token_type") != "Bearer" || r.String("matrix_server_name") != "hsd.test" || r.Body["expires_in"].(float64) <= 0 {
				t.Fatalf("token: %s", r.Raw)
			}
			token := r.String("access_token")
			// A third party (here: hsc's side of the test, unsigned, as an
			// integration manager asks) checks it with bob's server.
			// Both listeners answer it: services that know the server by
			// its client URL ask there (as sytest does).
			for _, base := range []string{hsD.FederationURL(), hsD.ClientURL()} {
				userinfo := func(query string) (int, []byte) {
					resp, err := fed.httpClient("hsd.test").Get(base + v1 + "/openid/userinfo" + query)
					if err != nil {
						t.Fatal(err)
					}
					defer resp.Body.Close()
					raw, _ := io.ReadAll(resp.Body)
					return resp.StatusCode, raw
				}
				code, raw := userinfo("?access_token=" + url.QueryEscape(token))
				if err := fedShapes.check(t, "GET", v1+"/openid/userinfo", "", code, raw); code != 200 || err != nil || !json.Valid(raw) {
					t.Fatalf("userinfo at %s: %d %v %s", base, code, err, raw)
				}
				var info struct{ Sub string }
				_ = json.Unmarshal(raw, &info)
				if info.Sub != "@bob:hsd.test" {
					t.Fatalf("userinfo at %s: %s", base, raw)
				}
				for _, tt := range []struct{ query, errcode string }{
					{"?access_token=" + url.QueryEscape(token+"x"), "M_UNKNOWN_TOKEN"},
					{"?access_token=an%2Finvalid%2Ftoken", "M_UNKNOWN_TOKEN"},
					{"", "M_MISSING_TOKEN"},
				} {
					if code, raw := userinfo(tt.query); code != 401 || errcodeOf(raw) != tt.errcode {
						t.Errorf("userinfo at %s%s: %d %s, want 401 %s", base, tt.query, code, raw, tt.errcode)
					}
				}
			}
			if r := bob.Do(t, "POST", "/_matrix/client/v3/user/"+esc("@alice:hsc.test")+"/openid/request_token", map[string]any{}); r.Status != 403 {
				t.Errorf("a token for someone else: %#v", r)
			}
		})

		t.Run("timestamp_to_event", func(t *testing.T) {
			room := createRoom(alice, map[string]any{"preset": "public_chat", "initial_state": []any{map[string]any{
				"type": "m.room.history_visibility", "state_key": "", "content": map[string]string{"history_visibility": "world_readable"}}}})
			hidden := createRoom(alice, map[string]any{"preset": "public_chat"})
			var ids []string
			var times []int64
			for i := range 3 {
				id := alice.Do(t, "PUT", "/_matrix/client/v3/rooms/"+esc(room)+"/send/m.room.message/t"+strconv.Itoa(i),
					map[string]string{"msgtype": "m.text", "body": "m" + strconv.Itoa(i)}).MustOK(t).String("event_id")
				ev := alice.Do(t, "GET", "/_matrix/client/v3/rooms/"+esc(room)+"/event/"+esc(id), nil).MustOK(t)
				ids = append(ids, id)
				times = append(times, int64(ev.Body["origin_server_ts"].(float64)))
				// Distinct timestamps, so each is the one answer.
				poll.Until(t, time.Second, func() error {
					if time.Now().UnixMilli() <= times[i] {
						return fmt.Errorf("same millisecond")
					}
					return nil
				})
			}
			tte := "/rooms/" + esc(room) + "/timestamp_to_event"
			for _, tt := range []struct {
				name string
				ts   int64
				dir  string
				want string
			}{
				{"forward from a message", times[1], "f", ids[1]},
				{"forward from before it", times[1] - 1, "f", ids[1]},
				{"backward from after it", times[1] + 1, "b", ids[1]},
				{"backward from the last", times[2], "b", ids[2]},
			} {
				t.Run(tt.name, func(t *testing.T) {
					q := "?ts=" + strconv.FormatInt(tt.ts, 10) + "&dir=" + tt.dir
					r := alice.Do(t, "GET", "/_matrix/client/v1"+tte+q, nil).MustOK(t)
					clientShapes.validate(t, "GET", "/_matrix/client/v1/rooms/{roomId}/timestamp_to_event", q[1:], r)
					if r.String("event_id") != tt.want {
						t.Errorf("client: %s, want %s", r.Raw, tt.want)
					}
					code, raw := asD.do(t, "GET", v1+"/timestamp_to_event/"+esc(room)+q, nil)
					if err := fedShapes.check(t, "GET", v1+"/timestamp_to_event/{roomId}", q[1:], code, raw); code != 200 || err != nil {
						t.Fatalf("federation: %d %v %s", code, err, raw)
					}
					var got struct {
						EventID string `json:"event_id"`
					}
					_ = json.Unmarshal(raw, &got)
					if got.EventID != tt.want {
						t.Errorf("federation: %s, want %s", raw, tt.want)
					}
				})
			}
			for _, tt := range []struct {
				name, q string
				status  int
				errcode string
			}{
				{"no dir", "?ts=1", 400, "M_MISSING_PARAM"},
				{"bad dir", "?ts=1&dir=x", 400, "M_INVALID_PARAM"},
				{"bad ts", "?ts=soon&dir=f", 400, "M_INVALID_PARAM"},
				{"nothing after", "?ts=" + strconv.FormatInt(time.Now().Add(time.Hour).UnixMilli(), 10) + "&dir=f", 404, "M_NOT_FOUND"},
			} {
				if r := alice.Do(t, "GET", "/_matrix/client/v1"+tte+tt.q, nil); r.Status != tt.status || r.String("errcode") != tt.errcode {
					t.Errorf("%s: %d %s, want %d %s", tt.name, r.Status, r.Raw, tt.status, tt.errcode)
				}
			}
			if r := bob.Do(t, "GET", "/_matrix/client/v1"+tte+"?ts=1&dir=f", nil); r.Status != 404 {
				t.Errorf("bob, on a server not in the room, is answered: %#v", r)
			}
			// A room whose history hsd may not see names no event to it.
			if code, raw := asD.do(t, "GET", v1+"/timestamp_to_event/"+esc(hidden)+"?ts=1&dir=f", nil); code != 404 || errcodeOf(raw) != "M_NOT_FOUND" {
				t.Errorf("federation, hidden room: %d %s", code, raw)
			}
			// bob joins after the messages: hsd has nothing of the room
			// from before his join, and asks hsc.
			bob.Do(t, "POST", "/_matrix/client/v3/join/"+esc(room)+"?server_name=hsc.test", map[string]any{}).MustOK(t)
			q := "?ts=" + strconv.FormatInt(times[1], 10) + "&dir=b"
			poll.Until(t, 10*time.Second, func() error {
				r := bob.Do(t, "GET", "/_matrix/client/v1"+tte+q, nil)
				if r.Status != 200 || r.String("event_id") != ids[1] {
					return fmt.Errorf("bob: %d %s, want %s", r.Status, r.Raw, ids[1])
				}
				return nil
			})
		})

		t.Run("hierarchy", func(t *testing.T) {
			space := createRoom(alice, map[string]any{"preset": "public_chat", "name": "Space", "creation_content": map[string]any{"type": "m.space"}})
			open := createRoom(alice, map[string]any{"preset": "public_chat", "name": "Open"})
			private := createRoom(alice, map[string]any{"preset": "private_chat", "name": "Private"})
			remote := createRoom(bob, map[string]any{"preset": "public_chat", "name": "On hsd"})
			noVia := createRoom(alice, map[string]any{"preset": "public_chat"})
			child := func(room, via string, suggested bool) {
				content := map[string]any{"via": []string{via}, "suggested": suggested}
				if via == "" {
					content = map[string]any{}
				}
				alice.Do(t, "PUT", "/_matrix/client/v3/rooms/"+esc(space)+"/state/m.space.child/"+esc(room), content).MustOK(t)
			}
			child(open, "hsc.test", true)
			child(private, "hsc.test", false)
			child(remote, "hsd.test", false)
			child(noVia, "", false)

			// hsd asks hsc: its rooms hsd may peek, the others' IDs.
			code, raw := asD.do(t, "GET", v1+"/hierarchy/"+esc(space), nil)
			if err := fedShapes.check(t, "GET", v1+"/hierarchy/{roomId}", "", code, raw); code != 200 || err != nil {
				t.Fatalf("federation hierarchy: %d %v %s", code, err, raw)
			}
			var h struct {
				Room struct {
					RoomID        string            `json:"room_id"`
					RoomType      string            `json:"room_type"`
					ChildrenState []json.RawMessage `json:"children_state"`
				} `json:"room"`
				Children []struct {
					RoomID string `json:"room_id"`
				} `json:"children"`
				Inaccessible []string `json:"inaccessible_children"`
			}
			_ = json.Unmarshal(raw, &h)
			if h.Room.RoomID != space || h.Room.RoomType != "m.space" || len(h.Room.ChildrenState) != 3 ||
				len(h.Children) != 1 || h.Children[0].RoomID != open || !slices.Equal(h.Inaccessible, []string{private}) {
				t.Fatalf("federation hierarchy: %s", raw)
			}
			code, raw = asD.do(t, "GET", v1+"/hierarchy/"+esc(space)+"?suggested_only=true", nil)
			if code != 200 || len(gjson.GetBytes(raw, "room.children_state").Array()) != 1 {
				t.Fatalf("suggested only: %d %s", code, raw)
			}
			if code, raw := asD.do(t, "GET", v1+"/hierarchy/"+esc(private), nil); code != 404 || errcodeOf(raw) != "M_NOT_FOUND" {
				t.Errorf("hierarchy of a room hsd may not see: %d %s", code, raw)
			}

			// alice's walk: her own rooms from state, hsd's from hsd.
			r := alice.Do(t, "GET", "/_matrix/client/v1/rooms/"+esc(space)+"/hierarchy", nil).MustOK(t)
			clientShapes.validate(t, "GET", "/_matrix/client/v1/rooms/{roomId}/hierarchy", "", r)
			if got, want := hierarchyRooms(t, r), sorted([]string{space, open, private, remote}); !slices.Equal(got, want) {
				t.Fatalf("alice's hierarchy %v, want %v: %s", got, want, r.Raw)
			}
			r = alice.Do(t, "GET", "/_matrix/client/v1/rooms/"+esc(space)+"/hierarchy?suggested_only=true", nil).MustOK(t)
			if got, want := hierarchyRooms(t, r), sorted([]string{space, open}); !slices.Equal(got, want) {
				t.Fatalf("suggested only: %v, want %v", got, want)
			}
			r = alice.Do(t, "GET", "/_matrix/client/v1/rooms/"+esc(space)+"/hierarchy?max_depth=0", nil).MustOK(t)
			if got := hierarchyRooms(t, r); !slices.Equal(got, []string{space}) {
				t.Fatalf("max_depth 0: %v", got)
			}
			// Pages of two, then the rest.
			r = alice.Do(t, "GET", "/_matrix/client/v1/rooms/"+esc(space)+"/hierarchy?limit=2", nil).MustOK(t)
			next := r.String("next_batch")
			r2 := alice.Do(t, "GET", "/_matrix/client/v1/rooms/"+esc(space)+"/hierarchy?limit=2&from="+esc(next), nil).MustOK(t)
			if all := append(hierarchyRooms(t, r), hierarchyRooms(t, r2)...); next == "" || len(all) != 4 || r2.String("next_batch") != "" {
				t.Fatalf("pages %s then %s", r.Raw, r2.Raw)
			}
			if r := alice.Do(t, "GET", "/_matrix/client/v1/rooms/"+esc(space)+"/hierarchy?limit=2&suggested_only=true&from="+esc(next), nil); r.Status != 400 || r.String("errcode") != "M_INVALID_PARAM" {
				t.Errorf("a token of another walk: %#v", r)
			}

			// bob, once in the space: hsc's open room through hsc, not the
			// private one, and his own.
			bob.Do(t, "POST", "/_matrix/client/v3/join/"+esc(space)+"?server_name=hsc.test", map[string]any{}).MustOK(t)
			r = bob.Do(t, "GET", "/_matrix/client/v1/rooms/"+esc(space)+"/hierarchy", nil).MustOK(t)
			if got, want := hierarchyRooms(t, r), sorted([]string{space, open, remote}); !slices.Equal(got, want) {
				t.Fatalf("bob's hierarchy %v, want %v: %s", got, want, r.Raw)
			}
			if r := bob.Do(t, "GET", "/_matrix/client/v1/rooms/"+esc(private)+"/hierarchy", nil); r.Status != 403 {
				t.Errorf("hierarchy of a room bob may not see: %#v", r)
			}
		})
	})
}
