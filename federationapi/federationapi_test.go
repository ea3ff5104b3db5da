package federationapi

import (
	"crypto/ed25519"
	"encoding/json"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	gmsl "github.com/matrix-org/gomatrixserverlib"

	"myelin/internal/mxhttp"
	"myelin/internal/signing"
)

func TestServerKeys(t *testing.T) {
	key, err := signing.LoadOrGenerate(filepath.Join(t.TempDir(), "k"), "example.test")
	if err != nil {
		t.Fatal(err)
	}
	f := New(key, "test")
	r := mxhttp.NewRouter()
	f.Routes(r)
	srv := httptest.NewServer(r)
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL + "/_matrix/key/v2/server")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var raw json.RawMessage
	if err := json.NewDecoder(resp.Body).Decode(&raw); err != nil {
		t.Fatal(err)
	}
	var keys gmsl.ServerKeys
	if err := json.Unmarshal(raw, &keys); err != nil {
		t.Fatal(err)
	}
	if keys.ServerName != "example.test" || time.Until(keys.ValidUntilTS.Time()) < time.Hour {
		t.Fatalf("keys: %s", raw)
	}
	vk, ok := keys.VerifyKeys[key.KeyID]
	if !ok || !ed25519.PublicKey(vk.Key).Equal(key.Public()) {
		t.Fatalf("verify key missing: %s", raw)
	}
	if err := gmsl.VerifyJSON("example.test", key.KeyID, key.Public(), raw); err != nil {
		t.Fatalf("self-signature: %v", err)
	}
	var body map[string]any
	_ = json.Unmarshal(raw, &body)
	if _, ok := body["old_verify_keys"].(map[string]any); !ok {
		t.Fatalf("old_verify_keys must be an object: %s", raw)
	}
}
