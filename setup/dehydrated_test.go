package setup_test

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"myelin/internal/poll"
	"myelin/internal/sqldb/sqldbtest"
	"myelin/internal/testserver"
)

const dehydratedPath = "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device"

// TestDehydratedDevice walks MSC3814 as Element X does it: a device
// uploads a dehydrated device with its keys; others see its keys and send
// it to-device messages; the user's next device fetches them in batches,
// none deleted; a new dehydrated device replaces the old one; bad uploads
// are refused with nothing stored.
func TestDehydratedDevice(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		srv := testserver.Start(t, testserver.Config(t.TempDir(), dbURL))
		alice := srv.Register(t, "alice")
		bob := srv.Register(t, "bob")
		aliceID, aliceDev := whoami(t, alice)

		put := func(deviceID, tag string) *testserver.Response {
			return alice.Do(t, "PUT", dehydratedPath, map[string]any{
				"device_id":                   deviceID,
				"device_data":                 map[string]any{"algorithm": "org.matrix.msc3814.v1.olm", "device_pickle": "pickle-" + tag},
				"initial_device_display_name": "Backup device",
				"device_keys":                 deviceKeys(aliceID, deviceID, tag),
				"one_time_keys":               map[string]any{"signed_curve25519:AAA": map[string]any{"key": "otk-" + tag}},
				"fallback_keys":               map[string]any{"signed_curve25519:FFF": map[string]any{"key": "fb-" + tag, "fallback": true}},
			})
		}

		if r := alice.Do(t, "GET", dehydratedPath, nil); r.Status != 404 || r.String("errcode") != "M_NOT_FOUND" {
			t.Fatalf("before any: %s", r.GoString())
		}
		for _, tc := range []struct {
			name   string
			body   any
			status int
			code   string
		}{
			{"no device ID", map[string]any{"device_data": map[string]any{}, "device_keys": deviceKeys(aliceID, "X", "x")}, 400, "M_MISSING_PARAM"},
			{"no device data", map[string]any{"device_id": "X", "device_keys": deviceKeys(aliceID, "X", "x")}, 400, "M_MISSING_PARAM"},
			{"no keys", map[string]any{"device_id": "X", "device_data": map[string]any{}}, 400, "M_MISSING_PARAM"},
			{"keys of another device", map[string]any{"device_id": "X", "device_data": map[string]any{}, "device_keys": deviceKeys(aliceID, "Y", "x")}, 400, "M_INVALID_PARAM"},
			{"keys of another user", map[string]any{"device_id": "X", "device_data": map[string]any{}, "device_keys": deviceKeys("@bob:localhost", "X", "x")}, 400, "M_INVALID_PARAM"},
			{"the ID of a signed-in device", map[string]any{"device_id": aliceDev, "device_data": map[string]any{}, "device_keys": deviceKeys(aliceID, aliceDev, "x")}, 400, "M_INVALID_PARAM"},
			{"not JSON", "{", 400, "M_NOT_JSON"},
		} {
			if r := alice.Do(t, "PUT", dehydratedPath, tc.body); r.Status != tc.status || r.String("errcode") != tc.code {
				t.Fatalf("%s: %s, want %d %s", tc.name, r.GoString(), tc.status, tc.code)
			}
		}
		if r := alice.Do(t, "GET", dehydratedPath, nil); r.Status != 404 {
			t.Fatalf("a refused upload stored something: %s", r.GoString())
		}
		// The signed-in device the refused upload named still works.
		whoami(t, alice)

		if r := put("DEHYD1", "1").MustOK(t); r.String("device_id") != "DEHYD1" {
			t.Fatalf("put: %s", r.Raw)
		}
		got := alice.Do(t, "GET", dehydratedPath, nil).MustOK(t)
		if got.String("device_id") != "DEHYD1" || fmt.Sprint(got.Body["device_data"]) != "map[algorithm:org.matrix.msc3814.v1.olm device_pickle:pickle-1]" {
			t.Fatalf("get: %s", got.Raw)
		}
		devs := alice.Do(t, "GET", "/_matrix/client/v3/devices", nil).MustOK(t)
		if n := len(devs.Body["devices"].([]any)); n != 1 {
			t.Fatalf("the dehydrated device is listed among the signed-in ones: %s", devs.Raw)
		}
		// Others encrypt to it like to any device: its keys are queried and
		// its one-time key claimed, and messages are sent to it.
		keys, _ := queryKeys(t, bob, aliceID)
		if curveKey(t, keys[aliceID]["DEHYD1"], "DEHYD1") != "curve-1" {
			t.Fatalf("the dehydrated device's keys are not served: %s", jsonOf(keys))
		}
		claim := bob.Do(t, "POST", "/_matrix/client/v3/keys/claim", map[string]any{
			"one_time_keys": map[string]any{aliceID: map[string]string{"DEHYD1": "signed_curve25519"}},
		}).MustOK(t)
		if fmt.Sprint(claim.Body["one_time_keys"]) != "map[@alice:localhost:map[DEHYD1:map[signed_curve25519:AAA:map[key:otk-1]]]]" {
			t.Fatalf("claim: %s", claim.Raw)
		}
		const n = 150 // more than one batch
		for i := range n {
			bob.Do(t, "PUT", fmt.Sprintf("/_matrix/client/v3/sendToDevice/m.room.encrypted/t%d", i), map[string]any{
				"messages": map[string]any{aliceID: map[string]any{"DEHYD1": map[string]any{"n": i}}},
			}).MustOK(t)
		}

		// The user's next device rehydrates: every message, in order, in
		// batches, then an empty batch; asking again from the start gives
		// them again (nothing was deleted).
		events := func(c *testserver.Client, deviceID string) []int {
			t.Helper()
			var got []int
			next := ""
			// Each batch but the last holds at least one message, also
			// while the sent ones are still being stored.
			for range n + 2 {
				body := map[string]any{}
				if next != "" {
					body["next_batch"] = next
				}
				r := c.Do(t, "POST", dehydratedPath+"/"+deviceID+"/events", body).MustOK(t)
				var b struct {
					Events []struct {
						Sender  string         `json:"sender"`
						Type    string         `json:"type"`
						Content map[string]int `json:"content"`
					} `json:"events"`
					NextBatch string `json:"next_batch"`
				}
				if err := json.Unmarshal(r.Raw, &b); err != nil || b.NextBatch == "" {
					t.Fatalf("events: %s (%v)", r.Raw, err)
				}
				if len(b.Events) == 0 {
					return got
				}
				for _, e := range b.Events {
					if e.Sender != "@bob:localhost" || e.Type != "m.room.encrypted" {
						t.Fatalf("event %+v", e)
					}
					got = append(got, e.Content["n"])
				}
				next = b.NextBatch
			}
			t.Fatal("no end to the batches")
			return nil
		}
		alice2 := srv.Login(t, "alice")
		check := func(got []int) error {
			if len(got) != n {
				return fmt.Errorf("%d messages of %d", len(got), n)
			}
			for i, v := range got {
				if v != i {
					return fmt.Errorf("message %d is %d", i, v)
				}
			}
			return nil
		}
		// Sent messages are stored by the syncapi from the bus: wait for
		// all of them once.
		if err := poll.Wait(10*time.Second, func() error { return check(events(alice2, "DEHYD1")) }); err != nil {
			t.Fatal(err)
		}
		if err := check(events(alice2, "DEHYD1")); err != nil {
			t.Fatalf("asked again from the start: %v", err)
		}
		if r := alice2.Do(t, "POST", dehydratedPath+"/"+aliceDev+"/events", map[string]any{}); r.Status != 403 || r.String("errcode") != "M_FORBIDDEN" {
			t.Fatalf("events of a device that is not the dehydrated one: %s", r.GoString())
		}
		if r := bob.Do(t, "POST", dehydratedPath+"/DEHYD1/events", map[string]any{}); r.Status != 403 {
			t.Fatalf("events of another user's dehydrated device: %s", r.GoString())
		}
		if r := alice2.Do(t, "POST", dehydratedPath+"/DEHYD1/events", map[string]any{"next_batch": "x"}); r.Status != 400 {
			t.Fatalf("a bad next_batch: %s", r.GoString())
		}

		// A new dehydrated device replaces the old one, whose keys go.
		put("DEHYD2", "2").MustOK(t)
		keys, _ = queryKeys(t, bob, aliceID)
		if _, ok := keys[aliceID]["DEHYD1"]; ok || curveKey(t, keys[aliceID]["DEHYD2"], "DEHYD2") != "curve-2" {
			t.Fatalf("after replacing: %s", jsonOf(keys))
		}
		if r := alice2.Do(t, "POST", dehydratedPath+"/DEHYD1/events", map[string]any{}); r.Status != 403 {
			t.Fatalf("events of the replaced device: %s", r.GoString())
		}
		if r := alice.Do(t, "DELETE", dehydratedPath, nil).MustOK(t); r.String("device_id") != "DEHYD2" {
			t.Fatalf("delete: %s", r.Raw)
		}
		if r := alice.Do(t, "GET", dehydratedPath, nil); r.Status != 404 {
			t.Fatalf("after delete: %s", r.GoString())
		}
		if r := alice.Do(t, "DELETE", dehydratedPath, nil); r.Status != 404 {
			t.Fatalf("delete again: %s", r.GoString())
		}
		keys, _ = queryKeys(t, bob, aliceID)
		if _, ok := keys[aliceID]["DEHYD2"]; ok {
			t.Fatalf("after delete, alice's devices: %s", jsonOf(keys))
		}
	})
}
