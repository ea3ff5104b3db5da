package roomserver_test

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/sirupsen/logrus"

	"myelin/internal/bus"
	"myelin/internal/signing"
	"myelin/internal/sqldb"
	"myelin/internal/sqldb/sqldbtest"
	"myelin/roomserver"
	rsapi "myelin/roomserver/api"
)

// startRoomserver runs a roomserver on a fresh database of dialect with an
// embedded NATS, until the test or benchmark ends.
func startRoomserver(b testing.TB, dialect string) *roomserver.Roomserver {
	b.Helper()
	rs, _ := startRoomserverWith(b, dialect, roomserver.Options{})
	return rs
}

// startRoomserverWith is startRoomserver with options; it also returns the
// database.
func startRoomserverWith(b testing.TB, dialect string, opts roomserver.Options) (*roomserver.Roomserver, *sqldb.DB) {
	b.Helper()
	ctx := context.Background()
	dir := b.TempDir()
	bs, err := bus.Open(ctx, bus.Options{StoreDir: filepath.Join(dir, "nats"), Name: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(bs.Close)
	db, err := sqldb.Open(ctx, sqldbtest.URL(b, dialect), sqldb.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { db.Close() })
	key, err := signing.LoadOrGenerate(filepath.Join(dir, "key"), "bench.test")
	if err != nil {
		b.Fatal(err)
	}
	log := logrus.New()
	log.SetLevel(logrus.ErrorLevel)
	rs, err := roomserver.New(ctx, db, bs, key, log.WithField("component", "roomserver"), opts)
	if err != nil {
		b.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	if err := rs.Start(rctx); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cancel(); rs.Wait() })
	return rs, db
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
