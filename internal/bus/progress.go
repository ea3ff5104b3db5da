package bus

import (
	"context"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Progress is how far a consumer got in its stream: the stream sequence of
// the last message it handled. A component that must not act before its
// consumer has seen what came before (say, the join that made a room
// shared) waits on it for the stream's last sequence (LastSeq).
type Progress struct {
	mu    sync.Mutex
	seq   uint64
	moved chan struct{} // closed and replaced when seq grows
}

// NewProgress returns a Progress at sequence 0.
func NewProgress() *Progress { return &Progress{moved: make(chan struct{})} }

// Mark records that the consumer handled the stream up to seq.
func (p *Progress) Mark(seq uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if seq > p.seq {
		p.seq = seq
		close(p.moved)
		p.moved = make(chan struct{})
	}
}

// Marking is handle, marking p up to the last message of each batch it
// handled without error.
func (p *Progress) Marking(handle BatchHandler) BatchHandler {
	return func(ctx context.Context, ms []jetstream.Msg) error {
		if err := handle(ctx, ms); err != nil {
			return err
		}
		if md, err := ms[len(ms)-1].Metadata(); err == nil {
			p.Mark(md.Sequence.Stream)
		}
		return nil
	}
}

// Wait waits until seq is reached or ctx ends.
func (p *Progress) Wait(ctx context.Context, seq uint64) {
	for {
		p.mu.Lock()
		done, moved := p.seq >= seq, p.moved
		p.mu.Unlock()
		if done {
			return
		}
		select {
		case <-moved:
		case <-ctx.Done():
			return
		}
	}
}

// CatchUp waits, at most max, until the consumer has handled every message
// that stream held when called.
func (b *Bus) CatchUp(ctx context.Context, stream string, p *Progress, max time.Duration) {
	ctx, cancel := context.WithTimeout(ctx, max)
	defer cancel()
	last, err := b.LastSeq(ctx, stream)
	if err != nil {
		return
	}
	p.Wait(ctx, last)
}
