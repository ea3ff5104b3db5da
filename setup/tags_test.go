package setup_test

import (
	"strings"
	"testing"

	"myelin/internal/sqldb/sqldbtest"
	"myelin/internal/testserver"
)

func TestRoomTags(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		srv := testserver.Start(t, testserver.Config(t.TempDir(), dbURL))
		alice := srv.Register(t, "alice")
		room := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{}).MustOK(t).String("room_id")
		base := "/_matrix/client/v3/user/@alice:localhost/rooms/" + room + "/tags"
		alice.Do(t, "PUT", base+"/u.work", map[string]any{"order": 0.5}).MustOK(t)
		alice.Do(t, "PUT", base+"/m.favourite", map[string]any{}).MustOK(t)
		if r := alice.Do(t, "PUT", base+"/x", map[string]any{"order": "first"}); r.Status != 400 {
			t.Fatalf("non-number order: %d", r.Status)
		}
		alice.Do(t, "DELETE", base+"/m.favourite", nil).MustOK(t)
		got := alice.Do(t, "GET", base, nil).MustOK(t)
		tags, _ := got.Body["tags"].(map[string]any)
		if len(tags) != 1 || tags["u.work"] == nil {
			t.Fatalf("tags: %s", got.Raw)
		}
		sync := alice.Do(t, "GET", "/_matrix/client/v3/sync", nil).MustOK(t)
		if !strings.Contains(string(sync.Raw), `"m.tag"`) {
			t.Fatalf("tags not in sync: %.300s", sync.Raw)
		}
		bob := srv.Register(t, "bob")
		if r := bob.Do(t, "GET", base, nil); r.Status != 403 {
			t.Fatalf("reading another user's tags: %d", r.Status)
		}
	})
}
