package userapi

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"myelin/internal/sqldb/sqldbtest"
	rsapi "myelin/roomserver/api"
	uapi "myelin/userapi/api"
	"myelin/userapi/storage"
)

// TestOnRoomEventsBatch: events handled as a batch notify each member once
// per event however often the event comes (twice in one batch, again in
// the next), and a member who joins in the middle of a batch is notified
// of the events after the join only.
func TestOnRoomEventsBatch(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		ctx := context.Background()
		u := newTestAPI(t, dbURL, nil)
		u.push.rooms = noState{}
		const room, sender = "!batch:test.local", "@sender:remote.test"
		alice, bob, carol := "@alice:test.local", "@bob:test.local", "@carol:test.local"
		var members []storage.Member
		for _, id := range []string{sender, alice, bob} {
			members = append(members, storage.Member{UserID: id, Membership: "join", EventID: "$join-" + id, IsLocal: u.isLocal(id)})
		}
		if err := u.store.ApplyMembers(ctx, room, nil, members); err != nil {
			t.Fatal(err)
		}
		msg := func(id string) jetstream.Msg {
			ev, _ := json.Marshal(map[string]any{
				"type": "m.room.message", "sender": sender, "room_id": room, "event_id": id,
				"depth": 10, "origin_server_ts": 1, "content": map[string]any{"msgtype": "m.text", "body": "hello"},
			})
			data, _ := json.Marshal(rsapi.OutputEvent{RoomID: room, RoomVersion: "10", EventID: id, Event: ev})
			return outputMsg{data: data}
		}
		join := func(id, user string) jetstream.Msg {
			ev, _ := json.Marshal(map[string]any{
				"type": "m.room.member", "state_key": user, "sender": user, "room_id": room, "event_id": id,
				"depth": 10, "origin_server_ts": 1, "content": map[string]any{"membership": "join"},
			})
			data, _ := json.Marshal(rsapi.OutputEvent{RoomID: room, RoomVersion: "10", EventID: id, Event: ev, AddsState: []string{id}})
			return outputMsg{data: data}
		}
		for _, step := range []struct {
			name                  string
			batch                 []jetstream.Msg
			alice, bob, carolWant int64
		}{
			{"one event twice", []jetstream.Msg{msg("$1"), msg("$1")}, 1, 1, 0},
			{"redelivered and new", []jetstream.Msg{msg("$1"), msg("$2")}, 2, 2, 0},
			{"a join in the middle", []jetstream.Msg{msg("$3"), join("$jc", carol), msg("$4"), msg("$5")}, 5, 5, 2},
		} {
			if err := u.onRoomEvents(ctx, step.batch); err != nil {
				t.Fatalf("%s: %v", step.name, err)
			}
			for _, c := range []struct {
				user string
				want int64
			}{{alice, step.alice}, {bob, step.bob}, {carol, step.carolWant}} {
				got, err := u.NotificationCounts(ctx, c.user, room)
				if err != nil || got != (uapi.NotificationCounts{Notifications: c.want}) {
					t.Errorf("%s: %s's counts %+v, %v; want %d", step.name, c.user, got, err, c.want)
				}
			}
		}
		// The notifications themselves: carol's are those after her join.
		ns, err := u.store.Notifications(ctx, carol, 0, 10, false)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, n := range ns {
			got = append(got, n.EventID)
		}
		if fmt.Sprint(got) != "[$5 $4]" {
			t.Errorf("carol's notifications %v, want [$5 $4]", got)
		}
	})
}
