package syncapi

import (
	"fmt"
	"io"
	"net/http/httptest"
	"testing"
	"time"

	"myelin/internal/mxhttp"
	"myelin/syncapi/storage"
)

// BenchmarkEncodeSync measures formatting and encoding a /sync response
// with one room of n timeline events and n state events.
func BenchmarkEncodeSync(b *testing.B) {
	for _, n := range []int{10, 100, 1000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			f := formatter{sessionID: 1, now: time.Now()}
			var events []*storage.Event
			var state []*storage.StateEvent
			for i := 0; i < n; i++ {
				sk := fmt.Sprintf("@user%d:example.org", i)
				events = append(events, &storage.Event{
					Pos: int64(i), RoomID: "!room:example.org", EventID: fmt.Sprintf("$event%d", i), Type: "m.room.message",
					Sender: sk, Depth: int64(i), HistVis: "shared",
					JSON: fmt.Sprintf(`{"type":"m.room.message","room_id":"!room:example.org","sender":"%s","content":{"msgtype":"m.text","body":"message number %d with some text"},"origin_server_ts":1700000000000,"depth":%d,"prev_events":["$x"],"auth_events":["$a","$b","$c"],"hashes":{"sha256":"abc"},"signatures":{"example.org":{"ed25519:a":"sig"}}}`, sk, i, i),
				})
				state = append(state, &storage.StateEvent{
					RoomID: "!room:example.org", Type: "m.room.member", StateKey: sk, EventID: fmt.Sprintf("$member%d", i),
					Membership: "join", Sender: sk,
					JSON: fmt.Sprintf(`{"type":"m.room.member","state_key":"%s","sender":"%s","content":{"membership":"join","displayname":"User %d"},"origin_server_ts":1700000000000}`, sk, sk, i),
				})
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				resp := newSyncResponse()
				jr := newJoinedRoom()
				for _, e := range events {
					jr.Timeline.Events = append(jr.Timeline.Events, f.event(e))
				}
				for _, st := range state {
					jr.State.Events = append(jr.State.Events, f.state(st))
				}
				resp.Rooms.Join["!room:example.org"] = jr
				w := httptest.NewRecorder()
				mxhttp.WriteJSON(w, 200, resp)
				_, _ = io.Copy(io.Discard, w.Body)
			}
		})
	}
}
