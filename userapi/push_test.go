package userapi

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"testing"

	"myelin/internal/sqldb/sqldbtest"
	uapi "myelin/userapi/api"
	"myelin/userapi/storage"
)

// TestNotificationStore checks the notification rows the counts and
// GET /notifications read: idempotent inserts, read markers per thread,
// counts, paging and pruning.
func TestNotificationStore(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		ctx := context.Background()
		u := newTestAPI(t, dbURL, nil)
		s := u.store
		const alice, room = "@alice:test.local", "!r:test.local"
		rows := []storage.NewNotification{
			{EventID: "$1", Depth: 1, TS: 1000},
			{EventID: "$2", Depth: 2, TS: 2000, Highlight: true},
			{EventID: "$3", Depth: 3, TS: 3000, ThreadID: "$1"},
			{EventID: "$4", Depth: 4, TS: 4000},
		}
		for _, n := range rows {
			n.UserID, n.RoomID, n.Actions = alice, room, json.RawMessage(`["notify"]`)
			for try := 0; try < 2; try++ { // a redelivered event is not counted twice
				inserted, err := s.InsertNotification(ctx, n)
				if err != nil || inserted != (try == 0) {
					t.Fatalf("insert %s (try %d): %v, %v", n.EventID, try, inserted, err)
				}
			}
		}
		counts := func(want uapi.NotificationCounts) {
			t.Helper()
			got, err := u.NotificationCounts(ctx, alice, room)
			if err != nil || got != want {
				t.Fatalf("counts %+v, %v; want %+v", got, err, want)
			}
		}
		counts(uapi.NotificationCounts{Notifications: 4, Highlights: 1})
		if n, err := s.UnreadRooms(ctx, alice); err != nil || n != 1 {
			t.Fatalf("unread rooms %d, %v", n, err)
		}

		page, err := s.Notifications(ctx, alice, 0, 2, false)
		if err != nil || len(page) != 2 || page[0].EventID != "$4" || page[1].EventID != "$3" {
			t.Fatalf("first page %+v, %v", page, err)
		}
		rest, err := s.Notifications(ctx, alice, page[1].ID, 10, false)
		if err != nil || len(rest) != 2 || rest[0].EventID != "$2" {
			t.Fatalf("second page %+v, %v", rest, err)
		}
		if hl, _ := s.Notifications(ctx, alice, 0, 10, true); len(hl) != 1 || hl[0].EventID != "$2" {
			t.Fatalf("highlights %+v", hl)
		}

		steps := []struct {
			thread string
			depth  int64
			want   uapi.NotificationCounts
		}{
			{storage.MainThread, 3, uapi.NotificationCounts{Notifications: 2}},  // $1, $2 read; $3 in a thread
			{"$1", 2, uapi.NotificationCounts{Notifications: 2}},                // nothing of the thread that deep
			{"$1", 3, uapi.NotificationCounts{Notifications: 1}},                // $3
			{storage.AllThreads, 10, uapi.NotificationCounts{Notifications: 0}}, // $4
		}
		for _, st := range steps {
			if _, err := s.MarkRead(ctx, alice, room, st.thread, st.depth); err != nil {
				t.Fatal(err)
			}
			counts(st.want)
		}

		// Read ones go after readBefore, unread ones after unreadBefore.
		late := storage.NewNotification{UserID: alice, RoomID: room, EventID: "$5", Depth: 5, TS: 1500, Actions: json.RawMessage(`[]`)}
		if _, err := s.InsertNotification(ctx, late); err != nil {
			t.Fatal(err)
		}
		if err := s.PruneNotifications(ctx, 3500, 1000); err != nil {
			t.Fatal(err)
		}
		left, _ := s.Notifications(ctx, alice, 0, 10, false)
		if len(left) != 2 || left[0].EventID != "$5" || left[1].EventID != "$4" {
			t.Fatalf("after pruning: %+v", left)
		}
		counts(uapi.NotificationCounts{Notifications: 1})
		// Pruning an unread notification takes it off the counts too.
		if err := s.PruneNotifications(ctx, 3500, 2000); err != nil {
			t.Fatal(err)
		}
		counts(uapi.NotificationCounts{})
		if n, err := s.UnreadRooms(ctx, alice); err != nil || n != 0 {
			t.Fatalf("unread rooms after pruning %d, %v", n, err)
		}
	})
}

// TestInsertNotificationsBatch: one call stores the notifications of
// several events for many members, in chunks of any size, reports which
// were new (not those of an event stored before, nor a repeat within the
// call) and
// raises each member's counters by exactly those.
func TestInsertNotificationsBatch(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		ctx := context.Background()
		s := newTestAPI(t, dbURL, nil).store
		const room = "!r:test.local"
		user := func(i int) string { return fmt.Sprintf("@u%d:test.local", i) }
		batch := func(events, members int, highlight bool) []storage.NewNotification {
			var ns []storage.NewNotification
			for e := range events {
				for m := range members {
					ns = append(ns, storage.NewNotification{
						UserID: user(m), RoomID: room, EventID: fmt.Sprintf("$e%d", e),
						Depth: int64(e), TS: 1, Actions: json.RawMessage(`["notify"]`), Highlight: highlight && m == 0,
					})
				}
			}
			return ns
		}
		for _, tc := range []struct {
			name string
			ns   []storage.NewNotification
			// want: how many are new; then user 0's and user 1's counts.
			want   int
			u0, u1 uapi.NotificationCounts
		}{
			{"one", batch(1, 1, false), 1, uapi.NotificationCounts{Notifications: 1}, uapi.NotificationCounts{}},
			{"again", batch(1, 1, false), 0, uapi.NotificationCounts{Notifications: 1}, uapi.NotificationCounts{}},
			// The event is stored: its notifications are, whoever they are for.
			{"the stored event for nine", batch(1, 9, false), 0, uapi.NotificationCounts{Notifications: 1}, uapi.NotificationCounts{}},
			{"several chunks", batch(10, 20, true), 9 * 20, uapi.NotificationCounts{Notifications: 10, Highlights: 9}, uapi.NotificationCounts{Notifications: 9}},
			{"odd sizes", batch(13, 23, false), 3 * 23, uapi.NotificationCounts{Notifications: 13, Highlights: 9}, uapi.NotificationCounts{Notifications: 12}},
			{"repeats within", append(batch(14, 2, false), batch(14, 2, false)...), 2, uapi.NotificationCounts{Notifications: 14, Highlights: 9}, uapi.NotificationCounts{Notifications: 13}},
		} {
			inserted, err := s.InsertNotifications(ctx, tc.ns)
			if err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			n := 0
			for _, in := range inserted {
				if in {
					n++
				}
			}
			if n != tc.want {
				t.Errorf("%s: %d new, want %d", tc.name, n, tc.want)
			}
			for i, want := range []uapi.NotificationCounts{tc.u0, tc.u1} {
				if got, err := s.NotificationCounts(ctx, user(i), room); err != nil || got != want {
					t.Errorf("%s: counts of %s %+v, %v; want %+v", tc.name, user(i), got, err, want)
				}
			}
		}
	})
}

// TestPushersCache: pushers read once are served from the cache, and every
// change (set, delete, another user taking the pushkey, a device logged
// out) is seen at once.
func TestPushersCache(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		ctx := context.Background()
		u := newTestAPI(t, dbURL, nil)
		s := u.store
		alice := mustCreate(t, u, "alice", "pw")
		bob := mustCreate(t, u, "bob", "pw")
		aliceDev, _ := mustLogin(t, u, alice.UserID, "A")
		bobDev, _ := mustLogin(t, u, bob.UserID, "B")
		p := uapi.Pusher{PushKey: "k", Kind: "http", AppID: "app", Data: json.RawMessage(`{"url":"http://gw"}`)}
		keys := func(userID string) []string {
			t.Helper()
			ps, err := s.Pushers(ctx, userID)
			if err != nil {
				t.Fatal(err)
			}
			var out []string
			for _, p := range ps {
				out = append(out, p.AppID+"/"+p.PushKey)
			}
			return out
		}
		steps := []struct {
			name       string
			change     func() error
			alice, bob []string
		}{
			{"none", func() error { return nil }, nil, nil},
			{"alice sets", func() error { return s.UpsertPusher(ctx, alice.UserID, aliceDev.SessionID, p, false) }, []string{"app/k"}, nil},
			{"bob takes the pushkey", func() error { return s.UpsertPusher(ctx, bob.UserID, bobDev.SessionID, p, false) }, nil, []string{"app/k"}},
			{"bob deletes", func() error { return s.DeletePusher(ctx, bob.UserID, "app", "k") }, nil, nil},
			{"alice sets again", func() error { return s.UpsertPusher(ctx, alice.UserID, aliceDev.SessionID, p, true) }, []string{"app/k"}, nil},
			{"alice logs out", func() error { return s.DeleteDevices(ctx, alice.UserID, []string{"A"}) }, nil, nil},
		}
		for _, st := range steps {
			// Read before the change too: the cache must not keep it.
			keys(alice.UserID)
			keys(bob.UserID)
			if err := st.change(); err != nil {
				t.Fatalf("%s: %v", st.name, err)
			}
			if got := keys(alice.UserID); !slices.Equal(got, st.alice) {
				t.Errorf("%s: alice's pushers %v, want %v", st.name, got, st.alice)
			}
			if got := keys(bob.UserID); !slices.Equal(got, st.bob) {
				t.Errorf("%s: bob's pushers %v, want %v", st.name, got, st.bob)
			}
		}
	})
}
