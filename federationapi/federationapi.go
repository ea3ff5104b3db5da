// Package federationapi serves the Server-Server API (/_matrix/federation/*
// and /_matrix/key/*). For now it publishes this server's signing keys and
// its version; inbound and outbound federation of events builds on it.
// Only setup imports this package.
package federationapi

import (
	"crypto/ed25519"
	"encoding/json"
	"net/http"
	"time"

	"github.com/gorilla/mux"
	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"myelin/internal/mxhttp"
	"myelin/internal/signing"
)

// keyValidity is how long others may cache our key response; the key is
// refetched after it (spec: valid_until_ts, at most 7 days for room v5+).
const keyValidity = 24 * time.Hour

// FederationAPI serves the federation endpoints.
type FederationAPI struct {
	key     *signing.Key
	version string
	now     func() time.Time
}

// New makes the federation API for the server's signing key.
func New(key *signing.Key, version string) *FederationAPI {
	return &FederationAPI{key: key, version: version, now: time.Now}
}

// Routes registers the federation endpoints on the server's root router.
func (f *FederationAPI) Routes(root *mux.Router) {
	root.Handle("/_matrix/key/v2/server", mxhttp.Handler(f.serverKeys)).Methods(http.MethodGet)
	root.Handle("/_matrix/key/v2/server/{keyId}", mxhttp.Handler(f.serverKeys)).Methods(http.MethodGet)
	root.Handle("/_matrix/federation/v1/version", mxhttp.Handler(f.serverVersion)).Methods(http.MethodGet)
}

// serverKeys publishes this server's verify keys, signed by itself
// (GET /_matrix/key/v2/server).
func (f *FederationAPI) serverKeys(r *http.Request) (any, error) {
	var k gmsl.ServerKeys
	k.ServerName = f.key.ServerName
	k.ValidUntilTS = spec.AsTimestamp(f.now().Add(keyValidity))
	k.VerifyKeys = map[gmsl.KeyID]gmsl.VerifyKey{
		f.key.KeyID: {Key: spec.Base64Bytes(f.key.Private.Public().(ed25519.PublicKey))},
	}
	k.OldVerifyKeys = map[gmsl.KeyID]gmsl.OldVerifyKey{}
	raw, err := json.Marshal(k.ServerKeyFields)
	if err != nil {
		return nil, err
	}
	signed, err := gmsl.SignJSON(string(f.key.ServerName), f.key.KeyID, f.key.Private, raw)
	if err != nil {
		return nil, err
	}
	return json.RawMessage(signed), nil
}

func (f *FederationAPI) serverVersion(r *http.Request) (any, error) {
	return map[string]any{"server": map[string]string{"name": "Myelin", "version": f.version}}, nil
}
