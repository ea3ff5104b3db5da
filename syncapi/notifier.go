package syncapi

import (
	"context"
	"sync"
	"sync/atomic"
)

// Notifier wakes waiting /sync requests from memory. It knows which local
// users are joined to which rooms, and for each user the latest stream
// positions that concerned them, so a long-poll waits without touching the
// database and an event wakes exactly the users it concerns.
type Notifier struct {
	waiters atomic.Int64 // requests blocked in Wait

	mu        sync.Mutex
	current   Token
	start     Token // positions when the notifier began tracking
	roomUsers map[string]map[string]struct{}
	users     map[string]*userStream
}

type userStream struct {
	pos  Token         // latest positions that concerned the user
	wake chan struct{} // closed (and replaced) when pos moves
}

// NewNotifier starts tracking at current with the given joined users.
func NewNotifier(current Token, joined map[string][]string) *Notifier {
	n := &Notifier{
		current:   current,
		start:     current,
		roomUsers: make(map[string]map[string]struct{}, len(joined)),
		users:     map[string]*userStream{},
	}
	for room, users := range joined {
		set := make(map[string]struct{}, len(users))
		for _, u := range users {
			set[u] = struct{}{}
		}
		n.roomUsers[room] = set
	}
	return n
}

// Current returns the latest positions.
func (n *Notifier) Current() Token {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.current
}

func (n *Notifier) stream(userID string) *userStream {
	s, ok := n.users[userID]
	if !ok {
		s = &userStream{wake: make(chan struct{})}
		n.users[userID] = s
	}
	return s
}

// bump raises userID's positions to those of moved and wakes its waiters.
func (n *Notifier) bump(userID string, moved Token) {
	s := n.stream(userID)
	s.pos = s.pos.Max(moved)
	close(s.wake)
	s.wake = make(chan struct{})
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
	moved := Token{PDU: pos}
	n.advance(moved)
	set := n.roomUsers[roomID]
	for u := range set {
		n.bump(u, moved)
	}
	if member == "" || !local {
		return
	}
	n.bump(member, moved)
	if membership == "join" {
		if set == nil {
			set = map[string]struct{}{}
			n.roomUsers[roomID] = set
		}
		set[member] = struct{}{}
	} else if set != nil {
		delete(set, member)
		if len(set) == 0 {
			delete(n.roomUsers, roomID)
		}
	}
}

// OnAccountData records an account-data change of userID at pos.
func (n *Notifier) OnAccountData(userID string, pos int64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	moved := Token{AccountData: pos}
	n.advance(moved)
	n.bump(userID, moved)
}

// OnTyping records a change of who is typing in roomID at typing position
// pos, and wakes the local users joined to it.
func (n *Notifier) OnTyping(roomID string, pos int64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	moved := Token{Typing: pos}
	n.advance(moved)
	for u := range n.roomUsers[roomID] {
		n.bump(u, moved)
	}
}

// OnReceipt records a receipt of userID in roomID at receipt position pos.
// A private receipt wakes only its owner; others wake the local users
// joined to the room.
func (n *Notifier) OnReceipt(roomID, userID string, private bool, pos int64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	moved := Token{Receipt: pos}
	n.advance(moved)
	if private {
		n.bump(userID, moved)
		return
	}
	for u := range n.roomUsers[roomID] {
		n.bump(u, moved)
	}
}

// OnPresence records a presence change of userID at presence position pos
// and wakes userID and the local users joined to rooms, the rooms userID is
// joined to.
func (n *Notifier) OnPresence(userID string, rooms []string, pos int64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	moved := Token{Presence: pos}
	n.advance(moved)
	n.bump(userID, moved)
	for _, r := range rooms {
		for u := range n.roomUsers[r] {
			n.bump(u, moved)
		}
	}
}

// Unchanged reports whether the notifier knows that nothing concerning
// userID happened after since. It cannot know about positions from before
// it started.
func (n *Notifier) Unchanged(userID string, since Token) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.start.Max(since) != since {
		return false // since is before the start in some stream
	}
	s, ok := n.users[userID]
	return !ok || !s.pos.After(since)
}

// Wait blocks until something concerning userID happens after since, or
// ctx ends; it reports whether something happened.
func (n *Notifier) Wait(ctx context.Context, userID string, since Token) bool {
	for {
		n.mu.Lock()
		s := n.stream(userID)
		if s.pos.After(since) {
			n.mu.Unlock()
			return true
		}
		ch := s.wake
		n.mu.Unlock()
		n.waiters.Add(1)
		select {
		case <-ch:
			n.waiters.Add(-1)
		case <-ctx.Done():
			n.waiters.Add(-1)
			return false
		}
	}
}

// Waiters is the number of requests blocked in Wait.
func (n *Notifier) Waiters() int { return int(n.waiters.Load()) }
