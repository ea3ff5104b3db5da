package setup_test

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"testing"
	"time"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/tidwall/gjson"

	"myelin/internal/poll"
	"myelin/internal/sqldb/sqldbtest"
	"myelin/internal/testserver"
)

// edKey is an ed25519 key pair as clients name them: the public key in
// unpadded base64 is also its key ID's name.
type edKey struct {
	pub  string
	priv ed25519.PrivateKey
}

func newEdKey(t *testing.T) edKey {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	return edKey{pub: base64.RawStdEncoding.EncodeToString(pub), priv: priv}
}

// sign returns obj signed by userID with k under key ID "ed25519:<name>".
func (k edKey) sign(t *testing.T, userID, name string, obj map[string]any) map[string]any {
	t.Helper()
	raw, err := json.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	signed, err := gmsl.SignJSON(userID, gmsl.KeyID("ed25519:"+name), k.priv, raw)
	if err != nil {
		t.Fatal(err)
	}
	var out map[string]any
	if err := json.Unmarshal(signed, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

func crossKey(userID, usage string, k edKey) map[string]any {
	return map[string]any{"user_id": userID, "usage": []string{usage}, "keys": map[string]string{"ed25519:" + k.pub: k.pub}}
}

// TestKeySignatures: POST /keys/signatures/upload verifies each signature
// against the stored key it claims and the signer's keys, lists what it
// refuses in failures, and stores the rest: a user's signatures of its own
// device reach users of another server with the device's keys, and its
// signature of another user's master key is shown to it alone.
func TestKeySignatures(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		fed := newFedNet(t)
		hsA := fed.start(t, "sa.test", "127.0.0.26", dbURL)
		hsB := fed.start(t, "sb.test", "127.0.0.27", sqldbtest.URL(t, dialectOf(dbURL)))
		carol := hsA.Register(t, "carol")
		erin := hsA.Register(t, "erin")
		dan := hsB.Register(t, "dan")
		carolID, carolDev := whoami(t, carol)
		erinID, _ := whoami(t, erin)
		danID, _ := whoami(t, dan)

		room := carol.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{"preset": "public_chat"}).MustOK(t).String("room_id")
		for _, c := range []*testserver.Client{dan, erin} {
			c.Do(t, "POST", "/_matrix/client/v3/join/"+url.PathEscape(room)+"?server_name=sa.test", map[string]any{}).MustOK(t)
		}
		poll.Until(t, 10*time.Second, func() error {
			if m := joinedMembers(t, carol, room); !m[danID] || !m[erinID] {
				return fmt.Errorf("carol sees members %v", m)
			}
			return nil
		})

		devKey, master, self, user := newEdKey(t), newEdKey(t), newEdKey(t), newEdKey(t)
		device := map[string]any{
			"user_id": carolID, "device_id": carolDev,
			"algorithms": []string{"m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"},
			"keys":       map[string]string{"curve25519:" + carolDev: "curve", "ed25519:" + carolDev: devKey.pub},
		}
		device = devKey.sign(t, carolID, carolDev, device)
		carol.Do(t, "POST", "/_matrix/client/v3/keys/upload", map[string]any{"device_keys": device}).MustOK(t)
		carol.Do(t, "POST", "/_matrix/client/v3/keys/device_signing/upload", map[string]any{
			"master_key":       crossKey(carolID, "master", master),
			"self_signing_key": master.sign(t, carolID, master.pub, crossKey(carolID, "self_signing", self)),
			"user_signing_key": master.sign(t, carolID, master.pub, crossKey(carolID, "user_signing", user)),
		}).MustOK(t)
		// sa.test has not fetched dan's keys yet: his m.signing_key_update
		// makes it fetch them, and its users hear that they changed.
		since, _ := syncDeviceLists(t, carol, "")
		danMaster := newEdKey(t)
		dan.Do(t, "POST", "/_matrix/client/v3/keys/device_signing/upload", map[string]any{"master_key": crossKey(danID, "master", danMaster)}).MustOK(t)
		poll.Until(t, 10*time.Second, func() error {
			if _, dl := syncDeviceLists(t, carol, since); !slices.Contains(dl.Changed, danID) {
				return fmt.Errorf("carol's device lists after dan's new master key: %+v", dl)
			}
			return nil
		})

		upload := func(body map[string]any) gjson.Result {
			t.Helper()
			r := carol.Do(t, "POST", "/_matrix/client/v3/keys/signatures/upload", body).MustOK(t)
			return gjson.ParseBytes(r.Raw)
		}
		query := func(c *testserver.Client, userID string) gjson.Result {
			t.Helper()
			r := c.Do(t, "POST", "/_matrix/client/v3/keys/query", map[string]any{"device_keys": map[string]any{userID: []string{}}}).MustOK(t)
			return gjson.ParseBytes(r.Raw)
		}
		esc := gjson.Escape

		t.Run("refused", func(t *testing.T) {
			forged := self.sign(t, carolID, self.pub, device)
			forged["signatures"].(map[string]any)[carolID].(map[string]any)["ed25519:"+self.pub] = base64.RawStdEncoding.EncodeToString(make([]byte, 64))
			changed := map[string]any{"user_id": carolID, "device_id": carolDev, "keys": map[string]string{"ed25519:" + carolDev: "other"}}
			for _, tc := range []struct {
				name, keyID string
				obj         map[string]any
				code        string
			}{
				{"a forged signature", carolDev, forged, "M_INVALID_SIGNATURE"},
				{"a signature by an unknown key", carolDev, newEdKey(t).sign(t, carolID, "NOPE", device), "M_INVALID_SIGNATURE"},
				{"a key that is not the stored one", carolDev, self.sign(t, carolID, self.pub, changed), "M_INVALID_PARAM"},
				{"an unknown device", "NODEVICE", self.sign(t, carolID, self.pub, device), "M_NOT_FOUND"},
			} {
				t.Run(tc.name, func(t *testing.T) {
					got := upload(map[string]any{carolID: map[string]any{tc.keyID: tc.obj}})
					if code := got.Get("failures." + esc(carolID) + "." + esc(tc.keyID) + ".errcode").String(); code != tc.code {
						t.Fatalf("failures: %s, want %s", got.Raw, tc.code)
					}
				})
			}
			for _, tc := range []struct {
				name string
				body any
				code string
			}{
				{"a bad user ID", map[string]any{"nobody": map[string]any{"X": map[string]any{}}}, "M_INVALID_PARAM"},
				{"a key that is not an object", map[string]any{carolID: map[string]any{carolDev: "x"}}, "M_BAD_JSON"},
			} {
				t.Run(tc.name, func(t *testing.T) {
					r := carol.Do(t, "POST", "/_matrix/client/v3/keys/signatures/upload", tc.body)
					if r.Status != 400 || r.String("errcode") != tc.code {
						t.Fatalf("got %d %s, want 400 %s", r.Status, r.Raw, tc.code)
					}
				})
			}
			if sigs := query(carol, carolID).Get("device_keys." + esc(carolID) + "." + esc(carolDev) + ".signatures." + esc(carolID)); len(sigs.Map()) != 1 {
				t.Fatalf("a refused signature was stored: %s", sigs.Raw)
			}
		})

		t.Run("own device, over federation", func(t *testing.T) {
			signed := self.sign(t, carolID, self.pub, device)
			if got := upload(map[string]any{carolID: map[string]any{carolDev: signed}}); len(got.Get("failures").Map()) != 0 {
				t.Fatalf("failures: %s", got.Raw)
			}
			want := signed["signatures"].(map[string]any)[carolID].(map[string]any)["ed25519:"+self.pub]
			for _, c := range []*testserver.Client{carol, erin, dan} {
				poll.Until(t, 10*time.Second, func() error {
					q := query(c, carolID)
					if got := q.Get("device_keys." + esc(carolID) + "." + esc(carolDev) + ".signatures." + esc(carolID) + "." + esc("ed25519:"+self.pub)).String(); got != want {
						return fmt.Errorf("carol's device keys: %s", q.Get("device_keys").Raw)
					}
					return nil
				})
			}
		})

		t.Run("own master key by a device", func(t *testing.T) {
			signed := devKey.sign(t, carolID, carolDev, crossKey(carolID, "master", master))
			if got := upload(map[string]any{carolID: map[string]any{master.pub: signed}}); len(got.Get("failures").Map()) != 0 {
				t.Fatalf("failures: %s", got.Raw)
			}
			poll.Until(t, 10*time.Second, func() error {
				q := query(dan, carolID)
				if !q.Get("master_keys." + esc(carolID) + ".signatures." + esc(carolID) + "." + esc("ed25519:"+carolDev)).Exists() {
					return fmt.Errorf("carol's master key on sb.test: %s", q.Get("master_keys").Raw)
				}
				return nil
			})
		})

		// A new user-signing key is its owner's business: the others
		// sharing a room are not told its keys changed.
		t.Run("a new user-signing key alone", func(t *testing.T) {
			since, _ := syncDeviceLists(t, erin, "")
			user = newEdKey(t)
			carol.Do(t, "POST", "/_matrix/client/v3/keys/device_signing/upload", map[string]any{
				"user_signing_key": master.sign(t, carolID, master.pub, crossKey(carolID, "user_signing", user)),
				"auth":             map[string]any{"type": "m.login.password", "identifier": map[string]string{"type": "m.id.user", "user": "carol"}, "password": "password-carol"},
			}).MustOK(t)
			if got := query(carol, carolID).Get("user_signing_keys." + esc(carolID) + ".keys." + esc("ed25519:"+user.pub)); !got.Exists() {
				t.Fatalf("carol's new user-signing key not stored")
			}
			// A message after it: once erin sees it, she would have seen
			// the device list move too.
			carol.Do(t, "PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/send/m.room.message/usk", map[string]string{"msgtype": "m.text", "body": "x"}).MustOK(t)
			poll.Until(t, 10*time.Second, func() error {
				r := erin.Do(t, "GET", "/_matrix/client/v3/sync?timeout=0&since="+url.QueryEscape(since), nil).MustOK(t)
				g := gjson.ParseBytes(r.Raw)
				if !g.Get("rooms.join." + esc(room) + ".timeline.events.#(content.body==\"x\")").Exists() {
					return fmt.Errorf("erin has not seen the message yet")
				}
				if slices.ContainsFunc(g.Get("device_lists.changed").Array(), func(r gjson.Result) bool { return r.String() == carolID }) {
					t.Fatalf("erin told carol's keys changed: %s", g.Get("device_lists").Raw)
				}
				return nil
			})
		})

		t.Run("another user's master key", func(t *testing.T) {
			poll.Until(t, 10*time.Second, func() error {
				if !query(carol, danID).Get("master_keys." + esc(danID)).Exists() {
					return fmt.Errorf("dan's master key not known to carol yet")
				}
				return nil
			})
			signed := user.sign(t, carolID, user.pub, crossKey(danID, "master", danMaster))
			if got := upload(map[string]any{danID: map[string]any{danMaster.pub: signed}}); len(got.Get("failures").Map()) != 0 {
				t.Fatalf("failures: %s", got.Raw)
			}
			sig := "master_keys." + esc(danID) + ".signatures." + esc(carolID) + "." + esc("ed25519:"+user.pub)
			if !query(carol, danID).Get(sig).Exists() {
				t.Fatalf("carol does not see her signature of dan's master key: %s", query(carol, danID).Raw)
			}
			for _, c := range []*testserver.Client{erin, dan} {
				if q := query(c, danID); q.Get(sig).Exists() || !q.Get("master_keys."+esc(danID)).Exists() {
					t.Errorf("another user's view of dan's master key: %s", q.Get("master_keys").Raw)
				}
			}
			// A signature by another key than carol's user-signing key.
			bad := self.sign(t, carolID, self.pub, crossKey(danID, "master", danMaster))
			if got := upload(map[string]any{danID: map[string]any{danMaster.pub: bad}}); got.Get("failures."+esc(danID)+"."+esc(danMaster.pub)+".errcode").String() != "M_INVALID_SIGNATURE" {
				t.Fatalf("a signature by the self-signing key: %s", got.Raw)
			}
		})
	})
}
