package userapi

import (
	"context"
	"encoding/json"
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
