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

// TestRoomUpgradeFederated: a room of hsa with a member of hsb is upgraded
// on hsa. When hsb's user joins the replacement, hsb moves what it keeps
// of the old room itself, as the upgrading server moved its own: hsb's
// alias and hsb's directory entry follow the room, and the joining user's
// tags for the old room are theirs in the new one.
func TestRoomUpgradeFederated(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		fed := newFedNet(t)
		hsA := fed.start(t, "hsa.test", "127.0.0.4", dbURL)
		hsB := fed.start(t, "hsb.test", "127.0.0.5", sqldbtest.URL(t, dialectOf(dbURL)))
		alice := hsA.Register(t, "alice")
		bob := hsB.Register(t, "bob")
		// bob moderates the room: hsb lets him publish it in its directory.
		old := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{
			"preset":                       "public_chat",
			"power_level_content_override": map[string]any{"users": map[string]int{"@alice:hsa.test": 100, "@bob:hsb.test": 50}},
		}).MustOK(t).String("room_id")
		bob.Do(t, "POST", "/_matrix/client/v3/join/"+url.PathEscape(old)+"?server_name=hsa.test", map[string]any{}).MustOK(t)
		const alias = "#bobs:hsb.test"
		bob.Do(t, "PUT", "/_matrix/client/v3/directory/room/"+url.PathEscape(alias), map[string]string{"room_id": old}).MustOK(t)
		bob.Do(t, "PUT", "/_matrix/client/v3/directory/list/room/"+url.PathEscape(old), map[string]string{"visibility": "public"}).MustOK(t)
		bob.Do(t, "PUT", "/_matrix/client/v3/user/@bob:hsb.test/rooms/"+url.PathEscape(old)+"/tags/u.work", map[string]any{"order": 0.5}).MustOK(t)

		newRoom := alice.Do(t, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(old)+"/upgrade", map[string]any{"new_version": "10"}).MustOK(t).String("replacement_room")
		// Before hsb is in the new room, its alias and entry stay.
		if got := bob.Do(t, "GET", "/_matrix/client/v3/directory/room/"+url.PathEscape(alias), nil).MustOK(t).String("room_id"); got != old {
			t.Fatalf("alias before the join: %s", got)
		}
		bob.Do(t, "POST", "/_matrix/client/v3/join/"+url.PathEscape(newRoom)+"?server_name=hsa.test", map[string]any{}).MustOK(t)

		if got := bob.Do(t, "GET", "/_matrix/client/v3/directory/room/"+url.PathEscape(alias), nil).MustOK(t).String("room_id"); got != newRoom {
			t.Fatalf("hsb's alias points to %s, want the new room %s", got, newRoom)
		}
		if v := bob.Do(t, "GET", "/_matrix/client/v3/directory/list/room/"+url.PathEscape(newRoom), nil).MustOK(t).String("visibility"); v != "public" {
			t.Fatalf("hsb's directory entry of the new room: %s", v)
		}
		if v := bob.Do(t, "GET", "/_matrix/client/v3/directory/list/room/"+url.PathEscape(old), nil).MustOK(t).String("visibility"); v != "private" {
			t.Fatalf("hsb's directory entry of the old room: %s", v)
		}
		tags := bob.Do(t, "GET", "/_matrix/client/v3/user/@bob:hsb.test/rooms/"+url.PathEscape(newRoom)+"/tags", nil).MustOK(t)
		if _, ok := tags.Body["tags"].(map[string]any)["u.work"]; !ok {
			t.Fatalf("bob's tags in the new room: %s", tags.Raw)
		}
	})
}
