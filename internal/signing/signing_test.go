package signing

import (
	"path/filepath"
	"testing"
)

func TestLoadOrGenerate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys", "signing.key")
	k1, err := LoadOrGenerate(path, "example.org")
	if err != nil {
		t.Fatal(err)
	}
	k2, err := LoadOrGenerate(path, "example.org")
	if err != nil {
		t.Fatal(err)
	}
	if k1.KeyID != k2.KeyID || !k1.Private.Equal(k2.Private) {
		t.Fatal("second load returned a different key")
	}
	if err := Generate(path); err == nil {
		t.Fatal("Generate overwrote an existing key")
	}
	for _, bad := range []string{"", "ed25519 a", "rsa a AAAA", "ed25519 a notbase64!"} {
		if _, err := Parse([]byte(bad)); err == nil {
			t.Errorf("Parse(%q) succeeded", bad)
		}
	}
}
