package storage

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	"myelin/internal/sqldb"
	"myelin/internal/sqldb/sqldbtest"
)

// BenchmarkAppendBatch measures the append path of room events (what
// onRoomEvents calls): one op is a batch of 64 text messages appended to a
// room that already holds roomSize of them, as a busy room's sends arrive,
// in a small room and a large one: the cost of an event must not grow with
// the room. The search index is filled on this path, so its cost shows
// here.
func BenchmarkAppendBatch(b *testing.B) {
	for _, dialect := range sqldbtest.Dialects {
		for _, roomSize := range []int{1000, 20000} {
			b.Run(fmt.Sprintf("%s/room=%d", dialect, roomSize), func(b *testing.B) {
				appendBatches(b, dialect, roomSize)
			})
		}
	}
}

func appendBatches(b *testing.B, dialect string, roomSize int) {
	const batch = 64
	ctx := context.Background()
	db, err := sqldb.Open(ctx, sqldbtest.URL(b, dialect), sqldb.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	s, err := Open(ctx, db)
	if err != nil {
		b.Fatal(err)
	}
	n := 0
	next := func() []Appended {
		out := make([]Appended, batch)
		for i := range out {
			n++
			id := fmt.Sprintf("$ev%d", n)
			out[i] = Appended{Event: &Event{
				RoomID: "!big:x", EventID: id, Type: "m.room.message", Sender: fmt.Sprintf("@u%d:x", n%500),
				Depth: int64(n), HistVis: "shared",
				JSON: fmt.Sprintf(`{"type":"m.room.message","room_id":"!big:x","event_id":%q,"sender":"@u%d:x","origin_server_ts":%d,"content":{"msgtype":"m.text","body":"message number %d about the weather and other things %d"}}`,
					id, n%500, 1700000000000+n, n, n%97),
			}}
		}
		return out
	}
	for n < roomSize {
		if _, err := s.AppendBatch(ctx, next()); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	start := processCPU(b)
	for i := 0; i < b.N; i++ {
		if _, err := s.AppendBatch(ctx, next()); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*batch), "us/event")
	// The wall time on a shared machine measures the neighbours too; this
	// process's CPU (all of SQLite's work, none of a PostgreSQL server's)
	// does not.
	b.ReportMetric(float64((processCPU(b)-start).Microseconds())/float64(b.N*batch), "cpu-us/event")
}

// processCPU is the CPU time (user and system) this process has used.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
