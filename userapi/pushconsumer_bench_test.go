package userapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"syscall"
	"testing"
	"time"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/nats-io/nats.go/jetstream"

	"myelin/internal/sqldb/sqldbtest"
	rsapi "myelin/roomserver/api"
	"myelin/userapi/storage"
)

// outputMsg is an OutputRoomEvent message as the consumer reads it; only
// its data is used.
type outputMsg struct {
	jetstream.Msg
	data []byte
}

func (m outputMsg) Data() []byte { return m.data }

// noState is a room server that knows no state: the default power levels
// apply.
type noState struct{ Rooms }

func (noState) StateEvent(context.Context, string, string, string) (gmsl.PDU, error) {
	return nil, errors.New("no state")
}

// BenchmarkNotifyMembers measures the push consumer's work per event (one
// op) for a message from a remote user into a room with members local
// users, handed over batch events at a time: member lookup, rule
// evaluation, the notifications' write and the pushers lookup.
func BenchmarkNotifyMembers(b *testing.B) {
	for _, dialect := range sqldbtest.Dialects {
		for _, bc := range []struct{ members, batch int }{{20, 1}, {20, 64}, {200, 1}, {200, 64}} {
			b.Run(fmt.Sprintf("%s/members=%d/batch=%d", dialect, bc.members, bc.batch), func(b *testing.B) {
				dbURL := sqldbtest.URL(b, dialect)
				ctx := context.Background()
				u := newTestAPI(b, dbURL, nil)
				u.push.rooms = noState{}
				const room, sender = "!bench:test.local", "@sender:remote.test"
				members := []storage.Member{{UserID: sender, Membership: "join", EventID: "$join-sender"}}
				for i := range bc.members {
					id := fmt.Sprintf("@u%d:test.local", i)
					members = append(members, storage.Member{UserID: id, Membership: "join", EventID: "$join-" + id, IsLocal: true})
				}
				if err := u.store.ApplyMembers(ctx, room, nil, members); err != nil {
					b.Fatal(err)
				}
				msg := func(i int) jetstream.Msg {
					id := fmt.Sprintf("$ev%d", i)
					ev, _ := json.Marshal(map[string]any{
						"type": "m.room.message", "sender": sender, "room_id": room, "event_id": id,
						"depth": i + 10, "origin_server_ts": 1, "content": map[string]any{"msgtype": "m.text", "body": "hello"},
					})
					data, _ := json.Marshal(rsapi.OutputEvent{RoomID: room, RoomVersion: "10", EventID: id, Event: ev})
					return outputMsg{data: data}
				}
				b.ReportAllocs()
				b.ResetTimer()
				cpu := processCPU(b)
				for i := 0; i < b.N; i += bc.batch {
					ms := make([]jetstream.Msg, 0, bc.batch)
					for j := i; j < min(i+bc.batch, b.N); j++ {
						ms = append(ms, msg(j))
					}
					if err := u.onRoomEvents(ctx, ms); err != nil {
						b.Fatal(err)
					}
				}
				// This process's CPU (PostgreSQL's is not in it): unlike
				// ns/op, not blurred by a shared machine.
				b.ReportMetric(float64((processCPU(b)-cpu).Microseconds())/float64(b.N), "cpu-µs/event")
			})
		}
	}
}

func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
