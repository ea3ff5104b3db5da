package federationapi

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"myelin/internal/mxhttp"
)

// keyFetchTimeout bounds how long a notary request waits for an origin.
const keyFetchTimeout = 15 * time.Second

// ownKeys is this server's key response, signed by itself.
func (f *FederationAPI) ownKeys() ([]byte, error) {
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
	return gmsl.SignJSON(string(f.key.ServerName), f.key.KeyID, f.key.Private, raw)
}

// serverKeys publishes this server's verify keys (GET /_matrix/key/v2/server).
func (f *FederationAPI) serverKeys(r *http.Request) (any, error) {
	raw, err := f.ownKeys()
	if err != nil {
		return nil, err
	}
	return json.RawMessage(raw), nil
}

// fetchKeys asks server for its keys and stores the response under each key
// it lists, once the response is checked (storeKeys).
func (f *FederationAPI) fetchKeys(ctx context.Context, server spec.ServerName) error {
	ctx, cancel := context.WithTimeout(ctx, keyFetchTimeout)
	defer cancel()
	keys, err := f.keyClient.GetServerKeys(ctx, server)
	if err != nil {
		return fmt.Errorf("fetch keys of %s: %w", server, err)
	}
	return f.storeKeys(ctx, server, keys)
}

// storeKeys checks a key response for server (the right server name, at
// least one key, every current key's signature over it) and stores it
// whole under each key it lists, so that it can be served again with the
// origin's signature intact.
func (f *FederationAPI) storeKeys(ctx context.Context, server spec.ServerName, keys gmsl.ServerKeys) error {
	raw := []byte(keys.Raw)
	if keys.ServerName != server {
		return fmt.Errorf("keys of %s name %s", server, keys.ServerName)
	}
	if len(keys.VerifyKeys) == 0 {
		return fmt.Errorf("keys of %s list no key", server)
	}
	for id, k := range keys.VerifyKeys {
		if err := gmsl.VerifyJSON(string(server), id, ed25519.PublicKey(k.Key), raw); err != nil {
			return fmt.Errorf("keys of %s: key %s did not sign the response: %w", server, id, err)
		}
	}
	now := f.now().UnixMilli()
	for id := range keys.VerifyKeys {
		if err := f.store.StoreKey(ctx, string(server), string(id), string(raw), int64(keys.ValidUntilTS), now); err != nil {
			return err
		}
	}
	for id, k := range keys.OldVerifyKeys {
		if err := f.store.StoreKey(ctx, string(server), string(id), string(raw), int64(k.ExpiredTS), now); err != nil {
			return err
		}
	}
	f.keys.forget(server)
	return nil
}

type keyCriteria struct {
	MinimumValidUntilTS int64 `json:"minimum_valid_until_ts"`
}

// notaryKeys answers for one server's keys: the stored responses, fetched
// anew from the origin when none is valid until need. When the origin cannot
// give better, what is stored is returned even if it has expired (the
// asking server decides what it can use).
func (f *FederationAPI) notaryKeys(ctx context.Context, server spec.ServerName, keyIDs []string, need int64) ([]json.RawMessage, error) {
	if server == f.key.ServerName {
		raw, err := f.ownKeys()
		if err != nil {
			return nil, err
		}
		return []json.RawMessage{raw}, nil
	}
	stored, err := f.store.Keys(ctx, string(server), keyIDs)
	if err != nil {
		return nil, err
	}
	fresh := len(stored) > 0
	for _, k := range stored {
		if k.ValidUntilTS < need {
			fresh = false
		}
	}
	if !fresh {
		// Through the key ring's fetch, so that concurrent queries make
		// one fetch; but each query asking for more than is stored makes
		// the origin be asked again (as sytest's notary tests expect).
		f.keys.fetchOnce(ctx, server, 0)
		if stored, err = f.store.Keys(ctx, string(server), keyIDs); err != nil {
			return nil, err
		}
	}
	seen := map[string]bool{}
	var out []json.RawMessage
	for _, k := range stored {
		if seen[k.Response] {
			continue
		}
		seen[k.Response] = true
		signed, err := gmsl.SignJSON(string(f.key.ServerName), f.key.KeyID, f.key.Private, []byte(k.Response))
		if err != nil {
			return nil, err
		}
		out = append(out, signed)
	}
	return out, nil
}

// queryKeysPost is the notary's POST /_matrix/key/v2/query.
func (f *FederationAPI) queryKeysPost(r *http.Request) (any, error) {
	var req struct {
		ServerKeys map[spec.ServerName]map[string]keyCriteria `json:"server_keys"`
	}
	if err := mxhttp.ReadJSON(r, &req); err != nil {
		return nil, err
	}
	out := []json.RawMessage{}
	for server, ids := range req.ServerKeys {
		if _, _, ok := spec.ParseAndValidateServerName(server); !ok {
			continue
		}
		// The keys must be valid until the latest time asked for; without
		// one, until now.
		var need int64
		var keyIDs []string
		for id, c := range ids {
			keyIDs = append(keyIDs, id)
			need = max(need, c.MinimumValidUntilTS)
		}
		if need == 0 {
			need = f.now().UnixMilli()
		}
		got, err := f.notaryKeys(r.Context(), server, keyIDs, need)
		if err != nil {
			return nil, err
		}
		out = append(out, got...)
	}
	return map[string]any{"server_keys": out}, nil
}

// queryKeysGet is the notary's GET /_matrix/key/v2/query/{serverName}.
func (f *FederationAPI) queryKeysGet(r *http.Request) (any, error) {
	server := spec.ServerName(mxhttp.Var(r, "serverName"))
	if _, _, ok := spec.ParseAndValidateServerName(server); !ok {
		return nil, mxhttp.InvalidParam("invalid server name")
	}
	need := f.now().UnixMilli()
	if v := r.URL.Query().Get("minimum_valid_until_ts"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return nil, mxhttp.InvalidParam("minimum_valid_until_ts must be a number")
		}
		need = n
	}
	var keyIDs []string
	if id := mxhttp.Var(r, "keyId"); id != "" {
		keyIDs = []string{id}
	}
	got, err := f.notaryKeys(r.Context(), server, keyIDs, need)
	if err != nil {
		return nil, err
	}
	if got == nil {
		got = []json.RawMessage{}
	}
	return map[string]any{"server_keys": got}, nil
}
