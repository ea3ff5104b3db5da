package federationapi

import (
	"context"
	"encoding/json"
	"sync"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/tidwall/gjson"

	"myelin/federationapi/internal/queue"
	"myelin/federationapi/storage"
	"myelin/internal/bus"
	"myelin/internal/mxid"
	rsapi "myelin/roomserver/api"
)

// outbound is the sending side: the queues and the consumer feeding them.
type outbound struct {
	queues *queue.Queues
	wg     sync.WaitGroup
	// events is how far the OutputRoomEvent consumer got: the joined
	// hosts are as of there (see catchUpHosts).
	events *bus.Progress
}

// StartOutbound consumes the OutputRoomEvent stream, keeping each room's
// joined hosts and queueing the events that originate here for them, and
// sends the queues, until ctx ends. Setup calls it when the federation
// listener is on; without it nothing is sent.
func (f *FederationAPI) StartOutbound(ctx context.Context, b *bus.Bus) error {
	if err := f.out.queues.Start(ctx); err != nil {
		return err
	}
	cons, err := b.OpenConsumer(ctx, bus.OutputRoomEvent, bus.OutputConsumer("federationapi", jetstream.DeliverAllPolicy))
	if err != nil {
		return err
	}
	f.out.events = bus.NewProgress()
	f.out.events.Mark(cons.AckFloor())
	f.out.wg.Add(1)
	go func() {
		defer f.out.wg.Done()
		// No lingering: an event waiting for others would reach the
		// other servers that much later.
		cons.ConsumeBatch(ctx, f.log.WithField("stream", bus.OutputRoomEvent), eventBatch, 0, f.out.events.Marking(f.onRoomEvents))
	}()
	return f.startEDUs(ctx, b)
}

// Wait waits for what StartOutbound started to stop after its context
// ended.
func (f *FederationAPI) Wait() {
	f.out.wg.Wait()
	f.out.queues.Wait()
}

// MarkAlive says that server just reached us: if we had failed to reach
// it, or given up, its queue is sent again at once. Inbound requests call
// it; it is a map lookup when server is not failing.
func (f *FederationAPI) MarkAlive(ctx context.Context, server spec.ServerName) error {
	return f.out.queues.MarkAlive(ctx, server)
}

// SendEDU queues edu for destinations (typing, receipts, presence and
// device lists use it). A destination given up on does not get it.
func (f *FederationAPI) SendEDU(ctx context.Context, edu gmsl.EDU, destinations []spec.ServerName) error {
	if f.policy != nil {
		allowed := make([]spec.ServerName, 0, len(destinations))
		for _, d := range destinations {
			if f.policy.Allowed(d) {
				allowed = append(allowed, d)
			}
		}
		destinations = allowed
	}
	return f.out.queues.SendEDU(ctx, edu, destinations)
}

// denied reports whether the operator's policy forbids sending to server.
func (f *FederationAPI) denied(server string) bool {
	return !f.policy.Allowed(spec.ServerName(server))
}

// JoinedHosts lists the servers with a joined member in roomID, as the
// federationapi last saw its state.
func (f *FederationAPI) JoinedHosts(ctx context.Context, roomID string) ([]spec.ServerName, error) {
	hs, err := f.store.JoinedHosts(ctx, roomID)
	if err != nil {
		return nil, err
	}
	out := make([]spec.ServerName, len(hs))
	for i, h := range hs {
		out[i] = spec.ServerName(h)
	}
	return out, nil
}

// eventBatch bounds how many events one write of the queue covers.
const eventBatch = 64

// onRoomEvents applies accepted events' membership changes to their
// rooms' joined hosts and, for the events made here, queues each for the
// servers in its room after it, all in one write transaction (one per
// event cost a busy sender a transaction per event). Events from other
// servers are not sent on: their origin sends them.
func (f *FederationAPI) onRoomEvents(ctx context.Context, ms []jetstream.Msg) error {
	evs := make([]storage.RoomEvent, 0, len(ms))
	for _, m := range ms {
		if ev, ok := f.roomEvent(m); ok {
			evs = append(evs, ev)
		}
	}
	if len(evs) == 0 {
		return nil
	}
	dests, err := f.store.RecordEvents(ctx, evs)
	if err != nil {
		return err
	}
	for _, d := range dests {
		f.out.queues.Queued(d)
	}
	return nil
}

// roomEvent is what RecordEvents needs of an output event; false for one
// that changes and sends nothing.
func (f *FederationAPI) roomEvent(m jetstream.Msg) (storage.RoomEvent, bool) {
	var out rsapi.OutputEvent
	if err := json.Unmarshal(m.Data(), &out); err != nil {
		f.log.WithError(err).Warn("dropping malformed output event")
		return storage.RoomEvent{}, false
	}
	if out.Historical {
		return storage.RoomEvent{}, false // backfilled history: no state change, nothing to send
	}
	self := string(f.key.ServerName)
	js := string(out.Event)
	ev := storage.RoomEvent{RoomID: out.RoomID, EventID: out.EventID, JSON: js, Removed: out.RemovesState, Self: self, Skip: f.denied}
	if out.Redacts != "" {
		// The redacted event may be the room's ACL: read it again.
		f.invalidateACL(out.RoomID)
	}
	for i, sjs := range out.AddedStateJSON() {
		id := out.AddsState[i]
		g := gjson.GetMany(sjs, "type", "state_key", "content.membership")
		if g[0].String() == mRoomServerACL && g[1].String() == "" {
			f.invalidateACL(out.RoomID)
		}
		if g[0].String() != spec.MRoomMember || g[2].String() != spec.Join {
			continue
		}
		if host, ok := mxid.Server(g[1].String()); ok {
			ev.Joins = append(ev.Joins, storage.Join{EventID: id, Server: host})
		}
	}
	g := gjson.GetMany(js, "sender", "type", "state_key", "content.membership")
	sender, ok := mxid.Server(g[0].String())
	ev.Send = ok && sender == self
	// A member event also goes to its member's server, which the state
	// after a leave, kick or ban no longer names. An invite goes through
	// /invite instead.
	if ev.Send && g[1].String() == spec.MRoomMember && g[3].String() != spec.Invite {
		if host, ok := mxid.Server(g[2].String()); ok {
			ev.Extra = []string{host}
		}
	}
	return ev, true
}
