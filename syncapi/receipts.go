package syncapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/nats-io/nats.go/jetstream"

	"myelin/internal/bus"
	"myelin/internal/mxhttp"
	"myelin/internal/mxid"
	sapi "myelin/syncapi/api"
	"myelin/syncapi/storage"
	uapi "myelin/userapi/api"
)

// Receipt and marker types (spec: "Receipts", "Fully read markers").
const (
	receiptRead        = "m.read"
	receiptReadPrivate = "m.read.private"
	fullyRead          = "m.fully_read"
	threadMain         = "main"
)

// requireJoined refuses users not joined to roomID. It first catches up
// with the streams, so that a user who has just joined is seen as such.
func (s *SyncAPI) requireJoined(ctx context.Context, roomID, userID string) error {
	s.catchUp(ctx)
	m, err := s.store.StateEvent(ctx, roomID, "m.room.member", userID)
	if err != nil && !errors.Is(err, storage.ErrNotFound) {
		return err
	}
	if err != nil || m.Membership != "join" {
		return mxhttp.Forbidden("You are not joined to this room")
	}
	return nil
}

// postReceipt moves one of the user's receipts, or its read marker
// (POST /rooms/{roomId}/receipt/{receiptType}/{eventId}).
func (s *SyncAPI) postReceipt(r *http.Request, dev *uapi.Device) (any, error) {
	ctx := r.Context()
	roomID, typ, eventID := mxhttp.Var(r, "roomId"), mxhttp.Var(r, "receiptType"), mxhttp.Var(r, "eventId")
	if typ != receiptRead && typ != receiptReadPrivate && typ != fullyRead {
		return nil, mxhttp.InvalidParam("receipt type must be m.read, m.read.private or m.fully_read")
	}
	body, err := mxhttp.ReadBody(r)
	if err != nil {
		return nil, err
	}
	var fields map[string]json.RawMessage
	if len(body) > 0 { // the spec requires a body; older clients send none
		if err := mxhttp.DecodeJSON(body, &fields); err != nil {
			return nil, err
		}
	}
	var threadID string
	if raw, ok := fields["thread_id"]; ok {
		if json.Unmarshal(raw, &threadID) != nil {
			return nil, mxhttp.BadJSON("thread_id must be a string")
		}
		if typ == fullyRead {
			return nil, mxhttp.InvalidParam("thread_id is not allowed for m.fully_read")
		}
		// spec: "main", or the ID of the thread's root event.
		if threadID != threadMain {
			if err := mxhttp.CheckParam("thread_id", threadID, mxid.EventID); err != nil {
				return nil, err
			}
		}
	}
	if err := s.requireJoined(ctx, roomID, dev.UserID); err != nil {
		return nil, err
	}
	if typ == fullyRead {
		err = s.setReadMarker(ctx, dev.UserID, roomID, eventID)
	} else {
		err = s.sendReceipt(ctx, dev.UserID, roomID, typ, eventID, threadID)
	}
	if err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

// readMarkersRequest is the body of POST /rooms/{roomId}/read_markers.
type readMarkersRequest struct {
	FullyRead   string `json:"m.fully_read"`
	Read        string `json:"m.read"`
	ReadPrivate string `json:"m.read.private"`
}

// postReadMarkers moves the read marker and the receipts in one call
// (POST /rooms/{roomId}/read_markers).
func (s *SyncAPI) postReadMarkers(r *http.Request, dev *uapi.Device) (any, error) {
	ctx := r.Context()
	roomID := mxhttp.Var(r, "roomId")
	var body readMarkersRequest
	if err := mxhttp.ReadJSON(r, &body); err != nil {
		return nil, err
	}
	for name, id := range map[string]string{fullyRead: body.FullyRead, receiptRead: body.Read, receiptReadPrivate: body.ReadPrivate} {
		if id != "" {
			if err := mxhttp.CheckParam(name, id, mxid.EventID); err != nil {
				return nil, err
			}
		}
	}
	if err := s.requireJoined(ctx, roomID, dev.UserID); err != nil {
		return nil, err
	}
	if body.FullyRead != "" {
		if err := s.setReadMarker(ctx, dev.UserID, roomID, body.FullyRead); err != nil {
			return nil, err
		}
	}
	for typ, eventID := range map[string]string{receiptRead: body.Read, receiptReadPrivate: body.ReadPrivate} {
		if eventID == "" {
			continue
		}
		if err := s.sendReceipt(ctx, dev.UserID, roomID, typ, eventID, ""); err != nil {
			return nil, err
		}
	}
	return struct{}{}, nil
}

// sendReceipt publishes a receipt; syncapi's consumer stores it.
func (s *SyncAPI) sendReceipt(ctx context.Context, userID, roomID, typ, eventID, threadID string) error {
	if err := s.publish(ctx, bus.OutputReceipt, sapi.ReceiptUpdate{
		RoomID: roomID, UserID: userID, Type: typ, EventID: eventID, ThreadID: threadID,
		TS: s.now().UnixMilli(),
	}); err != nil {
		return err
	}
	// The read notifications are cleared before the answer too, so that the
	// user's next /sync counts them read (the userapi's consumer of the
	// receipt clears them again, which changes nothing).
	if err := s.users.ClearNotifications(ctx, userID, roomID, threadID, eventID); err != nil {
		s.log.WithError(err).WithField("room_id", roomID).Warn("clearing notifications for a receipt")
	}
	return nil
}

// setReadMarker stores the user's m.fully_read marker of a room as room
// account data. The event must belong to the room (spec: "the event MUST
// belong to the room"), and the marker only moves forward.
func (s *SyncAPI) setReadMarker(ctx context.Context, userID, roomID, eventID string) error {
	ev, err := s.store.Event(ctx, eventID)
	if errors.Is(err, storage.ErrNotFound) || (err == nil && ev.RoomID != roomID) {
		return mxhttp.NotFound("Event not found in this room")
	}
	if err != nil {
		return err
	}
	old, err := s.users.AccountData(ctx, userID, roomID, fullyRead)
	if err != nil && !uapi.IsNotFound(err) {
		return err
	}
	if err == nil {
		var marker struct {
			EventID string `json:"event_id"`
		}
		if json.Unmarshal(old, &marker) == nil && marker.EventID != "" {
			if marker.EventID == eventID {
				return nil
			}
			prev, err := s.store.Event(ctx, marker.EventID)
			if err == nil && prev.Pos > ev.Pos {
				return nil // the marker is already further on
			}
		}
	}
	content, err := json.Marshal(map[string]string{"event_id": eventID})
	if err != nil {
		return err
	}
	_, err = s.users.SetAccountData(ctx, userID, roomID, fullyRead, content)
	return err
}

// onReceipt stores a receipt and wakes who may see it.
func (s *SyncAPI) onReceipt(ctx context.Context, m jetstream.Msg) error {
	var u sapi.ReceiptUpdate
	if err := json.Unmarshal(m.Data(), &u); err != nil {
		s.log.WithError(err).Warn("dropping malformed receipt")
		return nil
	}
	r := &storage.Receipt{RoomID: u.RoomID, Type: u.Type, UserID: u.UserID, ThreadID: u.ThreadID, EventID: u.EventID, TS: u.TS}
	stored, err := s.store.PutReceipt(ctx, r)
	if err != nil {
		return err
	}
	if stored {
		// A private receipt concerns its owner only.
		if r.Type == receiptReadPrivate {
			s.notifier.OnUser(receiptStream, r.UserID, r.Pos)
		} else {
			s.notifier.OnRoom(receiptStream, r.RoomID, r.Pos)
		}
	}
	return nil
}

// receiptEvents groups receipts into one m.receipt event per room
// (spec: "m.receipt"): content maps event ID -> receipt type -> user ID ->
// {ts, thread_id}.
func receiptEvents(receipts []storage.Receipt) map[string]any {
	type receipt struct {
		TS       int64  `json:"ts"`
		ThreadID string `json:"thread_id,omitempty"`
	}
	contents := map[string]map[string]map[string]map[string]receipt{}
	for _, r := range receipts {
		c := contents[r.RoomID]
		if c == nil {
			c = map[string]map[string]map[string]receipt{}
			contents[r.RoomID] = c
		}
		byType := c[r.EventID]
		if byType == nil {
			byType = map[string]map[string]receipt{}
			c[r.EventID] = byType
		}
		byUser := byType[r.Type]
		if byUser == nil {
			byUser = map[string]receipt{}
			byType[r.Type] = byUser
		}
		byUser[r.UserID] = receipt{TS: r.TS, ThreadID: r.ThreadID}
	}
	out := make(map[string]any, len(contents))
	for roomID, c := range contents {
		out[roomID] = map[string]any{"type": "m.receipt", "content": c}
	}
	return out
}

// receiptsProvider is the receipts stream: the receipts in the user's
// joined rooms changed since the token (its own private ones included),
// one m.receipt event a room.
type receiptsProvider struct{ s *SyncAPI }

func (receiptsProvider) id() streamID { return receiptStream }

func (p receiptsProvider) latest(ctx context.Context) (int64, error) {
	return p.s.store.MaxReceiptPos(ctx)
}

func (p receiptsProvider) load(ctx context.Context, req *syncRequest, from int64) (part, error) {
	if !req.moved(receiptStream) {
		return nil, nil
	}
	f := &req.filter.Room.Ephemeral
	if (f.Limit != nil && *f.Limit == 0) || !f.AllowsType("m.receipt") {
		return nil, nil
	}
	rs, err := p.s.store.ReceiptsFor(ctx, req.dev.UserID, receiptReadPrivate, from, req.to[receiptStream])
	if err != nil {
		return nil, fmt.Errorf("receipts for %s: %w", req.dev.UserID, err)
	}
	if len(rs) == 0 {
		return nil, nil
	}
	memberships, err := p.s.memberships(ctx, req)
	if err != nil {
		return nil, err
	}
	out := roomEvents{}
	for roomID, ev := range receiptEvents(rs) {
		if memberships[roomID] == "join" && req.filter.Room.AllowsRoom(roomID, nil) && req.filter.Room.AllowsRoom(roomID, f) {
			out[roomID] = ev
		}
	}
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}
