package setup_test

import (
	"fmt"
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

// fullSync is c's /sync without a token and without waiting.
func fullSync(t *testing.T, c *testserver.Client) gjson.Result {
	t.Helper()
	return gjson.ParseBytes(c.Do(t, "GET", "/_matrix/client/v3/sync?timeout=0", nil).MustOK(t).Raw)
}

// ephemeralOf returns the ephemeral event of type typ in room of a sync.
func ephemeralOf(s gjson.Result, room, typ string) gjson.Result {
	for _, ev := range s.Get("rooms.join." + gjson.Escape(room) + ".ephemeral.events").Array() {
		if ev.Get("type").String() == typ {
			return ev
		}
	}
	return gjson.Result{}
}

// TestFederationEDUs: typing, read receipts, presence and device list
// changes of a user reach, as EDUs, the /sync of users of another server
// sharing a room with it, both ways; EDUs that another server sends for
// users not its own, or for rooms it is not in, change nothing; and a
// remote device list is applied update by update, and fetched again
// when an update shows that one was missed.
func TestFederationEDUs(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		fed := newFedNet(t)
		hsA := fed.start(t, "ea.test", "127.0.0.22", dbURL)
		hsB := fed.start(t, "eb.test", "127.0.0.23", sqldbtest.URL(t, dialectOf(dbURL)))
		alice := hsA.Register(t, "alice")
		bob := hsB.Register(t, "bob")
		aliceID, aliceDev := whoami(t, alice)
		bobID, _ := whoami(t, bob)
		alice.Do(t, "POST", "/_matrix/client/v3/keys/upload", map[string]any{"device_keys": deviceKeys(aliceID, aliceDev, "1")}).MustOK(t)

		room := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{"preset": "public_chat"}).MustOK(t).String("room_id")
		// A room only ea.test is in, for the EDUs that must be dropped.
		other := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{"preset": "public_chat"}).MustOK(t).String("room_id")
		since, _ := syncDeviceLists(t, bob, "")
		bob.Do(t, "POST", "/_matrix/client/v3/join/"+url.PathEscape(room)+"?server_name=ea.test", map[string]any{}).MustOK(t)
		poll.Until(t, 10*time.Second, func() error {
			if !joinedMembers(t, alice, room)[bobID] {
				return fmt.Errorf("alice does not see bob joined")
			}
			return nil
		})
		esc := url.PathEscape(room)

		t.Run("typing", func(t *testing.T) {
			for _, tc := range []struct {
				name      string
				from, to  *testserver.Client
				userID    string
				wantTyper string
			}{
				{"alice to bob", alice, bob, aliceID, aliceID},
				{"bob to alice", bob, alice, bobID, bobID},
			} {
				t.Run(tc.name, func(t *testing.T) {
					tc.from.Do(t, "PUT", "/_matrix/client/v3/rooms/"+esc+"/typing/"+url.PathEscape(tc.userID),
						map[string]any{"typing": true, "timeout": 30000}).MustOK(t)
					poll.Until(t, 10*time.Second, func() error {
						ev := ephemeralOf(fullSync(t, tc.to), room, "m.typing")
						if !slices.Contains(stringsOf(ev.Get("content.user_ids")), tc.wantTyper) {
							return fmt.Errorf("typing: %s", ev.Raw)
						}
						return nil
					})
					tc.from.Do(t, "PUT", "/_matrix/client/v3/rooms/"+esc+"/typing/"+url.PathEscape(tc.userID),
						map[string]any{"typing": false}).MustOK(t)
					poll.Until(t, 10*time.Second, func() error {
						ev := ephemeralOf(fullSync(t, tc.to), room, "m.typing")
						if slices.Contains(stringsOf(ev.Get("content.user_ids")), tc.wantTyper) {
							return fmt.Errorf("still typing: %s", ev.Raw)
						}
						return nil
					})
				})
			}
		})

		var readEv string
		t.Run("receipts", func(t *testing.T) {
			ev := alice.Do(t, "PUT", "/_matrix/client/v3/rooms/"+esc+"/send/m.room.message/r1",
				map[string]string{"msgtype": "m.text", "body": "read me"}).MustOK(t).String("event_id")
			poll.Until(t, 10*time.Second, func() error {
				r := bob.Do(t, "POST", "/_matrix/client/v3/rooms/"+esc+"/receipt/m.read/"+url.PathEscape(ev), map[string]any{})
				if r.Status != 200 {
					return fmt.Errorf("bob's receipt: %d %s", r.Status, r.Raw)
				}
				return nil
			})
			poll.Until(t, 10*time.Second, func() error {
				rc := ephemeralOf(fullSync(t, alice), room, "m.receipt")
				if !rc.Get("content." + gjson.Escape(ev) + ".m\\.read." + gjson.Escape(bobID) + ".ts").Exists() {
					return fmt.Errorf("alice's receipts: %s", rc.Raw)
				}
				return nil
			})
			readEv = ev
		})

		t.Run("presence", func(t *testing.T) {
			alice.Do(t, "PUT", "/_matrix/client/v3/presence/"+url.PathEscape(aliceID)+"/status",
				map[string]any{"presence": "unavailable", "status_msg": "at lunch"}).MustOK(t)
			poll.Until(t, 10*time.Second, func() error {
				r := bob.Do(t, "GET", "/_matrix/client/v3/presence/"+url.PathEscape(aliceID)+"/status", nil)
				if r.String("presence") != "unavailable" || r.String("status_msg") != "at lunch" {
					return fmt.Errorf("alice's presence on eb.test: %d %s", r.Status, r.Raw)
				}
				return nil
			})
			poll.Until(t, 10*time.Second, func() error {
				for _, p := range fullSync(t, bob).Get("presence.events").Array() {
					if p.Get("sender").String() == aliceID && p.Get("content.presence").String() == "unavailable" {
						return nil
					}
				}
				return fmt.Errorf("alice's presence not in bob's sync")
			})
		})

		t.Run("device lists", func(t *testing.T) {
			// Bob's server learns alice's list when bob asks for it, and
			// her next change reaches it as an m.device_list_update:
			// bob's sync says so, and the keys come from its copy.
			poll.Until(t, 10*time.Second, func() error {
				if keys, _ := queryKeys(t, bob, aliceID); curveKey(t, keys[aliceID][aliceDev], aliceDev) != "curve-1" {
					return fmt.Errorf("alice's keys not found")
				}
				next, dl := syncDeviceLists(t, bob, since)
				if !slices.Contains(dl.Changed, aliceID) {
					return fmt.Errorf("bob's device lists: %+v", dl)
				}
				since = next
				return nil
			})
			alice2 := login(t, hsA, "alice")
			_, dev2 := whoami(t, alice2)
			alice2.Do(t, "POST", "/_matrix/client/v3/keys/upload", map[string]any{"device_keys": deviceKeys(aliceID, dev2, "2")}).MustOK(t)
			poll.Until(t, 10*time.Second, func() error {
				if _, dl := syncDeviceLists(t, bob, since); !slices.Contains(dl.Changed, aliceID) {
					return fmt.Errorf("bob's device lists: %+v", dl)
				}
				if keys, _ := queryKeys(t, bob, aliceID); curveKey(t, keys[aliceID][dev2], dev2) != "curve-2" {
					return fmt.Errorf("alice's new device not known on eb.test: %v", jsonOf(keys[aliceID]))
				}
				return nil
			})
			// A new name is part of the device's list entry too.
			alice2.Do(t, "PUT", "/_matrix/client/v3/devices/"+dev2, map[string]string{"display_name": "Alice's laptop"}).MustOK(t)
			poll.Until(t, 10*time.Second, func() error {
				keys, _ := queryKeys(t, bob, aliceID)
				if name := gjson.GetBytes(keys[aliceID][dev2], "unsigned.device_display_name").String(); name != "Alice's laptop" {
					return fmt.Errorf("alice's renamed device on eb.test: %s", keys[aliceID][dev2])
				}
				return nil
			})
		})

		t.Run("cross-signing keys", func(t *testing.T) {
			// Real ed25519 keys: each is named by itself, and the
			// self-signing and user-signing keys carry the master key's
			// signature.
			master, selfKey, userKey, firstKey := newEdKey(t), newEdKey(t), newEdKey(t), newEdKey(t)
			csKey := func(usage string, k edKey) map[string]any {
				return map[string]any{"user_id": aliceID, "usage": []string{usage}, "keys": map[string]string{"ed25519:" + k.pub: k.pub}}
			}
			body := map[string]any{
				"master_key":       csKey("master", master),
				"self_signing_key": master.sign(t, aliceID, master.pub, csKey("self_signing", selfKey)),
				"user_signing_key": master.sign(t, aliceID, master.pub, csKey("user_signing", userKey)),
			}
			// Bad keys are refused before the password is asked for.
			for _, tc := range []struct {
				name string
				key  map[string]any
				code string
			}{
				{"of another user", map[string]any{"user_id": bobID, "usage": []string{"master"}, "keys": map[string]string{"ed25519:" + master.pub: master.pub}}, "M_INVALID_PARAM"},
				{"of another usage", csKey("self_signing", master), "M_INVALID_PARAM"},
				{"with two keys", map[string]any{"user_id": aliceID, "usage": []string{"master"}, "keys": map[string]string{"ed25519:" + master.pub: master.pub, "ed25519:" + selfKey.pub: selfKey.pub}}, "M_INVALID_PARAM"},
			} {
				r := alice.Do(t, "POST", "/_matrix/client/v3/keys/device_signing/upload", map[string]any{"master_key": tc.key})
				if r.Status != 400 || r.String("errcode") != tc.code {
					t.Errorf("a master key %s: %d %s", tc.name, r.Status, r.Raw)
				}
			}
			if r := alice.Do(t, "POST", "/_matrix/client/v3/keys/device_signing/upload", map[string]any{"self_signing_key": master.sign(t, aliceID, master.pub, csKey("self_signing", selfKey))}); r.Status != 400 || r.String("errcode") != "M_MISSING_PARAM" {
				t.Errorf("a self-signing key without a master key: %d %s", r.Status, r.Raw)
			}
			// The first keys need no password; replacing them does.
			first := map[string]any{"master_key": csKey("master", firstKey)}
			alice.Do(t, "POST", "/_matrix/client/v3/keys/device_signing/upload", first).MustOK(t)
			challenge := alice.Do(t, "POST", "/_matrix/client/v3/keys/device_signing/upload", body)
			if challenge.Status != 401 || challenge.String("session") == "" {
				t.Fatalf("replacing without auth: %d %s", challenge.Status, challenge.Raw)
			}
			body["auth"] = map[string]any{
				"type": "m.login.password", "identifier": map[string]string{"type": "m.id.user", "user": "alice"},
				"password": "password-alice", "session": challenge.String("session"),
			}
			alice.Do(t, "POST", "/_matrix/client/v3/keys/device_signing/upload", body).MustOK(t)
			query := func(c *testserver.Client) gjson.Result {
				r := c.Do(t, "POST", "/_matrix/client/v3/keys/query", map[string]any{"device_keys": map[string]any{aliceID: []string{}}}).MustOK(t)
				return gjson.ParseBytes(r.Raw)
			}
			own := query(alice)
			if !own.Get("master_keys."+gjson.Escape(aliceID)+".keys.ed25519:"+gjson.Escape(master.pub)).Exists() ||
				!own.Get("user_signing_keys."+gjson.Escape(aliceID)).Exists() {
				t.Fatalf("alice's own keys: %s", own.Raw)
			}
			// Bob's server hears of them (m.signing_key_update) and answers
			// from its copy; alice's user-signing key is hers alone.
			poll.Until(t, 10*time.Second, func() error {
				q := query(bob)
				if !q.Get("master_keys."+gjson.Escape(aliceID)+".keys.ed25519:"+gjson.Escape(master.pub)).Exists() ||
					!q.Get("self_signing_keys."+gjson.Escape(aliceID)+".keys.ed25519:"+gjson.Escape(selfKey.pub)).Exists() {
					return fmt.Errorf("alice's keys on eb.test: %s", q.Raw)
				}
				if q.Get("user_signing_keys").Exists() {
					return fmt.Errorf("bob sees alice's user-signing key: %s", q.Raw)
				}
				return nil
			})
		})

		t.Run("to-device", func(t *testing.T) {
			_, bobDev := whoami(t, bob)
			next := fullSync(t, bob).Get("next_batch").String()
			alice.Do(t, "PUT", "/_matrix/client/v3/sendToDevice/m.room_key_request/td1", map[string]any{
				"messages": map[string]any{bobID: map[string]any{bobDev: map[string]string{"body": "secret"}}},
			}).MustOK(t)
			poll.Until(t, 10*time.Second, func() error {
				r := bob.Do(t, "GET", "/_matrix/client/v3/sync?timeout=1000&since="+url.QueryEscape(next), nil).MustOK(t)
				evs := gjson.GetBytes(r.Raw, "to_device.events").Array()
				if len(evs) != 1 || evs[0].Get("sender").String() != aliceID || evs[0].Get("type").String() != "m.room_key_request" ||
					evs[0].Get("content.body").String() != "secret" {
					return fmt.Errorf("bob's to-device messages: %s", gjson.GetBytes(r.Raw, "to_device").Raw)
				}
				return nil
			})
		})

		keyA, err := signing.LoadOrGenerate(hsA.Config.Keys.SigningKeyPath, "ea.test")
		if err != nil {
			t.Fatal(err)
		}
		asA := &fedCaller{key: keyA, dest: "eb.test", base: hsB.FederationURL(), client: fed.httpClient("eb.test")}
		txn := 0
		send := func(t *testing.T, edus ...map[string]any) {
			t.Helper()
			txn++
			status, raw := asA.do(t, "PUT", "/_matrix/federation/v1/send/edus-test-"+strconv.Itoa(txn), map[string]any{
				"origin": "ea.test", "origin_server_ts": time.Now().UnixMilli(), "pdus": []any{}, "edus": edus,
			})
			if status != 200 {
				t.Fatalf("send: %d %s", status, raw)
			}
		}

		t.Run("refused EDUs", func(t *testing.T) {
			typing := func(roomID, userID string) map[string]any {
				return map[string]any{"edu_type": "m.typing", "content": map[string]any{"room_id": roomID, "user_id": userID, "typing": true}}
			}
			// A user of another server, a room ea.test is not in (known
			// and unknown here), malformed content; then, on each stream,
			// a change of alice, so that once it shows, what came before
			// it on that stream has been handled.
			send(t,
				typing(room, "@mallory:ec.test"),
				typing(room, bobID),
				typing(other, aliceID),
				typing("!nosuchroom:ea.test", aliceID),
				map[string]any{"edu_type": "m.typing", "content": "not an object"},
				map[string]any{"edu_type": "m.presence", "content": map[string]any{"push": []any{
					map[string]any{"user_id": bobID, "presence": "offline", "last_active_ago": 0},
					map[string]any{"user_id": "@mallory:ec.test", "presence": "online", "last_active_ago": 0},
					map[string]any{"user_id": aliceID, "presence": "online", "status_msg": "sentinel", "last_active_ago": 0},
				}}},
				map[string]any{"edu_type": "m.receipt", "content": map[string]any{room: map[string]any{"m.read": map[string]any{
					bobID:              map[string]any{"event_ids": []string{"$forged"}, "data": map[string]any{"ts": 1}},
					"@mallory:ec.test": map[string]any{"event_ids": []string{"$forged"}, "data": map[string]any{"ts": 1}},
					aliceID:            map[string]any{"event_ids": []string{readEv}, "data": map[string]any{"ts": 2}},
				}}}},
				map[string]any{"edu_type": "m.direct_to_device", "content": map[string]any{
					"sender": "@mallory:ec.test", "type": "m.test", "message_id": "m1",
					"messages": map[string]any{bobID: map[string]any{"*": map[string]string{"from": "mallory"}}},
				}},
				map[string]any{"edu_type": "m.direct_to_device", "content": map[string]any{
					"sender": aliceID, "type": "m.test", "message_id": "a1",
					"messages": map[string]any{bobID: map[string]any{"*": map[string]string{"from": "alice"}}},
				}},
				typing(room, aliceID),
			)
			// Presence first, before a sync of bob sets him online again.
			poll.Until(t, 10*time.Second, func() error {
				r := bob.Do(t, "GET", "/_matrix/client/v3/presence/"+url.PathEscape(aliceID)+"/status", nil)
				if r.String("status_msg") != "sentinel" {
					return fmt.Errorf("alice's presence: %s", r.Raw)
				}
				return nil
			})
			r := bob.Do(t, "GET", "/_matrix/client/v3/presence/"+url.PathEscape(bobID)+"/status", nil).MustOK(t)
			if r.String("presence") == "offline" {
				t.Errorf("bob's presence was set by ea.test: %s", r.Raw)
			}
			if r := bob.Do(t, "GET", "/_matrix/client/v3/presence/"+url.PathEscape("@mallory:ec.test")+"/status", nil); r.String("presence") == "online" {
				t.Errorf("ec.test's user's presence was set by ea.test: %s", r.Raw)
			}
			var s gjson.Result
			poll.Until(t, 10*time.Second, func() error {
				s = fullSync(t, bob)
				ev := ephemeralOf(s, room, "m.typing")
				if !slices.Contains(stringsOf(ev.Get("content.user_ids")), aliceID) {
					return fmt.Errorf("typing: %s", ev.Raw)
				}
				if rc := ephemeralOf(s, room, "m.receipt"); !rc.Get("content." + gjson.Escape(readEv) + ".m\\.read." + gjson.Escape(aliceID)).Exists() {
					return fmt.Errorf("receipts: %s", rc.Raw)
				}
				if !slices.Contains(stringsOf(s.Get("to_device.events.#.content.from")), "alice") {
					return fmt.Errorf("to-device: %s", s.Get("to_device").Raw)
				}
				return nil
			})
			if slices.Contains(stringsOf(s.Get("to_device.events.#.content.from")), "mallory") {
				t.Errorf("a to-device message of ec.test's user sent by ea.test was taken: %s", s.Get("to_device").Raw)
			}
			if got := stringsOf(ephemeralOf(s, room, "m.typing").Get("content.user_ids")); fmt.Sprint(got) != fmt.Sprint([]string{aliceID}) {
				t.Errorf("typing in the room: %v", got)
			}
			if rc := ephemeralOf(s, room, "m.receipt"); rc.Get("content.\\$forged").Exists() {
				t.Errorf("a receipt forged by ea.test was taken: %s", rc.Raw)
			}
		})

		t.Run("device list resync after a missed update", func(t *testing.T) {
			keyB, err := signing.LoadOrGenerate(hsB.Config.Keys.SigningKeyPath, "eb.test")
			if err != nil {
				t.Fatal(err)
			}
			status, raw := (&fedCaller{key: keyB, dest: "ea.test", base: hsA.FederationURL(), client: fed.httpClient("ea.test")}).
				do(t, "GET", "/_matrix/federation/v1/user/devices/"+url.PathEscape(aliceID), nil)
			last := gjson.GetBytes(raw, "stream_id").Int()
			if status != 200 || last == 0 {
				t.Fatalf("alice's devices: %d %s", status, raw)
			}
			update := func(dev string, streamID, prev int64) map[string]any {
				return map[string]any{"edu_type": "m.device_list_update", "content": map[string]any{
					"user_id": aliceID, "device_id": dev, "stream_id": streamID, "prev_id": []int64{prev},
					"keys": deviceKeys(aliceID, dev, dev),
				}}
			}
			// What eb.test holds may be behind ea.test's stream (a
			// cross-signing upload moves it without an update): a first
			// gap makes eb.test fetch the list, at last.
			send(t, update("GAP0", last+50, last+40))
			if keys, _ := queryKeys(t, bob, aliceID); keys[aliceID]["GAP0"] != nil || keys[aliceID][aliceDev] == nil {
				t.Fatalf("after a first gap: %v", jsonOf(keys[aliceID]))
			}
			// An update that follows the last one is applied as it is:
			// eb.test answers with a device ea.test does not have.
			send(t, update("EXTRA", last+100, last))
			poll.Until(t, 10*time.Second, func() error {
				if keys, _ := queryKeys(t, bob, aliceID); curveKey(t, keys[aliceID]["EXTRA"], "EXTRA") != "curve-EXTRA" {
					return fmt.Errorf("the update was not applied: %v", jsonOf(keys[aliceID]))
				}
				return nil
			})
			// One whose prev_id eb.test never saw shows a gap: the list is
			// fetched again from ea.test, which knows no such devices.
			send(t, update("GAP", last+300, last+200))
			poll.Until(t, 10*time.Second, func() error {
				keys, _ := queryKeys(t, bob, aliceID)
				if _, ok := keys[aliceID]["EXTRA"]; ok {
					return fmt.Errorf("not resynced: %v", jsonOf(keys[aliceID]))
				}
				if _, ok := keys[aliceID]["GAP"]; ok {
					return fmt.Errorf("the update after the gap was applied: %v", jsonOf(keys[aliceID]))
				}
				if curveKey(t, keys[aliceID][aliceDev], aliceDev) != "curve-1" {
					return fmt.Errorf("alice's keys after the resync: %v", jsonOf(keys[aliceID]))
				}
				return nil
			})
		})
	})
}

func stringsOf(r gjson.Result) []string {
	var out []string
	for _, v := range r.Array() {
		out = append(out, v.String())
	}
	return out
}

// login logs localpart in on a new device of s.
func login(t *testing.T, s *testserver.Server, localpart string) *testserver.Client {
	t.Helper()
	c := &testserver.Client{Base: s.URL}
	r := c.Do(t, "POST", "/_matrix/client/v3/login", map[string]any{
		"type": "m.login.password", "identifier": map[string]string{"type": "m.id.user", "user": localpart},
		"password": "password-" + localpart,
	}).MustOK(t)
	c.Token = r.String("access_token")
	return c
}
