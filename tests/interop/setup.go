package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"text/template"
	"time"
)

// files are what setup writes into its directory: one CA both servers
// trust, a certificate for each federation listener, Dendrite's signing
// key and its configuration.
type files struct {
	CA            string
	MyelinCert    string
	MyelinKey     string
	DendriteCert  string
	DendriteKey   string
	DendriteMKey  string
	DendriteYAML  string
	DendriteDir   string
	DendriteName  string
	DendriteLevel string
}

// setupParams names the servers: each is reached on its own loopback IP,
// and its server name is that IP with the federation port, so neither
// needs DNS or .well-known.
type setupParams struct {
	Dir          string
	MyelinIP     string
	DendriteIP   string
	DendriteName string
	// LogLevel is Dendrite's (trace, debug, info, ...).
	LogLevel string
}

// writeSetup makes a fresh CA and the files both servers start from. A
// CA made per run, valid for a day, keeps nothing trusted beyond the run.
func writeSetup(p setupParams) (files, error) {
	if err := os.MkdirAll(p.Dir, 0o700); err != nil {
		return files{}, fmt.Errorf("make %s: %w", p.Dir, err)
	}
	f := files{
		CA:            filepath.Join(p.Dir, "ca.pem"),
		MyelinCert:    filepath.Join(p.Dir, "myelin.crt"),
		MyelinKey:     filepath.Join(p.Dir, "myelin.key"),
		DendriteCert:  filepath.Join(p.Dir, "dendrite.crt"),
		DendriteKey:   filepath.Join(p.Dir, "dendrite.key"),
		DendriteMKey:  filepath.Join(p.Dir, "dendrite", "matrix_key.pem"),
		DendriteYAML:  filepath.Join(p.Dir, "dendrite", "dendrite.yaml"),
		DendriteDir:   filepath.Join(p.Dir, "dendrite"),
		DendriteName:  p.DendriteName,
		DendriteLevel: p.LogLevel,
	}
	if f.DendriteLevel == "" {
		f.DendriteLevel = "info"
	}
	if err := os.MkdirAll(f.DendriteDir, 0o700); err != nil {
		return files{}, fmt.Errorf("make %s: %w", f.DendriteDir, err)
	}
	ca, caKey, err := newCA(f.CA)
	if err != nil {
		return files{}, err
	}
	for _, c := range []struct{ ip, cert, key string }{
		{p.MyelinIP, f.MyelinCert, f.MyelinKey},
		{p.DendriteIP, f.DendriteCert, f.DendriteKey},
	} {
		if err := issue(ca, caKey, c.ip, c.cert, c.key); err != nil {
			return files{}, err
		}
	}
	if err := writeMatrixKey(f.DendriteMKey); err != nil {
		return files{}, err
	}
	var buf bytes.Buffer
	if err := dendriteConfig.Execute(&buf, f); err != nil {
		return files{}, fmt.Errorf("dendrite config: %w", err)
	}
	if err := os.WriteFile(f.DendriteYAML, buf.Bytes(), 0o600); err != nil {
		return files{}, fmt.Errorf("write %s: %w", f.DendriteYAML, err)
	}
	return f, nil
}

func newCA(path string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("CA key: %w", err)
	}
	tpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "Myelin interop test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("CA certificate: %w", err)
	}
	return cert, key, writePEM(path, &pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// issue makes a server certificate for an IP address: both servers are
// named by IP literal, and the spec has the TLS name be the IP then.
func issue(ca *x509.Certificate, caKey *ecdsa.PrivateKey, ip, certPath, keyPath string) error {
	addr := net.ParseIP(ip)
	if addr == nil {
		return fmt.Errorf("issue a certificate: %q is not an IP address", ip)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("key for %s: %w", ip, err)
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		return fmt.Errorf("serial for %s: %w", ip, err)
	}
	tpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: ip},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{addr},
	}
	der, err := x509.CreateCertificate(rand.Reader, tpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return fmt.Errorf("certificate for %s: %w", ip, err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return fmt.Errorf("key for %s: %w", ip, err)
	}
	if err := writePEM(certPath, &pem.Block{Type: "CERTIFICATE", Bytes: der}); err != nil {
		return err
	}
	return writePEM(keyPath, &pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
}

// writeMatrixKey writes an ed25519 signing key the way Dendrite reads it:
// a "MATRIX PRIVATE KEY" PEM block holding the 32-byte seed, its key ID in
// a Key-ID header.
func writeMatrixKey(path string) error {
	seed := make([]byte, ed25519.SeedSize)
	if _, err := rand.Read(seed); err != nil {
		return fmt.Errorf("signing key: %w", err)
	}
	return writePEM(path, &pem.Block{
		Type:    "MATRIX PRIVATE KEY",
		Headers: map[string]string{"Key-ID": "ed25519:interop"},
		Bytes:   seed,
	})
}

func writePEM(path string, b *pem.Block) error {
	if err := os.WriteFile(path, pem.EncodeToMemory(b), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// dendriteConfig is the smallest dendrite.yaml for a test federation:
// SQLite, open registration (with the -really-enable-open-registration
// flag), no rate limits, no notary, and loopback peers allowed (Dendrite
// denies private networks by default; empty allow and deny lists turn the
// check off). Each component has its own SQLite file: Dendrite takes a
// component without a connection string of its own for PostgreSQL, even
// when the global one is SQLite. The CA is trusted through SSL_CERT_FILE,
// not by turning TLS verification off, so Dendrite checks Myelin's
// certificate.
var dendriteConfig = template.Must(template.New("dendrite.yaml").Parse(`{{$d := .DendriteDir}}version: 2
global:
  server_name: {{.DendriteName}}
  private_key: {{.DendriteMKey}}
  key_validity_period: 168h0m0s
  jetstream:
    storage_path: {{$d}}/jetstream
    topic_prefix: Dendrite
  trusted_third_party_id_servers: []
  disable_federation: false
  presence:
    enable_inbound: true
    enable_outbound: true
  report_stats:
    enabled: false
  dns_cache:
    enabled: false
client_api:
  registration_disabled: false
  guests_disabled: true
  rate_limiting:
    enabled: false
federation_api:
  database:
    connection_string: file:{{$d}}/federationapi.db
  send_max_retries: 16
  disable_tls_validation: false
  disable_http_keepalives: false
  key_perspectives: []
  prefer_direct_fetch: true
  deny_networks: []
  allow_networks: []
key_server:
  database:
    connection_string: file:{{$d}}/keyserver.db
media_api:
  database:
    connection_string: file:{{$d}}/mediaapi.db
  base_path: {{$d}}/media
mscs:
  database:
    connection_string: file:{{$d}}/mscs.db
relay_api:
  database:
    connection_string: file:{{$d}}/relayapi.db
room_server:
  database:
    connection_string: file:{{$d}}/roomserver.db
sync_api:
  database:
    connection_string: file:{{$d}}/syncapi.db
  search:
    enabled: false
user_api:
  account_database:
    connection_string: file:{{$d}}/userapi.db
  bcrypt_cost: 4
logging:
  - type: std
    level: {{.DendriteLevel}}
`))
