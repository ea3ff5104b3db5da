package roomserver_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync/atomic"
	"testing"

	"myelin/internal/sqldb"
	"myelin/internal/sqldb/sqldbtest"
	"myelin/roomserver"
	rsapi "myelin/roomserver/api"
	"myelin/roomserver/roomservertest"
)

// startRoomserver runs a roomserver on a fresh database of dialect with an
// embedded NATS, until the test or benchmark ends.
func startRoomserver(b testing.TB, dialect string) *roomserver.Roomserver {
	b.Helper()
	rs, _ := startRoomserverWith(b, dialect, roomserver.InputConfig{})
	return rs
}

// startRoomserverWith is startRoomserver with input tuned by in; it also
// returns the database.
func startRoomserverWith(b testing.TB, dialect string, in roomserver.InputConfig) (*roomserver.Roomserver, *sqldb.DB) {
	b.Helper()
	return roomservertest.Start(b, dialect, "bench.test", roomserver.WithInput(in))
}

func proto(sender, evType string, stateKey *string, content any) rsapi.InputEvent {
	raw, _ := json.Marshal(content)
	return rsapi.InputEvent{Proto: &rsapi.ProtoEvent{Sender: sender, Type: evType, StateKey: stateKey, Content: raw}}
}

func createRoom(b testing.TB, rs *roomserver.Roomserver, n int) string {
	b.Helper()
	creator := "@creator:bench.test"
	empty := ""
	resp, err := rs.Input(context.Background(), &rsapi.InputRequest{
		RoomVersion: "10",
		NewRoomID:   fmt.Sprintf("!bench%d:bench.test", n),
		Events: []rsapi.InputEvent{
			proto(creator, "m.room.create", &empty, map[string]any{"creator": creator, "room_version": "10"}),
			proto(creator, "m.room.member", &creator, map[string]any{"membership": "join"}),
			proto(creator, "m.room.power_levels", &empty, map[string]any{"users": map[string]int{creator: 100}}),
			proto(creator, "m.room.join_rules", &empty, map[string]any{"join_rule": "public"}),
		},
	})
	if err != nil {
		b.Fatal(err)
	}
	return resp.RoomID
}

// BenchmarkInputMessage measures one message through the whole input path:
// publish on InputRoomEvent, build, sign, auth, commit, publish the output,
// reply. Sequential: the latency of one send.
func BenchmarkInputMessage(b *testing.B) {
	for _, d := range sqldbtest.Dialects {
		b.Run(d, func(b *testing.B) {
			rs := startRoomserver(b, d)
			room := createRoom(b, rs, 0)
			ev := proto("@creator:bench.test", "m.room.message", nil, map[string]any{"msgtype": "m.text", "body": "hello"})
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := rs.Input(context.Background(), &rsapi.InputRequest{RoomID: room, Events: []rsapi.InputEvent{ev}}); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
		})
	}
}

// BenchmarkInputParallel sends from 16 goroutines over 4 rooms: throughput
// with per-room ordering and commit batching.
func BenchmarkInputParallel(b *testing.B) {
	for _, d := range sqldbtest.Dialects {
		b.Run(d, func(b *testing.B) {
			rs := startRoomserver(b, d)
			rooms := make([]string, 4)
			for i := range rooms {
				rooms[i] = createRoom(b, rs, i)
			}
			ev := proto("@creator:bench.test", "m.room.message", nil, map[string]any{"msgtype": "m.text", "body": "hello"})
			var next atomic.Int64
			b.ReportAllocs()
			b.SetParallelism(8) // 16 senders on 2 cores
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				room := rooms[next.Add(1)%int64(len(rooms))]
				for pb.Next() {
					if _, err := rs.Input(context.Background(), &rsapi.InputRequest{RoomID: room, Events: []rsapi.InputEvent{ev}}); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
		})
	}
}
