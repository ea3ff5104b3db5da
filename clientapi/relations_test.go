package clientapi_test

import (
	"net/url"
	"strconv"
	"strings"
	"testing"

	"myelin/internal/sqldb/sqldbtest"
	"myelin/internal/testserver"
)

// TestSendRelation: sending a relation the server can tell is broken
// answers 400 M_UNKNOWN (spec: "Validation of m.thread relationships"):
// a thread off an event that is itself a child, a parent of another
// room; other relations, and parents the server lacks, are sent.
func TestSendRelation(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		srv := testserver.Start(t, testserver.Config(t.TempDir(), dbURL))
		alice := srv.Register(t, "alice")
		const v3 = "/_matrix/client/v3"
		newRoom := func() string {
			return alice.Do(t, "POST", v3+"/createRoom", map[string]any{"preset": "private_chat"}).MustOK(t).String("room_id")
		}
		room, other := newRoom(), newRoom()
		n := 0
		send := func(room string, content map[string]any) *testserver.Response {
			n++
			return alice.Do(t, "PUT", v3+"/rooms/"+url.PathEscape(room)+"/send/m.room.message/t"+strconv.Itoa(n), content)
		}
		rel := func(relType, parent string) map[string]any {
			return map[string]any{"msgtype": "m.text", "body": "child",
				"m.relates_to": map[string]any{"rel_type": relType, "event_id": parent}}
		}
		root := send(room, map[string]any{"msgtype": "m.text", "body": "root"}).MustOK(t).String("event_id")
		reply := send(room, rel("m.thread", root)).MustOK(t).String("event_id")
		elsewhere := send(other, map[string]any{"msgtype": "m.text", "body": "elsewhere"}).MustOK(t).String("event_id")

		tests := []struct {
			name    string
			content map[string]any
			status  int
		}{
			{"thread off a plain event", rel("m.thread", root), 200},
			{"thread off a thread event", rel("m.thread", reply), 400},
			{"edit of a thread event", rel("m.replace", reply), 200},
			{"reference to a thread event", rel("m.reference", reply), 200},
			{"parent of another room", rel("m.reference", elsewhere), 400},
			{"thread off an event of another room", rel("m.thread", elsewhere), 400},
			{"unknown parent", rel("m.thread", "$"+strings.Repeat("a", 43)), 200},
			{"rel_type not a string", map[string]any{"m.relates_to": map[string]any{"rel_type": 1, "event_id": reply}}, 200},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				r := send(room, tc.content)
				if r.Status != tc.status || (tc.status == 400 && r.String("errcode") != "M_UNKNOWN") {
					t.Fatalf("%d %s, want %d", r.Status, r.Raw, tc.status)
				}
			})
		}
		// The POST form checks the same.
		r := alice.Do(t, "POST", v3+"/rooms/"+url.PathEscape(room)+"/send/m.room.message", rel("m.thread", reply))
		if r.Status != 400 || r.String("errcode") != "M_UNKNOWN" {
			t.Fatalf("POST send of a nested thread: %d %s", r.Status, r.Raw)
		}
	})
}
