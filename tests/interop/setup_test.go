package main

import (
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// TestSetup checks the files the servers start from: each certificate is
// valid for its server's IP under the CA (and for no other), the signing
// key is in the form Dendrite reads, and dendrite.yaml says what the
// harness relies on.
func TestSetup(t *testing.T) {
	p := setupParams{Dir: t.TempDir(), MyelinIP: "127.0.0.41", DendriteIP: "127.0.0.42", DendriteName: "127.0.0.42:8448"}
	f, err := writeSetup(p)
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(f.CA)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		t.Fatal("ca.pem holds no certificate")
	}

	certs := []struct {
		name, cert, key, ip, otherIP string
	}{
		{"myelin", f.MyelinCert, f.MyelinKey, p.MyelinIP, p.DendriteIP},
		{"dendrite", f.DendriteCert, f.DendriteKey, p.DendriteIP, p.MyelinIP},
	}
	for _, c := range certs {
		t.Run(c.name+" certificate", func(t *testing.T) {
			pair, err := tls.LoadX509KeyPair(c.cert, c.key)
			if err != nil {
				t.Fatal(err)
			}
			leaf, err := x509.ParseCertificate(pair.Certificate[0])
			if err != nil {
				t.Fatal(err)
			}
			verify := func(ip string) error {
				_, err := leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: ip})
				return err
			}
			if err := verify(c.ip); err != nil {
				t.Errorf("not valid for %s: %v", c.ip, err)
			}
			if err := verify(c.otherIP); err == nil {
				t.Errorf("valid for the other server's address %s too", c.otherIP)
			}
		})
	}

	t.Run("dendrite signing key", func(t *testing.T) {
		raw, err := os.ReadFile(f.DendriteMKey)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := pem.Decode(raw)
		if b == nil || b.Type != "MATRIX PRIVATE KEY" {
			t.Fatalf("not a MATRIX PRIVATE KEY block: %q", raw)
		}
		if id := b.Headers["Key-ID"]; !strings.HasPrefix(id, "ed25519:") {
			t.Errorf("Key-ID %q", id)
		}
		if len(b.Bytes) != ed25519.SeedSize {
			t.Errorf("seed of %d bytes, want %d", len(b.Bytes), ed25519.SeedSize)
		}
	})

	t.Run("dendrite.yaml", func(t *testing.T) {
		raw, err := os.ReadFile(f.DendriteYAML)
		if err != nil {
			t.Fatal(err)
		}
		var top map[string]any
		if err := yaml.Unmarshal(raw, &top); err != nil {
			t.Fatalf("%v\n%s", err, raw)
		}
		cfg := map[string]map[string]any{}
		for k, v := range top {
			cfg[k], _ = v.(map[string]any)
		}
		if got := cfg["global"]["server_name"]; got != p.DendriteName {
			t.Errorf("server_name %v, want %s", got, p.DendriteName)
		}
		// Every component needs its own SQLite file (see dendriteConfig).
		dbs := map[string]string{
			"federation_api": "database", "key_server": "database", "media_api": "database",
			"mscs": "database", "relay_api": "database", "room_server": "database",
			"sync_api": "database", "user_api": "account_database",
		}
		seen := map[string]bool{}
		for section, key := range dbs {
			db, _ := cfg[section][key].(map[string]any)
			cs, _ := db["connection_string"].(string)
			file, ok := strings.CutPrefix(cs, "file:")
			if !ok || filepath.Dir(file) != f.DendriteDir || seen[file] {
				t.Errorf("%s.%s.connection_string = %q, want a file of its own in %s", section, key, cs, f.DendriteDir)
			}
			seen[file] = true
		}
		for _, k := range []string{"deny_networks", "allow_networks", "key_perspectives"} {
			if l, ok := cfg["federation_api"][k].([]any); !ok || len(l) != 0 {
				t.Errorf("federation_api.%s = %v, want an empty list", k, cfg["federation_api"][k])
			}
		}
		if v := cfg["federation_api"]["disable_tls_validation"]; v != false {
			t.Errorf("disable_tls_validation = %v: the harness trusts the CA instead", v)
		}
	})
}

func TestSetupRefusesBadInput(t *testing.T) {
	tests := []struct {
		name string
		p    setupParams
	}{
		{"myelin address not an IP", setupParams{MyelinIP: "myelin.test", DendriteIP: "127.0.0.42"}},
		{"dendrite address not an IP", setupParams{MyelinIP: "127.0.0.41", DendriteIP: ""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.p.Dir = t.TempDir()
			tt.p.DendriteName = "127.0.0.42:8448"
			if _, err := writeSetup(tt.p); err == nil {
				t.Fatal("setup succeeded")
			}
		})
	}
}
