package syncapi

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestNotifier(t *testing.T) {
	const room, other = "!r:x", "!o:x"
	tests := []struct {
		name  string
		event func(n *Notifier)
		woken map[string]bool // user -> must be woken (false: must not)
	}{
		{"message wakes members", func(n *Notifier) { n.OnRoomEvent(room, 10, "", "", false) },
			map[string]bool{"@a:x": true, "@b:x": true, "@c:x": false}},
		{"event elsewhere wakes nobody here", func(n *Notifier) { n.OnRoomEvent(other, 10, "", "", false) },
			map[string]bool{"@a:x": false, "@b:x": true, "@c:x": true}},
		{"invite wakes the invitee", func(n *Notifier) { n.OnRoomEvent(room, 10, "@c:x", "invite", true) },
			map[string]bool{"@a:x": true, "@c:x": true}},
		{"typing", func(n *Notifier) { n.OnRoom(typingStream, room, 3) },
			map[string]bool{"@a:x": true, "@c:x": false}},
		{"private receipt wakes its owner only", func(n *Notifier) { n.OnUser(receiptStream, "@a:x", 4) },
			map[string]bool{"@a:x": true, "@b:x": false}},
		{"public receipt", func(n *Notifier) { n.OnRoom(receiptStream, room, 4) },
			map[string]bool{"@a:x": true, "@b:x": true, "@c:x": false}},
		{"account data", func(n *Notifier) { n.OnUser(accountDataStream, "@b:x", 7) },
			map[string]bool{"@a:x": false, "@b:x": true}},
		{"presence wakes who shares a room", func(n *Notifier) { n.OnPresence("@c:x", []string{other}, 2) },
			map[string]bool{"@a:x": false, "@b:x": true, "@c:x": true}},
		{"to-device wakes its device only", func(n *Notifier) { n.OnDevice(toDeviceStream, "@a:x", "D2", 6) },
			map[string]bool{"@a:x": false, "@a:x/D2": true, "@b:x": false}},
		{"a user's wake reaches all its devices", func(n *Notifier) { n.OnUser(accountDataStream, "@a:x", 7) },
			map[string]bool{"@a:x": true, "@a:x/D2": true, "@b:x": false}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n := NewNotifier(Token{pduStream: 5}, map[string][]string{room: {"@a:x", "@b:x"}, other: {"@b:x", "@c:x"}})
			since := n.Current()
			results := map[string]chan bool{}
			// A key is a user, waiting on device D, or user/device.
			device := func(key string) (string, string) {
				u, d, ok := strings.Cut(key, "/")
				if !ok {
					d = "D"
				}
				return u, d
			}
			for key := range tc.woken {
				ch := make(chan bool, 1)
				results[key] = ch
				go func(u, d string) {
					ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
					defer cancel()
					ch <- n.Wait(ctx, u, d, since)
				}(device(key))
			}
			for n.Waiters() < len(tc.woken) {
				time.Sleep(time.Millisecond)
			}
			tc.event(n)
			for key, want := range tc.woken {
				if got := <-results[key]; got != want {
					t.Errorf("%s woken = %v, want %v", key, got, want)
				}
				u, d := device(key)
				if got := !n.Unchanged(u, d, since); got != want {
					t.Errorf("%s changed = %v, want %v", key, got, want)
				}
			}
		})
	}
}

// TestNotifierMembership: a user who joins hears the room from then on, and
// one who leaves stops hearing it.
func TestNotifierMembership(t *testing.T) {
	const room = "!r:x"
	n := NewNotifier(Token{}, map[string][]string{room: {"@a:x"}})
	n.OnRoomEvent(room, 1, "@b:x", "join", true)
	at := n.Current()
	n.OnRoomEvent(room, 2, "", "", false)
	if n.Unchanged("@b:x", "D", at) {
		t.Fatal("joined user not told of a later message")
	}
	n.OnRoomEvent(room, 3, "@b:x", "leave", true)
	at = n.Current()
	n.OnRoomEvent(room, 4, "", "", false)
	if !n.Unchanged("@b:x", "D", at) {
		t.Fatal("user who left told of a later message")
	}
	if n.Unchanged("@a:x", "D", at) {
		t.Fatal("member not told")
	}
	// Positions from before the notifier started are unknown to it.
	n2 := NewNotifier(Token{pduStream: 10}, nil)
	if n2.Unchanged("@a:x", "D", Token{pduStream: 3}) {
		t.Fatal("a since before the start counted as unchanged")
	}
}

// TestNotifierPresenceChanges: the presence changes a user is told of come
// from memory while the log holds the range, and only those of users it
// shares a room with.
func TestNotifierPresenceChanges(t *testing.T) {
	n := NewNotifier(Token{presenceStream: 10}, map[string][]string{"!r:x": {"@a:x", "@b:x"}, "!o:x": {"@c:x"}})
	n.presenceCap = 4
	n.OnPresence("@b:x", []string{"!r:x"}, 11)
	n.OnPresence("@c:x", []string{"!o:x"}, 12)
	n.OnPresence("@remote:y", []string{"!r:x"}, 13)
	n.OnPresence("@a:x", []string{"!r:x"}, 14)
	tests := []struct {
		from, to int64
		want     []string
		ok       bool
	}{
		{10, 14, []string{"@b:x", "@remote:y", "@a:x"}, true},
		{11, 13, []string{"@remote:y"}, true},
		{14, 14, nil, true},
		{5, 14, nil, false}, // before the notifier started
	}
	for _, tc := range tests {
		got, ok := n.PresenceChanges("@a:x", tc.from, tc.to)
		if ok != tc.ok || !slices.Equal(got, tc.want) {
			t.Errorf("(%d, %d]: %v %v, want %v %v", tc.from, tc.to, got, ok, tc.want, tc.ok)
		}
	}
	// A fifth change overflows the log of four: the oldest half goes.
	n.OnPresence("@b:x", []string{"!r:x"}, 15)
	if _, ok := n.PresenceChanges("@a:x", 10, 15); ok {
		t.Error("a range partly dropped from the log answered from memory")
	}
	if got, ok := n.PresenceChanges("@a:x", 12, 15); !ok || !slices.Equal(got, []string{"@remote:y", "@a:x", "@b:x"}) {
		t.Errorf("after trimming: %v %v", got, ok)
	}
}

// TestRoomMoves: what the notifier tells a sync of the rooms stream since
// a position, which decides whether it reads memberships at all.
func TestRoomMoves(t *testing.T) {
	const room, other = "!r:x", "!o:x"
	tests := []struct {
		name   string
		events func(n *Notifier)
		user   string
		since  int64
		want   roomMoves
		known  bool
	}{
		{"nothing", func(n *Notifier) {}, "@a:x", 5, roomMoves{}, true},
		{"a message in one room", func(n *Notifier) { n.OnRoomEvent(room, 6, "", "", false) },
			"@b:x", 5, roomMoves{rooms: []string{room}}, true},
		{"not after since", func(n *Notifier) { n.OnRoomEvent(room, 6, "", "", false) },
			"@a:x", 6, roomMoves{}, true},
		{"a remote member joins", func(n *Notifier) {
			n.OnRoomEvent(other, 6, "@z:y", "join", false)
			n.OnRoomEvent(other, 6, "", "", false)
		}, "@b:x", 5, roomMoves{rooms: []string{other}, members: true}, true},
		{"a member joins a room of others", func(n *Notifier) {
			n.OnRoomEvent(other, 6, "@z:y", "join", false)
			n.OnRoomEvent(other, 6, "", "", false)
		}, "@a:x", 5, roomMoves{}, true},
		{"the user leaves", func(n *Notifier) {
			n.OnRoomEvent(room, 6, "@a:x", "leave", true)
			n.OnRoomEvent(room, 6, "", "", false)
		}, "@a:x", 5, roomMoves{own: true}, true},
		{"the user is invited", func(n *Notifier) {
			n.OnRoomEvent(other, 6, "@a:x", "invite", true)
			n.OnRoomEvent(other, 6, "", "", false)
		}, "@a:x", 5, roomMoves{own: true}, true},
		{"typing is not the timeline", func(n *Notifier) { n.OnRoom(typingStream, room, 9) },
			"@a:x", 5, roomMoves{}, true},
		{"from before the notifier started", func(n *Notifier) {}, "@a:x", 4, roomMoves{}, false},
		{"a user in no room", func(n *Notifier) {}, "@nobody:x", 5, roomMoves{}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n := NewNotifier(Token{pduStream: 5}, map[string][]string{room: {"@a:x", "@b:x"}, other: {"@b:x", "@c:x"}})
			tc.events(n)
			got, known := n.RoomMoves(tc.user, tc.since)
			slices.Sort(got.rooms)
			if known != tc.known || !slices.Equal(got.rooms, tc.want.rooms) || got.own != tc.want.own || got.members != tc.want.members {
				t.Fatalf("got %+v (known %v), want %+v (known %v)", got, known, tc.want, tc.known)
			}
		})
	}
}
