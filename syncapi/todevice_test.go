package syncapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"myelin/internal/poll"
	"myelin/internal/sqldb"
	"myelin/internal/sqldb/sqldbtest"
	"myelin/internal/testserver"
)

// toDevice lists the to-device messages of a sync: sender, type and the
// content's "n".
func toDevice(t *testing.T, r *testserver.Response) []string {
	t.Helper()
	var body struct {
		ToDevice struct {
			Events []struct {
				Sender  string `json:"sender"`
				Type    string `json:"type"`
				Content struct {
					N int `json:"n"`
				} `json:"content"`
			} `json:"events"`
		} `json:"to_device"`
	}
	if err := json.Unmarshal(r.Raw, &body); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range body.ToDevice.Events {
		out = append(out, fmt.Sprintf("%s %s %d", e.Sender, e.Type, e.Content.N))
	}
	return out
}

// TestSendToDevice: messages reach the device named (or every device of
// the user, "*"), in order, a long-poll wakes for them, a retry of a
// transaction is delivered once, and a message comes until the device
// syncs past it, never after. Bad requests get the right errors.
func TestSendToDevice(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		srv := testserver.Start(t, testserver.Config(t.TempDir(), dbURL))
		alice := srv.Register(t, "alice")
		bob := srv.Register(t, "bob")
		bobID := bob.Do(t, "GET", v3+"/account/whoami", nil).MustOK(t).String("user_id")
		bobDev := bob.Do(t, "GET", v3+"/account/whoami", nil).MustOK(t).String("device_id")
		bob2 := &testserver.Client{Base: srv.URL}
		bob2.Token = bob2.Do(t, "POST", v3+"/login", map[string]any{
			"type": "m.login.password", "identifier": map[string]string{"type": "m.id.user", "user": "bob"}, "password": "password-bob",
		}).MustOK(t).String("access_token")
		aliceID := alice.Do(t, "GET", v3+"/account/whoami", nil).MustOK(t).String("user_id")

		since1 := syncFrom(t, bob, "", 0).String("next_batch")
		since2 := syncFrom(t, bob2, "", 0).String("next_batch")
		send := func(txn string, dev string, n int) {
			t.Helper()
			alice.Do(t, "PUT", v3+"/sendToDevice/m.test/"+txn, map[string]any{
				"messages": map[string]any{bobID: map[string]any{dev: map[string]int{"n": n}}},
			}).MustOK(t)
		}
		send("t1", bobDev, 1)
		send("t1", bobDev, 1) // a retry: stored once
		send("t2", "*", 2)

		want := fmt.Sprint([]string{aliceID + " m.test 1", aliceID + " m.test 2"})
		var r *testserver.Response
		poll.Until(t, 10*time.Second, func() error {
			r = syncFrom(t, bob, since1, 1000)
			if got := toDevice(t, r); fmt.Sprint(got) != want {
				return fmt.Errorf("bob's device got %v, want %v", got, want)
			}
			return nil
		})
		// Not acknowledged yet: the same sync again gives them again.
		if again := toDevice(t, syncFrom(t, bob, since1, 0)); fmt.Sprint(again) != want {
			t.Fatalf("before the acknowledgement: %v", again)
		}
		next := r.String("next_batch")
		send("t3", bobDev, 3)
		r = syncFrom(t, bob, next, 5000)
		if got := toDevice(t, r); fmt.Sprint(got) != fmt.Sprint([]string{aliceID + " m.test 3"}) {
			t.Fatalf("after the acknowledgement: %v", got)
		}
		// The second device got only the message to every device.
		if got := toDevice(t, syncFrom(t, bob2, since2, 5000)); fmt.Sprint(got) != fmt.Sprint([]string{aliceID + " m.test 2"}) {
			t.Fatalf("bob's second device got %v", got)
		}

		for _, tc := range []struct {
			name   string
			body   any
			status int
			code   string
		}{
			{"no messages", map[string]any{}, 400, "M_MISSING_PARAM"},
			{"a bad user ID", map[string]any{"messages": map[string]any{"bob": map[string]any{"D": map[string]any{}}}}, 400, "M_INVALID_PARAM"},
			{"content not an object", map[string]any{"messages": map[string]any{bobID: map[string]any{"D": 5}}}, 400, "M_BAD_JSON"},
			{"devices not an object", map[string]any{"messages": map[string]any{bobID: []string{}}}, 400, "M_BAD_JSON"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				r := alice.Do(t, "PUT", v3+"/sendToDevice/m.test/bad", tc.body)
				if r.Status != tc.status || r.String("errcode") != tc.code {
					t.Fatalf("got %d %s, want %d %s", r.Status, r.Raw, tc.status, tc.code)
				}
			})
		}
	})
}

// toDevicePos is the to-device field of a sync token (the seventh).
func toDevicePos(t *testing.T, token string) int64 {
	t.Helper()
	fields := strings.Split(strings.TrimPrefix(token, "s"), "_")
	if len(fields) < 7 {
		t.Fatalf("token %q has no to-device position", token)
	}
	n, err := strconv.ParseInt(fields[6], 10, 64)
	if err != nil {
		t.Fatalf("token %q: %v", token, err)
	}
	return n
}

// TestToDeviceGoneDevice: the messages waiting for a deleted device are
// deleted with it (a device logging in later under its ID gets none of
// them), and the to-device position survives a restart after every
// message was acknowledged, so tokens never go back.
func TestToDeviceGoneDevice(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		cfg := testserver.Config(t.TempDir(), dbURL)
		srv := testserver.Start(t, cfg)
		alice := srv.Register(t, "alice")
		bob := srv.Register(t, "bob")
		bobID := bob.Do(t, "GET", v3+"/account/whoami", nil).MustOK(t).String("user_id")
		bobDev := bob.Do(t, "GET", v3+"/account/whoami", nil).MustOK(t).String("device_id")
		login := func() *testserver.Client {
			c := &testserver.Client{Base: srv.URL}
			c.Token = c.Do(t, "POST", v3+"/login", map[string]any{
				"type": "m.login.password", "identifier": map[string]string{"type": "m.id.user", "user": "bob"},
				"password": "password-bob", "device_id": "GONE",
			}).MustOK(t).String("access_token")
			return c
		}
		login()
		send := func(txn, dev string, n int) {
			t.Helper()
			alice.Do(t, "PUT", v3+"/sendToDevice/m.test/"+txn, map[string]any{
				"messages": map[string]any{bobID: map[string]any{dev: map[string]int{"n": n}}},
			}).MustOK(t)
		}
		send("t1", "GONE", 1)
		// Bob's own device gets nothing, but a token past the message.
		acked := syncFrom(t, bob, "", 0).String("next_batch")

		// The device GONE is deleted before it synced, then a device is
		// logged in under its ID: the old message is not for it.
		path := v3 + "/devices/GONE"
		session := bob.Do(t, "DELETE", path, map[string]any{}).String("session")
		bob.Do(t, "DELETE", path, map[string]any{"auth": map[string]any{
			"type": "m.login.password", "identifier": map[string]any{"type": "m.id.user", "user": "bob"},
			"password": "password-bob", "session": session,
		}}).MustOK(t)
		// A sync waits until syncapi has consumed the deletion: a device
		// made under the same ID before then would keep the messages
		// (syncapi sees which devices exist, not which were deleted).
		syncFrom(t, bob, "", 0)
		again := login()
		if got := toDevice(t, syncFrom(t, again, "", 0)); len(got) != 0 {
			t.Fatalf("a new device under a deleted device's ID got its messages: %v", got)
		}

		// The race: syncapi reads which devices bob has (GONE, the device
		// `again`), GONE is deleted and syncapi drops its messages, a device
		// is logged in under the ID again, and only then does syncapi write
		// the message it was storing for the old GONE. The test writes that
		// late row itself, with the session syncapi would have read: the
		// new device under the ID must not get it.
		db, err := sqldb.Open(context.Background(), dbURL, sqldb.Options{})
		if err != nil {
			t.Fatal(err)
		}
		var oldSession int64
		if err := db.QueryRow(context.Background(), `SELECT session_id FROM userapi_devices WHERE user_id = $1 AND device_id = 'GONE'`,
			bobID).Scan(&oldSession); err != nil {
			t.Fatal(err)
		}
		session = bob.Do(t, "DELETE", path, map[string]any{}).String("session")
		bob.Do(t, "DELETE", path, map[string]any{"auth": map[string]any{
			"type": "m.login.password", "identifier": map[string]any{"type": "m.id.user", "user": "bob"},
			"password": "password-bob", "session": session,
		}}).MustOK(t)
		syncFrom(t, bob, "", 0) // the deletion consumed
		again = login()
		if _, err := db.Exec(context.Background(), `INSERT INTO syncapi_to_device (user_id, device_id, session_id, sender, message_id, event_type, content)
			VALUES ($1, 'GONE', $2, '@alice:localhost', 'late', 'm.test', '{"n":10}')`, bobID, oldSession); err != nil {
			t.Fatal(err)
		}
		db.Close()               // before the restart below, which checks for leaked goroutines
		send("wake", bobDev, 11) // moves the to-device stream past the late row
		if got := toDevice(t, syncFrom(t, again, "", 0)); len(got) != 0 {
			t.Fatalf("a device logged in under a deleted device's ID got a message stored for the old one: %v", got)
		}
		// What the new device is sent is its own.
		send("mine", "GONE", 20)
		poll.Until(t, 10*time.Second, func() error {
			if got := toDevice(t, syncFrom(t, again, "", 0)); len(got) != 1 || !strings.HasSuffix(got[0], " 20") {
				return fmt.Errorf("the new device got %v, want message 20", got)
			}
			return nil
		})

		// No message is stored any more: after a restart the position is
		// where it was, not back at the last stored row.
		before := toDevicePos(t, acked)
		if before == 0 {
			t.Fatalf("no to-device position in %q", acked)
		}
		srv.Stop()
		srv = testserver.Start(t, cfg)
		alice.Base, bob.Base = srv.URL, srv.URL
		next := syncFrom(t, bob, acked, 0).String("next_batch")
		if after := toDevicePos(t, next); after < before {
			t.Fatalf("the to-device position went back across a restart: %d, then %d", before, after)
		}
		send("t2", bobDev, 2)
		if got := toDevice(t, syncFrom(t, bob, next, 5000)); len(got) != 1 || !strings.HasSuffix(got[0], " 2") {
			t.Fatalf("after the restart bob's device got %v, want only message 2", got)
		}
	})
}
