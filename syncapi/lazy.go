package syncapi

import (
	"strconv"
	"sync"

	"myelin/internal/cache"
)

// lazyMembers remembers, per device and room, which member events a
// lazy-loading client was sent, so that incremental syncs do not send them
// again (spec: lazy_load_members, include_redundant_members). It lives in
// memory only: after a restart members may be sent once more, which the
// spec allows.
type lazyMembers struct {
	sets *cache.LRU[string, *memberSet]
}

type memberSet struct {
	mu   sync.Mutex
	sent map[string]bool
}

func newLazyMembers(size int) *lazyMembers {
	return &lazyMembers{sets: cache.New[string, *memberSet](size)}
}

// get returns the set of a device's room; reset empties it (a full sync
// starts the client's knowledge afresh).
func (l *lazyMembers) get(sessionID int64, roomID string, reset bool) *memberSet {
	key := strconv.FormatInt(sessionID, 10) + "|" + roomID
	if m, ok := l.sets.Get(key); ok && !reset {
		return m
	}
	m := &memberSet{sent: map[string]bool{}}
	l.sets.Put(key, m)
	return m
}

func (m *memberSet) has(userID string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.sent[userID]
}

func (m *memberSet) add(users map[string]bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for u := range users {
		m.sent[u] = true
	}
}
