package userapi

import (
	"crypto/sha256"
	"encoding/hex"
	"sync"
	"time"

	uapi "myelin/userapi/api"
)

// hashToken is how access tokens are stored and looked up: a token is
// 256 random bits, so a plain SHA-256 is as good as a slow hash and keeps
// lookups by hash possible.
func hashToken(token string) string {
	h := sha256.Sum256([]byte(token))
	return hex.EncodeToString(h[:])
}

// tokenCache keeps the devices of recently used access tokens, so that
// authenticating a request usually costs no database read.
//
// Whoever changes a device or account in the database invalidates after
// committing. A reader that missed loads from the database and inserts only
// if no invalidation happened since it started (gen), so an entry read
// before a logout committed cannot be cached after the logout. Entries also
// expire after ttl, which bounds how long a change made by another process
// (a split deployment) goes unseen.
type tokenCache struct {
	max       int
	ttl       time.Duration
	seenEvery time.Duration

	mu     sync.Mutex
	gen    uint64
	byHash map[string]*cachedDevice
	byUser map[string]map[string]struct{} // user ID -> token hashes
}

type cachedDevice struct {
	dev    uapi.Device
	loaded time.Time
}

func newTokenCache(max int, ttl, seenEvery time.Duration) *tokenCache {
	return &tokenCache{
		max:       max,
		ttl:       ttl,
		seenEvery: seenEvery,
		byHash:    map[string]*cachedDevice{},
		byUser:    map[string]map[string]struct{}{},
	}
}

// generation is read before a database lookup whose result may be put.
func (c *tokenCache) generation() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}

// get returns a copy of the cached device for hash. seen reports that the
// device's last-seen time is due to be written, and that this caller
// should write it (the entry already carries the new time and ip).
func (c *tokenCache) get(hash string, now time.Time, ip string) (dev uapi.Device, seen, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.byHash[hash]
	if !ok {
		return uapi.Device{}, false, false
	}
	if now.Sub(e.loaded) > c.ttl {
		c.remove(hash, e.dev.UserID)
		return uapi.Device{}, false, false
	}
	seen = c.claimSeen(&e.dev, now, ip)
	return e.dev, seen, true
}

// put caches dev (just loaded from the database) unless an invalidation
// happened since gen, and reports whether its last-seen time is due.
func (c *tokenCache) put(hash string, dev uapi.Device, gen uint64, now time.Time, ip string) (uapi.Device, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	seen := c.claimSeen(&dev, now, ip)
	if gen != c.gen {
		return dev, seen
	}
	if old, ok := c.byHash[hash]; ok {
		c.remove(hash, old.dev.UserID)
	}
	for len(c.byHash) >= c.max {
		// Map order is unspecified, which makes this a cheap random eviction.
		for h, e := range c.byHash {
			c.remove(h, e.dev.UserID)
			break
		}
	}
	c.byHash[hash] = &cachedDevice{dev: dev, loaded: now}
	hashes := c.byUser[dev.UserID]
	if hashes == nil {
		hashes = map[string]struct{}{}
		c.byUser[dev.UserID] = hashes
	}
	hashes[hash] = struct{}{}
	return dev, seen
}

// claimSeen moves d's last-seen time to now if the last write is older than
// seenEvery, so that a device in use is written about once per seenEvery
// rather than on every request.
func (c *tokenCache) claimSeen(d *uapi.Device, now time.Time, ip string) bool {
	if now.Sub(time.UnixMilli(d.LastSeenTS)) < c.seenEvery {
		return false
	}
	d.LastSeenTS = now.UnixMilli()
	if ip != "" {
		d.LastSeenIP = ip
	}
	return true
}

// invalidateUser drops every cached token of userID.
func (c *tokenCache) invalidateUser(userID string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	for h := range c.byUser[userID] {
		c.remove(h, userID)
	}
}

// invalidateDevices drops the cached tokens of the named devices.
func (c *tokenCache) invalidateDevices(userID string, deviceIDs ...string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	for h := range c.byUser[userID] {
		for _, id := range deviceIDs {
			if c.byHash[h].dev.DeviceID == id {
				c.remove(h, userID)
				break
			}
		}
	}
}

func (c *tokenCache) remove(hash, userID string) {
	delete(c.byHash, hash)
	if hashes := c.byUser[userID]; hashes != nil {
		delete(hashes, hash)
		if len(hashes) == 0 {
			delete(c.byUser, userID)
		}
	}
}
