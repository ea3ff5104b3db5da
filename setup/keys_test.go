package setup_test

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"

	"myelin/internal/poll"
	"myelin/internal/signing"
	"myelin/internal/sqldb/sqldbtest"
	"myelin/internal/testserver"
)

// deviceKeys is a device keys object as a client uploads it (the server
// checks its owner, not its signature).
func deviceKeys(userID, deviceID, tag string) map[string]any {
	return map[string]any{
		"user_id": userID, "device_id": deviceID,
		"algorithms": []string{"m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"},
		"keys": map[string]string{
			"curve25519:" + deviceID: "curve-" + tag,
			"ed25519:" + deviceID:    "ed-" + tag,
		},
		"signatures": map[string]any{userID: map[string]string{"ed25519:" + deviceID: "sig-" + tag}},
	}
}

// whoami returns c's user and device IDs.
func whoami(t *testing.T, c *testserver.Client) (string, string) {
	t.Helper()
	r := c.Do(t, "GET", "/_matrix/client/v3/account/whoami", nil).MustOK(t)
	return r.String("user_id"), r.String("device_id")
}

// queryKeys is c's /keys/query for users (all their devices).
func queryKeys(t *testing.T, c *testserver.Client, users ...string) (keys map[string]map[string]json.RawMessage, failures map[string]json.RawMessage) {
	t.Helper()
	q := map[string][]string{}
	for _, u := range users {
		q[u] = []string{}
	}
	r := c.Do(t, "POST", "/_matrix/client/v3/keys/query", map[string]any{"device_keys": q, "timeout": 5000}).MustOK(t)
	var body struct {
		DeviceKeys map[string]map[string]json.RawMessage `json:"device_keys"`
		Failures   map[string]json.RawMessage            `json:"failures"`
	}
	if err := json.Unmarshal(r.Raw, &body); err != nil {
		t.Fatal(err)
	}
	return body.DeviceKeys, body.Failures
}

type deviceListsJSON struct {
	Changed []string `json:"changed"`
	Left    []string `json:"left"`
}

// syncDeviceLists is c's /sync from since ("": a full sync), without
// waiting: the next batch and the device_lists section.
func syncDeviceLists(t *testing.T, c *testserver.Client, since string) (string, deviceListsJSON) {
	t.Helper()
	path := "/_matrix/client/v3/sync?timeout=0"
	if since != "" {
		path += "&since=" + url.QueryEscape(since)
	}
	r := c.Do(t, "GET", path, nil).MustOK(t)
	var body struct {
		Next        string          `json:"next_batch"`
		DeviceLists deviceListsJSON `json:"device_lists"`
	}
	if err := json.Unmarshal(r.Raw, &body); err != nil {
		t.Fatal(err)
	}
	return body.Next, body.DeviceLists
}

// hangingServer publishes name in fed's DNS at a listener on ip that
// accepts connections and never answers.
func hangingServer(t *testing.T, fed *fedNet, name, ip string) {
	t.Helper()
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	port := ln.Addr().(*net.TCPAddr).Port
	fed.mu.Lock()
	fed.hosts[name] = netip.MustParseAddr(ip)
	fed.srv["_matrix-fed._tcp."+name] = []*net.SRV{{Target: name + ".", Port: uint16(port)}}
	fed.mu.Unlock()
}

// jsonOf is v in JSON, for messages (json.RawMessage prints as bytes).
func jsonOf(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// curveKey is the curve25519 key of a device keys object.
func curveKey(t *testing.T, raw json.RawMessage, deviceID string) string {
	t.Helper()
	var k struct {
		Keys map[string]string `json:"keys"`
	}
	_ = json.Unmarshal(raw, &k)
	return k.Keys["curve25519:"+deviceID]
}

// TestFederationKeys: a user's device keys and one-time keys reach users
// of another server through /keys/query and /keys/claim, which that
// server answers from /user/keys/query, /user/keys/claim and, for users
// who share a room, /user/devices, whose answer it caches. Bad input is
// refused with the right error on both APIs.
func TestFederationKeys(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		fed := newFedNet(t)
		hsA := fed.start(t, "ka.test", "127.0.0.20", dbURL)
		hsB := fed.start(t, "kb.test", "127.0.0.21", sqldbtest.URL(t, dialectOf(dbURL)))
		alice := hsA.Register(t, "alice")
		bob := hsB.Register(t, "bob")
		aliceID, aliceDev := whoami(t, alice)
		bobID, _ := whoami(t, bob)
		alice.Do(t, "PUT", "/_matrix/client/v3/devices/"+aliceDev, map[string]string{"display_name": "Alice's phone"}).MustOK(t)

		r := alice.Do(t, "POST", "/_matrix/client/v3/keys/upload", map[string]any{
			"device_keys": deviceKeys(aliceID, aliceDev, "1"),
			"one_time_keys": map[string]any{
				"signed_curve25519:AAA": map[string]any{"key": "otk-a"},
				"signed_curve25519:BBB": map[string]any{"key": "otk-b"},
			},
			"fallback_keys": map[string]any{"signed_curve25519:FFF": map[string]any{"key": "fallback", "fallback": true}},
		}).MustOK(t)
		if n := r.Body["one_time_key_counts"].(map[string]any)["signed_curve25519"]; n != 2.0 {
			t.Fatalf("one-time key counts: %s", r.Raw)
		}
		if s := alice.Do(t, "GET", "/_matrix/client/v3/sync?timeout=0", nil).MustOK(t); fmt.Sprint(s.Body["device_unused_fallback_key_types"]) != "[signed_curve25519]" {
			t.Fatalf("unused fallback key types in an initial sync: %s", s.Raw)
		}

		t.Run("query", func(t *testing.T) {
			for _, tc := range []struct {
				name string
				c    *testserver.Client
			}{{"a local user", alice}, {"a user of another server", bob}} {
				t.Run(tc.name, func(t *testing.T) {
					keys, failures := queryKeys(t, tc.c, aliceID)
					if len(failures) != 0 {
						t.Fatalf("failures: %s", jsonOf(failures))
					}
					raw := keys[aliceID][aliceDev]
					if curveKey(t, raw, aliceDev) != "curve-1" {
						t.Fatalf("alice's keys: %s", raw)
					}
					var k struct {
						Unsigned struct {
							Name string `json:"device_display_name"`
						} `json:"unsigned"`
					}
					_ = json.Unmarshal(raw, &k)
					if k.Unsigned.Name != "Alice's phone" {
						t.Fatalf("no display name in %s", raw)
					}
				})
			}
			// A device not asked for is left out; an unreachable server
			// is a failure, not an error of the whole request.
			r := bob.Do(t, "POST", "/_matrix/client/v3/keys/query", map[string]any{
				"device_keys": map[string][]string{aliceID: {"NOSUCHDEVICE"}, "@x:nowhere.test": {}},
			}).MustOK(t)
			var body struct {
				DeviceKeys map[string]map[string]json.RawMessage `json:"device_keys"`
				Failures   map[string]json.RawMessage            `json:"failures"`
			}
			_ = json.Unmarshal(r.Raw, &body)
			if len(body.DeviceKeys[aliceID]) != 0 || body.Failures["nowhere.test"] == nil {
				t.Fatalf("query of an unknown device and server: %s", r.Raw)
			}
		})

		t.Run("a server that does not answer", func(t *testing.T) {
			// slow.test takes connections and never answers: the query
			// ends with the request's timeout, the server in failures.
			hangingServer(t, fed, "slow.test", "127.0.0.24")
			start := time.Now()
			r := bob.Do(t, "POST", "/_matrix/client/v3/keys/query", map[string]any{
				"device_keys": map[string][]string{aliceID: {}, "@x:slow.test": {}}, "timeout": 1000,
			}).MustOK(t)
			if took := time.Since(start); took > 5*time.Second {
				t.Errorf("the query took %v with a timeout of 1 s", took)
			}
			var body struct {
				DeviceKeys map[string]map[string]json.RawMessage `json:"device_keys"`
				Failures   map[string]json.RawMessage            `json:"failures"`
			}
			_ = json.Unmarshal(r.Raw, &body)
			if body.Failures["slow.test"] == nil || curveKey(t, body.DeviceKeys[aliceID][aliceDev], aliceDev) != "curve-1" {
				t.Fatalf("query with a server that does not answer: %s", r.Raw)
			}
		})

		t.Run("claim", func(t *testing.T) {
			// Two one-time keys, then the fallback key, which stays.
			var got []string
			for range 4 {
				r := bob.Do(t, "POST", "/_matrix/client/v3/keys/claim", map[string]any{
					"one_time_keys": map[string]any{aliceID: map[string]string{aliceDev: "signed_curve25519"}},
				}).MustOK(t)
				var body struct {
					Keys map[string]map[string]map[string]json.RawMessage `json:"one_time_keys"`
				}
				_ = json.Unmarshal(r.Raw, &body)
				for id := range body.Keys[aliceID][aliceDev] {
					got = append(got, id)
				}
			}
			want := fmt.Sprint([]string{"signed_curve25519:AAA", "signed_curve25519:BBB", "signed_curve25519:FFF", "signed_curve25519:FFF"})
			if fmt.Sprint(got) != want {
				t.Fatalf("claimed %v, want %v", got, want)
			}
			r := alice.Do(t, "POST", "/_matrix/client/v3/keys/upload", map[string]any{}).MustOK(t)
			if n := r.Body["one_time_key_counts"].(map[string]any)["signed_curve25519"]; n != 0.0 {
				t.Fatalf("counts after claims: %s", r.Raw)
			}
			// The claimed fallback key is no longer unused: the client is
			// to upload another.
			s := alice.Do(t, "GET", "/_matrix/client/v3/sync?timeout=0", nil).MustOK(t)
			if got, ok := s.Body["device_unused_fallback_key_types"].([]any); !ok || len(got) != 0 {
				t.Fatalf("unused fallback key types after the claim: %s", s.Raw)
			}
		})

		t.Run("bad input", func(t *testing.T) {
			for _, tc := range []struct {
				name, path string
				body       any
				status     int
				code       string
			}{
				{"keys of another device", "/keys/upload", map[string]any{"device_keys": deviceKeys(aliceID, "OTHER", "x")}, 400, "M_INVALID_PARAM"},
				{"keys of another user", "/keys/upload", map[string]any{"device_keys": deviceKeys(bobID, aliceDev, "x")}, 400, "M_INVALID_PARAM"},
				{"device keys not an object", "/keys/upload", map[string]any{"device_keys": "x"}, 400, "M_BAD_JSON"},
				{"one-time key ID without algorithm", "/keys/upload", map[string]any{"one_time_keys": map[string]any{"nocolon": map[string]any{}}}, 400, "M_INVALID_PARAM"},
				{"one-time key a number", "/keys/upload", map[string]any{"one_time_keys": map[string]any{"a:b": 5}}, 400, "M_BAD_JSON"},
				{"query without device_keys", "/keys/query", map[string]any{}, 400, "M_MISSING_PARAM"},
				{"query of a bad user ID", "/keys/query", map[string]any{"device_keys": map[string]any{"alice": []string{}}}, 400, "M_INVALID_PARAM"},
				{"query with devices not a list", "/keys/query", map[string]any{"device_keys": map[string]any{aliceID: "x"}}, 400, "M_BAD_JSON"},
				{"claim without one_time_keys", "/keys/claim", map[string]any{}, 400, "M_MISSING_PARAM"},
				{"claim of a bad user ID", "/keys/claim", map[string]any{"one_time_keys": map[string]any{"@": map[string]string{}}}, 400, "M_INVALID_PARAM"},
				{"not JSON", "/keys/query", "{", 400, "M_NOT_JSON"},
			} {
				t.Run(tc.name, func(t *testing.T) {
					r := alice.Do(t, "POST", "/_matrix/client/v3"+tc.path, tc.body)
					if r.Status != tc.status || r.String("errcode") != tc.code {
						t.Fatalf("got %d %s, want %d %s", r.Status, r.Raw, tc.status, tc.code)
					}
				})
			}
			keyB, err := signing.LoadOrGenerate(hsB.Config.Keys.SigningKeyPath, "kb.test")
			if err != nil {
				t.Fatal(err)
			}
			asB := &fedCaller{key: keyB, dest: "ka.test", base: hsA.FederationURL(), client: fed.httpClient("ka.test")}
			for _, tc := range []struct {
				name, method, uri string
				body              any
				status            int
				code              string
			}{
				{"devices of a user of another server", "GET", "/_matrix/federation/v1/user/devices/" + url.PathEscape(bobID), nil, 400, "M_INVALID_PARAM"},
				{"devices of a bad user ID", "GET", "/_matrix/federation/v1/user/devices/nobody", nil, 400, "M_INVALID_PARAM"},
				{"query without device_keys", "POST", "/_matrix/federation/v1/user/keys/query", map[string]any{}, 400, "M_MISSING_PARAM"},
				{"query of a bad user ID", "POST", "/_matrix/federation/v1/user/keys/query", map[string]any{"device_keys": map[string]any{"x": []string{}}}, 400, "M_INVALID_PARAM"},
				{"claim with devices not an object", "POST", "/_matrix/federation/v1/user/keys/claim", map[string]any{"one_time_keys": map[string]any{aliceID: 1}}, 400, "M_BAD_JSON"},
			} {
				t.Run("federation "+tc.name, func(t *testing.T) {
					status, raw := asB.do(t, tc.method, tc.uri, tc.body)
					var body struct {
						Code string `json:"errcode"`
					}
					_ = json.Unmarshal(raw, &body)
					if status != tc.status || body.Code != tc.code {
						t.Fatalf("got %d %s, want %d %s", status, raw, tc.status, tc.code)
					}
				})
			}
			t.Run("devices", func(t *testing.T) {
				status, raw := asB.do(t, "GET", "/_matrix/federation/v1/user/devices/"+url.PathEscape(aliceID), nil)
				var body struct {
					UserID   string `json:"user_id"`
					StreamID int64  `json:"stream_id"`
					Devices  []struct {
						DeviceID string          `json:"device_id"`
						Keys     json.RawMessage `json:"keys"`
					} `json:"devices"`
				}
				_ = json.Unmarshal(raw, &body)
				if status != 200 || body.UserID != aliceID || body.StreamID <= 0 || len(body.Devices) != 1 ||
					curveKey(t, body.Devices[0].Keys, aliceDev) != "curve-1" {
					t.Fatalf("devices of alice: %d %s", status, raw)
				}
			})
		})

		// While no room is shared, alice's server sends kb.test no
		// updates: the copy kb.test kept must be fetched again once one
		// is (sytest: "Server correctly resyncs when server leaves and
		// rejoins a room", "If remote user leaves room, changes device
		// and rejoins...").
		t.Run("fetched again after sharing no room", func(t *testing.T) {
			room := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{"preset": "public_chat"}).MustOK(t).String("room_id")
			join := func() {
				bob.Do(t, "POST", "/_matrix/client/v3/join/"+url.PathEscape(room)+"?server_name=ka.test", map[string]any{}).MustOK(t)
				poll.Until(t, 10*time.Second, func() error {
					if !joinedMembers(t, bob, room)[aliceID] || !joinedMembers(t, alice, room)[bobID] {
						return fmt.Errorf("bob and alice do not see each other in the room")
					}
					return nil
				})
			}
			join()
			poll.Until(t, 10*time.Second, func() error {
				if keys, _ := queryKeys(t, bob, aliceID); curveKey(t, keys[aliceID][aliceDev], aliceDev) != "curve-1" {
					return fmt.Errorf("alice's keys not found")
				}
				return nil
			})
			bob.Do(t, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/leave", map[string]any{}).MustOK(t)
			poll.Until(t, 10*time.Second, func() error {
				if joinedMembers(t, alice, room)[bobID] {
					return fmt.Errorf("alice still sees bob in the room")
				}
				return nil
			})
			// No room is shared now (the subtests before share none):
			// kb.test hears nothing of alice's new device.
			alice2 := login(t, hsA, "alice")
			_, dev2 := whoami(t, alice2)
			alice2.Do(t, "POST", "/_matrix/client/v3/keys/upload", map[string]any{"device_keys": deviceKeys(aliceID, dev2, "new")}).MustOK(t)
			join()
			poll.Until(t, 10*time.Second, func() error {
				if keys, _ := queryKeys(t, bob, aliceID); curveKey(t, keys[aliceID][dev2], dev2) != "curve-new" {
					return fmt.Errorf("alice's new device not seen by bob: %s", jsonOf(keys[aliceID]))
				}
				return nil
			})
			// The next subtest starts sharing no room again.
			bob.Do(t, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/leave", map[string]any{}).MustOK(t)
			poll.Until(t, 10*time.Second, func() error {
				if joinedMembers(t, alice, room)[bobID] {
					return fmt.Errorf("alice still sees bob in the room")
				}
				return nil
			})
		})

		t.Run("cached while a room is shared", func(t *testing.T) {
			room := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{"preset": "public_chat"}).MustOK(t).String("room_id")
			bob.Do(t, "POST", "/_matrix/client/v3/join/"+url.PathEscape(room)+"?server_name=ka.test", map[string]any{}).MustOK(t)
			poll.Until(t, 10*time.Second, func() error {
				if !joinedMembers(t, bob, room)[aliceID] {
					return fmt.Errorf("bob does not see alice in the room")
				}
				return nil
			})
			// A query, once kb.test's userapi knows that bob and alice
			// share the room, fetches alice's list (/user/devices) and
			// keeps it: her device list moves on kb.test, which bob's
			// /sync says. Once ka.test is gone, kb.test still answers
			// from its copy.
			since, _ := syncDeviceLists(t, bob, "")
			poll.Until(t, 10*time.Second, func() error {
				if keys, _ := queryKeys(t, bob, aliceID); curveKey(t, keys[aliceID][aliceDev], aliceDev) != "curve-1" {
					return fmt.Errorf("alice's keys not found")
				}
				if _, dl := syncDeviceLists(t, bob, since); !slices.Contains(dl.Changed, aliceID) {
					return fmt.Errorf("bob's sync: device lists changed %v", dl.Changed)
				}
				return nil
			})
			hsA.Stop()
			keys, failures := queryKeys(t, bob, aliceID)
			if len(failures) != 0 || curveKey(t, keys[aliceID][aliceDev], aliceDev) != "curve-1" {
				t.Fatalf("with ka.test down: keys %s, failures %s", jsonOf(keys), jsonOf(failures))
			}
		})
	})
}
