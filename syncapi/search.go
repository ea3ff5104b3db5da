package syncapi

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"sort"

	"myelin/internal/mxhttp"
	"myelin/internal/sqldb"
	"myelin/syncapi/storage"
	uapi "myelin/userapi/api"
)

// Server-side search (spec: "Server Side Search", POST /search): the
// room_events category over syncapi's full-text index (storage.Search).

const (
	searchDefaultLimit = 10
	searchMaxLimit     = 100
	// searchMaxScan bounds the rows read for one page: a page whose rows
	// the user may mostly not see ends early, with a next_batch.
	searchMaxScan = 1000
	// searchContextMax caps before_limit and after_limit.
	searchContextMax = 50
)

type searchRequest struct {
	SearchCategories map[string]json.RawMessage `json:"search_categories"`
}

type roomEventsCriteria struct {
	SearchTerm   *string       `json:"search_term"`
	Keys         *[]string     `json:"keys"`
	Filter       *searchFilter `json:"filter"`
	OrderBy      string        `json:"order_by"`
	EventContext *struct {
		BeforeLimit    *int `json:"before_limit"`
		AfterLimit     *int `json:"after_limit"`
		IncludeProfile bool `json:"include_profile"`
	} `json:"event_context"`
	IncludeState bool `json:"include_state"`
	Groupings    *struct {
		GroupBy []struct {
			Key string `json:"key"`
		} `json:"group_by"`
	} `json:"groupings"`
}

// searchFilter is the filter of a search: a RoomEventFilter, whose
// unread_thread_notifications (spec: RoomEventFilter) is read here only
// so that a value of the wrong type is refused; it counts nothing in a
// search.
type searchFilter struct {
	RoomEventFilter
	UnreadThreadNotifications *bool `json:"unread_thread_notifications,omitempty"`
}

// Validate implements mxhttp.Validator.
func (c *roomEventsCriteria) Validate() error {
	if c.SearchTerm == nil {
		return mxhttp.MissingParam("search_term is required")
	}
	if c.Keys != nil {
		for _, k := range *c.Keys {
			if !slices.Contains([]string{"content.body", "content.name", "content.topic"}, k) {
				return mxhttp.BadJSON("unknown key %q: keys are content.body, content.name and content.topic", k)
			}
		}
	}
	switch c.OrderBy {
	case "", "rank", "recent":
	default:
		return mxhttp.BadJSON("order_by must be 'rank' or 'recent'")
	}
	if c.EventContext != nil {
		for _, l := range []*int{c.EventContext.BeforeLimit, c.EventContext.AfterLimit} {
			if l != nil && *l < 0 {
				return mxhttp.BadJSON("event_context limits must not be negative")
			}
		}
	}
	if c.Groupings != nil {
		for _, g := range c.Groupings.GroupBy {
			if g.Key != "room_id" && g.Key != "sender" {
				return mxhttp.BadJSON("group_by key must be 'room_id' or 'sender'")
			}
		}
	}
	if c.Filter != nil {
		return c.Filter.Validate()
	}
	return nil
}

// searchToken is a next_batch: where the next page starts, in which order,
// over which snapshot of the stream, and the group it pages through.
type searchToken struct {
	Order  string            `json:"o"`
	MaxPos int64             `json:"m"`
	After  storage.SearchKey `json:"a"`
	Room   string            `json:"room,omitempty"`
	Sender string            `json:"sender,omitempty"`
}

func (t searchToken) String() string {
	b, _ := json.Marshal(t)
	return base64.RawURLEncoding.EncodeToString(b)
}

func parseSearchToken(s string) (searchToken, error) {
	var t searchToken
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return t, err
	}
	if err := json.Unmarshal(b, &t); err != nil {
		return t, err
	}
	if t.Order != "rank" && t.Order != "recent" {
		return t, fmt.Errorf("unknown order %q", t.Order)
	}
	return t, nil
}

type searchResponse struct {
	SearchCategories struct {
		RoomEvents roomEventsResults `json:"room_events"`
	} `json:"search_categories"`
}

type roomEventsResults struct {
	Count      int64                             `json:"count"`
	Highlights []string                          `json:"highlights"`
	NextBatch  string                            `json:"next_batch,omitempty"`
	Results    []searchResult                    `json:"results"`
	State      map[string][]ClientEvent          `json:"state,omitempty"`
	Groups     map[string]map[string]*groupValue `json:"groups,omitempty"`
}

type searchResult struct {
	Rank    float64        `json:"rank"`
	Result  ClientEvent    `json:"result"`
	Context *searchContext `json:"context,omitempty"`
}

type searchContext struct {
	Start        string                   `json:"start,omitempty"`
	End          string                   `json:"end,omitempty"`
	EventsBefore []ClientEvent            `json:"events_before"`
	EventsAfter  []ClientEvent            `json:"events_after"`
	ProfileInfo  map[string]searchProfile `json:"profile_info,omitempty"`
}

type searchProfile struct {
	DisplayName string `json:"displayname,omitempty"`
	AvatarURL   string `json:"avatar_url,omitempty"`
}

type groupValue struct {
	NextBatch string   `json:"next_batch,omitempty"`
	Order     int      `json:"order"`
	Results   []string `json:"results"`
}

// search serves POST /search.
func (s *SyncAPI) search(r *http.Request, dev *uapi.Device) (any, error) {
	ctx := r.Context()
	var req searchRequest
	if err := mxhttp.ReadJSON(r, &req); err != nil {
		return nil, err
	}
	if req.SearchCategories == nil {
		return nil, mxhttp.MissingParam("search_categories is required")
	}
	for cat := range req.SearchCategories {
		if cat != "room_events" {
			return nil, mxhttp.BadJSON("unknown search category %q", cat)
		}
	}
	raw, ok := req.SearchCategories["room_events"]
	if !ok {
		return nil, mxhttp.BadJSON("no search category given: room_events is the only one")
	}
	var c roomEventsCriteria
	if err := mxhttp.DecodeJSON(raw, &c); err != nil {
		return nil, err
	}
	var tok *searchToken
	if nb := r.URL.Query().Get("next_batch"); nb != "" {
		t, err := parseSearchToken(nb)
		if err != nil {
			return nil, mxhttp.InvalidParam("bad next_batch")
		}
		tok = &t
	}
	s.catchUp(ctx)
	res, err := s.searchRoomEvents(ctx, dev, &c, tok)
	if err != nil {
		return nil, err
	}
	var resp searchResponse
	resp.SearchCategories.RoomEvents = *res
	return &resp, nil
}

func (s *SyncAPI) searchRoomEvents(ctx context.Context, dev *uapi.Device, c *roomEventsCriteria, tok *searchToken) (*roomEventsResults, error) {
	filter := &RoomEventFilter{}
	if c.Filter != nil {
		filter = &c.Filter.RoomEventFilter
	}
	order := c.OrderBy
	if order == "" {
		order = "rank"
	}
	if tok != nil && tok.Order != order {
		return nil, mxhttp.InvalidParam("next_batch is of another order_by")
	}
	limit := searchDefaultLimit
	if filter.Limit != nil {
		limit = min(*filter.Limit, searchMaxLimit)
	}
	keys := []string{"content.body", "content.name", "content.topic"}
	if c.Keys != nil {
		keys = *c.Keys
	}
	var types []string
	for t, k := range storage.SearchKeys {
		if slices.Contains(keys, k) && filter.AllowsType(t) {
			types = append(types, t)
		}
	}
	sort.Strings(types)

	rooms, err := s.searchableRooms(ctx, dev.UserID, filter, tok)
	if err != nil {
		return nil, err
	}
	match, words := sqldb.FullTextQuery(s.store.Dialect(), *c.SearchTerm)
	res := &roomEventsResults{Highlights: words, Results: []searchResult{}}
	if res.Highlights == nil {
		res.Highlights = []string{}
	}
	if match == "" || len(rooms) == 0 || len(types) == 0 || limit == 0 {
		return res, nil
	}
	q := &storage.SearchQuery{Match: match, Rooms: rooms, Types: types, ByRank: order == "rank", Limit: limit}
	if tok != nil {
		q.MaxPos, q.After = tok.MaxPos, &tok.After
	} else {
		q.MaxPos = s.notifier.Current()[pduStream]
	}
	if res.Count, err = s.store.SearchCount(ctx, q); err != nil {
		return nil, err
	}

	_, joinedAt, err := s.store.UserMembershipsAt(ctx, dev.UserID)
	if err != nil {
		return nil, err
	}
	vis := map[string]*visibility{}
	visOf := func(roomID string) *visibility {
		if v := vis[roomID]; v != nil {
			return v
		}
		v := &visibility{s: s, roomID: roomID, userID: dev.UserID, joinedAt: joinedAt[roomID]}
		vis[roomID] = v
		return v
	}
	var hits []*storage.Event
	var ranks []float64
	var last *storage.SearchKey
	// A page reads one row more than it needs: when that row is left
	// unread, there are more.
	exhausted := false
	for scanned := 0; ; {
		q.Limit = limit - len(hits) + 1
		page, err := s.store.Search(ctx, q)
		if err != nil {
			return nil, err
		}
		full := false
		for _, h := range page {
			if len(hits) == limit || scanned == searchMaxScan {
				full = true
				break
			}
			scanned++
			k := h.Key
			last, q.After = &k, &k
			if tok != nil && tok.Sender != "" && h.Event.Sender != tok.Sender {
				continue
			}
			if !filter.AllowsEvent(h.Event.Type, h.Event.Sender, contentRaw(h.Event.JSON)) {
				continue
			}
			v := visOf(h.Event.RoomID)
			e, err := v.seen(ctx, h.Event)
			if err != nil {
				return nil, err
			}
			if e == nil {
				continue
			}
			hits = append(hits, e)
			ranks = append(ranks, h.Key.Rank)
		}
		if full {
			break
		}
		if len(page) < q.Limit {
			exhausted = true
			break
		}
	}
	more := !exhausted
	next := func(room, sender string) string {
		if !more || last == nil {
			return ""
		}
		return searchToken{Order: order, MaxPos: q.MaxPos, After: *last, Room: room, Sender: sender}.String()
	}
	if tok != nil {
		res.NextBatch = next(tok.Room, tok.Sender)
	} else {
		res.NextBatch = next("", "")
	}

	f := formatter{sessionID: dev.SessionID, now: s.now(), withRoomID: true}
	for i, e := range hits {
		sr := searchResult{Rank: ranks[i], Result: f.event(e)}
		if c.EventContext != nil {
			if sr.Context, err = s.searchContext(ctx, visOf(e.RoomID), f, e, c); err != nil {
				return nil, err
			}
		}
		res.Results = append(res.Results, sr)
	}
	if c.IncludeState {
		if res.State, err = s.searchState(ctx, dev.UserID, hits, f); err != nil {
			return nil, err
		}
	}
	if c.Groupings != nil && len(c.Groupings.GroupBy) > 0 {
		res.Groups = map[string]map[string]*groupValue{}
		for _, g := range c.Groupings.GroupBy {
			groups := map[string]*groupValue{}
			for _, e := range hits {
				k := e.RoomID
				if g.Key == "sender" {
					k = e.Sender
				}
				gv := groups[k]
				if gv == nil {
					gv = &groupValue{Order: len(groups), Results: []string{}}
					if g.Key == "sender" {
						gv.NextBatch = next("", k)
					} else {
						gv.NextBatch = next(k, "")
					}
					groups[k] = gv
				}
				gv.Results = append(gv.Results, e.EventID)
			}
			res.Groups[g.Key] = groups
		}
	}
	return res, nil
}

// searchableRooms are the rooms a search covers: those the user is or was
// joined to (and has not forgotten since leaving), narrowed by the
// filter's rooms and not_rooms and by a group's next_batch.
func (s *SyncAPI) searchableRooms(ctx context.Context, userID string, filter *RoomEventFilter, tok *searchToken) ([]string, error) {
	ever, err := s.store.RoomsEverJoined(ctx, userID)
	if err != nil {
		return nil, err
	}
	current, err := s.store.UserMemberships(ctx, userID)
	if err != nil {
		return nil, err
	}
	forgotten, err := s.store.Forgotten(ctx, userID)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, r := range ever {
		if forgotten[r] && current[r] != "join" {
			continue
		}
		if contains(filter.NotRooms, r) || (filter.Rooms != nil && !contains(*filter.Rooms, r)) {
			continue
		}
		if tok != nil && tok.Room != "" && tok.Room != r {
			continue
		}
		out = append(out, r)
	}
	sort.Strings(out)
	return out, nil
}

// searchContext is the event_context of a result: the events around it
// the user may see, the tokens to page from there, and the profiles of
// their senders.
func (s *SyncAPI) searchContext(ctx context.Context, vis *visibility, f formatter, e *storage.Event, c *roomEventsCriteria) (*searchContext, error) {
	before, after := 5, 5
	if l := c.EventContext.BeforeLimit; l != nil {
		before = min(*l, searchContextMax)
	}
	if l := c.EventContext.AfterLimit; l != nil {
		after = min(*l, searchContextMax)
	}
	maxPos := s.notifier.Current()[pduStream]
	sc := &searchContext{EventsBefore: []ClientEvent{}, EventsAfter: []ClientEvent{}}
	senders := map[string]bool{e.Sender: true}
	pick := func(backwards bool, n int) ([]ClientEvent, string, error) {
		out := []ClientEvent{}
		tok := TopoToken{Depth: e.Depth, Pos: e.Pos + 1}
		if backwards {
			tok = TopoToken{Depth: e.Depth, Pos: e.Pos}
		}
		if n == 0 {
			return out, tok.String(), nil
		}
		pos := e.Pos + 1
		if backwards {
			pos = e.Pos
		}
		rows, err := s.store.Messages(ctx, e.RoomID, e.Depth, pos, backwards, maxPos, n*2+1)
		if err != nil {
			return nil, "", err
		}
		for _, x := range rows {
			if len(out) == n {
				break
			}
			x, err := vis.seen(ctx, x)
			if err != nil {
				return nil, "", err
			}
			if x == nil {
				continue
			}
			out = append(out, f.event(x))
			senders[x.Sender] = true
			if backwards {
				tok = TopoToken{Depth: x.Depth, Pos: x.Pos}
			} else {
				tok = TopoToken{Depth: x.Depth, Pos: x.Pos + 1}
			}
		}
		return out, tok.String(), nil
	}
	var err error
	if sc.EventsBefore, sc.Start, err = pick(true, before); err != nil {
		return nil, err
	}
	if sc.EventsAfter, sc.End, err = pick(false, after); err != nil {
		return nil, err
	}
	if c.EventContext.IncludeProfile {
		ids := make([]string, 0, len(senders))
		for u := range senders {
			ids = append(ids, u)
		}
		members, err := s.store.MemberEvents(ctx, e.RoomID, ids)
		if err != nil {
			return nil, err
		}
		sc.ProfileInfo = map[string]searchProfile{}
		for _, m := range members {
			sc.ProfileInfo[m.StateKey] = searchProfile{
				DisplayName: gjsonString(m.JSON, "content.displayname"),
				AvatarURL:   gjsonString(m.JSON, "content.avatar_url"),
			}
		}
	}
	return sc, nil
}

// searchState is include_state: the current state of each room of the
// results the user is joined to (a room it left shows no state, which
// may have changed since it could see it).
func (s *SyncAPI) searchState(ctx context.Context, userID string, hits []*storage.Event, f formatter) (map[string][]ClientEvent, error) {
	memberships, err := s.store.UserMemberships(ctx, userID)
	if err != nil {
		return nil, err
	}
	out := map[string][]ClientEvent{}
	for _, e := range hits {
		if _, done := out[e.RoomID]; done || memberships[e.RoomID] != "join" {
			continue
		}
		state, err := s.store.CurrentState(ctx, e.RoomID)
		if err != nil {
			return nil, err
		}
		evs := make([]ClientEvent, 0, len(state))
		for _, st := range state {
			evs = append(evs, f.state(st))
		}
		out[e.RoomID] = evs
	}
	return out, nil
}
