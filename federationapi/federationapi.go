// Package federationapi serves the Server-Server API (/_matrix/federation/*
// and /_matrix/key/*). For now it publishes this server's signing keys and
// its version; inbound and outbound federation of events builds on it.
// Only setup imports this package.
package federationapi

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/gorilla/mux"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/sirupsen/logrus"

	"myelin/federationapi/storage"
	"myelin/internal/fedhttp"
	"myelin/internal/mxhttp"
	"myelin/internal/signing"
	"myelin/internal/sqldb"
)

// keyValidity is how long others may cache our key response; the key is
// refetched after it (spec: valid_until_ts, at most 7 days for room v5+).
const keyValidity = 24 * time.Hour

// FederationAPI serves the federation endpoints.
type FederationAPI struct {
	key       *signing.Key
	version   string
	store     *storage.Storage
	keyClient *fclient.Client
	log       *logrus.Entry
	now       func() time.Time
}

// New makes the federation API for the server's signing key; transport
// carries its outbound requests.
func New(ctx context.Context, db *sqldb.DB, key *signing.Key, transport *fedhttp.Transport, version string, log *logrus.Entry) (*FederationAPI, error) {
	store, err := storage.Open(ctx, db)
	if err != nil {
		return nil, fmt.Errorf("federationapi storage: %w", err)
	}
	return &FederationAPI{
		key:       key,
		version:   version,
		store:     store,
		keyClient: fclient.NewClient(fclient.WithTransport(transport), fclient.WithUserAgent("Myelin/"+version)),
		log:       log,
		now:       time.Now,
	}, nil
}

// Routes registers the federation endpoints on the server's root router.
func (f *FederationAPI) Routes(root *mux.Router) {
	root.Handle("/_matrix/key/v2/server", mxhttp.Handler(f.serverKeys)).Methods(http.MethodGet)
	root.Handle("/_matrix/key/v2/server/{keyId}", mxhttp.Handler(f.serverKeys)).Methods(http.MethodGet)
	root.Handle("/_matrix/key/v2/query", mxhttp.Handler(f.queryKeysPost)).Methods(http.MethodPost)
	root.Handle("/_matrix/key/v2/query/{serverName}", mxhttp.Handler(f.queryKeysGet)).Methods(http.MethodGet)
	root.Handle("/_matrix/key/v2/query/{serverName}/{keyId}", mxhttp.Handler(f.queryKeysGet)).Methods(http.MethodGet)
	root.Handle("/_matrix/federation/v1/version", mxhttp.Handler(f.serverVersion)).Methods(http.MethodGet)
}

func (f *FederationAPI) serverVersion(r *http.Request) (any, error) {
	return map[string]any{"server": map[string]string{"name": "Myelin", "version": f.version}}, nil
}
