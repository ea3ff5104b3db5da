package syncapi_test

import (
	"fmt"
	"net/url"
	"syscall"
	"testing"
	"time"

	"github.com/tidwall/gjson"

	"myelin/internal/sqldb/sqldbtest"
	"myelin/internal/testserver"
)

// BenchmarkIncrementalSync measures the answer to an incremental /sync
// that brings one new message in one of the user's 20 rooms, as each
// long-poll of a busy room's members gets: every iteration builds the
// same answer from the same token (the event is already consumed), with
// the load tool's filter (lazy members, a timeline of 20).
func BenchmarkIncrementalSync(b *testing.B) {
	for _, dialect := range sqldbtest.Dialects {
		b.Run(dialect, func(b *testing.B) {
			srv := testserver.Start(b, testserver.Config(b.TempDir(), sqldbtest.URL(b, dialect)))
			alice := srv.Register(b, "alice")
			bob := srv.Register(b, "bob")
			const rooms = 20
			var first string
			for i := 0; i < rooms; i++ {
				id := alice.Do(b, "POST", v3+"/createRoom", map[string]any{"preset": "public_chat"}).MustOK(b).String("room_id")
				bob.Do(b, "POST", v3+"/join/"+url.PathEscape(id), map[string]any{}).MustOK(b)
				for j := 0; j < 5; j++ {
					alice.Do(b, "PUT", fmt.Sprintf("%s/rooms/%s/send/m.room.message/r%d-%d", v3, url.PathEscape(id), i, j),
						map[string]any{"msgtype": "m.text", "body": "hello"}).MustOK(b)
				}
				if i == 0 {
					first = id
				}
			}
			filter := url.QueryEscape(`{"room":{"state":{"lazy_load_members":true},"timeline":{"limit":20}}}`)
			since := bob.Do(b, "GET", v3+"/sync?filter="+filter, nil).MustOK(b).String("next_batch")
			alice.Do(b, "PUT", v3+"/rooms/"+url.PathEscape(first)+"/send/m.room.message/new",
				map[string]any{"msgtype": "m.text", "body": "new"}).MustOK(b)
			path := v3 + "/sync?filter=" + filter + "&since=" + url.QueryEscape(since)
			// A long-poll, as clients send: the first waits for the event,
			// the rest find it at once (without a timeout, /sync first
			// waits until syncapi caught up with every stream, which a
			// woken long-poll does not).
			path += "&timeout=30000"
			r := bob.Do(b, "GET", path, nil).MustOK(b)
			if n := gjson.GetBytes(r.Raw, "rooms.join."+gjson.Escape(first)+".timeline.events.#").Int(); n != 1 {
				b.Fatalf("the new event is not in the answer: %s", r.Raw)
			}
			b.ReportAllocs()
			b.ResetTimer()
			start := processCPU(b)
			for i := 0; i < b.N; i++ {
				bob.Do(b, "GET", path, nil).MustOK(b)
			}
			// The wall time on a shared machine measures the neighbours
			// too; the CPU of this process (server and client, not a
			// PostgreSQL server's) does not.
			b.ReportMetric(float64((processCPU(b)-start).Microseconds())/float64(b.N), "cpu-us/op")
		})
	}
}

// processCPU is the CPU time (user and system) this process has used.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkInitialSync measures an initial /sync of a user in 20 rooms
// whose timelines are limited (10 events of about 15), each room with an
// edited message and a thread: what bundled aggregations and
// unsigned.membership cost where they are computed.
func BenchmarkInitialSync(b *testing.B) {
	for _, dialect := range sqldbtest.Dialects {
		b.Run(dialect, func(b *testing.B) {
			srv := testserver.Start(b, testserver.Config(b.TempDir(), sqldbtest.URL(b, dialect)))
			alice := srv.Register(b, "alice")
			bob := srv.Register(b, "bob")
			for i := 0; i < 20; i++ {
				id := alice.Do(b, "POST", v3+"/createRoom", map[string]any{"preset": "public_chat"}).MustOK(b).String("room_id")
				bob.Do(b, "POST", v3+"/join/"+url.PathEscape(id), map[string]any{}).MustOK(b)
				send := func(txn string, content map[string]any) string {
					return alice.Do(b, "PUT", fmt.Sprintf("%s/rooms/%s/send/m.room.message/%s", v3, url.PathEscape(id), txn), content).MustOK(b).String("event_id")
				}
				root := send("root", map[string]any{"msgtype": "m.text", "body": "root"})
				send("edit", map[string]any{"msgtype": "m.text", "body": "* root!", "m.new_content": map[string]any{"msgtype": "m.text", "body": "root!"},
					"m.relates_to": map[string]any{"rel_type": "m.replace", "event_id": root}})
				for j := 0; j < 3; j++ {
					send(fmt.Sprint("t", j), map[string]any{"msgtype": "m.text", "body": "in thread",
						"m.relates_to": map[string]any{"rel_type": "m.thread", "event_id": root}})
				}
			}
			path := v3 + "/sync?filter=" + url.QueryEscape(`{"room":{"state":{"lazy_load_members":true},"timeline":{"limit":10}}}`)
			bob.Do(b, "GET", path, nil).MustOK(b)
			b.ReportAllocs()
			b.ResetTimer()
			start := processCPU(b)
			for i := 0; i < b.N; i++ {
				bob.Do(b, "GET", path, nil).MustOK(b)
			}
			b.ReportMetric(float64((processCPU(b)-start).Microseconds())/float64(b.N), "cpu-us/op")
		})
	}
}
