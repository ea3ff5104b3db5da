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
	return s.aggregations(ctx, vis, f, evs, out)
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

// aggregations adds the aggregations of evs, formatted as out. The
// thread summaries' latest events get their edits, read by the same
// query, and no more: threads cannot nest.
func (s *SyncAPI) aggregations(ctx context.Context, vis *visibility, f formatter, evs []*storage.Event, out []ClientEvent) error {
	if len(evs) == 0 {
		return nil
	}
	byID := make(map[string]int, len(evs))
	parents := make([]string, 0, len(evs))
	for i, e := range evs {
		if e.StateKey != nil {
			continue
		}
		byID[e.EventID] = i
		parents = append(parents, e.EventID)
	}
	if len(parents) == 0 {
		return nil
	}
	agg, err := s.store.Aggregate(ctx, vis.roomID, parents, vis.userID)
	if err != nil {
		return err
	}
	// One load for the edits, the latest thread events and their edits.
	// Edits of a page event are checked against it first (spec:
	// "Validity of replacement events": same sender and type, the
	// original not an edit itself nor redacted); those of a latest
	// thread event once it is loaded.
	var load []string
	for _, r := range agg.Edits {
		if i, ok := byID[r.RelatesTo]; ok && !validEditOf(r, evs[i]) {
			continue
		}
		load = append(load, r.EventID)
	}
	for _, t := range agg.Threads {
		load = append(load, t.Latest)
	}
	loaded := map[string]*storage.Event{}
	if len(load) > 0 {
		rows, err := s.store.EventsByID(ctx, load)
		if err != nil {
			return err
		}
		for _, e := range rows {
			if e.RoomID != vis.roomID {
				continue
			}
			ok, err := vis.canSee(ctx, e)
			if err != nil {
				return err
			}
			if !ok {
				continue
			}
			if e, err = vis.forErased(ctx, e); err != nil {
				return err
			}
			loaded[e.EventID] = e
		}
	}
	// parentOf is the original an edit names: a page event or a
	// latest thread event.
	parentOf := func(id string) *storage.Event {
		if i, ok := byID[id]; ok {
			return evs[i]
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
	// replacement formats the latest edit of an original, if any.
	replacement := func(id string) (*ClientEvent, error) {
		e := latestEdit[id]
		if e == nil {
			return nil, nil
		}
		ce := []ClientEvent{f.event(e)}
		if err := memberships(ctx, vis, []*storage.Event{e}, ce); err != nil {
			return nil, err
		}
		return &ce[0], nil
	}
	rel := func(i int) *clientevent.Relations {
		ce := &out[i]
		if ce.Unsigned == nil {
			ce.Unsigned = &Unsigned{}
		}
		if ce.Unsigned.Relations == nil {
			ce.Unsigned.Relations = &clientevent.Relations{}
		}
		return ce.Unsigned.Relations
	}
	for id, i := range byID {
		ce, err := replacement(id)
		if err != nil {
			return err
		}
		if ce != nil {
			rel(i).Replace = ce
		}
	}
	for _, r := range agg.References {
		rl := rel(byID[r.RelatesTo])
		if rl.Reference == nil {
			rl.Reference = &clientevent.ReferenceChunks{}
		}
		rl.Reference.Chunk = append(rl.Reference.Chunk, clientevent.EventRef{EventID: r.EventID})
	}
	for root, t := range agg.Threads {
		e := loaded[t.Latest]
		if e == nil {
			continue // not visible to this user: no summary to show
		}
		// The latest event is served as the event itself would be, with
		// its own edit (spec: "child events of the latest_event should
		// themselves be aggregated").
		latest := []ClientEvent{f.event(e)}
		if err := memberships(ctx, vis, []*storage.Event{e}, latest); err != nil {
			return err
		}
		ce, err := replacement(e.EventID)
		if err != nil {
			return err
		}
		if ce != nil {
			latest[0].Unsigned.Relations = &clientevent.Relations{Replace: ce}
		}
		i := byID[root]
		rel(i).Thread = &clientevent.ThreadSummary{
			LatestEvent:             &latest[0],
			Count:                   t.Count,
			CurrentUserParticipated: t.Participated || evs[i].Sender == vis.userID,
		}
	}
	// Events without children keep no empty m.relations.
	for _, i := range byID {
		if u := out[i].Unsigned; u != nil && u.Relations != nil && *u.Relations == (clientevent.Relations{}) {
			u.Relations = nil
		}
	}
	return nil
}

// validEditOf reports whether the edit r may replace original p, as far
// as the index tells: same sender and type, p not a redacted event nor
// an edit itself.
func validEditOf(r storage.Relation, p *storage.Event) bool {
	if r.Sender != p.Sender || r.EventType != p.Type || p.RedactedBecause != "" || p.StateKey != nil {
		return false
	}
	rt, _ := relatesTo(p.JSON)
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
// user's join, so their membership needs no membership log either).
func (s *SyncAPI) bundleTimeline(ctx context.Context, req *syncRequest, vis *visibility, evs []*storage.Event, out []ClientEvent, limited bool) error {
	if !limited {
		return memberships(ctx, vis, evs, out)
	}
	return s.bundle(ctx, vis, req.fmt, evs, out)
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
