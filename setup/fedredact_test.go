package setup_test

import (
	"fmt"
	"net/url"
	"testing"
	"time"

	"myelin/internal/poll"
	"myelin/internal/sqldb/sqldbtest"
)

// TestFederationInvitedAtCreationAndRedactions: a user of another server
// invited in /createRoom gets the invite (its server signs it, /invite)
// and joins, in a room version 1 room (whose make_join template names
// prev and auth events as pairs) and a version 10 one; a redaction made
// on that server reaches the room's server and is applied there: the
// event's content is gone and unsigned.redacted_by names the redaction.
func TestFederationInvitedAtCreationAndRedactions(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		fed := newFedNet(t)
		hsA := fed.start(t, "hsa.test", "127.0.0.14", dbURL)
		hsB := fed.start(t, "hsb.test", "127.0.0.15", sqldbtest.URL(t, dialectOf(dbURL)))
		alice := hsA.Register(t, "alice")
		bob := hsB.Register(t, "bob")
		for _, version := range []string{"1", "10"} {
			t.Run("room version "+version, func(t *testing.T) {
				room := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{
					"preset": "private_chat", "room_version": version, "invite": []string{"@bob:hsb.test"},
				}).MustOK(t).String("room_id")
				esc := url.PathEscape(room)
				poll.Until(t, 10*time.Second, func() error {
					if _, ok := fullSyncRooms(t, bob)["invite"][room]; !ok {
						return fmt.Errorf("bob's sync shows no invite to %s", room)
					}
					return nil
				})
				bob.Do(t, "POST", "/_matrix/client/v3/join/"+esc, map[string]any{}).MustOK(t)
				poll.Until(t, 10*time.Second, func() error {
					if !joinedMembers(t, alice, room)["@bob:hsb.test"] {
						return fmt.Errorf("alice does not see bob joined")
					}
					return nil
				})

				msg := bob.Do(t, "PUT", "/_matrix/client/v3/rooms/"+esc+"/send/m.room.message/t1",
					map[string]string{"msgtype": "m.text", "body": "to be redacted"}).MustOK(t).String("event_id")
				poll.Until(t, 10*time.Second, func() error {
					r := alice.Do(t, "GET", "/_matrix/client/v3/rooms/"+esc+"/event/"+url.PathEscape(msg), nil)
					if r.Status != 200 {
						return fmt.Errorf("the message on hsa: %d %s", r.Status, r.Raw)
					}
					return nil
				})
				// The transaction-less form, as sytest sends it.
				red := bob.Do(t, "POST", "/_matrix/client/v3/rooms/"+esc+"/redact/"+url.PathEscape(msg), map[string]any{}).MustOK(t).String("event_id")
				poll.Until(t, 10*time.Second, func() error {
					r := alice.Do(t, "GET", "/_matrix/client/v3/rooms/"+esc+"/event/"+url.PathEscape(msg), nil).MustOK(t)
					unsigned, _ := r.Body["unsigned"].(map[string]any)
					content, _ := r.Body["content"].(map[string]any)
					if unsigned["redacted_by"] != red || len(content) != 0 {
						return fmt.Errorf("the message on hsa after bob's redaction %s: %s", red, r.Raw)
					}
					return nil
				})
			})
		}
	})
}
