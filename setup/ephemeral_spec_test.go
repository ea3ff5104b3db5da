package setup_test

import (
	"testing"

	"myelin/internal/sqldb/sqldbtest"
	"myelin/internal/testserver"
)

// TestSpecShapesEphemeral checks the typing, receipt, read-marker and
// presence endpoints, and the /sync sections they fill, against the
// Client-Server API spec, on each database.
func TestSpecShapesEphemeral(t *testing.T) {
	spec := loadClientSpec(t)
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		srv := testserver.Start(t, testserver.Config(t.TempDir(), dbURL))
		f := &specFlow{t: t, spec: spec, srv: srv, anon: &testserver.Client{Base: srv.URL}, called: map[string]bool{}}
		const aliceID, bobID = "@alice:localhost", "@bob:localhost"
		alice, bob := f.register("alice"), f.register("bob")
		room := f.call(alice, "POST", clientV3+"/createRoom", map[string]any{"preset": "public_chat"}, 200).String("room_id")
		f.call(bob, "POST", clientV3+"/rooms/{roomId}/join", map[string]any{}, 200, "roomId", room)
		event := f.call(bob, "PUT", clientV3+"/rooms/{roomId}/send/{eventType}/{txnId}", map[string]any{"msgtype": "m.text", "body": "hi"}, 200,
			"roomId", room, "eventType", "m.room.message", "txnId", "1").String("event_id")
		since := f.call(alice, "GET", clientV3+"/sync?set_presence=offline", nil, 200).String("next_batch")

		f.call(alice, "PUT", clientV3+"/rooms/{roomId}/typing/{userId}", map[string]any{"typing": true, "timeout": 30000}, 200, "roomId", room, "userId", aliceID)
		f.call(alice, "POST", clientV3+"/rooms/{roomId}/receipt/{receiptType}/{eventId}", map[string]any{}, 200, "roomId", room, "receiptType", "m.read", "eventId", event)
		f.call(alice, "POST", clientV3+"/rooms/{roomId}/receipt/{receiptType}/{eventId}", map[string]any{"thread_id": "main"}, 200, "roomId", room, "receiptType", "m.read.private", "eventId", event)
		f.call(alice, "POST", clientV3+"/rooms/{roomId}/receipt/{receiptType}/{eventId}", map[string]any{}, 400, "roomId", room, "receiptType", "m.unread", "eventId", event)
		f.call(alice, "POST", clientV3+"/rooms/{roomId}/read_markers", map[string]any{"m.fully_read": event, "m.read": event}, 200, "roomId", room)
		f.call(alice, "PUT", clientV3+"/presence/{userId}/status", map[string]any{"presence": "online", "status_msg": "around"}, 200, "userId", aliceID)
		f.call(bob, "PUT", clientV3+"/presence/{userId}/status", map[string]any{"presence": "unavailable"}, 200, "userId", bobID)
		f.call(alice, "GET", clientV3+"/presence/{userId}/status", nil, 200, "userId", aliceID)
		f.call(alice, "GET", clientV3+"/presence/{userId}/status", nil, 200, "userId", bobID)
		loner := f.register("loner")
		f.call(loner, "GET", clientV3+"/presence/{userId}/status", nil, 403, "userId", aliceID)

		// The sections these fill, in initial and incremental syncs.
		for _, c := range []*testserver.Client{alice, bob} {
			r := f.call(c, "GET", clientV3+"/sync", nil, 200)
			if jr, _ := syncRooms(r, "join")[room].(map[string]any); jr == nil || len(jr["ephemeral"].(map[string]any)["events"].([]any)) == 0 {
				t.Fatalf("initial sync without the room's ephemeral events: %s", r.Raw)
			}
			if len(r.Body["presence"].(map[string]any)["events"].([]any)) == 0 {
				t.Fatalf("initial sync without presence: %s", r.Raw)
			}
		}
		r := f.call(alice, "GET", clientV3+"/sync?since="+since+"&set_presence=offline", nil, 200)
		if jr, _ := syncRooms(r, "join")[room].(map[string]any); jr == nil || len(jr["account_data"].(map[string]any)["events"].([]any)) == 0 {
			t.Fatalf("incremental sync without the read marker: %s", r.Raw)
		}
		f.call(alice, "PUT", clientV3+"/rooms/{roomId}/typing/{userId}", map[string]any{"typing": false}, 200, "roomId", room, "userId", aliceID)
		f.call(bob, "GET", clientV3+"/sync?since="+r.String("next_batch"), nil, 200)
	})
}
