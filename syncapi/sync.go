package syncapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
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
	NextBatch   string          `json:"next_batch"`
	AccountData eventList       `json:"account_data"`
	Presence    eventList       `json:"presence"`
	ToDevice    eventList       `json:"to_device"`
	DeviceLists syncDeviceLists `json:"device_lists"`
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

// syncDeviceLists is device_lists in /sync, where an empty list is left
// out (both are optional in the spec; Dendrite leaves them out too): a
// client (sytest's "If remote user leaves room we no longer receive device
// updates", for one) that waits for a change by syncing until changed is
// there then never takes an answer about something else, such as a leave,
// for one saying no list changed.
type syncDeviceLists struct {
	Changed []string `json:"changed,omitempty"`
	Left    []string `json:"left,omitempty"`
}

type syncRooms struct {
	Join   map[string]*joinedRoom  `json:"join"`
	Invite map[string]*invitedRoom `json:"invite"`
	Leave  map[string]*leftRoom    `json:"leave"`
	Knock  map[string]any          `json:"knock"`
	// Peek is the rooms the device peeks into (MSC2753), left out when
	// there are none.
	Peek map[string]*joinedRoom `json:"peek,omitempty"`
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
	Summary roomSummary `json:"summary"`
	// State is the state at the start of the timeline; with
	// use_state_after StateAfter, the state at its end, replaces it.
	State       *stateList   `json:"state,omitempty"`
	StateAfter  *stateList   `json:"state_after,omitempty"`
	Timeline    timeline     `json:"timeline"`
	Ephemeral   eventList    `json:"ephemeral"`
	AccountData eventList    `json:"account_data"`
	Unread      unreadCounts `json:"unread_notifications"`
	// UnreadThread are the unread counts of each thread, by root, when the
	// timeline filter asks (unread_thread_notifications).
	UnreadThread map[string]unreadCounts `json:"unread_thread_notifications,omitempty"`
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
		DeviceLists: syncDeviceLists{},
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
		len(r.Rooms.Join) == 0 && len(r.Rooms.Invite) == 0 && len(r.Rooms.Leave) == 0 && len(r.Rooms.Knock) == 0 &&
		len(r.Rooms.Peek) == 0
}

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
	req := &syncRequest{dev: dev, filter: filter, fullState: q.Get("full_state") == "true",
		useStateAfter: q.Get("use_state_after") == "true" || q.Get("org.matrix.msc4222.use_state_after") == "true"}
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
