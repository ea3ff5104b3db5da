package userapi

import (
	"context"
	"sync"
	"time"

	"myelin/userapi/storage"
)

// lastSeenFlushEvery is how often pending last-seen times are written.
const lastSeenFlushEvery = 5 * time.Second

// lastSeenBatch holds the devices' last-seen times not written yet. They
// are written together every few seconds, and before devices are read,
// rather than one write in the request path per device and minute: with
// tens of thousands of clients long-polling that was hundreds of writes a
// second.
type lastSeenBatch struct {
	mu      sync.Mutex
	pending map[int64]storage.LastSeen // by device session
}

// add records that the device of session was seen at ts from ip ("" keeps
// the previous IP).
func (b *lastSeenBatch) add(session, ts int64, ip string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.pending == nil {
		b.pending = map[int64]storage.LastSeen{}
	}
	if ip == "" {
		ip = b.pending[session].IP
	}
	b.pending[session] = storage.LastSeen{TS: ts, IP: ip}
}

func (b *lastSeenBatch) take() map[int64]storage.LastSeen {
	b.mu.Lock()
	defer b.mu.Unlock()
	p := b.pending
	b.pending = nil
	return p
}

// flushLastSeen writes the pending last-seen times. Losing some is
// harmless, so a failure is only logged.
func (u *UserAPI) flushLastSeen(ctx context.Context) {
	p := u.lastSeen.take()
	if len(p) == 0 {
		return
	}
	if err := u.store.UpdateLastSeen(ctx, p); err != nil && ctx.Err() == nil {
		u.log.WithError(err).WithField("devices", len(p)).Warn("recording devices' last seen")
	}
}

// writeLastSeen flushes the pending last-seen times every few seconds
// until ctx ends, then once more.
func (u *UserAPI) writeLastSeen(ctx context.Context) {
	t := time.NewTicker(lastSeenFlushEvery)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			u.flushLastSeen(ctx)
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.Background(), time.Second)
			u.flushLastSeen(fctx)
			cancel()
			return
		}
	}
}
