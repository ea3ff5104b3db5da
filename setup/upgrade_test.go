package setup_test

import (
	"net/url"
	"testing"

	"myelin/internal/sqldb/sqldbtest"
	"myelin/internal/testserver"
)

// TestRoomUpgrade upgrades a room to an older-format and to a v12 room and
// checks the link both ways, the copied state, the moved alias and the
// restricted old room.
func TestRoomUpgrade(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		srv := testserver.Start(t, testserver.Config(t.TempDir(), dbURL))
		alice := srv.Register(t, "alice")
		for i, target := range []string{"2", "12"} {
			alias := "#up" + target + ":localhost"
			old := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{
				"name": "before", "room_alias_name": "up" + target, "visibility": "public",
			}).MustOK(t).String("room_id")
			resp := alice.Do(t, "POST", "/_matrix/client/v3/rooms/"+old+"/upgrade", map[string]any{"new_version": target}).MustOK(t)
			newRoom := resp.String("replacement_room")
			if newRoom == "" || newRoom == old {
				t.Fatalf("upgrade %d: replacement %q", i, newRoom)
			}
			tomb := alice.Do(t, "GET", "/_matrix/client/v3/rooms/"+old+"/state/m.room.tombstone", nil).MustOK(t)
			if tomb.String("replacement_room") != newRoom {
				t.Fatalf("tombstone: %s", tomb.Raw)
			}
			create := alice.Do(t, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(newRoom)+"/state/m.room.create", nil).MustOK(t)
			pred, _ := create.Body["predecessor"].(map[string]any)
			if create.String("room_version") != target || pred["room_id"] != old {
				t.Fatalf("create of the new room: %s", create.Raw)
			}
			name := alice.Do(t, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(newRoom)+"/state/m.room.name", nil).MustOK(t)
			if name.String("name") != "before" {
				t.Fatalf("name not copied: %s", name.Raw)
			}
			dir := alice.Do(t, "GET", "/_matrix/client/v3/directory/room/"+url.PathEscape(alias), nil).MustOK(t)
			if dir.String("room_id") != newRoom {
				t.Fatalf("alias still points to %s", dir.Raw)
			}
			vis := alice.Do(t, "GET", "/_matrix/client/v3/directory/list/room/"+url.PathEscape(newRoom), nil).MustOK(t)
			if vis.String("visibility") != "public" {
				t.Fatalf("directory entry not moved: %s", vis.Raw)
			}
			pl := alice.Do(t, "GET", "/_matrix/client/v3/rooms/"+old+"/state/m.room.power_levels", nil).MustOK(t)
			if pl.Body["events_default"] != float64(50) || pl.Body["invite"] != float64(50) {
				t.Fatalf("old room not restricted: %s", pl.Raw)
			}
			// A room cannot be tombstoned into itself.
			self := alice.Do(t, "PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(newRoom)+"/state/m.room.tombstone/", map[string]any{"replacement_room": newRoom})
			if self.Status != 400 {
				t.Fatalf("self tombstone: %d %s", self.Status, self.Raw)
			}
		}
		bob := srv.Register(t, "bob")
		room := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{"preset": "public_chat"}).MustOK(t).String("room_id")
		bob.Do(t, "POST", "/_matrix/client/v3/join/"+room, map[string]any{}).MustOK(t)
		if r := bob.Do(t, "POST", "/_matrix/client/v3/rooms/"+room+"/upgrade", map[string]any{"new_version": "10"}); r.Status != 403 {
			t.Fatalf("upgrade without power: %d %s", r.Status, r.Raw)
		}

		// Into v12 with bob as an additional creator: named in the create
		// event, not listed in the power levels, and as powerful as alice.
		for _, bad := range []struct {
			creators any
			errcode  string
		}{{"@bob:localhost", "M_BAD_JSON"}, {[]any{"bob"}, "M_INVALID_PARAM"}, {[]any{7}, "M_BAD_JSON"}} {
			r := alice.Do(t, "POST", "/_matrix/client/v3/rooms/"+room+"/upgrade", map[string]any{"new_version": "12", "additional_creators": bad.creators})
			if r.Status != 400 || r.String("errcode") != bad.errcode {
				t.Fatalf("additional_creators %v: %d %s, want 400 %s", bad.creators, r.Status, r.Raw, bad.errcode)
			}
		}
		bobID := bob.Do(t, "GET", "/_matrix/client/v3/account/whoami", nil).MustOK(t).String("user_id")
		v12 := alice.Do(t, "POST", "/_matrix/client/v3/rooms/"+room+"/upgrade", map[string]any{
			"new_version": "12", "additional_creators": []string{bobID},
		}).MustOK(t).String("replacement_room")
		create := alice.Do(t, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(v12)+"/state/m.room.create", nil).MustOK(t)
		if extra, _ := create.Body["additional_creators"].([]any); len(extra) != 1 || extra[0] != bobID {
			t.Fatalf("create event of the upgraded room: %s", create.Raw)
		}
		pl := alice.Do(t, "GET", "/_matrix/client/v3/rooms/"+url.PathEscape(v12)+"/state/m.room.power_levels", nil).MustOK(t)
		if users, _ := pl.Body["users"].(map[string]any); users[bobID] != nil {
			t.Fatalf("an additional creator is listed in the power levels: %s", pl.Raw)
		}
		bob.Do(t, "POST", "/_matrix/client/v3/join/"+url.PathEscape(v12), map[string]any{}).MustOK(t)
		bob.Do(t, "PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(v12)+"/state/m.room.name/", map[string]any{"name": "by bob"}).MustOK(t)
	})
}
