package syncapi

import (
	"context"

	"github.com/tidwall/gjson"

	"myelin/internal/clientevent"
	"myelin/syncapi/storage"
)

// bundle adds the requesting user's membership at each event
// (unsigned.membership) and the bundled aggregations (unsigned.m.relations; spec:
// "Aggregations of child events") to a page of events: out[i] is evs[i]
// formatted. It reads the children of the whole page at once (storage's
// Aggregate, then one load of the edits and latest thread events), never
// a query per event. State events get none, as the spec says.
func (s *SyncAPI) bundle(ctx context.Context, vis *visibility, f formatter, evs []*storage.Event, out []ClientEvent) error {
	if err := memberships(ctx, vis, evs, out); err != nil {
		return err
	}
	return s.aggregations(ctx, f, []pagePart{{vis: vis, evs: evs, out: out}})
}

// memberships sets unsigned.membership of out[i], the formatted evs[i].
func memberships(ctx context.Context, vis *visibility, evs []*storage.Event, out []ClientEvent) error {
	for i, e := range evs {
		m, err := vis.membershipAt(ctx, e)
		if err != nil {
			return err
		}
		if out[i].Unsigned == nil {
			out[i].Unsigned = &Unsigned{}
		}
		out[i].Unsigned.Membership = m
	}
	return nil
}

// pagePart is the events of one room in a page, formatted as out, and
// the user's visibility helper for the room.
type pagePart struct {
	vis *visibility
	evs []*storage.Event
	out []ClientEvent
}

// aggregations adds the aggregations of the events of parts, of one
// room or several (a /sync's rooms at once), in two queries. The thread
// summaries' latest events get their edits, read by the same query, and
// no more: threads cannot nest.
func (s *SyncAPI) aggregations(ctx context.Context, f formatter, parts []pagePart) error {
	type at struct{ part, i int }
	byID := map[string]at{}
	var parents []string
	visOf := map[string]*visibility{}
	for pi, p := range parts {
		visOf[p.vis.roomID] = p.vis
		for i, e := range p.evs {
			if e.StateKey != nil {
				continue
			}
			byID[e.EventID] = at{pi, i}
			parents = append(parents, e.EventID)
		}
	}
	if len(parents) == 0 {
		return nil
	}
	agg, err := s.store.Aggregate(ctx, parents, parts[0].vis.userID)
	if err != nil {
		return err
	}
	pageEvent := func(id string) (*storage.Event, bool) {
		a, ok := byID[id]
		if !ok {
			return nil, false
		}
		return parts[a.part].evs[a.i], true
	}
	// One load for the edits, the latest thread events and their edits.
	// Edits of a page event are checked against it first (spec:
	// "Validity of replacement events": same room, sender and type, the
	// original not an edit itself nor redacted); those of a latest
	// thread event once it is loaded.
	var load []string
	for _, r := range agg.Edits {
		if p, ok := pageEvent(r.RelatesTo); ok && !validEditOf(r, p) {
			continue
		}
		load = append(load, r.EventID)
	}
	for _, t := range agg.Threads {
		if p, ok := pageEvent(t.Root); ok && p.RoomID == t.RoomID {
			load = append(load, t.Latest)
		}
	}
	loaded := map[string]*storage.Event{}
	if len(load) > 0 {
		rows, err := s.store.EventsByID(ctx, load)
		if err != nil {
			return err
		}
		for _, e := range rows {
			vis := visOf[e.RoomID]
			if vis == nil {
				continue
			}
			e, err := vis.seen(ctx, e)
			if err != nil {
				return err
			}
			if e == nil {
				continue
			}
			loaded[e.EventID] = e
		}
	}
	// parentOf is the original an edit names: a page event or a
	// latest thread event.
	parentOf := func(id string) *storage.Event {
		if p, ok := pageEvent(id); ok {
			return p
		}
		return loaded[id]
	}
	// The latest valid edit of each original: by origin_server_ts, then
	// the larger event ID (spec: "Server-side aggregation of m.replace").
	latestEdit := map[string]*storage.Event{}
	for _, r := range agg.Edits {
		e, p := loaded[r.EventID], parentOf(r.RelatesTo)
		if e == nil || p == nil || !validEditOf(r, p) || !isReplacement(e) {
			continue
		}
		if cur := latestEdit[r.RelatesTo]; cur == nil || newerEdit(e, cur) {
			latestEdit[r.RelatesTo] = e
		}
	}
	// served formats a bundled event as the event itself would be.
	served := func(e *storage.Event) (*ClientEvent, error) {
		ce := []ClientEvent{f.event(e)}
		if err := memberships(ctx, visOf[e.RoomID], []*storage.Event{e}, ce); err != nil {
			return nil, err
		}
		return &ce[0], nil
	}
	rel := func(id string) *clientevent.Relations {
		a := byID[id]
		ce := &parts[a.part].out[a.i]
		if ce.Unsigned == nil {
			ce.Unsigned = &Unsigned{}
		}
		if ce.Unsigned.Relations == nil {
			ce.Unsigned.Relations = &clientevent.Relations{}
		}
		return ce.Unsigned.Relations
	}
	for id, e := range latestEdit {
		if _, ok := byID[id]; !ok {
			continue // an edit of a latest thread event: below
		}
		ce, err := served(e)
		if err != nil {
			return err
		}
		rel(id).Replace = ce
	}
	for _, r := range agg.References {
		if p, ok := pageEvent(r.RelatesTo); ok && p.RoomID == r.RoomID {
			rl := rel(r.RelatesTo)
			if rl.Reference == nil {
				rl.Reference = &clientevent.ReferenceChunks{}
			}
			rl.Reference.Chunk = append(rl.Reference.Chunk, clientevent.EventRef{EventID: r.EventID})
		}
	}
	for _, t := range agg.Threads {
		root, ok := pageEvent(t.Root)
		e := loaded[t.Latest]
		if !ok || root.RoomID != t.RoomID || e == nil {
			continue // of another room, or not visible to this user
		}
		// The latest event carries its own edit (spec: "child events of
		// the latest_event should themselves be aggregated").
		latest, err := served(e)
		if err != nil {
			return err
		}
		if edit := latestEdit[e.EventID]; edit != nil {
			ce, err := served(edit)
			if err != nil {
				return err
			}
			latest.Unsigned.Relations = &clientevent.Relations{Replace: ce}
		}
		rel(t.Root).Thread = &clientevent.ThreadSummary{
			LatestEvent:             latest,
			Count:                   t.Count,
			CurrentUserParticipated: t.Participated || root.Sender == visOf[root.RoomID].userID,
		}
	}
	// Events without children keep no empty m.relations.
	for _, a := range byID {
		if u := parts[a.part].out[a.i].Unsigned; u != nil && u.Relations != nil && *u.Relations == (clientevent.Relations{}) {
			u.Relations = nil
		}
	}
	return nil
}

// validEditOf reports whether the edit r may replace original p, as far
// as the index tells: same room, sender and type, p not a redacted event nor
// an edit itself.
func validEditOf(r storage.Relation, p *storage.Event) bool {
	if r.RoomID != p.RoomID || r.Sender != p.Sender || r.EventType != p.Type || p.RedactedBecause != "" || p.StateKey != nil {
		return false
	}
	rt, _ := storage.RelatesTo(p.JSON)
	return rt != "m.replace"
}

// isReplacement reports whether e is a valid replacement event once
// loaded: not a state event, with an m.new_content object.
func isReplacement(e *storage.Event) bool {
	return e.StateKey == nil && gjson.Get(e.JSON, `content.m\.new_content`).IsObject()
}

// newerEdit reports whether edit a is more recent than b.
func newerEdit(a, b *storage.Event) bool {
	ta, tb := gjson.Get(a.JSON, "origin_server_ts").Int(), gjson.Get(b.JSON, "origin_server_ts").Int()
	if ta != tb {
		return ta > tb
	}
	return a.EventID > b.EventID
}

// bundleTimeline is bundle for a /sync timeline, whose aggregations the
// spec asks for only when it is limited: otherwise the client has every
// child the aggregation would sum up, and an unlimited incremental sync
// (the common long-poll) costs no query (its events all follow the
// user's join, so their membership needs no membership log either). The
// aggregations of a limited timeline wait for those of the sync's other
// rooms (flushBundles), to be read at once.
func (s *SyncAPI) bundleTimeline(ctx context.Context, req *syncRequest, vis *visibility, evs []*storage.Event, out []ClientEvent, limited bool) error {
	if err := memberships(ctx, vis, evs, out); err != nil {
		return err
	}
	if limited && len(evs) > 0 {
		req.b.bundles = append(req.b.bundles, pagePart{vis: vis, evs: evs, out: out})
	}
	return nil
}

// flushBundles adds the aggregations of the limited timelines the rooms
// stream collected.
func (s *SyncAPI) flushBundles(ctx context.Context, req *syncRequest) error {
	parts := req.b.bundles
	req.b.bundles = nil
	if len(parts) == 0 {
		return nil
	}
	return s.aggregations(ctx, req.fmt, parts)
}

// bundlePtrs is bundle for events formatted in several places: out[i]
// points at the formatted evs[i].
func (s *SyncAPI) bundlePtrs(ctx context.Context, vis *visibility, f formatter, evs []*storage.Event, out []*ClientEvent) error {
	flat := make([]ClientEvent, len(out))
	for i, p := range out {
		flat[i] = *p
	}
	if err := s.bundle(ctx, vis, f, evs, flat); err != nil {
		return err
	}
	for i, p := range out {
		*p = flat[i]
	}
	return nil
}

// bundleOne is bundle for one event.
func (s *SyncAPI) bundleOne(ctx context.Context, vis *visibility, f formatter, e *storage.Event, ce *ClientEvent) error {
	out := []ClientEvent{*ce}
	if err := s.bundle(ctx, vis, f, []*storage.Event{e}, out); err != nil {
		return err
	}
	*ce = out[0]
	return nil
}
