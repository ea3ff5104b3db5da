package roomserver

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	rsapi "myelin/roomserver/api"
)

// Delayed events (MSC4140, which Element Call uses to leave a call when
// its client vanishes): the roomserver stores each, and one goroutine
// (runDelayed, started with the input) sends those due as their user, so
// that they survive a restart and are sent after it. A delayed event is
// taken from the store before it is sent, so it is sent at most once.

// delayedBatch bounds the due events one round sends.
const delayedBatch = 100

// delayedIdle is how long the timer sleeps with nothing scheduled; a new
// delayed event wakes it at once.
const delayedIdle = time.Hour

// delayed is the timer's state.
type delayed struct {
	wake    chan struct{} // a new or restarted event may be due sooner
	done    chan struct{} // closed when runDelayed returns
	started atomic.Bool
}

func newDelayed() *delayed {
	return &delayed{wake: make(chan struct{}, 1), done: make(chan struct{})}
}

func (d *delayed) poke() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

func nowMS() int64 { return time.Now().UnixMilli() }

// ScheduleDelayedEvent implements rsapi.API.
func (r *Roomserver) ScheduleDelayedEvent(ctx context.Context, d rsapi.DelayedEvent) (string, error) {
	var b [12]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	d.DelayID = "syd_" + base64.RawURLEncoding.EncodeToString(b[:])
	d.RunningSince = nowMS()
	d.Created = d.RunningSince
	if err := r.store.AddDelayedEvent(ctx, d); err != nil {
		return "", err
	}
	r.delayed.poke()
	return d.DelayID, nil
}

// DelayedEvents implements rsapi.API.
func (r *Roomserver) DelayedEvents(ctx context.Context, userID string) ([]rsapi.DelayedEvent, error) {
	return r.store.DelayedEvents(ctx, userID)
}

// UpdateDelayedEvent implements rsapi.API.
func (r *Roomserver) UpdateDelayedEvent(ctx context.Context, userID, delayID, action string) error {
	switch action {
	case rsapi.DelayedRestart:
		err := r.store.RestartDelayedEvent(ctx, userID, delayID, nowMS())
		r.delayed.poke()
		return mapNotFound(err, rsapi.ErrDelayedEventNotFound)
	case rsapi.DelayedCancel, rsapi.DelayedSend:
	default:
		return fmt.Errorf("unknown action %q on a delayed event", action)
	}
	d, err := r.store.DelayedEvent(ctx, userID, delayID)
	if err != nil {
		return mapNotFound(err, rsapi.ErrDelayedEventNotFound)
	}
	taken, err := r.store.TakeDelayedEvent(ctx, delayID)
	if err != nil {
		return err
	}
	if !taken {
		return rsapi.ErrDelayedEventNotFound // sent or cancelled meanwhile
	}
	if action == rsapi.DelayedCancel {
		return nil
	}
	return r.sendDelayed(ctx, d)
}

// runDelayed sends delayed events when they are due, until ctx ends.
func (r *Roomserver) runDelayed(ctx context.Context) {
	defer close(r.delayed.done)
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.delayed.wake:
		case <-timer.C:
		}
		wait := r.sendDue(ctx)
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(wait)
	}
}

// sendDue sends the delayed events due now and returns how long until
// the next one.
func (r *Roomserver) sendDue(ctx context.Context) time.Duration {
	for {
		now := nowMS()
		due, next, err := r.store.DueDelayedEvents(ctx, now, delayedBatch)
		if err != nil {
			if ctx.Err() == nil {
				r.log.WithError(err).Warn("cannot read due delayed events; trying again in a second")
			}
			return time.Second
		}
		for i := range due {
			d := &due[i]
			taken, err := r.store.TakeDelayedEvent(ctx, d.DelayID)
			if err != nil {
				if ctx.Err() == nil {
					r.log.WithError(err).Warn("cannot take a due delayed event; trying again in a second")
				}
				return time.Second
			}
			if !taken {
				continue
			}
			if err := r.sendDelayed(ctx, d); err != nil && ctx.Err() == nil {
				// Its user may have left the room or lost the power to
				// send it: it is dropped, as a refused send would be.
				r.log.WithError(err).WithField("room_id", d.RoomID).WithField("user_id", d.Sender).Info("delayed event not sent")
			}
		}
		if len(due) == delayedBatch {
			continue
		}
		if next == 0 {
			return delayedIdle
		}
		return max(time.Duration(next-nowMS())*time.Millisecond, 0)
	}
}

// sendDelayed sends a delayed event as its user. A delayed state event
// whose state another user set since it was scheduled is dropped: that
// user's state wins (as in Synapse).
func (r *Roomserver) sendDelayed(ctx context.Context, d *rsapi.DelayedEvent) error {
	if d.StateKey != nil {
		cur, err := r.StateEvent(ctx, d.RoomID, d.Type, *d.StateKey)
		switch {
		case err == nil:
			if string(cur.SenderID()) != d.Sender && int64(cur.OriginServerTS()) > d.Created {
				return nil
			}
		case !errors.Is(err, rsapi.ErrStateNotFound) && !errors.Is(err, rsapi.ErrRoomNotFound):
			return err
		}
	}
	_, err := r.Input(ctx, &rsapi.InputRequest{RoomID: d.RoomID, Events: []rsapi.InputEvent{{
		Proto:      &rsapi.ProtoEvent{Sender: d.Sender, Type: d.Type, StateKey: d.StateKey, Content: d.Content},
		DedupState: d.StateKey != nil,
	}}})
	if err != nil {
		return fmt.Errorf("send delayed event %s: %w", d.DelayID, err)
	}
	return nil
}
