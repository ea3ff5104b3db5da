package syncapi

import (
	"context"
	"encoding/json"
	"errors"
	"maps"
	"net/http"
	"slices"
	"time"

	"myelin/internal/mxhttp"
	"myelin/internal/mxid"
	sapi "myelin/syncapi/api"
	"myelin/syncapi/storage"
	uapi "myelin/userapi/api"
)

// eventStreamTimeline caps the events of one room in one /events answer.
const eventStreamTimeline = 100

// eventStreamResponse is the answer of GET /events.
type eventStreamResponse struct {
	Start string `json:"start"`
	End   string `json:"end"`
	Chunk []any  `json:"chunk"`
}

// eventStream serves GET /events, the event stream that /sync replaced
// (deprecated, still served for older clients and tools): what /sync would
// answer, flattened into one list of events that carry their room_id. Its
// tokens are /sync tokens.
func (s *SyncAPI) eventStream(r *http.Request, dev *uapi.Device) (any, error) {
	ctx := r.Context()
	q := r.URL.Query()
	timeout, err := s.timeoutParam(q, 30*time.Second)
	if err != nil {
		return nil, err
	}
	// Polling the stream marks the user online, as /sync does without
	// set_presence (and as Synapse's /events does).
	if err := s.syncPresence(ctx, dev.UserID, sapi.Online); err != nil {
		return nil, err
	}
	limit := eventStreamTimeline
	filter := &Filter{}
	filter.Room.Timeline.Limit = &limit
	if roomID := q.Get("room_id"); roomID != "" {
		if err := mxhttp.CheckParam("room_id", roomID, mxid.RoomID); err != nil {
			return nil, err
		}
		filter.Room.Rooms = &[]string{roomID}
	}
	var from Token
	if f := q.Get("from"); f != "" {
		t, err := ParseToken(f)
		if err != nil {
			return nil, mxhttp.InvalidParam("%v", err)
		}
		from = t
	} else {
		// No token: the stream starts now, after what the user did so far.
		s.catchUp(ctx)
		from = s.notifier.Current()
	}
	req := &syncRequest{dev: dev, filter: filter, since: &from, withRoomID: true}
	var chunk []any
	resp, err := s.longPoll(ctx, req, timeout, func(resp *syncResponse) bool {
		var err error
		chunk, err = s.flatten(ctx, req, resp)
		// An error is answered below, after the wait ends.
		return err == nil && len(chunk) == 0
	})
	if err != nil {
		return nil, err
	}
	if chunk == nil {
		// The long-poll answered from memory without building.
		if chunk, err = s.flatten(ctx, req, resp); err != nil {
			return nil, err
		}
	}
	return &eventStreamResponse{Start: from.String(), End: resp.NextBatch, Chunk: chunk}, nil
}

// flatten turns a sync response into the /events chunk: the timeline and
// ephemeral events of joined rooms, the timeline of left rooms, the invite
// events, and presence.
func (s *SyncAPI) flatten(ctx context.Context, req *syncRequest, resp *syncResponse) ([]any, error) {
	chunk := []any{}
	for _, roomID := range slices.Sorted(maps.Keys(resp.Rooms.Join)) {
		jr := resp.Rooms.Join[roomID]
		for _, ev := range jr.Timeline.Events {
			chunk = append(chunk, ev)
		}
		for _, eph := range jr.Ephemeral.Events {
			e, err := withRoomID(eph, roomID)
			if err != nil {
				return nil, err
			}
			chunk = append(chunk, e)
		}
	}
	for _, roomID := range slices.Sorted(maps.Keys(resp.Rooms.Leave)) {
		for _, ev := range resp.Rooms.Leave[roomID].Timeline.Events {
			chunk = append(chunk, ev)
		}
	}
	for _, roomID := range slices.Sorted(maps.Keys(resp.Rooms.Invite)) {
		st, err := s.store.StateEvent(ctx, roomID, "m.room.member", req.dev.UserID)
		if errors.Is(err, storage.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		ev, err := s.store.Event(ctx, st.EventID)
		if errors.Is(err, storage.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		chunk = append(chunk, req.fmt.event(ev))
	}
	return append(chunk, resp.Presence.Events...), nil
}

// withRoomID adds room_id to an ephemeral event.
func withRoomID(ev any, roomID string) (map[string]any, error) {
	b, err := json.Marshal(ev)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	m["room_id"] = roomID
	return m, nil
}
