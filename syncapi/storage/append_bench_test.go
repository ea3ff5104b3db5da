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

// BenchmarkSearch measures one page (10 results) of a search in a room of
// 20,000 messages: a word in every message (the worst case: every match is
// ranked before the first ten are known) and a word in one of 97, in rank
// and in recent order, with the count each page also runs.
func BenchmarkSearch(b *testing.B) {
	for _, dialect := range sqldbtest.Dialects {
		b.Run(dialect, func(b *testing.B) {
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
			for n := 0; n < 20000; n += 64 {
				batch := make([]Appended, 64)
				for i := range batch {
					id := fmt.Sprintf("$ev%d", n+i)
					batch[i] = Appended{Event: &Event{RoomID: "!big:x", EventID: id, Type: "m.room.message", Sender: "@u:x", Depth: int64(n + i), HistVis: "shared",
						JSON: fmt.Sprintf(`{"type":"m.room.message","content":{"body":"message number %d about the weather and other things w%d"}}`, n+i, (n+i)%97)}}
				}
				if _, err := s.AppendBatch(ctx, batch); err != nil {
					b.Fatal(err)
				}
			}
			for _, tc := range []struct{ name, term string }{{"common", "weather"}, {"rare", "w42"}} {
				for _, byRank := range []bool{true, false} {
					b.Run(fmt.Sprintf("%s/rank=%v", tc.name, byRank), func(b *testing.B) {
						match, _ := sqldb.FullTextQuery(db.Dialect, tc.term)
						q := &SearchQuery{Match: match, Rooms: []string{"!big:x"}, Types: []string{"m.room.message"}, MaxPos: 1 << 40, ByRank: byRank, Limit: 11}
						b.ReportAllocs()
						for i := 0; i < b.N; i++ {
							hits, err := s.Search(ctx, q)
							if err != nil || len(hits) != 11 {
								b.Fatalf("%d hits, %v", len(hits), err)
							}
							if _, err := s.SearchCount(ctx, q); err != nil {
								b.Fatal(err)
							}
						}
					})
				}
			}
		})
	}
}
