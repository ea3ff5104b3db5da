package syncapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"myelin/internal/bus"
	"myelin/internal/cache"
	"myelin/internal/mxhttp"
	"myelin/internal/mxid"
	sapi "myelin/syncapi/api"
	"myelin/syncapi/storage"
	uapi "myelin/userapi/api"
)

// presenceCache keeps the stored presence of recently seen users, so that
// a /sync need not read the database to learn that its user is already
// online, and the time each was last active, which moves with every
// /sync without being a presence change (spec: last_active_ago).
//
// Only the presence consumer changes presence; it overwrites cache
// entries after each write. Readers fill misses with putIfAbsent, so a
// value they read before a write cannot replace the written one.
//
// It also knows which local users keep themselves online by syncing: a
// user who is not offline and has had no /sync for sync.presence_timeout
// goes offline (as in Synapse: a client that stopped polling is gone).
type presenceCache struct {
	mu     sync.Mutex
	stored *cache.LRU[string, storage.Presence]
	active *cache.LRU[string, int64] // user -> last activity, Unix ms
	// Local users whose presence a client keeps up: requests in flight,
	// and when the last one ended (Unix ms).
	syncing  map[string]int
	lastSeen map[string]int64
}

func newPresenceCache(size int) *presenceCache {
	return &presenceCache{
		stored:   cache.New[string, storage.Presence](size),
		active:   cache.New[string, int64](size),
		syncing:  map[string]int{},
		lastSeen: map[string]int64{},
	}
}

// startSync records a /sync of userID that keeps it online, until
// endSync.
func (c *presenceCache) startSync(userID string) {
	c.mu.Lock()
	c.syncing[userID]++
	c.mu.Unlock()
}

// endSync records the end of a /sync that startSync recorded.
func (c *presenceCache) endSync(userID string, now func() time.Time) {
	end := now().UnixMilli()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.syncing[userID]--; c.syncing[userID] <= 0 {
		delete(c.syncing, userID)
	}
	c.lastSeen[userID] = max(c.lastSeen[userID], end)
}

// seen records that userID showed itself at ts without a /sync (setting
// its presence), which keeps it online for a while too.
func (c *presenceCache) seen(userID string, ts int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lastSeen[userID] = max(c.lastSeen[userID], ts)
}

// gone returns the users not seen since before cutoff and not syncing,
// and forgets them.
func (c *presenceCache) gone(cutoff int64) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for u, ts := range c.lastSeen {
		if ts < cutoff && c.syncing[u] == 0 {
			out = append(out, u)
			delete(c.lastSeen, u)
		}
	}
	return out
}

func (c *presenceCache) get(userID string) (storage.Presence, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stored.Get(userID)
}

func (c *presenceCache) put(p storage.Presence) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stored.Put(p.UserID, p)
}

func (c *presenceCache) putIfAbsent(p storage.Presence) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.stored.Get(p.UserID); !ok {
		c.stored.Put(p.UserID, p)
	}
}

// touch records activity of userID at ts.
func (c *presenceCache) touch(userID string, ts int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.active.Get(userID); !ok || ts > old {
		c.active.Put(userID, ts)
	}
}

// lastActive is the later of p's stored activity and any seen since.
func (c *presenceCache) lastActive(p *storage.Presence) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ts, ok := c.active.Get(p.UserID); ok && ts > p.LastActiveTS {
		return ts
	}
	return p.LastActiveTS
}

// presenceOf returns a user's presence: offline with Pos 0 if never set.
func (s *SyncAPI) presenceOf(ctx context.Context, userID string) (storage.Presence, error) {
	if p, ok := s.presence.get(userID); ok {
		return p, nil
	}
	p, err := s.store.Presence(ctx, userID)
	if errors.Is(err, storage.ErrNotFound) {
		p, err = &storage.Presence{UserID: userID, Presence: sapi.Offline}, nil
	}
	if err != nil {
		return storage.Presence{}, err
	}
	s.presence.putIfAbsent(*p)
	return *p, nil
}

// presenceContent is the content of an m.presence event and the body of
// GET /presence/{userId}/status.
type presenceContent struct {
	Presence        string  `json:"presence"`
	LastActiveAgo   *int64  `json:"last_active_ago,omitempty"`
	StatusMsg       *string `json:"status_msg,omitempty"`
	CurrentlyActive *bool   `json:"currently_active,omitempty"`
}

func (s *SyncAPI) presenceContent(p *storage.Presence) presenceContent {
	c := presenceContent{Presence: p.Presence, StatusMsg: p.StatusMsg}
	if p.Presence == "" {
		c.Presence = sapi.Offline
	}
	if ts := s.presence.lastActive(p); ts > 0 {
		ago := max(s.now().UnixMilli()-ts, 0)
		c.LastActiveAgo = &ago
	}
	if c.Presence == sapi.Online {
		active := p.CurrentlyActive
		c.CurrentlyActive = &active
	}
	return c
}

// presenceEvent is the m.presence event of p (spec: "m.presence").
func (s *SyncAPI) presenceEvent(p *storage.Presence) map[string]any {
	return map[string]any{"type": "m.presence", "sender": p.UserID, "content": s.presenceContent(p)}
}

// getPresence answers a user's presence to itself and to users who share
// a room with it (GET /presence/{userId}/status).
func (s *SyncAPI) getPresence(r *http.Request, dev *uapi.Device) (any, error) {
	ctx := r.Context()
	userID := mxhttp.Var(r, "userId")
	s.catchUp(ctx)
	if userID != dev.UserID {
		shares, err := s.store.SharesRoom(ctx, dev.UserID, userID)
		if err != nil {
			return nil, err
		}
		if !shares {
			return nil, mxhttp.Forbidden("You are not allowed to see their presence")
		}
	}
	p, err := s.presenceOf(ctx, userID)
	if err != nil {
		return nil, err
	}
	return s.presenceContent(&p), nil
}

// putPresence sets the user's presence and status message
// (PUT /presence/{userId}/status).
func (s *SyncAPI) putPresence(r *http.Request, dev *uapi.Device) (any, error) {
	ctx := r.Context()
	if mxhttp.Var(r, "userId") != dev.UserID {
		return nil, mxhttp.Forbidden("Cannot set the presence of another user")
	}
	var body struct {
		Presence  string  `json:"presence"`
		StatusMsg *string `json:"status_msg"`
	}
	if err := mxhttp.ReadJSON(r, &body); err != nil {
		return nil, err
	}
	if !sapi.ValidPresence(body.Presence) {
		return nil, mxhttp.InvalidParam("presence must be online, unavailable or offline")
	}
	u := sapi.PresenceUpdate{
		UserID:          dev.UserID,
		Presence:        body.Presence,
		StatusMsg:       body.StatusMsg,
		CurrentlyActive: body.Presence == sapi.Online,
	}
	if body.Presence != sapi.Offline {
		// Setting one's presence is an action (spec: "the activity time
		// is updated"); going offline is not.
		u.LastActiveTS = s.now().UnixMilli()
		s.presence.touch(dev.UserID, u.LastActiveTS)
		s.presence.seen(dev.UserID, u.LastActiveTS)
	}
	if err := s.publish(ctx, bus.OutputPresence, u); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

// syncPresence applies a /sync's set_presence (spec: online when absent;
// offline means "do not mark me online", so it changes nothing). It
// publishes only a change of state: being online again moves only the
// activity time, which is no presence event.
func (s *SyncAPI) syncPresence(ctx context.Context, userID, setPresence string) error {
	if setPresence == sapi.Offline {
		return nil
	}
	now := s.now().UnixMilli()
	s.presence.touch(userID, now)
	cur, err := s.presenceOf(ctx, userID)
	if err != nil {
		return err
	}
	if cur.Presence == setPresence {
		return nil
	}
	return s.publish(ctx, bus.OutputPresence, sapi.PresenceUpdate{
		UserID:          userID,
		Presence:        setPresence,
		KeepStatus:      true,
		LastActiveTS:    now,
		CurrentlyActive: setPresence == sapi.Online,
	})
}

// onPresence stores a presence change and wakes the user and everyone
// who shares a room with it. An update that changes nothing (a repeat, or
// a redelivery) only moves the activity time.
func (s *SyncAPI) onPresence(ctx context.Context, m jetstream.Msg) error {
	var u sapi.PresenceUpdate
	if err := json.Unmarshal(m.Data(), &u); err != nil || !sapi.ValidPresence(u.Presence) {
		s.log.WithError(err).Warn("dropping malformed presence update")
		return nil
	}
	if len(u.Destinations) > 0 {
		return nil // a resend for other servers: nothing changed
	}
	cur, err := s.store.Presence(ctx, u.UserID)
	if errors.Is(err, storage.ErrNotFound) {
		cur, err = &storage.Presence{UserID: u.UserID, Presence: sapi.Offline}, nil
	}
	if err != nil {
		return err
	}
	next := storage.Presence{
		UserID:          u.UserID,
		Presence:        u.Presence,
		StatusMsg:       u.StatusMsg,
		LastActiveTS:    max(u.LastActiveTS, cur.LastActiveTS),
		CurrentlyActive: u.CurrentlyActive,
	}
	if u.KeepStatus {
		next.StatusMsg = cur.StatusMsg
	}
	if next.Presence == cur.Presence && next.CurrentlyActive == cur.CurrentlyActive && sameString(next.StatusMsg, cur.StatusMsg) {
		s.presence.put(*cur)
		s.presence.touch(u.UserID, u.LastActiveTS)
		return nil
	}
	if err := s.store.PutPresence(ctx, &next); err != nil {
		return err
	}
	s.presence.put(next)
	rooms, err := s.joinedRooms(ctx, u.UserID)
	if err != nil {
		return err
	}
	s.notifier.OnPresence(u.UserID, rooms, next.Pos)
	return nil
}

// joinedRooms lists the rooms userID is joined to: those whose members
// hear of its presence and device list changes.
func (s *SyncAPI) joinedRooms(ctx context.Context, userID string) ([]string, error) {
	memberships, err := s.store.UserMemberships(ctx, userID)
	if err != nil {
		return nil, err
	}
	rooms := make([]string, 0, len(memberships))
	for roomID, m := range memberships {
		if m == "join" {
			rooms = append(rooms, roomID)
		}
	}
	return rooms, nil
}

func sameString(a, b *string) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

// expirePresence sets offline the local users who stopped syncing, until
// ctx ends. After a restart, every local user who is not offline gets the
// timeout to come back.
func (s *SyncAPI) expirePresence(ctx context.Context) {
	users, err := s.store.PresentUsers(ctx, ":"+s.cfg.ServerName)
	if err != nil && ctx.Err() == nil {
		s.log.WithError(err).Warn("cannot load who is online; they stay so until they next change")
	}
	now := s.now().UnixMilli()
	for _, u := range users {
		s.presence.seen(u, now)
	}
	timeout := s.cfg.Sync.PresenceTimeout
	tick := time.NewTicker(max(timeout/6, 100*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		for _, u := range s.presence.gone(s.now().Add(-timeout).UnixMilli()) {
			p, err := s.presenceOf(ctx, u)
			if err == nil && p.Presence != sapi.Offline {
				err = s.publish(ctx, bus.OutputPresence, sapi.PresenceUpdate{UserID: u, Presence: sapi.Offline, KeepStatus: true})
			}
			if err != nil && ctx.Err() == nil {
				s.log.WithError(err).WithField("user_id", u).Warn("cannot set a user who stopped syncing offline")
			}
		}
	}
}

// sharePresenceOnJoin sends the presence of the local users of a room to
// the server of a remote user who newly joined it, and the presence of a
// local user who newly joined to the room's other servers, so that users
// newly sharing a room see each other's presence at once rather than at
// their next change (sytest: "New federated private chats get full
// presence information (SYN-115)"). Users offline or never seen are left
// out: offline is what a server assumes of those it has not heard of.
func (s *SyncAPI) sharePresenceOnJoin(ctx context.Context, roomID, userID string) error {
	members, err := s.store.JoinedMembers(ctx, roomID)
	if err != nil {
		return err
	}
	var local []string
	servers := map[string]bool{}
	for _, m := range members {
		if s.isLocal(m) {
			local = append(local, m)
		} else if srv, ok := mxid.Server(m); ok {
			servers[srv] = true
		}
	}
	var whose []string
	var dests []string
	if s.isLocal(userID) {
		whose = []string{userID}
		for srv := range servers {
			dests = append(dests, srv)
		}
		sort.Strings(dests)
	} else {
		srv, ok := mxid.Server(userID)
		if !ok {
			return nil
		}
		whose, dests = local, []string{srv}
	}
	if len(whose) == 0 || len(dests) == 0 {
		return nil
	}
	known, err := s.store.PresenceOf(ctx, whose)
	if err != nil {
		return err
	}
	for _, p := range known {
		if p.Presence == sapi.Offline {
			continue
		}
		if err := s.publish(ctx, bus.OutputPresence, sapi.PresenceUpdate{
			UserID: p.UserID, Presence: p.Presence, StatusMsg: p.StatusMsg,
			LastActiveTS: s.presence.lastActive(p), CurrentlyActive: p.CurrentlyActive,
			Destinations: dests,
		}); err != nil {
			return err
		}
	}
	return nil
}

// presenceChanges returns the presence changes in (from, req.to] of the
// user and of users sharing a room with it: from the notifier's memory
// when it still holds them (the presence itself mostly from the cache),
// else from the database.
func (s *SyncAPI) presenceChanges(ctx context.Context, req *syncRequest, from int64) ([]*storage.Presence, error) {
	user := req.dev.UserID
	if req.since == nil {
		return s.store.PresenceFor(ctx, user, from, req.to[presenceStream])
	}
	users, ok := s.notifier.PresenceChanges(user, from, req.to[presenceStream])
	if !ok {
		return s.store.PresenceFor(ctx, user, from, req.to[presenceStream])
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

// presenceProvider is the presence stream: the presence changes since the
// last sync of the user and of users sharing a room with it (an initial
// sync leaves out who is offline), and, as Synapse does, the presence of
// users new to the user's rooms and of the members of rooms new to the
// user, changed or not.
type presenceProvider struct{ s *SyncAPI }

func (presenceProvider) id() streamID { return presenceStream }

func (p presenceProvider) latest(ctx context.Context) (int64, error) {
	return p.s.store.MaxPresencePos(ctx)
}

// presencePart is the presence events of one answer, oldest change first.
type presencePart []any

func (pp presencePart) addTo(_ *syncRequest, resp *syncResponse) {
	resp.Presence.Events = append(resp.Presence.Events, pp...)
}

func (p presenceProvider) load(ctx context.Context, req *syncRequest, from int64) (part, error) {
	s := p.s
	f := &req.filter.Presence
	if !f.AllowsType("m.presence") || (f.Limit != nil && *f.Limit == 0) {
		return nil, nil
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
	if req.moved(presenceStream) {
		changed, err := s.presenceChanges(ctx, req, from)
		if err != nil {
			return nil, err
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
		if req.to[pduStream] > req.since[pduStream] && !req.quiet(pduStream) {
			mc, err := s.membersChanged(ctx, req)
			if err != nil {
				return nil, err
			}
			for _, u := range mc.joined {
				extra[u] = true
			}
		}
		for roomID := range req.b.newRooms {
			members, err := s.store.CurrentState(ctx, roomID, "m.room.member")
			if err != nil {
				return nil, err
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
			return nil, err
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
	var out presencePart
	for _, u := range order {
		if f.Allows("m.presence", u) {
			out = append(out, s.presenceEvent(byUser[u]))
		}
	}
	if f.Limit != nil && len(out) > *f.Limit {
		out = out[len(out)-*f.Limit:]
	}
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}
