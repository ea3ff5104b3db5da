package syncapi

import (
	"context"
	"encoding/json"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"myelin/internal/bus"
	"myelin/internal/mxhttp"
	sapi "myelin/syncapi/api"
	uapi "myelin/userapi/api"
)

// Typing timeouts (spec: PUT /rooms/{roomId}/typing/{userId}). A client
// that gives none is typing for defaultTypingTimeout; none is typing for
// longer than maxTypingTimeout without saying so again.
const (
	defaultTypingTimeout = 30 * time.Second
	maxTypingTimeout     = 5 * time.Minute
)

// typingRooms is who is typing in which room. It lives in memory only: a
// typing notification does not outlive a restart. Each change of a room's
// list takes the next typing stream position, which is never less than
// the clock in milliseconds, so positions keep growing across restarts
// without being stored.
type typingRooms struct {
	now  func() time.Time
	kick chan struct{} // an expiry was set: the expiry loop looks again

	mu    sync.Mutex
	pos   int64
	rooms map[string]*roomTyping
}

type roomTyping struct {
	pos   int64                // position of the last change of users
	users map[string]time.Time // typing user -> when it stops
}

func newTypingRooms(now func() time.Time) *typingRooms {
	return &typingRooms{
		now:   now,
		kick:  make(chan struct{}, 1),
		pos:   now().UnixMilli(),
		rooms: map[string]*roomTyping{},
	}
}

// Pos is the latest typing position.
func (t *typingRooms) Pos() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.pos
}

func (t *typingRooms) next() int64 {
	t.pos = max(t.pos+1, t.now().UnixMilli())
	return t.pos
}

// set records that userID is typing in roomID until expires, or stopped.
// It returns the room's new position, or 0 when who is typing did not
// change (a typing user saying so again only moves its expiry).
func (t *typingRooms) set(roomID, userID string, typing bool, expires time.Time) int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	r := t.rooms[roomID]
	if typing {
		if r == nil {
			// Rooms stay in the map once someone typed in them, empty
			// lists included: a client syncing from before a change must
			// still learn that the list emptied.
			r = &roomTyping{users: map[string]time.Time{}}
			t.rooms[roomID] = r
		}
		_, was := r.users[userID]
		r.users[userID] = expires
		select {
		case t.kick <- struct{}{}:
		default:
		}
		if was {
			return 0
		}
	} else {
		if r == nil {
			return 0
		}
		if _, was := r.users[userID]; !was {
			return 0
		}
		delete(r.users, userID)
	}
	r.pos = t.next()
	return r.pos
}

// expire drops the users whose typing expired. It returns the rooms that
// changed with their new positions, and when the next expiry is due (zero
// if none is).
func (t *typingRooms) expire() (changed map[string]int64, next time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	for roomID, r := range t.rooms {
		dropped := false
		for u, until := range r.users {
			if !until.After(now) {
				delete(r.users, u)
				dropped = true
			} else if next.IsZero() || until.Before(next) {
				next = until
			}
		}
		if dropped {
			if changed == nil {
				changed = map[string]int64{}
			}
			r.pos = t.next()
			changed[roomID] = r.pos
		}
	}
	return changed, next
}

// room returns who is typing in roomID, sorted, and the position of the
// last change (0 if nobody ever typed there).
func (t *typingRooms) room(roomID string) ([]string, int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	r := t.rooms[roomID]
	if r == nil {
		return nil, 0
	}
	users := make([]string, 0, len(r.users))
	for u := range r.users {
		users = append(users, u)
	}
	sort.Strings(users)
	return users, r.pos
}

// expireTyping ends typing notifications whose time is up, until ctx ends.
func (s *SyncAPI) expireTyping(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		changed, next := s.typing.expire()
		for roomID, pos := range changed {
			s.notifier.OnRoom(typingStream, roomID, pos)
		}
		wait := time.Hour
		if !next.IsZero() {
			wait = max(next.Sub(s.now()), 10*time.Millisecond)
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-s.typing.kick:
		}
	}
}

// putTyping starts or stops the user's typing notification in a room
// (PUT /rooms/{roomId}/typing/{userId}).
func (s *SyncAPI) putTyping(r *http.Request, dev *uapi.Device) (any, error) {
	ctx := r.Context()
	roomID, userID := mxhttp.Var(r, "roomId"), mxhttp.Var(r, "userId")
	if userID != dev.UserID {
		return nil, mxhttp.Forbidden("Cannot set the typing state of another user")
	}
	var body struct {
		Typing  *bool  `json:"typing"`
		Timeout *int64 `json:"timeout"`
	}
	if err := mxhttp.ReadJSON(r, &body); err != nil {
		return nil, err
	}
	if body.Typing == nil {
		return nil, mxhttp.BadJSON("typing is required")
	}
	timeout := defaultTypingTimeout
	if body.Timeout != nil {
		if *body.Timeout < 0 {
			return nil, mxhttp.InvalidParam("timeout must not be negative")
		}
		timeout = min(time.Duration(*body.Timeout)*time.Millisecond, maxTypingTimeout)
	}
	if err := s.requireJoined(ctx, roomID, userID); err != nil {
		return nil, err
	}
	u := sapi.TypingUpdate{RoomID: roomID, UserID: userID, Typing: *body.Typing}
	if u.Typing {
		u.ExpiresTS = s.now().Add(timeout).UnixMilli()
	}
	if err := s.publish(ctx, bus.OutputTyping, u); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

// onTyping applies a typing notification and wakes the room's members.
func (s *SyncAPI) onTyping(_ context.Context, m jetstream.Msg) error {
	var u sapi.TypingUpdate
	if err := json.Unmarshal(m.Data(), &u); err != nil {
		s.log.WithError(err).Warn("dropping malformed typing update")
		return nil
	}
	expires := time.UnixMilli(u.ExpiresTS)
	if u.Typing && !expires.After(s.now()) {
		return nil // expired on the way (or redelivered after a restart)
	}
	if pos := s.typing.set(u.RoomID, u.UserID, u.Typing, expires); pos != 0 {
		s.notifier.OnRoom(typingStream, u.RoomID, pos)
	}
	return nil
}

// typingProvider is the typing stream: who is typing in the user's joined
// rooms, for the rooms where that changed since the token (or, in a full
// sync of a room, if anyone ever typed there: an empty list tells a client
// that synced before that whoever it saw typing stopped, as Synapse's
// initial sync does). It is held in memory; its position starts from the
// clock.
type typingProvider struct{ s *SyncAPI }

func (typingProvider) id() streamID { return typingStream }

func (p typingProvider) latest(context.Context) (int64, error) { return p.s.typing.Pos(), nil }

// roomEvents is one ephemeral event by room: a typing or receipts part.
type roomEvents map[string]any

func (p typingProvider) load(ctx context.Context, req *syncRequest, from int64) (part, error) {
	if !req.full() && !req.moved(typingStream) && len(req.b.newRooms) == 0 {
		return nil, nil
	}
	f := &req.filter.Room.Ephemeral
	if (f.Limit != nil && *f.Limit == 0) || !f.AllowsType("m.typing") {
		return nil, nil
	}
	memberships, err := p.s.memberships(ctx, req)
	if err != nil {
		return nil, err
	}
	var out roomEvents
	for roomID, m := range memberships {
		if m != "join" || !req.filter.Room.AllowsRoom(roomID, nil) || !req.filter.Room.AllowsRoom(roomID, f) {
			continue
		}
		users, pos := p.s.typing.room(roomID)
		full := req.full() || req.b.newRooms[roomID]
		if (req.since != nil && pos > from) || (full && pos > 0) {
			if out == nil {
				out = roomEvents{}
			}
			out[roomID] = map[string]any{"type": "m.typing", "content": map[string]any{"user_ids": users}}
		}
	}
	if out == nil {
		return nil, nil
	}
	return out, nil
}

// addTo adds each room's event to its ephemeral events, within the
// filter's limit.
func (r roomEvents) addTo(req *syncRequest, resp *syncResponse) {
	limit := req.filter.Room.Ephemeral.Limit
	for roomID, ev := range r {
		jr := resp.room(req, roomID)
		if limit != nil && len(jr.Ephemeral.Events) >= *limit {
			continue
		}
		jr.Ephemeral.Events = append(jr.Ephemeral.Events, ev)
	}
}
