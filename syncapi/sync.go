package syncapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"myelin/internal/mxhttp"
	sapi "myelin/syncapi/api"
	"myelin/syncapi/storage"
	uapi "myelin/userapi/api"
)

// Response shapes of /sync (spec: GET /_matrix/client/v3/sync).

type syncResponse struct {
	NextBatch   string      `json:"next_batch"`
	AccountData eventList   `json:"account_data"`
	Presence    eventList   `json:"presence"`
	ToDevice    eventList   `json:"to_device"`
	DeviceLists deviceLists `json:"device_lists"`
	// OTKCounts and UnusedFallback are left out of an unchanged answer:
	// clients keep what they had. An empty UnusedFallback is sent (the
	// client is to upload a fallback key), hence the pointer.
	OTKCounts      map[string]int `json:"device_one_time_keys_count,omitempty"`
	UnusedFallback *[]string      `json:"device_unused_fallback_key_types,omitempty"`
	Rooms          syncRooms      `json:"rooms"`
	// unchanged marks the answer to a long-poll that nothing concerned:
	// empty but for next_batch.
	unchanged bool
}

// unchangedJSON is the encoded unchanged answer split around its
// next_batch (tokens need no escaping). It answers most long-polls of an
// idle server, which need not encode the same thing each time.
var unchangedJSON = func() [2]string {
	const mark = "s0_0_0_0_0"
	r := newSyncResponse()
	r.NextBatch = mark
	b, err := json.Marshal(r)
	if err != nil {
		panic(err)
	}
	before, after, _ := strings.Cut(string(b), `"`+mark+`"`)
	return [2]string{before + `"`, `"` + after}
}()

type eventList struct {
	Events []any `json:"events"`
}

type deviceLists struct {
	Changed []string `json:"changed"`
	Left    []string `json:"left"`
}

type syncRooms struct {
	Join   map[string]*joinedRoom  `json:"join"`
	Invite map[string]*invitedRoom `json:"invite"`
	Leave  map[string]*leftRoom    `json:"leave"`
	Knock  map[string]any          `json:"knock"`
}

type timeline struct {
	Events    []ClientEvent `json:"events"`
	Limited   bool          `json:"limited"`
	PrevBatch string        `json:"prev_batch,omitempty"`
}

type stateList struct {
	Events []ClientEvent `json:"events"`
}

type roomSummary struct {
	Heroes  []string `json:"m.heroes,omitempty"`
	Joined  *int     `json:"m.joined_member_count,omitempty"`
	Invited *int     `json:"m.invited_member_count,omitempty"`
}

type unreadCounts struct {
	Highlight    int `json:"highlight_count"`
	Notification int `json:"notification_count"`
}

type joinedRoom struct {
	Summary     roomSummary  `json:"summary"`
	State       stateList    `json:"state"`
	Timeline    timeline     `json:"timeline"`
	Ephemeral   eventList    `json:"ephemeral"`
	AccountData eventList    `json:"account_data"`
	Unread      unreadCounts `json:"unread_notifications"`
}

type invitedRoom struct {
	InviteState struct {
		Events []json.RawMessage `json:"events"`
	} `json:"invite_state"`
}

type leftRoom struct {
	State       stateList `json:"state"`
	Timeline    timeline  `json:"timeline"`
	AccountData eventList `json:"account_data"`
}

func newSyncResponse() *syncResponse {
	return &syncResponse{
		AccountData: eventList{Events: []any{}},
		Presence:    eventList{Events: []any{}},
		ToDevice:    eventList{Events: []any{}},
		DeviceLists: deviceLists{Changed: []string{}, Left: []string{}},
		Rooms: syncRooms{
			Join:   map[string]*joinedRoom{},
			Invite: map[string]*invitedRoom{},
			Leave:  map[string]*leftRoom{},
			Knock:  map[string]any{},
		},
	}
}

func (r *syncResponse) empty() bool {
	return len(r.AccountData.Events) == 0 && len(r.Presence.Events) == 0 && len(r.DeviceLists.Changed) == 0 &&
		len(r.DeviceLists.Left) == 0 && len(r.ToDevice.Events) == 0 &&
		len(r.Rooms.Join) == 0 && len(r.Rooms.Invite) == 0 && len(r.Rooms.Leave) == 0 && len(r.Rooms.Knock) == 0
}

// syncRequest is one /sync call.
type syncRequest struct {
	dev       *uapi.Device
	filter    *Filter
	since     *Token
	fullState bool
	to        Token
	fmt       formatter
	joinedAt  map[string]int64 // position of the user's join, by joined room
	// members is who joined and left the user's rooms since the token,
	// read once for presence and device lists (membersChanged).
	members *membersChange
	// ownChanges is the user's own membership changes in the range.
	ownChanges []storage.MembershipChange
	// withRoomID puts room_id into events (the flat /events stream).
	withRoomID bool
	// concern, when the notifier knows it, is the latest positions that
	// concerned the user: a stream that has not moved past since for it
	// has nothing to read.
	concern *Token
}

// quiet reports whether the stream pos picks has nothing for the user
// after since, as far as the notifier knows.
func (req *syncRequest) quiet(pos func(Token) int64) bool {
	return req.since != nil && !req.fullState && req.concern != nil && pos(*req.concern) <= pos(*req.since)
}

func pduPos(t Token) int64         { return t.PDU }
func typingPos(t Token) int64      { return t.Typing }
func receiptPos(t Token) int64     { return t.Receipt }
func presencePos(t Token) int64    { return t.Presence }
func accountDataPos(t Token) int64 { return t.AccountData }
func deviceListsPos(t Token) int64 { return t.DeviceLists }

func (s *SyncAPI) sync(r *http.Request, dev *uapi.Device) (any, error) {
	// The frames of a waiting /sync stay on its goroutine's stack for the
	// whole wait, thousands of times over, and a stack shrinks only while
	// it is under a quarter full: the request is read in syncParams, and
	// what waits here and in longPoll keeps few locals.
	req, timeout, keepsOnline, err := s.syncParams(r, dev)
	if err != nil {
		return nil, err
	}
	if keepsOnline {
		s.presence.startSync(dev.UserID)
		defer s.presence.endSync(dev.UserID, s.now)
	}
	resp, err := s.longPoll(r.Context(), req, timeout, (*syncResponse).empty)
	if err != nil {
		return nil, err
	}
	if resp.unchanged {
		return mxhttp.RawJSON(unchangedJSON[0] + resp.NextBatch + unchangedJSON[1]), nil
	}
	return resp, nil
}

// syncParams reads a /sync request and applies its set_presence; it
// reports whether the request keeps its user online.
func (s *SyncAPI) syncParams(r *http.Request, dev *uapi.Device) (*syncRequest, time.Duration, bool, error) {
	ctx := r.Context()
	q := r.URL.Query()
	filter, err := s.requestFilter(ctx, dev.UserID, q.Get("filter"))
	if err != nil {
		return nil, 0, false, err
	}
	timeout, err := s.timeoutParam(q, 0)
	if err != nil {
		return nil, 0, false, err
	}
	req := &syncRequest{dev: dev, filter: filter, fullState: q.Get("full_state") == "true"}
	if sinceStr := q.Get("since"); sinceStr != "" {
		t, err := ParseToken(sinceStr)
		if err != nil {
			return nil, 0, false, mxhttp.InvalidParam("%v", err)
		}
		req.since = &t
	}
	setPresence := q.Get("set_presence")
	if setPresence == "" {
		setPresence = sapi.Online
	}
	if !sapi.ValidPresence(setPresence) {
		return nil, 0, false, mxhttp.InvalidParam("set_presence must be online, unavailable or offline")
	}
	// Before catching up, so that the response already has the change.
	if err := s.syncPresence(ctx, dev.UserID, setPresence); err != nil {
		mxhttp.Logger(ctx).WithError(err).Warn("cannot update presence from /sync")
	}
	return req, timeout, setPresence != sapi.Offline, nil
}

// longPoll builds the response to req. With a since token and a timeout it
// first waits, from memory, until something concerns the user, and while
// what it builds is empty (what woke it may all be filtered out), until
// the timeout.
func (s *SyncAPI) longPoll(ctx context.Context, req *syncRequest, timeout time.Duration, empty func(*syncResponse) bool) (*syncResponse, error) {
	if req.since == nil || timeout <= 0 || req.fullState {
		s.catchUp(ctx)
		return s.build(ctx, req)
	}
	wctx, cancel := s.timeouts.withTimeout(ctx, timeout)
	defer cancel()
	// A long-poll with nothing new for this user waits before touching
	// the database at all, and if still nothing came when it times out,
	// answers without touching it either: an idle connection costs no
	// query, however many there are.
	userID, deviceID := req.dev.UserID, req.dev.DeviceID
	if s.notifier.Unchanged(userID, deviceID, *req.since) {
		s.notifier.Wait(wctx, userID, deviceID, *req.since)
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if s.notifier.Unchanged(userID, deviceID, *req.since) {
			return s.unchanged(req), nil
		}
	}
	return s.buildUntil(ctx, wctx, req, empty)
}

// unchanged is the answer to a long-poll that nothing concerned.
func (s *SyncAPI) unchanged(req *syncRequest) *syncResponse {
	resp := newSyncResponse()
	resp.NextBatch = s.notifier.Current().Max(*req.since).String()
	resp.unchanged = true
	return resp
}

// buildUntil builds the response to req until it is not empty or wctx
// ends, waiting for something new between tries.
func (s *SyncAPI) buildUntil(ctx, wctx context.Context, req *syncRequest, empty func(*syncResponse) bool) (*syncResponse, error) {
	for {
		resp, err := s.build(ctx, req)
		if err != nil {
			return nil, err
		}
		if !empty(resp) || wctx.Err() != nil || !s.notifier.Wait(wctx, req.dev.UserID, req.dev.DeviceID, req.to) {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return resp, nil
		}
	}
}

// timeoutParam reads a long-poll's timeout parameter (milliseconds; def
// when absent), capped at the configured maximum.
func (s *SyncAPI) timeoutParam(q url.Values, def time.Duration) (time.Duration, error) {
	timeout := def
	if t := q.Get("timeout"); t != "" {
		ms, err := strconv.ParseInt(t, 10, 64)
		if err != nil || ms < 0 {
			return 0, mxhttp.InvalidParam("timeout must be a non-negative number of milliseconds")
		}
		timeout = time.Duration(ms) * time.Millisecond
	}
	return min(timeout, s.cfg.Sync.MaxTimeout), nil
}

// maxCachedInlineFilter bounds the inline filters kept parsed, so that
// the cache holds many small ones rather than a few huge ones.
const maxCachedInlineFilter = 2048

// requestFilter resolves the filter parameter: a stored filter's ID or
// inline JSON.
func (s *SyncAPI) requestFilter(ctx context.Context, userID, param string) (*Filter, error) {
	if param == "" {
		return &Filter{}, nil
	}
	if strings.HasPrefix(strings.TrimSpace(param), "{") {
		// A client sends the same inline filter with every long-poll:
		// parse it once, and let its waiting requests share it.
		if len(param) > maxCachedInlineFilter {
			return parseFilter([]byte(param))
		}
		return s.cachedFilter("json|"+param, func() (string, error) { return param, nil })
	}
	id, err := strconv.ParseInt(param, 10, 64)
	if err != nil {
		return nil, mxhttp.InvalidParam("filter must be a filter ID or a JSON filter")
	}
	// Stored filters never change: most syncs of a client use one.
	return s.cachedFilter(userID+"|"+param, func() (string, error) {
		raw, err := s.store.Filter(ctx, userID, id)
		if errors.Is(err, storage.ErrNotFound) {
			return "", mxhttp.InvalidParam("unknown filter %d", id)
		}
		return raw, err
	})
}

// cachedFilter returns the parsed filter cached under key, parsing what
// load returns on a miss. Cached filters are shared, so never modified.
func (s *SyncAPI) cachedFilter(key string, load func() (string, error)) (*Filter, error) {
	if f, ok := s.filters.Get(key); ok {
		return f, nil
	}
	raw, err := load()
	if err != nil {
		return nil, err
	}
	f, err := parseFilter([]byte(raw))
	if err != nil {
		return nil, err
	}
	s.filters.Put(key, f)
	return f, nil
}

// build computes the response from req.since (nil: initial sync) to the
// current position.
func (s *SyncAPI) build(ctx context.Context, req *syncRequest) (*syncResponse, error) {
	req.to = s.notifier.Current()
	req.fmt = formatter{sessionID: req.dev.SessionID, now: s.now(), withRoomID: req.withRoomID}
	user := req.dev.UserID
	resp := newSyncResponse()
	resp.NextBatch = req.to.String()
	if req.since != nil {
		// Read after req.to, so that it covers everything up to req.to.
		if c, ok := s.notifier.Concerning(user, req.dev.DeviceID, *req.since); ok {
			req.concern = &c
		}
	}

	// A sync woken by, say, presence alone reads nothing of the rooms.
	var memberships map[string]string
	var err error
	if !req.quiet(pduPos) || !req.quiet(typingPos) || !req.quiet(receiptPos) {
		if memberships, req.joinedAt, err = s.store.UserMembershipsAt(ctx, user); err != nil {
			return nil, err
		}
	}
	var since Token
	if req.since != nil {
		since = *req.since
	}
	// The user's membership changes since the last sync decide which rooms
	// are new to it, which it left, and which it is invited to.
	lastChange := map[string]storage.MembershipChange{}
	firstChange := map[string]storage.MembershipChange{}
	joinedInBatch := map[string]bool{}
	if req.since != nil && req.to.PDU > since.PDU && !req.quiet(pduPos) {
		changes, err := s.store.MembershipChanges(ctx, user, since.PDU, req.to.PDU)
		if err != nil {
			return nil, err
		}
		req.ownChanges = append([]storage.MembershipChange{}, changes...) // non-nil: read
		for _, c := range changes {
			if _, ok := firstChange[c.RoomID]; !ok {
				firstChange[c.RoomID] = c
			}
			lastChange[c.RoomID] = c
			joinedInBatch[c.RoomID] = joinedInBatch[c.RoomID] || c.Membership == "join"
		}
	}
	var active map[string]bool
	if req.since != nil && req.to.PDU > since.PDU && !req.quiet(pduPos) {
		if active, err = s.store.RoomsWithEvents(ctx, since.PDU, req.to.PDU); err != nil {
			return nil, err
		}
	}
	// Receipts are read for all joined rooms at once; typing is in memory.
	var receipts map[string]any
	if req.since == nil || (req.to.Receipt > since.Receipt && !req.quiet(receiptPos)) {
		rs, err := s.store.ReceiptsFor(ctx, user, receiptReadPrivate, since.Receipt, req.to.Receipt)
		if err != nil {
			return nil, err
		}
		receipts = receiptEvents(rs)
	}
	var newRooms []string // rooms the user joined since the last sync
	var forgotten map[string]bool
	roomIDs := make([]string, 0, len(memberships))
	for id := range memberships {
		roomIDs = append(roomIDs, id)
	}
	sort.Strings(roomIDs)
	for _, roomID := range roomIDs {
		m := memberships[roomID]
		if !req.filter.Room.AllowsRoom(roomID, nil) {
			continue
		}
		_, changed := lastChange[roomID]
		switch m {
		case "join":
			from := since.PDU
			full := req.since == nil || req.fullState
			newlyJoined := false
			if changed && req.since != nil {
				before, err := s.membershipBefore(ctx, roomID, user, firstChange[roomID].Pos)
				if err != nil {
					return nil, err
				}
				if before != "join" {
					full, newlyJoined = true, true // the whole state
				}
			}
			eph := s.ephemeral(req, roomID, receipts[roomID], full, since.Typing)
			if !full && !active[roomID] && len(eph) == 0 {
				continue
			}
			jr, err := s.joinedRoom(ctx, req, roomID, from, full, newlyJoined)
			if err != nil {
				return nil, err
			}
			jr.Ephemeral.Events = append(jr.Ephemeral.Events, eph...)
			if newlyJoined {
				newRooms = append(newRooms, roomID)
			}
			if !full && jr.empty() {
				continue // everything new was filtered out
			}
			resp.Rooms.Join[roomID] = jr
		case "invite", "knock":
			// Both show the stripped state the member event carries; a
			// room knocked on shows it as knock_state (spec: rooms.knock
			// of /sync).
			if req.since != nil && !changed {
				continue
			}
			ir, err := s.invitedRoom(ctx, roomID, user)
			if err != nil {
				return nil, err
			}
			switch {
			case ir == nil:
			case m == "invite":
				resp.Rooms.Invite[roomID] = ir
			default:
				resp.Rooms.Knock[roomID] = map[string]any{"knock_state": map[string]any{"events": ir.InviteState.Events}}
			}
		case "leave", "ban":
			if req.since == nil && !req.filter.Room.IncludeLeave {
				continue
			}
			if req.since != nil && !changed && !req.fullState {
				continue
			}
			if forgotten == nil {
				if forgotten, err = s.store.Forgotten(ctx, user); err != nil {
					return nil, err
				}
			}
			if forgotten[roomID] {
				continue
			}
			full := req.since == nil || req.fullState
			if req.since != nil && changed {
				before, err := s.membershipBefore(ctx, roomID, user, firstChange[roomID].Pos)
				if err != nil {
					return nil, err
				}
				if before == "leave" || before == "ban" {
					continue // e.g. an invite rejected and re-sent: nothing to show
				}
				if before != "join" && joinedInBatch[roomID] {
					full = true // joined and left within the batch
				}
				// An invite (or knock) the user saw before and now
				// rejected shows what came since, as any left room: the
				// rejection, and no state of a room never joined (which
				// for a room on another server this server has not got).
			}
			lr, err := s.leftRoom(ctx, req, roomID, since.PDU, full)
			if err != nil {
				return nil, err
			}
			if lr != nil {
				resp.Rooms.Leave[roomID] = lr
			}
		}
	}
	if err := s.addAccountData(ctx, req, since.AccountData, resp); err != nil {
		return nil, err
	}
	if err := s.addPresence(ctx, req, since, newRooms, resp); err != nil {
		return nil, err
	}
	if err := s.addDeviceLists(ctx, req, since, resp); err != nil {
		return nil, err
	}
	if err := s.addToDevice(ctx, req, since, resp); err != nil {
		return nil, err
	}
	// One-time and fallback keys are counted when they may have been
	// claimed: a claim comes before the to-device message that uses the
	// key. Not counting them in every sync spares a woken long-poll a
	// query; an absent count is an unchanged one to clients.
	if req.since == nil || len(resp.ToDevice.Events) > 0 {
		counts, err := s.users.KeyCounts(ctx, user, req.dev.DeviceID)
		if err != nil {
			return nil, err
		}
		resp.OTKCounts, resp.UnusedFallback = counts.OneTime, &counts.UnusedFallback
		if _, ok := resp.OTKCounts["signed_curve25519"]; !ok {
			resp.OTKCounts["signed_curve25519"] = 0
		}
	}
	return resp, nil
}

// ephemeral returns a joined room's ephemeral events: who is typing, if
// that changed after typingSince (or, in a full sync, if anyone ever typed
// there: an empty list tells a client that synced before that whoever it
// saw typing stopped, as Synapse's initial sync does), and the room's new
// receipts.
func (s *SyncAPI) ephemeral(req *syncRequest, roomID string, receipts any, full bool, typingSince int64) []any {
	f := &req.filter.Room.Ephemeral
	if !req.filter.Room.AllowsRoom(roomID, f) || (f.Limit != nil && *f.Limit == 0) {
		return nil
	}
	var out []any
	if f.AllowsType("m.typing") {
		users, pos := s.typing.room(roomID)
		if (req.since != nil && pos > typingSince) || (full && pos > 0) {
			out = append(out, map[string]any{"type": "m.typing", "content": map[string]any{"user_ids": users}})
		}
	}
	if receipts != nil && f.AllowsType("m.receipt") {
		out = append(out, receipts)
	}
	if f.Limit != nil && len(out) > *f.Limit {
		out = out[:*f.Limit]
	}
	return out
}

// presenceChanges returns the presence changes in (from, req.to] of the
// user and of users sharing a room with it: from the notifier's memory
// when it still holds them (the presence itself mostly from the cache),
// else from the database.
func (s *SyncAPI) presenceChanges(ctx context.Context, req *syncRequest, from int64) ([]*storage.Presence, error) {
	user := req.dev.UserID
	if req.since == nil {
		return s.store.PresenceFor(ctx, user, from, req.to.Presence)
	}
	users, ok := s.notifier.PresenceChanges(user, from, req.to.Presence)
	if !ok {
		return s.store.PresenceFor(ctx, user, from, req.to.Presence)
	}
	out := make([]*storage.Presence, 0, len(users))
	for _, u := range users {
		p, err := s.presenceOf(ctx, u)
		if err != nil {
			return nil, err
		}
		out = append(out, &p)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Pos < out[j].Pos })
	return out, nil
}

// addPresence adds the presence section: the presence changes since the
// last sync of the user and of users sharing a room with it (an initial
// sync leaves out who is offline), and, as Synapse does, the presence of
// users new to the user's rooms and of the members of rooms new to the
// user, changed or not.
func (s *SyncAPI) addPresence(ctx context.Context, req *syncRequest, since Token, newRooms []string, resp *syncResponse) error {
	f := &req.filter.Presence
	if !f.AllowsType("m.presence") || (f.Limit != nil && *f.Limit == 0) {
		return nil
	}
	user := req.dev.UserID
	byUser := map[string]*storage.Presence{}
	var order []string
	add := func(p *storage.Presence) {
		if _, ok := byUser[p.UserID]; !ok {
			order = append(order, p.UserID)
		}
		byUser[p.UserID] = p
	}
	if req.since == nil || (req.to.Presence > since.Presence && !req.quiet(presencePos)) {
		changed, err := s.presenceChanges(ctx, req, since.Presence)
		if err != nil {
			return err
		}
		for _, p := range changed {
			if req.since == nil && p.Presence == sapi.Offline {
				continue
			}
			add(p)
		}
	}
	if req.since != nil {
		extra := map[string]bool{}
		if req.to.PDU > since.PDU && !req.quiet(pduPos) {
			mc, err := s.membersChanged(ctx, req, since)
			if err != nil {
				return err
			}
			for _, u := range mc.joined {
				extra[u] = true
			}
		}
		for _, roomID := range newRooms {
			members, err := s.store.CurrentState(ctx, roomID, "m.room.member")
			if err != nil {
				return err
			}
			for _, m := range members {
				if m.Membership == "join" {
					extra[m.StateKey] = true
				}
			}
		}
		delete(extra, user)
		var missing []string
		for u := range extra {
			if _, ok := byUser[u]; !ok {
				missing = append(missing, u)
			}
		}
		sort.Strings(missing)
		known, err := s.store.PresenceOf(ctx, missing)
		if err != nil {
			return err
		}
		found := make(map[string]*storage.Presence, len(known))
		for _, p := range known {
			found[p.UserID] = p
		}
		for _, u := range missing {
			p := found[u]
			if p == nil {
				p = &storage.Presence{UserID: u, Presence: sapi.Offline}
			}
			add(p)
		}
	}
	for _, u := range order {
		if f.Allows("m.presence", u) {
			resp.Presence.Events = append(resp.Presence.Events, s.presenceEvent(byUser[u]))
		}
	}
	if f.Limit != nil && len(resp.Presence.Events) > *f.Limit {
		resp.Presence.Events = resp.Presence.Events[len(resp.Presence.Events)-*f.Limit:]
	}
	return nil
}

// membershipBefore returns the user's membership of a room just before pos.
func (s *SyncAPI) membershipBefore(ctx context.Context, roomID, userID string, pos int64) (string, error) {
	log, err := s.store.MembershipLog(ctx, roomID, userID)
	if err != nil {
		return "", err
	}
	m := "leave"
	for _, c := range log {
		if c.Pos >= pos {
			break
		}
		m = c.Membership
	}
	return m, nil
}

func (s *SyncAPI) addAccountData(ctx context.Context, req *syncRequest, from int64, resp *syncResponse) error {
	if req.since != nil && (req.to.AccountData <= from || req.quiet(accountDataPos)) {
		return nil
	}
	items, err := s.users.AccountDataSince(ctx, req.dev.UserID, from, req.to.AccountData)
	if err != nil {
		return err
	}
	for _, it := range items {
		ev := map[string]any{"type": it.Type, "content": it.Content}
		if it.RoomID == "" {
			if req.filter.AccountData.Allows(it.Type, "") {
				resp.AccountData.Events = append(resp.AccountData.Events, ev)
			}
			continue
		}
		if !req.filter.Room.AccountData.Allows(it.Type, "") {
			continue
		}
		jr := resp.Rooms.Join[it.RoomID]
		if jr == nil {
			// Account data of a joined room with no new events.
			if m, err := s.store.StateEvent(ctx, it.RoomID, "m.room.member", req.dev.UserID); err != nil || m.Membership != "join" {
				continue
			}
			jr = newJoinedRoom()
			jr.Timeline.PrevBatch = req.to.String()
			resp.Rooms.Join[it.RoomID] = jr
		}
		jr.AccountData.Events = append(jr.AccountData.Events, ev)
	}
	return nil
}

func (jr *joinedRoom) empty() bool {
	return len(jr.Timeline.Events) == 0 && len(jr.State.Events) == 0 && len(jr.Ephemeral.Events) == 0 && len(jr.AccountData.Events) == 0
}

func newJoinedRoom() *joinedRoom {
	return &joinedRoom{
		State:       stateList{Events: []ClientEvent{}},
		Timeline:    timeline{Events: []ClientEvent{}},
		Ephemeral:   eventList{Events: []any{}},
		AccountData: eventList{Events: []any{}},
	}
}

// joinedRoom builds one room of rooms.join: the timeline of events after
// from, and either the whole state at its start (full) or the state that
// changed between from and its start. newlyJoined marks a room the user
// joined since the last sync.
func (s *SyncAPI) joinedRoom(ctx context.Context, req *syncRequest, roomID string, from int64, full, newlyJoined bool) (*joinedRoom, error) {
	jr := newJoinedRoom()
	tlFrom := from
	if full {
		// An initial sync, a newly joined room or full_state: the timeline
		// is the room's latest events, limited if there are older ones.
		tlFrom = 0
	}
	events, limited, err := s.timelineEvents(ctx, req, roomID, tlFrom, req.to.PDU, req.filter.timelineLimit())
	if err != nil {
		return nil, err
	}
	// A newly joined room's timeline is always limited: the client has
	// none of the room's history (Synapse does the same).
	jr.Timeline.Limited = limited || newlyJoined
	jr.Timeline.PrevBatch = prevBatch(events, req.to)
	inTimeline := make(map[string]bool, len(events))
	for _, e := range events {
		inTimeline[e.EventID] = true
		jr.Timeline.Events = append(jr.Timeline.Events, req.fmt.event(e))
	}
	stateFilter := &req.filter.Room.State
	lazy := stateFilter.LazyLoadMembers
	var sent *memberSet
	if lazy {
		sent = s.lazy.get(req.dev.SessionID, roomID, full)
	}
	// The member events a lazy-loading client needs: the timeline's senders
	// (and, in a full sync, its own).
	wantMember := map[string]bool{}
	if lazy {
		if full {
			wantMember[req.dev.UserID] = true
		}
		for _, e := range events {
			wantMember[e.Sender] = true
		}
	}
	have := map[string]bool{} // members whose event is in the response
	for _, e := range events {
		if e.Type == "m.room.member" && e.StateKey != nil {
			have[*e.StateKey] = true
		}
	}
	membersChanged := full
	switch {
	case full:
		var state []*storage.StateEvent
		if lazy {
			// Only the members the client needs, not every member of a
			// room that may have thousands.
			if state, err = s.store.CurrentStateWithoutMembers(ctx, roomID); err != nil {
				return nil, err
			}
			users := make([]string, 0, len(wantMember))
			for u := range wantMember {
				users = append(users, u)
			}
			members, err := s.store.MemberEvents(ctx, roomID, users)
			if err != nil {
				return nil, err
			}
			state = append(state, members...)
		} else if state, err = s.store.CurrentState(ctx, roomID); err != nil {
			return nil, err
		}
		for _, st := range state {
			if inTimeline[st.EventID] {
				continue
			}
			if st.Type == "m.room.member" && lazy && !wantMember[st.StateKey] {
				continue
			}
			ce := req.fmt.state(st)
			if stateFilter.AllowsEvent(st.Type, st.Sender, ce.Content) {
				jr.State.Events = append(jr.State.Events, ce)
				if st.Type == "m.room.member" {
					have[st.StateKey] = true
				}
			}
		}
	case jr.Timeline.Limited && len(events) > 0:
		// A gap: every state change in it, member events included even
		// when lazy-loading (the client cannot know them otherwise).
		changes, err := s.store.StateEventsBetween(ctx, roomID, from, events[0].Pos)
		if err != nil {
			return nil, err
		}
		latest := map[[2]string]*storage.Event{}
		for _, c := range changes {
			latest[[2]string{c.Type, *c.StateKey}] = c
		}
		for _, c := range changes {
			if latest[[2]string{c.Type, *c.StateKey}] != c || inTimeline[c.EventID] {
				continue
			}
			ce := req.fmt.event(c)
			if c.Type == "m.room.member" {
				membersChanged = true
			}
			if stateFilter.AllowsEvent(c.Type, c.Sender, ce.Content) {
				jr.State.Events = append(jr.State.Events, ce)
				if c.Type == "m.room.member" {
					have[*c.StateKey] = true
				}
			}
		}
	}
	if lazy {
		// Senders of the timeline whose member event the client lacks,
		// unless this device was sent it already (include_redundant_members
		// asks for them anyway).
		for u := range wantMember {
			if have[u] || (!full && !stateFilter.IncludeRedundantMembers && sent.has(u)) {
				continue
			}
			st, err := s.store.StateEvent(ctx, roomID, "m.room.member", u)
			if err != nil {
				continue
			}
			jr.State.Events = append(jr.State.Events, req.fmt.state(st))
			have[u] = true
		}
		sent.add(have)
	}
	for _, e := range events {
		if e.Type == "m.room.member" {
			membersChanged = true
		}
	}
	if membersChanged {
		if err := s.summarise(ctx, roomID, req.dev.UserID, &jr.Summary); err != nil {
			return nil, err
		}
	}
	// The userapi counts the notifications (its push rules decide what
	// notifies) and clears them on read receipts.
	counts, err := s.users.NotificationCounts(ctx, req.dev.UserID, roomID)
	if err != nil {
		return nil, err
	}
	jr.Unread = unreadCounts{Highlight: int(counts.Highlights), Notification: int(counts.Notifications)}
	return jr, nil
}

// prevBatch is the token to page back from a timeline. A timeline that
// starts with the room's create event has nothing before it; its token
// points just after the create event, so that paging back (which clients
// and sytest expect to return something) returns the create event again,
// as Dendrite does.
func prevBatch(events []*storage.Event, to Token) string {
	if len(events) == 0 {
		return to.String()
	}
	first := events[0]
	if first.Type == "m.room.create" && first.StateKey != nil && *first.StateKey == "" {
		return TopoToken{Depth: first.Depth, Pos: first.Pos + 1}.String()
	}
	return TopoToken{Depth: first.Depth, Pos: first.Pos}.String()
}

// timelineEvents returns up to limit events of roomID in (from, to] that
// pass the timeline filter and that the user may see, oldest first, and
// whether older ones were left out.
func (s *SyncAPI) timelineEvents(ctx context.Context, req *syncRequest, roomID string, from, to int64, limit int) ([]*storage.Event, bool, error) {
	tf := &req.filter.Room.Timeline
	if !req.filter.Room.AllowsRoom(roomID, tf) {
		return nil, false, nil
	}
	vis := &visibility{s: s, roomID: roomID, userID: req.dev.UserID, currentStateVisible: true, joinedAt: req.joinedAt[roomID]}
	var out []*storage.Event
	upper := to
	// Pages are larger than the limit so that a filter that drops most
	// events still fills the timeline in a few queries.
	page := max(limit+1, 100)
	for round := 0; round < 20; round++ {
		batch, more, err := s.store.Timeline(ctx, roomID, from, upper, page)
		if err != nil {
			return nil, false, err
		}
		var kept []*storage.Event
		for _, e := range batch {
			ok, err := vis.canSee(ctx, e)
			if err != nil {
				return nil, false, err
			}
			if ok && tf.AllowsEvent(e.Type, e.Sender, contentRaw(e.JSON)) {
				kept = append(kept, e)
			}
		}
		out = append(kept, out...)
		if len(out) >= limit {
			return out[len(out)-limit:], more || len(out) > limit, nil
		}
		if !more || len(batch) == 0 {
			return out, false, nil
		}
		upper = batch[0].Pos - 1
	}
	return out, true, nil
}

// invitedRoom builds one room of rooms.invite from the invite event.
func (s *SyncAPI) invitedRoom(ctx context.Context, roomID, userID string) (*invitedRoom, error) {
	st, err := s.store.StateEvent(ctx, roomID, "m.room.member", userID)
	if err != nil {
		if errors.Is(err, storage.ErrNotFound) {
			return nil, nil
		}
		return nil, err
	}
	ev, err := s.store.Event(ctx, st.EventID)
	if err != nil {
		if errors.Is(err, storage.ErrNotFound) {
			return nil, nil
		}
		return nil, err
	}
	ir := &invitedRoom{}
	ir.InviteState.Events = inviteState(ev)
	return ir, nil
}

// leftRoom builds one room of rooms.leave: the events up to the user's
// leave that it has not seen, and the state at the leave: all of it
// (full), or what changed in a gap before the timeline.
func (s *SyncAPI) leftRoom(ctx context.Context, req *syncRequest, roomID string, from int64, full bool) (*leftRoom, error) {
	st, err := s.store.StateEvent(ctx, roomID, "m.room.member", req.dev.UserID)
	if err != nil {
		if errors.Is(err, storage.ErrNotFound) {
			return nil, nil
		}
		return nil, err
	}
	lr := &leftRoom{
		State:       stateList{Events: []ClientEvent{}},
		Timeline:    timeline{Events: []ClientEvent{}},
		AccountData: eventList{Events: []any{}},
	}
	if full {
		from = 0
	}
	events, limited, err := s.timelineEvents(ctx, req, roomID, from, st.Pos, req.filter.timelineLimit())
	if err != nil {
		return nil, err
	}
	lr.Timeline.Limited = limited
	lr.Timeline.PrevBatch = prevBatch(events, Token{PDU: st.Pos})
	inTimeline := map[string]bool{}
	for _, e := range events {
		inTimeline[e.EventID] = true
		lr.Timeline.Events = append(lr.Timeline.Events, req.fmt.event(e))
	}
	stateFilter := &req.filter.Room.State
	switch {
	case full:
		// The state when the user left, from the roomserver: the room's
		// current state may have moved on since.
		before, err := s.rooms.StateBefore(ctx, st.EventID)
		if err != nil {
			return nil, err
		}
		for _, p := range before {
			if inTimeline[p.EventID()] || p.StateKey() == nil {
				continue
			}
			if stateFilter.LazyLoadMembers && p.Type() == "m.room.member" {
				continue
			}
			ce := req.fmt.base(string(p.JSON()), p.EventID(), roomID)
			if stateFilter.AllowsEvent(ce.Type, ce.Sender, ce.Content) {
				lr.State.Events = append(lr.State.Events, ce)
			}
		}
	case limited && len(events) > 0:
		changes, err := s.store.StateEventsBetween(ctx, roomID, from, events[0].Pos)
		if err != nil {
			return nil, err
		}
		latest := map[[2]string]*storage.Event{}
		for _, c := range changes {
			latest[[2]string{c.Type, *c.StateKey}] = c
		}
		for _, c := range changes {
			if latest[[2]string{c.Type, *c.StateKey}] != c || inTimeline[c.EventID] {
				continue
			}
			ce := req.fmt.event(c)
			if stateFilter.AllowsEvent(c.Type, c.Sender, ce.Content) {
				lr.State.Events = append(lr.State.Events, ce)
			}
		}
	}
	return lr, nil
}

// summarise fills a room's summary: member counts and the heroes a client
// names an unnamed room after.
func (s *SyncAPI) summarise(ctx context.Context, roomID, userID string, sum *roomSummary) error {
	joined, invited, heroes, err := s.store.MemberSummary(ctx, roomID, userID)
	if err != nil {
		return err
	}
	sum.Joined, sum.Invited, sum.Heroes = &joined, &invited, heroes
	return nil
}

func contentRaw(js string) json.RawMessage {
	c := json.RawMessage(gjsonGet(js, "content"))
	return c
}
