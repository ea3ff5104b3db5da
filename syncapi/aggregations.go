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
	return s.bundleDepth(ctx, vis, f, evs, out, 0)
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

// bundleDepth is bundle for the events of a thread summary (depth 1),
// whose latest events get their own aggregations but go no deeper: threads
// cannot nest, and the bound keeps a forged loop from recursing.
func (s *SyncAPI) bundleDepth(ctx context.Context, vis *visibility, f formatter, evs []*storage.Event, out []ClientEvent, depth int) error {
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
	// The edits that may replace their parent (spec: "Validity of
	// replacement events"): same sender, same type, parent not itself
	// an edit and not redacted; m.new_content is checked once loaded.
	var load []string
	for _, r := range agg.Edits {
		p := evs[byID[r.RelatesTo]]
		if r.Sender != p.Sender || r.EventType != p.Type || p.RedactedBecause != "" {
			continue
		}
		if rt, _ := relatesTo(p.JSON); rt == "m.replace" {
			continue
		}
		load = append(load, r.EventID)
	}
	if depth == 0 {
		for _, t := range agg.Threads {
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
	// The latest valid edit of each parent: by origin_server_ts, then
	// the larger event ID (spec: "Server-side aggregation of m.replace").
	latestEdit := map[string]*storage.Event{}
	for _, r := range agg.Edits {
		e := loaded[r.EventID]
		if e == nil || e.Type != evs[byID[r.RelatesTo]].Type || !isReplacement(e) {
			continue
		}
		if cur := latestEdit[r.RelatesTo]; cur == nil || newerEdit(e, cur) {
			latestEdit[r.RelatesTo] = e
		}
	}
	for parent, e := range latestEdit {
		ce := []ClientEvent{f.event(e)}
		if err := memberships(ctx, vis, []*storage.Event{e}, ce); err != nil {
			return err
		}
		rel(byID[parent]).Replace = &ce[0]
	}
	for _, r := range agg.References {
		rl := rel(byID[r.RelatesTo])
		if rl.Reference == nil {
			rl.Reference = &clientevent.ReferenceChunks{}
		}
		rl.Reference.Chunk = append(rl.Reference.Chunk, clientevent.EventRef{EventID: r.EventID})
	}
	if depth == 0 {
		var latest []*storage.Event
		var latestOut []ClientEvent
		var roots []string
		for root, t := range agg.Threads {
			e := loaded[t.Latest]
			if e == nil {
				continue // not visible to this user: no summary to show
			}
			latest = append(latest, e)
			latestOut = append(latestOut, f.event(e))
			roots = append(roots, root)
		}
		// The latest events carry their own edits (spec: "child events
		// of the latest_event should themselves be aggregated").
		if err := memberships(ctx, vis, latest, latestOut); err != nil {
			return err
		}
		if err := s.bundleDepth(ctx, vis, f, latest, latestOut, depth+1); err != nil {
			return err
		}
		for i, root := range roots {
			t := agg.Threads[root]
			p := evs[byID[root]]
			rel(byID[root]).Thread = &clientevent.ThreadSummary{
				LatestEvent:             &latestOut[i],
				Count:                   t.Count,
				CurrentUserParticipated: t.Participated || p.Sender == vis.userID,
			}
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
func (s *SyncAPI) bundleTimeline(ctx context.Context, req *syncRequest, roomID string, evs []*storage.Event, out []ClientEvent, limited bool) error {
	vis := &visibility{s: s, roomID: roomID, userID: req.dev.UserID, joinedAt: req.b.joinedAt[roomID]}
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
