package clientapi_test

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"

	gmsl "github.com/matrix-org/gomatrixserverlib"

	"myelin/internal/sqldb/sqldbtest"
)

// xsKey is a cross-signing key pair of a test.
type xsKey struct {
	pub  string
	priv ed25519.PrivateKey
}

func newXSKey(t *testing.T) xsKey {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	return xsKey{pub: base64.RawStdEncoding.EncodeToString(pub), priv: priv}
}

// obj is the key object of k for userID with usage, signed by signer
// (nil: unsigned).
func (k xsKey) obj(t *testing.T, userID, usage string, signer *xsKey) map[string]any {
	t.Helper()
	o := map[string]any{"user_id": userID, "usage": []string{usage}, "keys": map[string]string{"ed25519:" + k.pub: k.pub}}
	if signer == nil {
		return o
	}
	raw, _ := json.Marshal(o)
	signed, err := gmsl.SignJSON(userID, gmsl.KeyID("ed25519:"+signer.pub), signer.priv, raw)
	if err != nil {
		t.Fatal(err)
	}
	var out map[string]any
	if err := json.Unmarshal(signed, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestKeysBadInput: malformed keys, keys of another user or device,
// cross-signing keys the master key did not sign, and oversized batches
// get the right Matrix error, and nothing of them is stored.
func TestKeysBadInput(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		s := newAcctServer(t, dbURL, acctOptions{})
		tok := s.register(t, "alice", "secret")
		_, who, _ := s.do(t, "GET", "/account/whoami", tok, nil)
		alice, dev := who["user_id"].(string), who["device_id"].(string)
		devKeys := func(user, device string, keys map[string]any) map[string]any {
			return map[string]any{"device_keys": map[string]any{
				"user_id": user, "device_id": device, "algorithms": []string{"m.olm.v1.curve25519-aes-sha2"}, "keys": keys}}
		}
		good := map[string]any{"ed25519:" + dev: "k"}
		many := map[string]any{}
		for i := range 1001 {
			many[fmt.Sprintf("signed_curve25519:%d", i)] = "k"
		}
		master, self, other := newXSKey(t), newXSKey(t), newXSKey(t)
		masterObj := master.obj(t, alice, "master", nil)
		bobMaster := master.obj(t, "@bob:test.local", "master", nil)
		misnamed := master.obj(t, alice, "master", nil)
		misnamed["keys"] = map[string]string{"ed25519:other": master.pub}
		users := map[string]any{}
		for i := range 10_001 { // over the bound of users, and of the test server's body size
			users[fmt.Sprintf("@u%d:test.local", i)] = []string{}
		}
		upload := "/keys/upload"
		xs := "/keys/device_signing/upload"
		runAcctCases(t, s, []acctCase{
			{name: "upload: not JSON", method: "POST", path: upload, token: &tok, body: "{", status: 400, errcode: "M_NOT_JSON"},
			{name: "upload: device keys not an object", method: "POST", path: upload, token: &tok,
				body: map[string]any{"device_keys": "x"}, status: 400, errcode: "M_BAD_JSON"},
			{name: "upload: device keys of another user", method: "POST", path: upload, token: &tok,
				body: devKeys("@bob:test.local", dev, good), status: 400, errcode: "M_INVALID_PARAM"},
			{name: "upload: device keys of another device", method: "POST", path: upload, token: &tok,
				body: devKeys(alice, "OTHER", good), status: 400, errcode: "M_INVALID_PARAM"},
			{name: "upload: device keys without keys", method: "POST", path: upload, token: &tok,
				body:   map[string]any{"device_keys": map[string]any{"user_id": alice, "device_id": dev, "algorithms": []string{}}},
				status: 400, errcode: "M_BAD_JSON"},
			{name: "upload: a device key that is not a string", method: "POST", path: upload, token: &tok,
				body: devKeys(alice, dev, map[string]any{"ed25519:" + dev: 5}), status: 400, errcode: "M_BAD_JSON"},
			{name: "upload: a device key ID without algorithm", method: "POST", path: upload, token: &tok,
				body: devKeys(alice, dev, map[string]any{dev: "k"}), status: 400, errcode: "M_INVALID_PARAM"},
			{name: "upload: device keys with signatures not an object", method: "POST", path: upload, token: &tok,
				body: map[string]any{"device_keys": map[string]any{"user_id": alice, "device_id": dev, "algorithms": []string{},
					"keys": good, "signatures": "x"}}, status: 400, errcode: "M_BAD_JSON"},
			{name: "upload: a one-time key ID without algorithm", method: "POST", path: upload, token: &tok,
				body: map[string]any{"one_time_keys": map[string]any{"nocolon": "k"}}, status: 400, errcode: "M_INVALID_PARAM"},
			{name: "upload: a one-time key that is a number", method: "POST", path: upload, token: &tok,
				body: map[string]any{"one_time_keys": map[string]any{"signed_curve25519:A": 5}}, status: 400, errcode: "M_BAD_JSON"},
			{name: "upload: a fallback key that is a number", method: "POST", path: upload, token: &tok,
				body: map[string]any{"fallback_keys": map[string]any{"signed_curve25519:A": 5}}, status: 400, errcode: "M_BAD_JSON"},
			{name: "upload: 1,001 one-time keys", method: "POST", path: upload, token: &tok,
				body: map[string]any{"one_time_keys": many}, status: 400, errcode: "M_INVALID_PARAM"},
			{name: "nothing was stored", method: "POST", path: upload, token: &tok, body: map[string]any{}, status: 200,
				check: want(map[string]any{"one_time_key_counts": map[string]any{"signed_curve25519": float64(0)}})},
			{name: "query: no device_keys", method: "POST", path: "/keys/query", token: &tok,
				body: map[string]any{}, status: 400, errcode: "M_MISSING_PARAM"},
			{name: "query: a bad user ID", method: "POST", path: "/keys/query", token: &tok,
				body: map[string]any{"device_keys": map[string]any{"alice": []string{}}}, status: 400, errcode: "M_INVALID_PARAM"},
			{name: "query: devices not a list", method: "POST", path: "/keys/query", token: &tok,
				body: map[string]any{"device_keys": map[string]any{alice: "x"}}, status: 400, errcode: "M_BAD_JSON"},
			{name: "query: 10,001 users", method: "POST", path: "/keys/query", token: &tok,
				body: map[string]any{"device_keys": users}, status: 413, errcode: "M_TOO_LARGE"},
			{name: "query: nothing stored for alice", method: "POST", path: "/keys/query", token: &tok,
				body: map[string]any{"device_keys": map[string]any{alice: []string{}}}, status: 200,
				check: func(t *testing.T, got map[string]any, _ http.Header) {
					dk, _ := got["device_keys"].(map[string]any)
					if devs, _ := dk[alice].(map[string]any); len(devs) != 0 {
						t.Fatalf("alice's device keys after refused uploads: %v", devs)
					}
					if mk, _ := got["master_keys"].(map[string]any); mk[alice] != nil {
						t.Fatalf("a master key before any upload: %v", mk)
					}
				}},
			{name: "claim: no one_time_keys", method: "POST", path: "/keys/claim", token: &tok,
				body: map[string]any{}, status: 400, errcode: "M_MISSING_PARAM"},
			{name: "claim: a bad user ID", method: "POST", path: "/keys/claim", token: &tok,
				body: map[string]any{"one_time_keys": map[string]any{"x": map[string]string{dev: "signed_curve25519"}}}, status: 400, errcode: "M_INVALID_PARAM"},
			{name: "claim: an algorithm not a string", method: "POST", path: "/keys/claim", token: &tok,
				body: map[string]any{"one_time_keys": map[string]any{alice: map[string]any{dev: 5}}}, status: 400, errcode: "M_BAD_JSON"},
			{name: "cross-signing: a master key of another user", method: "POST", path: xs, token: &tok,
				body: map[string]any{"master_key": bobMaster}, status: 400, errcode: "M_INVALID_PARAM"},
			{name: "cross-signing: a master key named by another ID", method: "POST", path: xs, token: &tok,
				body: map[string]any{"master_key": misnamed}, status: 400, errcode: "M_INVALID_PARAM"},
			{name: "cross-signing: a master key with the self-signing usage", method: "POST", path: xs, token: &tok,
				body: map[string]any{"master_key": master.obj(t, alice, "self_signing", nil)}, status: 400, errcode: "M_INVALID_PARAM"},
			{name: "cross-signing: a self-signing key and no master key", method: "POST", path: xs, token: &tok,
				body: map[string]any{"self_signing_key": self.obj(t, alice, "self_signing", &master)}, status: 400, errcode: "M_MISSING_PARAM"},
			{name: "cross-signing: a self-signing key the master key did not sign", method: "POST", path: xs, token: &tok,
				body:   map[string]any{"master_key": masterObj, "self_signing_key": self.obj(t, alice, "self_signing", &other)},
				status: 400, errcode: "M_INVALID_SIGNATURE"},
			{name: "cross-signing: an unsigned user-signing key", method: "POST", path: xs, token: &tok,
				body:   map[string]any{"master_key": masterObj, "user_signing_key": self.obj(t, alice, "user_signing", nil)},
				status: 400, errcode: "M_INVALID_SIGNATURE"},
			{name: "query: still no master key", method: "POST", path: "/keys/query", token: &tok,
				body: map[string]any{"device_keys": map[string]any{alice: []string{}}}, status: 200,
				check: func(t *testing.T, got map[string]any, _ http.Header) {
					if mk, _ := got["master_keys"].(map[string]any); mk[alice] != nil {
						t.Fatalf("a master key stored from a refused upload: %v", mk)
					}
				}},
			{name: "cross-signing: keys signed by the master key", method: "POST", path: xs, token: &tok,
				body: map[string]any{"master_key": masterObj, "self_signing_key": self.obj(t, alice, "self_signing", &master),
					"user_signing_key": other.obj(t, alice, "user_signing", &master)}, status: 200},
		})
	})
}
