package syncapi

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"strconv"
	"strings"

	"github.com/tidwall/gjson"

	"myelin/internal/mxhttp"
	rsapi "myelin/roomserver/api"
	"myelin/syncapi/storage"
	uapi "myelin/userapi/api"
)

func (s *SyncAPI) postFilter(r *http.Request, dev *uapi.Device) (any, error) {
	if mxhttp.Var(r, "userId") != dev.UserID {
		return nil, mxhttp.Forbidden("cannot create filters for other users")
	}
	body, err := mxhttp.ReadBody(r)
	if err != nil {
		return nil, err
	}
	if _, err := parseFilter(body); err != nil {
		return nil, err
	}
	id, err := s.store.InsertFilter(r.Context(), dev.UserID, string(body))
	if err != nil {
		return nil, err
	}
	return map[string]string{"filter_id": strconv.FormatInt(id, 10)}, nil
}

func (s *SyncAPI) getFilter(r *http.Request, dev *uapi.Device) (any, error) {
	if mxhttp.Var(r, "userId") != dev.UserID {
		return nil, mxhttp.Forbidden("cannot read filters of other users")
	}
	id, err := strconv.ParseInt(mxhttp.Var(r, "filterId"), 10, 64)
	if err != nil {
		return nil, mxhttp.NotFound("no such filter")
	}
	raw, err := s.store.Filter(r.Context(), dev.UserID, id)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, mxhttp.NotFound("no such filter")
	}
	if err != nil {
		return nil, err
	}
	return json.RawMessage(raw), nil
}

// roomAccess returns the user's visibility helper for a room, refusing
// users who were never in it unless the room is world-readable.
func (s *SyncAPI) roomAccess(ctx context.Context, roomID, userID string) (*visibility, error) {
	vis := &visibility{s: s, roomID: roomID, userID: userID}
	if err := vis.load(ctx); err != nil {
		return nil, err
	}
	ignored, err := s.ignoredBy(ctx, userID)
	if err != nil {
		return nil, err
	}
	vis.ignored = ignored
	if len(vis.log) > 0 {
		return vis, nil
	}
	hv, err := s.store.StateEvent(ctx, roomID, "m.room.history_visibility", "")
	if err == nil && gjsonString(hv.JSON, "content.history_visibility") == "world_readable" {
		return vis, nil
	}
	return nil, mxhttp.Forbidden("You aren't a member of the room and weren't previously a member of the room.")
}

func gjsonString(js, path string) string {
	var v string
	_ = json.Unmarshal([]byte(gjsonGet(js, path)), &v)
	return v
}

type messagesResponse struct {
	Start string        `json:"start"`
	End   string        `json:"end,omitempty"`
	Chunk []ClientEvent `json:"chunk"`
	State []ClientEvent `json:"state,omitempty"`
}

// messages pages through a room's history (GET /rooms/{roomId}/messages).
func (s *SyncAPI) messages(r *http.Request, dev *uapi.Device) (any, error) {
	ctx := r.Context()
	roomID := mxhttp.Var(r, "roomId")
	q := r.URL.Query()
	var backwards bool
	switch q.Get("dir") {
	case "b":
		backwards = true
	case "f", "": // forwards when absent, as Synapse
	default:
		return nil, mxhttp.InvalidParam("dir must be 'b' or 'f'")
	}
	limit := 10
	if l := q.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 0 {
			return nil, mxhttp.InvalidParam("limit must be a non-negative integer")
		}
		limit = min(n, maxLimit)
	}
	filter := &RoomEventFilter{}
	if f := q.Get("filter"); f != "" {
		if err := mxhttp.DecodeJSON([]byte(f), filter); err != nil {
			return nil, err
		}
		if filter.Limit != nil && q.Get("limit") == "" {
			limit = min(*filter.Limit, maxLimit)
		}
	}
	s.catchUp(ctx)
	vis, err := s.roomAccess(ctx, roomID, dev.UserID)
	if err != nil {
		return nil, err
	}
	current := s.notifier.Current()
	maxPos := current[pduStream]
	from := q.Get("from")
	point, startTok, err := s.pagePoint(ctx, roomID, from, backwards, current)
	if err != nil {
		return nil, err
	}
	if strings.HasPrefix(from, "s") {
		if t, err := ParseToken(from); err == nil {
			maxPos = min(maxPos, t[pduStream])
			if !backwards {
				maxPos = current[pduStream]
			}
		}
	}
	stop, err := s.stopPoint(ctx, roomID, q.Get("to"))
	if err != nil {
		return nil, err
	}
	f := formatter{sessionID: dev.SessionID, now: s.now(), withRoomID: true}
	resp := &messagesResponse{Start: startTok, Chunk: []ClientEvent{}}
	cur := point
	more := true     // whether events may remain past cur
	stopped := false // whether paging reached 'to' or the create event
	var last *storage.Event
	var shown []*storage.Event // the events of the chunk, for their aggregations
	backfills := 0
	if backwards {
		// The event the page starts under (the oldest one the client
		// has) may be the one with the gap below it.
		anchor, err := s.store.Messages(ctx, roomID, cur.Depth, cur.Pos, false, maxPos, 1)
		if err != nil {
			return nil, err
		}
		gaps, err := s.gapsIn(ctx, roomID, anchor)
		if err != nil {
			return nil, err
		}
		for id, missing := range gaps {
			backfills++
			s.backfillGap(ctx, roomID, id, missing, limit)
		}
	}
	for round := 0; round < 20 && len(resp.Chunk) < limit; round++ {
		if !more {
			// The start of the room's timeline here: older history may
			// be on the room's other servers.
			if !backwards || stopped || backfills >= maxBackfills || !s.backfill(ctx, roomID, limit) {
				break
			}
			backfills++
			more = true
		}
		batch, err := s.store.Messages(ctx, roomID, cur.Depth, cur.Pos, backwards, maxPos, limit)
		if err != nil {
			return nil, err
		}
		// A gap in the middle of the history here (events a server sent
		// while this one was away, whose predecessors it never got) is
		// filled like the start of the history: from the room's other
		// servers, before paging past it.
		var gaps map[string][]string
		if backwards && !stopped && backfills < maxBackfills {
			if gaps, err = s.gapsIn(ctx, roomID, batch); err != nil {
				return nil, err
			}
		}
		consumed := 0
		refilled := false
		for _, e := range batch {
			if stop != nil && passed(e, *stop, backwards) {
				more, stopped = false, true
				break
			}
			consumed++
			last = e
			if e.Type == "m.room.create" && e.StateKey != nil && *e.StateKey == "" {
				stopped = true // the room's first event: nothing older to backfill
			}
			if backwards {
				cur = TopoToken{Depth: e.Depth, Pos: e.Pos}
			} else {
				cur = TopoToken{Depth: e.Depth, Pos: e.Pos + 1}
			}
			ok, err := vis.canSee(ctx, e)
			if err != nil {
				return nil, err
			}
			if ok && filter.AllowsEvent(e.Type, e.Sender, contentRaw(e.JSON)) {
				e, err := vis.forErased(ctx, e)
				if err != nil {
					return nil, err
				}
				resp.Chunk = append(resp.Chunk, f.event(e))
				shown = append(shown, e)
				if len(resp.Chunk) == limit {
					break
				}
			}
			if missing := gaps[e.EventID]; len(missing) > 0 && backfills < maxBackfills {
				backfills++
				if s.backfillGap(ctx, roomID, e.EventID, missing, limit) {
					// Page on from e: what came is older than it.
					refilled = true
					break
				}
			}
		}
		if refilled {
			continue
		}
		if len(batch) < limit && consumed == len(batch) {
			more = false
		}
	}
	// As Synapse: an end token whenever events were returned, none when
	// the chunk is empty (nothing further).
	if len(resp.Chunk) > 0 && last != nil {
		resp.End = cur.String()
	}
	if err := s.bundle(ctx, vis, f, shown, resp.Chunk); err != nil {
		return nil, err
	}
	if filter.LazyLoadMembers {
		seen := map[string]bool{}
		for _, ce := range resp.Chunk {
			if seen[ce.Sender] {
				continue
			}
			seen[ce.Sender] = true
			if st, err := s.store.StateEvent(ctx, roomID, "m.room.member", ce.Sender); err == nil {
				resp.State = append(resp.State, f.state(st))
			}
		}
	}
	return resp, nil
}

// passed reports whether e lies beyond the 'to' point in the paging direction.
func passed(e *storage.Event, stop TopoToken, backwards bool) bool {
	if backwards {
		return e.Depth < stop.Depth || (e.Depth == stop.Depth && e.Pos < stop.Pos)
	}
	return e.Depth > stop.Depth || (e.Depth == stop.Depth && e.Pos >= stop.Pos)
}

// maxBackfills bounds the backfills one /messages request asks for.
const maxBackfills = 3

// backfill asks the roomserver for history of roomID older than what is
// here and waits until this syncapi has it; it reports whether any came.
// A failure is logged and the page answered with what is here.
func (s *SyncAPI) backfill(ctx context.Context, roomID string, limit int) bool {
	res, err := s.rooms.PerformBackfill(ctx, &rsapi.BackfillRequest{RoomID: roomID, Limit: min(max(2*limit, 50), 100)})
	if err != nil {
		s.log.WithError(err).WithField("room_id", roomID).Warn("backfill failed")
		return false
	}
	if res.Stored == 0 {
		return false
	}
	s.catchUp(ctx)
	return true
}

// gapsIn finds the events of batch (a page of history, newest first)
// whose prev events this server does not have: for each such event, the
// missing prev events. Those of the batch itself are known; a prev event
// of another room is no gap to fill (a forged reference, never followed).
func (s *SyncAPI) gapsIn(ctx context.Context, roomID string, batch []*storage.Event) (map[string][]string, error) {
	inBatch := make(map[string]bool, len(batch))
	for _, e := range batch {
		inBatch[e.EventID] = true
	}
	prevs := map[string][]string{}
	var ask []string
	for _, e := range batch {
		for _, id := range prevEventIDs(e.JSON) {
			if !inBatch[id] {
				prevs[e.EventID] = append(prevs[e.EventID], id)
				ask = append(ask, id)
			}
		}
	}
	if len(ask) == 0 {
		return nil, nil
	}
	known, err := s.store.EventsByID(ctx, ask)
	if err != nil {
		return nil, err
	}
	have := make(map[string]bool, len(known))
	for _, k := range known {
		have[k.EventID] = true // in this room or another: not to be fetched
	}
	gaps := map[string][]string{}
	for _, e := range batch {
		for _, p := range prevs[e.EventID] {
			if !have[p] {
				gaps[e.EventID] = append(gaps[e.EventID], p)
			}
		}
		if len(gaps[e.EventID]) == 0 {
			continue
		}
		// Missing prev events of the oldest event here are the start of
		// the history here, which paging past the end backfills; only a
		// gap with history here on both sides is filled from here.
		older, err := s.store.Messages(ctx, roomID, e.Depth, e.Pos, true, math.MaxInt64, 1)
		if err != nil {
			return nil, err
		}
		if len(older) == 0 {
			delete(gaps, e.EventID)
		}
	}
	return gaps, nil
}

// prevEventIDs reads an event's prev_events: IDs, or [ID, hashes] pairs
// in room versions 1 and 2.
func prevEventIDs(js string) []string {
	var ev struct {
		Prev []json.RawMessage `json:"prev_events"`
	}
	if json.Unmarshal([]byte(js), &ev) != nil {
		return nil
	}
	out := make([]string, 0, len(ev.Prev))
	for _, raw := range ev.Prev {
		var id string
		if json.Unmarshal(raw, &id) == nil {
			out = append(out, id)
			continue
		}
		var pair []json.RawMessage
		if json.Unmarshal(raw, &pair) == nil && len(pair) > 0 && json.Unmarshal(pair[0], &id) == nil {
			out = append(out, id)
		}
	}
	return out
}

// backfillGap asks the roomserver for the history before after, whose
// prev events missing this server lacks, and waits until this syncapi
// has it; it reports whether any came.
func (s *SyncAPI) backfillGap(ctx context.Context, roomID, after string, missing []string, limit int) bool {
	res, err := s.rooms.PerformBackfill(ctx, &rsapi.BackfillRequest{
		RoomID: roomID, Limit: min(max(2*limit, 50), 100), From: missing, After: after,
	})
	if err != nil {
		s.log.WithError(err).WithField("room_id", roomID).Warn("backfill of a gap failed")
		return false
	}
	if res.Stored == 0 {
		return false
	}
	s.catchUp(ctx)
	return true
}

// pagePoint resolves a 'from' token to a point in the room's topological
// order and the token to report as 'start'.
func (s *SyncAPI) pagePoint(ctx context.Context, roomID, from string, backwards bool, current Token) (TopoToken, string, error) {
	switch {
	case strings.HasPrefix(from, "t"):
		t, err := ParseTopoToken(from)
		if err != nil {
			return TopoToken{}, "", mxhttp.InvalidParam("%v", err)
		}
		return t, from, nil
	case strings.HasPrefix(from, "s"):
		st, err := ParseToken(from)
		if err != nil {
			return TopoToken{}, "", mxhttp.InvalidParam("%v", err)
		}
		d, p, err := s.store.TopoPosition(ctx, roomID, st[pduStream])
		if err != nil {
			return TopoToken{}, "", err
		}
		return TopoToken{Depth: d, Pos: p + 1}, from, nil
	case from == "":
		if !backwards {
			return TopoToken{}, TopoToken{}.String(), nil
		}
		d, p, err := s.store.TopoPosition(ctx, roomID, current[pduStream])
		if err != nil {
			return TopoToken{}, "", err
		}
		t := TopoToken{Depth: d, Pos: p + 1}
		return t, t.String(), nil
	}
	return TopoToken{}, "", mxhttp.InvalidParam("bad 'from' token")
}

// event returns one event the user may see (GET /rooms/{roomId}/event/{eventId}).
func (s *SyncAPI) event(r *http.Request, dev *uapi.Device) (any, error) {
	ctx := r.Context()
	roomID, eventID := mxhttp.Var(r, "roomId"), mxhttp.Var(r, "eventId")
	s.catchUp(ctx)
	vis, err := s.roomAccess(ctx, roomID, dev.UserID)
	if err != nil {
		return nil, mxhttp.NotFound("Event not found")
	}
	e, err := s.store.Event(ctx, eventID)
	if errors.Is(err, storage.ErrNotFound) || (err == nil && e.RoomID != roomID) {
		return nil, mxhttp.NotFound("Event not found")
	}
	if err != nil {
		return nil, err
	}
	if ok, err := vis.canSee(ctx, e); err != nil {
		return nil, err
	} else if !ok {
		return nil, mxhttp.NotFound("Event not found")
	}
	if e, err = vis.forErased(ctx, e); err != nil {
		return nil, err
	}
	f := formatter{sessionID: dev.SessionID, now: s.now(), withRoomID: true}
	ce := f.event(e)
	if err := s.bundleOne(ctx, vis, f, e, &ce); err != nil {
		return nil, err
	}
	return ce, nil
}

type contextResponse struct {
	Start        string        `json:"start"`
	End          string        `json:"end"`
	EventsBefore []ClientEvent `json:"events_before"`
	Event        ClientEvent   `json:"event"`
	EventsAfter  []ClientEvent `json:"events_after"`
	State        []ClientEvent `json:"state"`
}

// context returns an event with the events around it (GET /rooms/{roomId}/context/{eventId}).
func (s *SyncAPI) context(r *http.Request, dev *uapi.Device) (any, error) {
	ctx := r.Context()
	roomID, eventID := mxhttp.Var(r, "roomId"), mxhttp.Var(r, "eventId")
	limit := 10
	if l := r.URL.Query().Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 0 {
			return nil, mxhttp.InvalidParam("limit must be a non-negative integer")
		}
		limit = min(n, maxLimit)
	}
	filter := &RoomEventFilter{}
	if fq := r.URL.Query().Get("filter"); fq != "" {
		if err := mxhttp.DecodeJSON([]byte(fq), filter); err != nil {
			return nil, err
		}
	}
	s.catchUp(ctx)
	vis, err := s.roomAccess(ctx, roomID, dev.UserID)
	if err != nil {
		return nil, err
	}
	e, err := s.store.Event(ctx, eventID)
	if errors.Is(err, storage.ErrNotFound) || (err == nil && e.RoomID != roomID) {
		return nil, mxhttp.NotFound("Event not found")
	}
	if err != nil {
		return nil, err
	}
	if ok, err := vis.canSee(ctx, e); err != nil || !ok {
		return nil, mxhttp.NotFound("Event not found")
	}
	if e, err = vis.forErased(ctx, e); err != nil {
		return nil, err
	}
	f := formatter{sessionID: dev.SessionID, now: s.now(), withRoomID: true}
	maxPos := s.notifier.Current()[pduStream]
	// shown and shownOut are every event of the answer, for their
	// aggregations, read at once.
	var shown []*storage.Event
	var shownOut []*ClientEvent
	pick := func(evs []*storage.Event, n int) ([]ClientEvent, error) {
		out := []ClientEvent{}
		for _, x := range evs {
			if len(out) == n {
				break
			}
			ok, err := vis.canSee(ctx, x)
			if err != nil {
				return nil, err
			}
			if ok && filter.AllowsEvent(x.Type, x.Sender, contentRaw(x.JSON)) {
				if x, err = vis.forErased(ctx, x); err != nil {
					return nil, err
				}
				out = append(out, f.event(x))
				shown = append(shown, x)
			}
		}
		return out, nil
	}
	nBefore := limit / 2
	nAfter := limit - nBefore
	beforeRows, err := s.store.Messages(ctx, roomID, e.Depth, e.Pos, true, maxPos, nBefore*2+1)
	if err != nil {
		return nil, err
	}
	afterRows, err := s.store.Messages(ctx, roomID, e.Depth, e.Pos+1, false, maxPos, nAfter*2+1)
	if err != nil {
		return nil, err
	}
	resp := &contextResponse{Event: f.event(e), State: []ClientEvent{}}
	if resp.EventsBefore, err = pick(beforeRows, nBefore); err != nil {
		return nil, err
	}
	if resp.EventsAfter, err = pick(afterRows, nAfter); err != nil {
		return nil, err
	}
	shown = append(shown, e)
	for i := range resp.EventsBefore {
		shownOut = append(shownOut, &resp.EventsBefore[i])
	}
	for i := range resp.EventsAfter {
		shownOut = append(shownOut, &resp.EventsAfter[i])
	}
	shownOut = append(shownOut, &resp.Event)
	if err := s.bundlePtrs(ctx, vis, f, shown, shownOut); err != nil {
		return nil, err
	}
	resp.Start = TopoToken{Depth: e.Depth, Pos: e.Pos}.String()
	if n := len(resp.EventsBefore); n > 0 {
		// the oldest returned event is the last of events_before
		for _, row := range beforeRows {
			if row.EventID == resp.EventsBefore[n-1].EventID {
				resp.Start = TopoToken{Depth: row.Depth, Pos: row.Pos}.String()
			}
		}
	}
	resp.End = TopoToken{Depth: e.Depth, Pos: e.Pos + 1}.String()
	if n := len(resp.EventsAfter); n > 0 {
		for _, row := range afterRows {
			if row.EventID == resp.EventsAfter[n-1].EventID {
				resp.End = TopoToken{Depth: row.Depth, Pos: row.Pos + 1}.String()
			}
		}
	}
	state, err := s.store.CurrentState(ctx, roomID)
	if err != nil {
		return nil, err
	}
	// Lazy-loading: the member events of the senders of the events
	// returned, and no other (spec: lazy_load_members).
	senders := map[string]bool{resp.Event.Sender: true}
	for _, evs := range [][]ClientEvent{resp.EventsBefore, resp.EventsAfter} {
		for _, x := range evs {
			senders[x.Sender] = true
		}
	}
	for _, st := range state {
		if filter.LazyLoadMembers && st.Type == "m.room.member" && !senders[st.StateKey] {
			continue
		}
		resp.State = append(resp.State, f.state(st))
	}
	return resp, nil
}

// members lists a room's member events (GET /rooms/{roomId}/members).
func (s *SyncAPI) members(r *http.Request, dev *uapi.Device) (any, error) {
	ctx := r.Context()
	roomID := mxhttp.Var(r, "roomId")
	s.catchUp(ctx)
	own, err := s.store.StateEvent(ctx, roomID, "m.room.member", dev.UserID)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, mxhttp.Forbidden("You aren't a member of the room and weren't previously a member of the room.")
	}
	if err != nil {
		return nil, err
	}
	q := r.URL.Query()
	want, notWant := q.Get("membership"), q.Get("not_membership")
	f := formatter{sessionID: dev.SessionID, now: s.now(), withRoomID: true}
	chunk := []ClientEvent{}
	keep := func(m string) bool {
		return (want == "" || m == want) && (notWant == "" || m != notWant)
	}
	if at := q.Get("at"); at != "" {
		return s.membersAt(ctx, dev, roomID, at, own, f, keep)
	}
	if own.Membership == "join" || own.Membership == "invite" {
		state, err := s.store.CurrentState(ctx, roomID, "m.room.member")
		if err != nil {
			return nil, err
		}
		for _, st := range state {
			if keep(st.Membership) {
				chunk = append(chunk, f.state(st))
			}
		}
		return map[string]any{"chunk": chunk}, nil
	}
	// A user who left sees the members as they were when it left.
	before, err := s.rooms.StateBefore(ctx, own.EventID)
	if err != nil {
		return nil, err
	}
	for _, p := range before {
		if p.Type() != "m.room.member" || p.StateKey() == nil || *p.StateKey() == dev.UserID {
			continue
		}
		m, _ := p.Membership()
		if keep(m) {
			chunk = append(chunk, f.base(string(p.JSON()), p.EventID(), roomID))
		}
	}
	if keep(own.Membership) {
		chunk = append(chunk, f.state(own))
	}
	return map[string]any{"chunk": chunk}, nil
}

// membersAt answers /members?at=: the member events as they were at a
// pagination token (a prev_batch, a /messages end, a sync token), that
// is after the last event before it; for a user who left, no later than
// its leave.
func (s *SyncAPI) membersAt(ctx context.Context, dev *uapi.Device, roomID, at string, own *storage.StateEvent, f formatter, keep func(string) bool) (any, error) {
	point, _, err := s.pagePoint(ctx, roomID, at, true, s.notifier.Current())
	if err != nil {
		return nil, err
	}
	before, err := s.store.Messages(ctx, roomID, point.Depth, point.Pos, true, s.notifier.Current()[pduStream], 1)
	if err != nil {
		return nil, err
	}
	chunk := []ClientEvent{}
	if len(before) == 0 {
		return map[string]any{"chunk": chunk}, nil // before the room began
	}
	last := before[0]
	if own.Membership != "join" && own.Membership != "invite" && last.Pos > own.Pos {
		if last, err = s.store.Event(ctx, own.EventID); err != nil {
			return nil, err
		}
	}
	state, err := s.rooms.StateBefore(ctx, last.EventID)
	if err != nil {
		return nil, err
	}
	for _, p := range state {
		if p.Type() != "m.room.member" || p.StateKey() == nil {
			continue
		}
		if last.Type == "m.room.member" && last.StateKey != nil && *last.StateKey == *p.StateKey() {
			continue // replaced by last itself
		}
		if m, _ := p.Membership(); keep(m) {
			chunk = append(chunk, f.base(string(p.JSON()), p.EventID(), roomID))
		}
	}
	if last.Type == "m.room.member" && last.StateKey != nil && keep(gjson.Get(last.JSON, "content.membership").String()) {
		chunk = append(chunk, f.event(last))
	}
	return map[string]any{"chunk": chunk}, nil
}

// joinedMembers maps joined users to their profiles (GET /rooms/{roomId}/joined_members).
func (s *SyncAPI) joinedMembers(r *http.Request, dev *uapi.Device) (any, error) {
	ctx := r.Context()
	roomID := mxhttp.Var(r, "roomId")
	s.catchUp(ctx)
	own, err := s.store.StateEvent(ctx, roomID, "m.room.member", dev.UserID)
	if err != nil || own.Membership != "join" {
		if err != nil && !errors.Is(err, storage.ErrNotFound) {
			return nil, err
		}
		return nil, mxhttp.Forbidden("You aren't a member of the room.")
	}
	state, err := s.store.CurrentState(ctx, roomID, "m.room.member")
	if err != nil {
		return nil, err
	}
	// Both keys are always present, as in Synapse (sytest expects them):
	// an unset avatar is null.
	type profile struct {
		DisplayName string  `json:"display_name"`
		AvatarURL   *string `json:"avatar_url"`
	}
	joined := map[string]profile{}
	for _, st := range state {
		if st.Membership != "join" {
			continue
		}
		var c struct {
			DisplayName string  `json:"displayname"`
			AvatarURL   *string `json:"avatar_url"`
		}
		_ = json.Unmarshal(contentRaw(st.JSON), &c)
		joined[st.StateKey] = profile{DisplayName: c.DisplayName, AvatarURL: c.AvatarURL}
	}
	return map[string]any{"joined": joined}, nil
}

// forget hides a room the user left from its syncs (POST /rooms/{roomId}/forget).
func (s *SyncAPI) forget(r *http.Request, dev *uapi.Device) (any, error) {
	ctx := r.Context()
	roomID := mxhttp.Var(r, "roomId")
	s.catchUp(ctx)
	own, err := s.store.StateEvent(ctx, roomID, "m.room.member", dev.UserID)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, mxhttp.NotFound("You are not a member of this room")
	}
	if err != nil {
		return nil, err
	}
	if own.Membership == "join" || own.Membership == "invite" || own.Membership == "knock" {
		return nil, mxhttp.Unknown("You must leave the room before forgetting it")
	}
	if err := s.store.Forget(ctx, dev.UserID, roomID); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}
