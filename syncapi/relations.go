package syncapi

import (
	"cmp"
	"context"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"myelin/internal/mxhttp"
	"myelin/syncapi/storage"
	uapi "myelin/userapi/api"
)

const (
	// relationsLimit and threadsLimit are the default page sizes of
	// /relations and /threads (as Synapse's), relationsMax the largest.
	relationsLimit = 5
	threadsLimit   = 5
	relationsMax   = 100
	// relationsDepth is how deep recurse=true follows relations: the
	// spec asks for at least 3 levels.
	relationsDepth = 3
	// relationsFanout bounds the children read at each level of a
	// recursive /relations, so a huge thread cannot make one request
	// read it all.
	relationsFanout = 1000
)

type relationsResponse struct {
	Chunk          []ClientEvent `json:"chunk"`
	NextBatch      string        `json:"next_batch,omitempty"`
	PrevBatch      string        `json:"prev_batch,omitempty"`
	RecursionDepth *int          `json:"recursion_depth,omitempty"`
}

// pageLimit reads the limit query parameter: def when absent, at most
// max, and at least 1 when positive is set.
func pageLimit(q url.Values, def, maxN int, positive bool) (int, error) {
	l := q.Get("limit")
	if l == "" {
		return def, nil
	}
	n, err := strconv.Atoi(l)
	if err != nil || n < 0 || (positive && n == 0) {
		return 0, mxhttp.InvalidParam("limit must be a positive integer")
	}
	return min(n, maxN), nil
}

// relations serves GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}
// [/{relType}[/{eventType}]]: the children of an event the user may see,
// paged in topological order like /messages (its tokens and /sync's are
// accepted as from and to), each with its own bundled aggregations.
func (s *SyncAPI) relations(r *http.Request, dev *uapi.Device) (any, error) {
	ctx := r.Context()
	roomID, eventID := mxhttp.Var(r, "roomId"), mxhttp.Var(r, "eventId")
	q := r.URL.Query()
	backwards := true
	switch q.Get("dir") {
	case "b", "":
	case "f":
		backwards = false
	default:
		return nil, mxhttp.InvalidParam("dir must be 'b' or 'f'")
	}
	limit, err := pageLimit(q, relationsLimit, relationsMax, false)
	if err != nil {
		return nil, err
	}
	var recurse bool
	switch q.Get("recurse") {
	case "", "false":
	case "true":
		recurse = true
	default:
		return nil, mxhttp.InvalidParam("recurse must be 'true' or 'false'")
	}
	s.catchUp(ctx)
	vis, _, err := s.visibleEvent(ctx, roomID, eventID, dev.UserID)
	if err != nil {
		return nil, err
	}
	current := s.notifier.Current()
	from := q.Get("from")
	cur, _, err := s.pagePoint(ctx, roomID, from, backwards, current)
	if err != nil {
		return nil, err
	}
	stop, err := s.stopPoint(ctx, roomID, q.Get("to"))
	if err != nil {
		return nil, err
	}
	rq := storage.RelationQuery{
		RoomID: roomID, Parents: []string{eventID},
		RelType: mxhttp.Var(r, "relType"), EventType: mxhttp.Var(r, "eventType"),
		Backwards: backwards,
	}
	resp := &relationsResponse{Chunk: []ClientEvent{}}
	if from != "" {
		resp.PrevBatch = from
	}
	// next returns the next n children from cur on, in paging order.
	next := func(n int) ([]storage.Relation, error) {
		q := rq
		q.Depth, q.Pos, q.Limit = cur.Depth, cur.Pos, n
		return s.store.Relations(ctx, q)
	}
	if recurse {
		depth := relationsDepth
		resp.RecursionDepth = &depth
		all, err := s.relationTree(ctx, rq)
		if err != nil {
			return nil, err
		}
		next = func(n int) ([]storage.Relation, error) {
			var page []storage.Relation
			for _, rel := range all {
				if len(page) == n {
					break
				}
				if !relPassed(rel, cur, backwards) {
					page = append(page, rel)
				}
			}
			return page, nil
		}
	}
	pg := &seenPage{vis: vis, f: formatter{sessionID: dev.SessionID, now: s.now(), withRoomID: true}, chunk: resp.Chunk}
	more := true
	for round := 0; round < 10 && more && len(pg.chunk) < limit; round++ {
		page, err := next(limit)
		if err != nil {
			return nil, err
		}
		more = len(page) == limit
		ids := make([]string, len(page))
		for i, rel := range page {
			ids[i] = rel.EventID
		}
		rows, err := s.store.EventsByID(ctx, ids)
		if err != nil {
			return nil, err
		}
		byID := make(map[string]*storage.Event, len(rows))
		for _, e := range rows {
			byID[e.EventID] = e
		}
		for _, rel := range page {
			if stop != nil && relPassed(rel, *stop, !backwards) {
				more = false
				break
			}
			cur = TopoToken{Depth: rel.Depth, Pos: rel.Pos}
			if !backwards {
				cur.Pos++
			}
			if err := pg.add(ctx, byID[rel.EventID]); err != nil {
				return nil, err
			}
			if len(pg.chunk) == limit {
				break
			}
		}
	}
	if more && len(pg.chunk) > 0 {
		resp.NextBatch = cur.String()
	}
	resp.Chunk = pg.chunk
	if err := s.bundle(ctx, vis, pg.f, pg.shown, resp.Chunk); err != nil {
		return nil, err
	}
	return resp, nil
}

// relPassed reports whether a child lies at or before point p in the
// paging direction: backwards, at or after it; forwards, before it.
func relPassed(rel storage.Relation, p TopoToken, backwards bool) bool {
	if backwards {
		return rel.Depth > p.Depth || (rel.Depth == p.Depth && rel.Pos >= p.Pos)
	}
	return rel.Depth < p.Depth || (rel.Depth == p.Depth && rel.Pos < p.Pos)
}

// relationTree collects the children of q.Parents and theirs, down to
// relationsDepth levels, that match q's filters (spec: a matching event
// related only through a non-matching one is left out), in paging order.
func (s *SyncAPI) relationTree(ctx context.Context, q storage.RelationQuery) ([]storage.Relation, error) {
	var all []storage.Relation
	seen := map[string]bool{}
	frontier := q.Parents
	for level := 0; level < relationsDepth && len(frontier) > 0; level++ {
		lq := q
		lq.Parents, lq.Unbounded, lq.Limit = frontier, true, relationsFanout
		rows, err := s.store.Relations(ctx, lq)
		if err != nil {
			return nil, err
		}
		frontier = nil
		for _, r := range rows {
			if !seen[r.EventID] {
				seen[r.EventID] = true
				all = append(all, r)
				frontier = append(frontier, r.EventID)
			}
		}
	}
	slices.SortFunc(all, func(a, b storage.Relation) int {
		c := cmp.Or(cmp.Compare(a.Depth, b.Depth), cmp.Compare(a.Pos, b.Pos))
		if q.Backwards {
			return -c
		}
		return c
	})
	return all, nil
}

// visibleEvent returns the user's visibility helper in a room and one of
// its events the user may see; anything else, a room it cannot read
// included, is M_NOT_FOUND (spec: /relations answers 404 for a parent
// in history the user cannot see).
func (s *SyncAPI) visibleEvent(ctx context.Context, roomID, eventID, userID string) (*visibility, *storage.Event, error) {
	vis, err := s.roomAccess(ctx, roomID, userID)
	if err != nil {
		return nil, nil, mxhttp.NotFound("Event not found")
	}
	e, err := s.store.Event(ctx, eventID)
	if errors.Is(err, storage.ErrNotFound) || (err == nil && e.RoomID != roomID) {
		return nil, nil, mxhttp.NotFound("Event not found")
	}
	if err != nil {
		return nil, nil, err
	}
	ok, err := vis.canSee(ctx, e)
	if err != nil {
		return nil, nil, err
	}
	if !ok {
		return nil, nil, mxhttp.NotFound("Event not found")
	}
	return vis, e, nil
}

// stopPoint reads a 'to' token of /messages or /relations: a
// topological token, or a /sync token standing for the point after the
// room's latest event at its position. Empty is no stop.
func (s *SyncAPI) stopPoint(ctx context.Context, roomID, to string) (*TopoToken, error) {
	if to == "" {
		return nil, nil
	}
	if t, err := ParseTopoToken(to); err == nil {
		return &t, nil
	}
	st, err := ParseToken(to)
	if err != nil {
		return nil, mxhttp.InvalidParam("bad 'to' token")
	}
	d, p, err := s.store.TopoPosition(ctx, roomID, st[pduStream])
	if err != nil {
		return nil, err
	}
	return &TopoToken{Depth: d, Pos: p + 1}, nil
}

// seenPage collects a page of events the user may see, as it sees them
// (visibility.seen), in the client format; shown are the events behind
// chunk, for their bundled aggregations.
type seenPage struct {
	vis   *visibility
	f     formatter
	shown []*storage.Event
	chunk []ClientEvent
}

// add appends e if the user may see it; a nil e (not stored) is skipped.
func (p *seenPage) add(ctx context.Context, e *storage.Event) error {
	if e == nil {
		return nil
	}
	e, err := p.vis.seen(ctx, e)
	if err != nil || e == nil {
		return err
	}
	p.shown = append(p.shown, e)
	p.chunk = append(p.chunk, p.f.event(e))
	return nil
}

type threadsResponse struct {
	Chunk     []ClientEvent `json:"chunk"`
	NextBatch string        `json:"next_batch,omitempty"`
}

// threads serves GET /_matrix/client/v1/rooms/{roomId}/threads: the
// thread roots of a room the user may see, latest activity first, with
// their bundled aggregations. Its token is the stream position of the
// latest activity of the last root given.
func (s *SyncAPI) threads(r *http.Request, dev *uapi.Device) (any, error) {
	ctx := r.Context()
	roomID := mxhttp.Var(r, "roomId")
	q := r.URL.Query()
	participant := ""
	switch q.Get("include") {
	case "", "all":
	case "participated":
		participant = dev.UserID
	default:
		return nil, mxhttp.InvalidParam("include must be 'all' or 'participated'")
	}
	limit, err := pageLimit(q, threadsLimit, relationsMax, true)
	if err != nil {
		return nil, err
	}
	before := int64(1) << 62
	if from := q.Get("from"); from != "" {
		n, err := strconv.ParseInt(strings.TrimPrefix(from, "r"), 10, 64)
		if err != nil || !strings.HasPrefix(from, "r") {
			return nil, mxhttp.InvalidParam("Unknown pagination token")
		}
		before = n
	}
	s.catchUp(ctx)
	vis, err := s.roomAccess(ctx, roomID, dev.UserID)
	if err != nil {
		return nil, err
	}
	resp := &threadsResponse{}
	pg := &seenPage{vis: vis, f: formatter{sessionID: dev.SessionID, now: s.now(), withRoomID: true}, chunk: []ClientEvent{}}
	more := true
	for round := 0; round < 10 && more && len(pg.chunk) < limit; round++ {
		roots, err := s.store.Threads(ctx, roomID, participant, before, limit)
		if err != nil {
			return nil, err
		}
		more = len(roots) == limit
		ids := make([]string, len(roots))
		for i, t := range roots {
			ids[i] = t.EventID
		}
		rows, err := s.store.EventsByID(ctx, ids)
		if err != nil {
			return nil, err
		}
		byID := make(map[string]*storage.Event, len(rows))
		for _, e := range rows {
			byID[e.EventID] = e
		}
		for _, t := range roots {
			before = t.Latest
			if err := pg.add(ctx, byID[t.EventID]); err != nil {
				return nil, err
			}
			if len(pg.chunk) == limit {
				break
			}
		}
	}
	if more && len(pg.chunk) > 0 {
		resp.NextBatch = "r" + strconv.FormatInt(before, 10)
	}
	resp.Chunk = pg.chunk
	if err := s.bundle(ctx, vis, pg.f, pg.shown, resp.Chunk); err != nil {
		return nil, err
	}
	return resp, nil
}
