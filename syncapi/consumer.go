package syncapi

import (
	"context"
	"encoding/json"
	"strings"
	"time"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/tidwall/gjson"

	rsapi "myelin/roomserver/api"
	"myelin/syncapi/storage"
)

// roomEventBatch bounds the output events appended in one transaction.
const roomEventBatch = 64

// onRoomEvents appends a batch of accepted events to the sync stream in
// one write transaction (one commit per batch, not per event: on SQLite's
// one writer a commit per event capped a busy server's events per
// second), then wakes the users each concerns, in order. A batch with
// history, a redaction or an unreadable message goes one by one.
func (s *SyncAPI) onRoomEvents(ctx context.Context, ms []jetstream.Msg) error {
	outs := make([]*rsapi.OutputEvent, len(ms))
	batch := make([]storage.Appended, 0, len(ms))
	for i, m := range ms {
		var out rsapi.OutputEvent
		if err := json.Unmarshal(m.Data(), &out); err != nil || out.Historical || out.Redacts != "" {
			for _, m := range ms {
				if err := s.onRoomEvent(ctx, m); err != nil {
					return err
				}
			}
			return nil
		}
		outs[i] = &out
		ev, adds := s.prepareRoomEvent(&out)
		batch = append(batch, storage.Appended{Event: ev, Adds: adds, Removes: out.RemovesState})
	}
	inserted, err := s.store.AppendBatch(ctx, batch)
	if err != nil {
		return err
	}
	for i, a := range batch {
		if inserted[i] {
			s.announceRoomEvent(ctx, outs[i], a.Event, a.Adds)
		}
	}
	return nil
}

// onRoomEvent appends an accepted event to the sync stream, applies its
// state delta, and wakes the users it concerns.
func (s *SyncAPI) onRoomEvent(ctx context.Context, m jetstream.Msg) error {
	var out rsapi.OutputEvent
	if err := json.Unmarshal(m.Data(), &out); err != nil {
		s.log.WithError(err).Warn("dropping malformed output event")
		return nil
	}
	if out.Historical {
		// Backfilled history: before the room's timeline here, so nothing
		// to wake anyone for; /messages finds it.
		ev, _ := s.prepareRoomEvent(&out)
		_, err := s.store.AppendHistorical(ctx, ev)
		return err
	}
	ev, adds := s.prepareRoomEvent(&out)
	inserted, err := s.store.Append(ctx, ev, adds, out.RemovesState)
	if err != nil {
		return err
	}
	if !inserted {
		return nil // redelivered: already applied and announced
	}
	if out.Redacts != "" {
		if err := s.applyRedaction(ctx, out.RoomVersion, out.Redacts, ev); err != nil {
			return err
		}
	}
	s.announceRoomEvent(ctx, &out, ev, adds)
	return nil
}

// prepareRoomEvent is what syncapi stores of an output event: the event
// and the state it adds.
func (s *SyncAPI) prepareRoomEvent(out *rsapi.OutputEvent) (*storage.Event, []storage.NewState) {
	js := string(out.Event)
	f := gjson.GetMany(js, "type", "sender", "state_key", "depth", "content.membership")
	ev := &storage.Event{
		RoomID:  out.RoomID,
		EventID: out.EventID,
		Type:    f[0].String(),
		Sender:  f[1].String(),
		Depth:   f[3].Int(),
		HistVis: out.HistoryVisibility,
		JSON:    js,
	}
	if ev.HistVis == "" {
		ev.HistVis = "shared"
	}
	if f[2].Exists() {
		sk := f[2].String()
		ev.StateKey = &sk
	}
	ev.RelType, ev.RelatesTo = storage.RelatesTo(js)
	if out.Txn != nil {
		ev.SessionID, ev.TxnID = out.Txn.SessionID, out.Txn.TxnID
	}
	if out.Historical {
		return ev, nil
	}
	if len(out.InviteRoomState) > 0 {
		b, _ := json.Marshal(out.InviteRoomState)
		ev.InviteState = string(b)
	}
	adds := make([]storage.NewState, 0, len(out.AddsState))
	for i, sjs := range out.AddedStateJSON() {
		id := out.AddsState[i]
		if sjs == "" {
			s.log.WithField("event_id", id).Warn("output event lacks JSON of added state")
			continue
		}
		g := gjson.GetMany(sjs, "type", "state_key", "sender", "content.membership")
		ns := storage.NewState{EventID: id, Type: g[0].String(), StateKey: g[1].String(), Sender: g[2].String(), JSON: sjs}
		if ns.Type == "m.room.member" {
			ns.Membership = g[3].String()
		}
		adds = append(adds, ns)
	}
	return ev, adds
}

// announceRoomEvent wakes the users a stored event concerns and shares
// presence with the servers of new members.
func (s *SyncAPI) announceRoomEvent(ctx context.Context, out *rsapi.OutputEvent, ev *storage.Event, adds []storage.NewState) {
	for _, a := range adds {
		if a.Type == "m.room.member" {
			s.notifier.OnRoomEvent(out.RoomID, ev.Pos, a.StateKey, a.Membership, s.isLocal(a.StateKey))
		}
	}
	s.notifier.OnRoomEvent(out.RoomID, ev.Pos, "", "", false)
	for _, a := range adds {
		if a.Type != "m.room.member" || a.Membership != "join" {
			continue
		}
		// Best effort: a presence not shared now is shared at its next
		// change, so a failure does not hold the room's stream up.
		if err := s.presenceOnJoin(ctx, out.RoomID, a.StateKey); err != nil {
			s.log.WithError(err).WithField("room_id", out.RoomID).Warn("could not share presence with a new member's server")
		}
	}
}

// presenceOnJoin shares presence across servers when userID newly joined
// roomID (a display name change is a join too, and shares nothing).
func (s *SyncAPI) presenceOnJoin(ctx context.Context, roomID, userID string) error {
	log, err := s.store.MembershipLog(ctx, roomID, userID)
	if err != nil {
		return err
	}
	if n := len(log); n >= 2 && log[n-2].Membership == "join" {
		return nil
	}
	return s.sharePresenceOnJoin(ctx, roomID, userID)
}

func (s *SyncAPI) isLocal(userID string) bool {
	return strings.HasSuffix(userID, ":"+s.cfg.ServerName)
}

// applyRedaction replaces the target's JSON with its redacted form and
// records the redaction in its unsigned data.
func (s *SyncAPI) applyRedaction(ctx context.Context, roomVersion, targetID string, redaction *storage.Event) error {
	target, err := s.store.Event(ctx, targetID)
	if err != nil {
		return nil //nolint:nilerr // not in the sync stream: nothing to redact here
	}
	verImpl, err := gmsl.GetRoomVersion(gmsl.RoomVersion(roomVersion))
	if err != nil {
		return nil //nolint:nilerr // unknown version: cannot redact
	}
	redacted, err := verImpl.RedactEventJSON([]byte(target.JSON))
	if err != nil {
		s.log.WithError(err).WithField("event_id", targetID).Warn("cannot redact event")
		return nil
	}
	because, _ := json.Marshal(formatter{now: time.Now()}.event(redaction))
	return s.store.Redact(ctx, targetID, string(redacted), string(because))
}
