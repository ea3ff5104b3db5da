package syncapi

import (
	"cmp"
	"context"
	"slices"
	"sync"
	"sync/atomic"
)

// Notifier wakes waiting /sync requests from memory. It knows which local
// users are joined to which rooms, the latest stream positions that
// concerned each room and each user, and who is waiting, so a long-poll
// waits without touching the database and an event wakes exactly the users
// it concerns. An event in a room costs in proportion to the room's
// waiters, not its members: a join storm into a large room stays cheap.
type Notifier struct {
	waiters atomic.Int64 // requests blocked in Wait

	mu      sync.Mutex
	current Token
	start   Token // positions when the notifier began tracking
	rooms   map[string]*roomStream
	users   map[string]*userStream

	// The latest presence changes, oldest first, so that a sync woken by
	// presence finds what concerns it without a query; every change after
	// presenceFloor is here.
	presenceLog   []presenceChange
	presenceFloor int64
	presenceCap   int
}

// presenceChange is a presence change of a user joined to rooms.
type presenceChange struct {
	pos    int64
	userID string
	rooms  []string
}

// defaultPresenceLog is how many presence changes the notifier keeps.
const defaultPresenceLog = 65536

// roomStream is one room with local members.
type roomStream struct {
	id  string
	pos Token // latest positions of what happened in the room
	// memberPos is the position of the room's latest membership event.
	memberPos int64
	members   map[*userStream]struct{}
	waiting   map[*userStream]struct{} // members with a request in Wait
	// peekers are the devices peeking into the room (MSC2753).
	peekers map[*deviceStream]struct{}
}

// userStream is one local user.
type userStream struct {
	pos   Token // latest positions that concerned the user alone
	rooms map[*roomStream]struct{}
	// wake is closed when something concerns the user; nil while nobody
	// waits, so that moving positions of users not waiting allocates
	// nothing.
	wake chan struct{}
	// devices are the user's devices that waited or were sent to-device
	// messages: those concern one device, so that a room key shared with
	// one device does not answer the long-polls of all the others.
	devices map[string]*deviceStream
}

// deviceStream is one device of a local user.
type deviceStream struct {
	pos Token // latest positions that concerned it alone (to-device)
	// wake is closed by a to-device message for the device, as the user's
	// wake is by anything else; it is kept across the user's wakes.
	wake chan struct{}
	// peeks are the rooms the device peeks into, each true once a sync
	// gave it whole.
	peeks map[*roomStream]bool
}

// changed reports whether something concerned u's device d after since:
// a position, or a peek no sync gave yet.
func (u *userStream) changed(d *deviceStream, since Token) bool {
	if u.position(d).After(since) {
		return true
	}
	for _, served := range d.peeks {
		if !served {
			return true
		}
	}
	return false
}

// device returns u's device deviceID, made on first use.
func (u *userStream) device(deviceID string) *deviceStream {
	d, ok := u.devices[deviceID]
	if !ok {
		if u.devices == nil {
			u.devices = map[string]*deviceStream{}
		}
		d = &deviceStream{}
		u.devices[deviceID] = d
	}
	return d
}

// NewNotifier starts tracking at current with the given joined users.
func NewNotifier(current Token, joined map[string][]string) *Notifier {
	n := &Notifier{
		current: current,
		start:   current,
		rooms:   make(map[string]*roomStream, len(joined)),
		users:   map[string]*userStream{},

		presenceFloor: current[presenceStream],
		presenceCap:   defaultPresenceLog,
	}
	for roomID, users := range joined {
		for _, u := range users {
			n.join(roomID, n.user(u))
		}
	}
	return n
}

// Current returns the latest positions.
func (n *Notifier) Current() Token {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.current
}

func (n *Notifier) user(userID string) *userStream {
	u, ok := n.users[userID]
	if !ok {
		u = &userStream{rooms: map[*roomStream]struct{}{}}
		n.users[userID] = u
	}
	return u
}

func (n *Notifier) room(roomID string) *roomStream {
	r, ok := n.rooms[roomID]
	if !ok {
		r = &roomStream{id: roomID, members: map[*userStream]struct{}{}, waiting: map[*userStream]struct{}{}}
		n.rooms[roomID] = r
	}
	return r
}

func (n *Notifier) join(roomID string, u *userStream) {
	r := n.room(roomID)
	r.members[u] = struct{}{}
	u.rooms[r] = struct{}{}
	if u.wake != nil {
		r.waiting[u] = struct{}{}
	}
}

func (n *Notifier) leave(roomID string, u *userStream) {
	r, ok := n.rooms[roomID]
	if !ok {
		return
	}
	delete(r.members, u)
	delete(r.waiting, u)
	delete(u.rooms, r)
	if len(r.members) == 0 && len(r.peekers) == 0 {
		delete(n.rooms, roomID)
	}
}

// Peek records that userID's device deviceID peeks into roomID, and wakes
// it: its next sync gives the room whole.
func (n *Notifier) Peek(userID, deviceID, roomID string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	r, d := n.room(roomID), n.user(userID).device(deviceID)
	if r.peekers == nil {
		r.peekers = map[*deviceStream]struct{}{}
	}
	r.peekers[d] = struct{}{}
	if d.peeks == nil {
		d.peeks = map[*roomStream]bool{}
	}
	d.peeks[r] = false
	d.wakeUp()
}

// Unpeek ends a device's peek into roomID.
func (n *Notifier) Unpeek(userID, deviceID, roomID string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	u, ok := n.users[userID]
	if !ok {
		return
	}
	d, ok := u.devices[deviceID]
	r, rok := n.rooms[roomID]
	if !ok || !rok {
		return
	}
	delete(d.peeks, r)
	delete(r.peekers, d)
	if len(r.members) == 0 && len(r.peekers) == 0 {
		delete(n.rooms, roomID)
	}
}

// Peeks returns the rooms a device peeks into, each true once a sync gave
// it whole.
func (n *Notifier) Peeks(userID, deviceID string) map[string]bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	u, ok := n.users[userID]
	if !ok {
		return nil
	}
	d, ok := u.devices[deviceID]
	if !ok || len(d.peeks) == 0 {
		return nil
	}
	out := make(map[string]bool, len(d.peeks))
	for r, served := range d.peeks {
		out[r.id] = served
	}
	return out
}

// PeekServed records that a sync gave a device's peeked room whole.
func (n *Notifier) PeekServed(userID, deviceID, roomID string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if u, ok := n.users[userID]; ok {
		if d, ok := u.devices[deviceID]; ok {
			if r, ok := n.rooms[roomID]; ok {
				if _, peeking := d.peeks[r]; peeking {
					d.peeks[r] = true
				}
			}
		}
	}
}

// wakeUp releases the device's waiters.
func (d *deviceStream) wakeUp() {
	if d.wake != nil {
		close(d.wake)
		d.wake = nil
	}
}

// position is everything that concerned u's device d: the user's own
// positions, its rooms', d's own (to-device messages) and those of the
// rooms d peeks into.
func (u *userStream) position(d *deviceStream) Token {
	p := u.pos.Max(d.pos)
	for r := range u.rooms {
		p = p.Max(r.pos)
	}
	for r := range d.peeks {
		p = p.Max(r.pos)
	}
	return p
}

// wakeUp releases u's waiters.
func (u *userStream) wakeUp() {
	if u.wake == nil {
		return
	}
	close(u.wake)
	u.wake = nil
	for r := range u.rooms {
		delete(r.waiting, u)
	}
}

// bumpUser raises userID's own positions to those of moved.
func (n *Notifier) bumpUser(userID string, moved Token) {
	u := n.user(userID)
	u.pos = u.pos.Max(moved)
	u.wakeUp()
}

// bumpRoom raises roomID's positions to those of moved and wakes its
// waiting members.
func (n *Notifier) bumpRoom(roomID string, moved Token) {
	r, ok := n.rooms[roomID]
	if !ok {
		return
	}
	r.pos = r.pos.Max(moved)
	for u := range r.waiting {
		u.wakeUp() // removes u from r.waiting, which range allows
	}
	for d := range r.peekers {
		d.wakeUp()
	}
}

// advance raises the current positions to those of moved.
func (n *Notifier) advance(moved Token) {
	n.current = n.current.Max(moved)
}

// OnRoomEvent records an event at pos in roomID. If it is a membership
// event, member and membership say whose and what; that user is woken as
// well as every local user joined to the room.
func (n *Notifier) OnRoomEvent(roomID string, pos int64, member, membership string, local bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	moved := Token{pduStream: pos}
	n.advance(moved)
	n.bumpRoom(roomID, moved)
	if member == "" {
		return
	}
	if local {
		n.bumpUser(member, moved)
		if membership == "join" {
			n.join(roomID, n.user(member))
		} else {
			n.leave(roomID, n.user(member))
		}
	}
	if r, ok := n.rooms[roomID]; ok {
		r.memberPos = max(r.memberPos, pos)
	}
}

// roomMoves is what of the rooms stream concerned a user after a
// position, as the notifier knows it.
type roomMoves struct {
	rooms   []string // the joined rooms whose timeline moved
	own     bool     // the user's own memberships changed
	members bool     // a membership changed in one of its rooms
}

// RoomMoves tells from memory what of the rooms stream concerned userID
// after position since, so that an incremental sync for one new event
// reads that room and nothing else. It reports false when since is from
// before the notifier started.
func (n *Notifier) RoomMoves(userID string, since int64) (roomMoves, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if since < n.start[pduStream] {
		return roomMoves{}, false
	}
	u, ok := n.users[userID]
	if !ok {
		return roomMoves{}, true
	}
	m := roomMoves{own: u.pos[pduStream] > since}
	for r := range u.rooms {
		if r.pos[pduStream] > since {
			m.rooms = append(m.rooms, r.id)
		}
		m.members = m.members || r.memberPos > since
	}
	return m, true
}

// OnUser records a change at pos in stream id that concerns userID
// alone (account data, a private receipt) and wakes it.
func (n *Notifier) OnUser(id streamID, userID string, pos int64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	var moved Token
	moved[id] = pos
	n.advance(moved)
	n.bumpUser(userID, moved)
}

// OnRoom records a change at pos in stream id that concerns roomID (who
// is typing, a receipt) and wakes the local users joined to it.
func (n *Notifier) OnRoom(id streamID, roomID string, pos int64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	var moved Token
	moved[id] = pos
	n.advance(moved)
	n.bumpRoom(roomID, moved)
}

// OnPresence records a presence change of userID at presence position pos
// and wakes userID and the local users joined to rooms, the rooms userID is
// joined to.
func (n *Notifier) OnPresence(userID string, rooms []string, pos int64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	moved := Token{presenceStream: pos}
	n.advance(moved)
	n.bumpUser(userID, moved)
	for _, r := range rooms {
		n.bumpRoom(r, moved)
	}
	if len(n.presenceLog) >= n.presenceCap {
		drop := len(n.presenceLog) / 2
		n.presenceFloor = n.presenceLog[drop-1].pos
		n.presenceLog = append(n.presenceLog[:0:0], n.presenceLog[drop:]...)
	}
	c := presenceChange{pos: pos, userID: userID, rooms: rooms}
	// Changes come in order from one consumer; keep the log sorted anyway.
	i := len(n.presenceLog)
	for i > 0 && n.presenceLog[i-1].pos > pos {
		i--
	}
	n.presenceLog = slices.Insert(n.presenceLog, i, c)
}

// OnDevice records a change at pos in stream id for userID's device
// deviceID alone (a to-device message), and wakes that device only.
func (n *Notifier) OnDevice(id streamID, userID, deviceID string, pos int64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	var moved Token
	moved[id] = pos
	n.advance(moved)
	d := n.user(userID).device(deviceID)
	d.pos = d.pos.Max(moved)
	d.wakeUp()
}

// OnShared records a change of userID at pos in stream id that concerns
// everyone sharing a room with it (its device list), and wakes userID and
// the local users joined to rooms, the rooms userID is joined to.
func (n *Notifier) OnShared(id streamID, userID string, rooms []string, pos int64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	var moved Token
	moved[id] = pos
	n.advance(moved)
	if u, ok := n.users[userID]; ok {
		u.pos = u.pos.Max(moved)
		u.wakeUp()
	}
	for _, r := range rooms {
		n.bumpRoom(r, moved)
	}
}

// PresenceChanges returns the users whose presence changed in (from, to]
// and who are userID or share a room with it. It reports false when the
// changes of that range are no longer (or not yet) all in memory.
func (n *Notifier) PresenceChanges(userID string, from, to int64) ([]string, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if from < n.presenceFloor {
		return nil, false
	}
	u := n.users[userID]
	i, _ := slices.BinarySearchFunc(n.presenceLog, from+1, func(c presenceChange, pos int64) int { return cmp.Compare(c.pos, pos) })
	var out []string
	seen := map[string]bool{}
	for _, c := range n.presenceLog[i:] {
		if c.pos > to {
			break
		}
		if seen[c.userID] || !(c.userID == userID || u != nil && u.sharesRoom(n, c.rooms)) {
			continue
		}
		seen[c.userID] = true
		out = append(out, c.userID)
	}
	return out, true
}

// sharesRoom reports whether u is joined to one of roomIDs.
func (u *userStream) sharesRoom(n *Notifier, roomIDs []string) bool {
	for _, id := range roomIDs {
		if r, ok := n.rooms[id]; ok {
			if _, in := u.rooms[r]; in {
				return true
			}
		}
	}
	return false
}

// Unchanged reports whether the notifier knows that nothing concerning
// userID's device deviceID happened after since. It cannot know about
// positions from before it started.
func (n *Notifier) Unchanged(userID, deviceID string, since Token) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.start.Max(since) != since {
		return false
	}
	u, ok := n.users[userID]
	if !ok {
		return true
	}
	d, ok := u.devices[deviceID]
	if !ok {
		d = &deviceStream{}
	}
	return !u.changed(d, since)
}

// Concerning returns the latest positions that concerned userID's device
// deviceID. It reports false when since is from before the notifier
// started, whose positions it cannot know.
func (n *Notifier) Concerning(userID, deviceID string, since Token) (Token, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.start.Max(since) != since {
		return Token{}, false
	}
	u, ok := n.users[userID]
	if !ok {
		return Token{}, true
	}
	d, ok := u.devices[deviceID]
	if !ok {
		d = &deviceStream{}
	}
	return u.position(d), true
}

// Wait blocks until something concerning userID's device deviceID happens
// after since, or ctx ends; it reports whether something happened.
func (n *Notifier) Wait(ctx context.Context, userID, deviceID string, since Token) bool {
	for {
		n.mu.Lock()
		u := n.user(userID)
		d := u.device(deviceID)
		if u.changed(d, since) {
			n.mu.Unlock()
			return true
		}
		if u.wake == nil {
			u.wake = make(chan struct{})
			for r := range u.rooms {
				r.waiting[u] = struct{}{}
			}
		}
		if d.wake == nil {
			d.wake = make(chan struct{})
		}
		ch, dch := u.wake, d.wake
		n.mu.Unlock()
		n.waiters.Add(1)
		select {
		case <-ch:
			n.waiters.Add(-1)
		case <-dch:
			n.waiters.Add(-1)
		case <-ctx.Done():
			n.waiters.Add(-1)
			return false
		}
	}
}

// Waiters is the number of requests blocked in Wait.
func (n *Notifier) Waiters() int { return int(n.waiters.Load()) }
