package federationapi

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
)

const (
	// keyRefetchInterval is the least time between two fetches of one
	// server's keys: a request signed with a key its origin never had
	// must not make us ask the origin again for every request.
	keyRefetchInterval = 30 * time.Second
	// keyFetchWorkers bounds the servers asked for keys at once.
	keyFetchWorkers = 8
	// maxCachedKeys bounds the in-memory key cache; past it, it is
	// emptied (the store still has every key).
	maxCachedKeys = 10_000
)

// keyRing is how other servers' keys are found: gomatrixserverlib's KeyRing
// over the stored key responses (with an in-memory cache in front), asking
// the origin itself, then each configured notary, for what is missing or
// expired. Key responses are stored whole by the fetchers, which alone see
// them (storeKeys); the KeyRing's own StoreKeys, which gets parsed keys
// only, stores nothing.
type keyRing struct {
	f    *FederationAPI
	ring *gmsl.KeyRing

	mu      sync.Mutex
	cache   map[gmsl.PublicKeyLookupRequest]cachedKey
	fetches map[spec.ServerName]*keyFetch
}

type cachedKey struct {
	res   gmsl.PublicKeyLookupResult
	until time.Time
}

func newKeyRing(f *FederationAPI, notaries []spec.ServerName) *keyRing {
	k := &keyRing{f: f, cache: map[gmsl.PublicKeyLookupRequest]cachedKey{}, fetches: map[spec.ServerName]*keyFetch{}}
	fetchers := []gmsl.KeyFetcher{directFetcher{k}}
	for _, n := range notaries {
		fetchers = append(fetchers, notaryFetcher{k: k, notary: n})
	}
	k.ring = &gmsl.KeyRing{KeyFetchers: fetchers, KeyDatabase: keyDatabase{k}}
	return k
}

// forget drops server's cached keys after a new response was stored.
func (k *keyRing) forget(server spec.ServerName) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for req := range k.cache {
		if req.ServerName == server {
			delete(k.cache, req)
		}
	}
}

// stored returns what the store knows of the requested keys. A key listed
// in a response's verify_keys is valid until the response's
// valid_until_ts; one in old_verify_keys expired at its expired_ts.
func (k *keyRing) stored(ctx context.Context, reqs map[gmsl.PublicKeyLookupRequest]spec.Timestamp) (map[gmsl.PublicKeyLookupRequest]gmsl.PublicKeyLookupResult, error) {
	out := map[gmsl.PublicKeyLookupRequest]gmsl.PublicKeyLookupResult{}
	now := k.f.now()
	for req := range reqs {
		if req.ServerName == k.f.key.ServerName {
			if req.KeyID == k.f.key.KeyID {
				out[req] = gmsl.PublicKeyLookupResult{
					VerifyKey:    gmsl.VerifyKey{Key: spec.Base64Bytes(k.f.key.Public())},
					ExpiredTS:    gmsl.PublicKeyNotExpired,
					ValidUntilTS: spec.AsTimestamp(now.Add(keyValidity)),
				}
			}
			continue
		}
		k.mu.Lock()
		c, ok := k.cache[req]
		k.mu.Unlock()
		if ok && now.Before(c.until) {
			out[req] = c.res
			continue
		}
		rows, err := k.f.store.Keys(ctx, string(req.ServerName), []string{string(req.KeyID)})
		if err != nil {
			return nil, err
		}
		for _, row := range rows {
			res, ok := keyFromResponse(row.Response, req.KeyID)
			if !ok {
				continue
			}
			out[req] = res
			until := res.ValidUntilTS.Time()
			if res.ExpiredTS != gmsl.PublicKeyNotExpired {
				until = now.Add(time.Hour) // an expired key does not change
			}
			k.mu.Lock()
			if len(k.cache) >= maxCachedKeys {
				clear(k.cache)
			}
			k.cache[req] = cachedKey{res: res, until: until}
			k.mu.Unlock()
		}
	}
	return out, nil
}

// keyFromResponse finds keyID in a stored key response.
func keyFromResponse(response string, keyID gmsl.KeyID) (gmsl.PublicKeyLookupResult, bool) {
	var keys gmsl.ServerKeyFields
	if err := json.Unmarshal([]byte(response), &keys); err != nil {
		return gmsl.PublicKeyLookupResult{}, false
	}
	if v, ok := keys.VerifyKeys[keyID]; ok {
		return gmsl.PublicKeyLookupResult{VerifyKey: v, ExpiredTS: gmsl.PublicKeyNotExpired, ValidUntilTS: keys.ValidUntilTS}, true
	}
	if v, ok := keys.OldVerifyKeys[keyID]; ok {
		return gmsl.PublicKeyLookupResult{VerifyKey: v.VerifyKey, ExpiredTS: v.ExpiredTS, ValidUntilTS: gmsl.PublicKeyNotValid}, true
	}
	return gmsl.PublicKeyLookupResult{}, false
}

// keyFetch is one fetch of a server's keys from the server itself.
type keyFetch struct {
	done chan struct{} // closed when the fetch ends
	at   time.Time
}

// fetchOnce fetches server's keys from the server unless that was done in
// the last minInterval. A fetch under way is waited for, not repeated: a
// burst of requests from a server not seen before makes one fetch, and
// none of them is refused for want of a key on its way.
func (k *keyRing) fetchOnce(ctx context.Context, server spec.ServerName, minInterval time.Duration) {
	now := k.f.now()
	k.mu.Lock()
	if f, ok := k.fetches[server]; ok && (!closed(f.done) || now.Sub(f.at) < minInterval) {
		k.mu.Unlock()
		select {
		case <-f.done:
		case <-ctx.Done():
		}
		return
	}
	if len(k.fetches) >= maxCachedKeys {
		clear(k.fetches) // a fetch in flight may then be repeated, no more
	}
	f := &keyFetch{done: make(chan struct{}), at: now}
	k.fetches[server] = f
	k.mu.Unlock()
	defer close(f.done)
	if err := k.f.fetchKeys(ctx, server); err != nil {
		k.f.log.WithError(err).WithField("origin", server).Debug("could not fetch keys from the origin")
	}
}

func closed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// keyDatabase is the KeyRing's view of the store.
type keyDatabase struct{ k *keyRing }

func (d keyDatabase) FetcherName() string { return "federationapi store" }

func (d keyDatabase) FetchKeys(ctx context.Context, reqs map[gmsl.PublicKeyLookupRequest]spec.Timestamp) (map[gmsl.PublicKeyLookupRequest]gmsl.PublicKeyLookupResult, error) {
	return d.k.stored(ctx, reqs)
}

// StoreKeys stores nothing: the fetchers stored the whole responses.
func (d keyDatabase) StoreKeys(context.Context, map[gmsl.PublicKeyLookupRequest]gmsl.PublicKeyLookupResult) error {
	return nil
}

// directFetcher asks each server for its own keys (/_matrix/key/v2/server),
// a few servers at a time.
type directFetcher struct{ k *keyRing }

func (d directFetcher) FetcherName() string { return "origin" }

func (d directFetcher) FetchKeys(ctx context.Context, reqs map[gmsl.PublicKeyLookupRequest]spec.Timestamp) (map[gmsl.PublicKeyLookupRequest]gmsl.PublicKeyLookupResult, error) {
	servers := map[spec.ServerName]bool{}
	for req := range reqs {
		// A denied server is not asked: its keys may still come from a
		// notary, for its events in the state of rooms we join.
		if req.ServerName != d.k.f.key.ServerName && d.k.f.policy.Allowed(req.ServerName) {
			servers[req.ServerName] = true
		}
	}
	sem := make(chan struct{}, keyFetchWorkers)
	var wg sync.WaitGroup
	for server := range servers {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			d.k.fetchOnce(ctx, server, keyRefetchInterval)
		}()
	}
	wg.Wait()
	return d.k.stored(ctx, reqs)
}

// notaryFetcher asks one configured notary (/_matrix/key/v2/query). The
// notary must sign its answer with a key of its own, which is fetched from
// the notary directly (never through a notary), and each response it
// relays must still carry its origin's signature.
type notaryFetcher struct {
	k      *keyRing
	notary spec.ServerName
}

func (n notaryFetcher) FetcherName() string { return "notary " + string(n.notary) }

func (n notaryFetcher) FetchKeys(ctx context.Context, reqs map[gmsl.PublicKeyLookupRequest]spec.Timestamp) (map[gmsl.PublicKeyLookupRequest]gmsl.PublicKeyLookupResult, error) {
	ask := map[gmsl.PublicKeyLookupRequest]spec.Timestamp{}
	for req, ts := range reqs {
		if req.ServerName != n.notary && req.ServerName != n.k.f.key.ServerName {
			ask[req] = ts
		}
	}
	if len(ask) == 0 {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(ctx, keyFetchTimeout)
	defer cancel()
	responses, err := n.k.f.keyClient.LookupServerKeys(ctx, n.notary, ask)
	if err != nil {
		return nil, fmt.Errorf("ask notary %s: %w", n.notary, err)
	}
	direct := &gmsl.KeyRing{KeyFetchers: []gmsl.KeyFetcher{directFetcher{n.k}}, KeyDatabase: keyDatabase{n.k}}
	asked := map[spec.ServerName]bool{}
	for req := range ask {
		asked[req.ServerName] = true
	}
	for _, keys := range responses {
		if !asked[keys.ServerName] {
			continue
		}
		res, err := direct.VerifyJSONs(ctx, []gmsl.VerifyJSONRequest{{
			ServerName:           n.notary,
			AtTS:                 spec.AsTimestamp(n.k.f.now()),
			Message:              keys.Raw,
			ValidityCheckingFunc: gmsl.StrictValiditySignatureCheck,
		}})
		if err != nil {
			return nil, err
		}
		if res[0].Error != nil {
			n.k.f.log.WithError(res[0].Error).WithField("notary", n.notary).Warn("notary answer not signed by the notary")
			continue
		}
		if err := n.k.f.storeKeys(ctx, keys.ServerName, keys); err != nil {
			n.k.f.log.WithError(err).WithField("notary", n.notary).Warn("notary relayed keys that fail their checks")
		}
	}
	return n.k.stored(ctx, ask)
}
