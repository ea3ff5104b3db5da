// Package signing loads and generates the server's ed25519 signing key, in
// the one-line format Synapse and Dendrite also read:
//
//	ed25519 <key version> <unpadded base64 seed>
package signing

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
)

// Key is the server's signing identity.
type Key struct {
	ServerName spec.ServerName
	KeyID      gmsl.KeyID
	Private    ed25519.PrivateKey
}

// Public returns the public half of the key.
func (k *Key) Public() ed25519.PublicKey { return k.Private.Public().(ed25519.PublicKey) }

// LoadOrGenerate reads the key at path, generating and writing a new one
// (mode 0600) when the file does not exist.
func LoadOrGenerate(path string, serverName string) (*Key, error) {
	raw, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		if err := Generate(path); err != nil {
			return nil, err
		}
		raw, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, fmt.Errorf("read signing key: %w", err)
	}
	k, err := Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("signing key %s: %w", path, err)
	}
	k.ServerName = spec.ServerName(serverName)
	return k, nil
}

// Generate writes a new random key to path; it refuses to overwrite one.
func Generate(path string) error {
	seed := make([]byte, ed25519.SeedSize)
	if _, err := rand.Read(seed); err != nil {
		return fmt.Errorf("generate signing key: %w", err)
	}
	ver := make([]byte, 4)
	if _, err := rand.Read(ver); err != nil {
		return fmt.Errorf("generate signing key: %w", err)
	}
	id := "a_" + base64.RawURLEncoding.EncodeToString(ver)[:4]
	line := fmt.Sprintf("ed25519 %s %s\n", id, base64.RawStdEncoding.EncodeToString(seed))
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("create key directory: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("write signing key: %w", err)
	}
	if _, err := f.WriteString(line); err != nil {
		f.Close()
		return fmt.Errorf("write signing key: %w", err)
	}
	return f.Close()
}

// Parse reads the first key line of a key file.
func Parse(raw []byte) (*Key, error) {
	for _, line := range strings.Split(string(raw), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		if len(f) != 3 || f[0] != "ed25519" {
			return nil, errors.New(`want "ed25519 <version> <base64 seed>"`)
		}
		seed, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(f[2], "="))
		if err != nil || len(seed) != ed25519.SeedSize {
			return nil, errors.New("key seed must be 32 bytes of base64")
		}
		return &Key{KeyID: gmsl.KeyID("ed25519:" + f[1]), Private: ed25519.NewKeyFromSeed(seed)}, nil
	}
	return nil, errors.New("no key in file")
}
