package mediaapi_test

import (
	"encoding/json"
	"fmt"
	"net/url"
	"sort"
	"testing"
	"time"

	"myelin/internal/poll"
	"myelin/internal/sqldb/sqldbtest"
)

// TestRoomQuarantine: the media a room's events refer to is listed and
// quarantined at once, this server's (served no more, thumbnails
// included) and other servers' (never fetched).
func TestRoomQuarantine(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		s := startServer(t, dbURL)
		admin := registerAdmin(t, s, "rq-admin")
		ts := s.Register(t, "rq-alice")
		alice := &client{base: s.URL, token: ts.Token}
		image := alice.upload(t, encode(t, "png", testImage(100, 80)), "image/png", "a.png")
		thumb := alice.upload(t, encode(t, "png", testImage(20, 16)), "image/png", "t.png")
		elsewhere := alice.upload(t, []byte("in another room"), "text/plain", "")
		unrelated := alice.upload(t, []byte("in no room"), "text/plain", "")

		room := ts.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{}).MustOK(t).String("room_id")
		other := ts.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{}).MustOK(t).String("room_id")
		send := func(roomID string, content map[string]any) {
			t.Helper()
			path := fmt.Sprintf("/_matrix/client/v3/rooms/%s/send/m.room.message/%d", url.PathEscape(roomID), time.Now().UnixNano())
			ts.Do(t, "PUT", path, content).MustOK(t)
		}
		send(room, map[string]any{"msgtype": "m.image", "body": "a.png", "url": "mxc://" + image,
			"info": map[string]any{"thumbnail_url": "mxc://" + thumb}})
		send(room, map[string]any{"msgtype": "m.file", "body": "enc", "file": map[string]any{"url": "mxc://remote.test/RemoteMedia1"}})
		// Not media references: text, a malformed URI, a URL of another kind.
		send(room, map[string]any{"msgtype": "m.text", "body": "mxc://localhost/" + unrelated})
		send(room, map[string]any{"msgtype": "m.image", "body": "x", "url": "mxc://localhost/../etc"})
		send(room, map[string]any{"msgtype": "m.image", "body": "x", "url": "https://example.org/a.png"})
		send(other, map[string]any{"msgtype": "m.file", "body": "f", "url": "mxc://" + elsewhere})

		want := map[string][]string{
			"local":  {"mxc://" + image, "mxc://" + thumb},
			"remote": {"mxc://remote.test/RemoteMedia1"},
		}
		sort.Strings(want["local"])
		list := "/_synapse/admin/v1/room/" + url.PathEscape(room) + "/media"
		poll.Until(t, 20*time.Second, func() error {
			r := admin.do(t, "GET", list, nil, nil)
			var got map[string][]string
			if err := json.Unmarshal(r.body, &got); err != nil || r.status != 200 {
				return fmt.Errorf("%d %s", r.status, r.body)
			}
			sort.Strings(got["local"])
			if fmt.Sprint(got) != fmt.Sprint(want) {
				return fmt.Errorf("room media %v, want %v", got, want)
			}
			return nil
		})

		// Admins only; a room ID that is not one.
		quarantine := "/_synapse/admin/v1/room/" + url.PathEscape(room) + "/media/quarantine"
		if r := alice.do(t, "POST", quarantine, nil, nil); r.status != 403 {
			t.Errorf("non-admin: %d %s", r.status, r.body)
		}
		if r := admin.do(t, "GET", "/_synapse/admin/v1/room/not-a-room/media", nil, nil); r.status != 400 {
			t.Errorf("bad room ID: %d %s", r.status, r.body)
		}
		r := admin.do(t, "POST", quarantine, nil, nil)
		if r.status != 200 || r.json(t)["num_quarantined"] != float64(3) {
			t.Fatalf("quarantine: %d %s", r.status, r.body)
		}
		for _, p := range []string{
			"/_matrix/client/v1/media/download/" + image,
			"/_matrix/client/v1/media/thumbnail/" + image + "?width=32&height=32",
			"/_matrix/client/v1/media/download/" + thumb,
			"/_matrix/media/v3/download/" + image,
			"/_matrix/media/v3/thumbnail/" + image + "?width=32&height=32&method=scale",
			// Remote media quarantined before it was fetched: not fetched.
			"/_matrix/client/v1/media/download/remote.test/RemoteMedia1",
		} {
			if r := alice.do(t, "GET", p, nil, nil); r.status != 404 || r.errcode() != "M_NOT_FOUND" {
				t.Errorf("%s: %d %s", p, r.status, r.body)
			}
		}
		// What the room does not refer to is served still.
		for _, id := range []string{elsewhere, unrelated} {
			if r := alice.do(t, "GET", "/_matrix/client/v1/media/download/"+id, nil, nil); r.status != 200 {
				t.Errorf("%s: %d", id, r.status)
			}
		}
		// Again: nothing more to quarantine (the older path, Synapse's).
		r = admin.do(t, "POST", "/_synapse/admin/v1/quarantine_media/"+url.PathEscape(room), nil, nil)
		if r.status != 200 || r.json(t)["num_quarantined"] != float64(0) {
			t.Errorf("quarantine again: %d %s", r.status, r.body)
		}
		// Unquarantined, local media is served again.
		if r := admin.do(t, "POST", "/_synapse/admin/v1/media/unquarantine/"+image, nil, nil); r.status != 200 {
			t.Fatalf("unquarantine: %d %s", r.status, r.body)
		}
		if r := alice.do(t, "GET", "/_matrix/client/v1/media/download/"+image, nil, nil); r.status != 200 {
			t.Errorf("unquarantined: %d", r.status)
		}
		if r := admin.do(t, "POST", "/_synapse/admin/v1/media/unquarantine/remote.test/RemoteMedia1", nil, nil); r.status != 200 {
			t.Errorf("unquarantine remote: %d %s", r.status, r.body)
		}
		// One item of another server, by ID, before it was ever fetched;
		// unknown local media is not found.
		if r := admin.do(t, "POST", "/_synapse/admin/v1/media/quarantine/remote.test/RemoteMedia2", nil, nil); r.status != 200 {
			t.Errorf("quarantine uncached remote: %d %s", r.status, r.body)
		}
		if r := alice.do(t, "GET", "/_matrix/client/v1/media/download/remote.test/RemoteMedia2", nil, nil); r.status != 404 || r.errcode() != "M_NOT_FOUND" {
			t.Errorf("quarantined uncached remote: %d %s", r.status, r.body)
		}
		if r := admin.do(t, "POST", "/_synapse/admin/v1/media/quarantine/localhost/NoSuchMedia", nil, nil); r.status != 404 {
			t.Errorf("quarantine unknown local: %d %s", r.status, r.body)
		}
	})
}
