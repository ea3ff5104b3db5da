package setup_test

import (
	"fmt"
	"net/url"
	"testing"
	"time"

	"myelin/internal/poll"
	"myelin/internal/sqldb/sqldbtest"
	"myelin/internal/testserver"
)

// TestFederationPresenceOnJoin: users of two servers who are online before
// they share a room see each other's presence as soon as one joins the
// other's room, not at their next change (sytest: "New federated private
// chats get full presence information (SYN-115)"); polling the legacy
// /events stream marks a user online, as /sync does.
func TestFederationPresenceOnJoin(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		fed := newFedNet(t)
		hsA := fed.start(t, "pa.test", "127.0.0.28", dbURL)
		hsB := fed.start(t, "pb.test", "127.0.0.29", sqldbtest.URL(t, dialectOf(dbURL)))
		alice := hsA.Register(t, "alice")
		bob := hsB.Register(t, "bob")
		aliceID, _ := whoami(t, alice)
		bobID, _ := whoami(t, bob)
		status := func(c *testserver.Client, userID string) string {
			return c.Do(t, "GET", "/_matrix/client/v3/presence/"+url.PathEscape(userID)+"/status", nil).String("presence")
		}
		// Online before sharing anything: these changes reach no server.
		alice.Do(t, "GET", "/_matrix/client/v3/events?timeout=0", nil).MustOK(t)
		bob.Do(t, "GET", "/_matrix/client/v3/sync?timeout=0", nil).MustOK(t)
		poll.Until(t, 10*time.Second, func() error {
			if a, b := status(alice, aliceID), status(bob, bobID); a != "online" || b != "online" {
				return fmt.Errorf("alice %q, bob %q, want both online", a, b)
			}
			return nil
		})

		room := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{"preset": "private_chat", "invite": []string{bobID}}).MustOK(t).String("room_id")
		poll.Until(t, 10*time.Second, func() error {
			if _, ok := fullSyncRooms(t, bob)["invite"][room]; !ok {
				return fmt.Errorf("bob has no invite")
			}
			return nil
		})
		bob.Do(t, "POST", "/_matrix/client/v3/join/"+url.PathEscape(room), map[string]any{}).MustOK(t)
		poll.Until(t, 10*time.Second, func() error {
			if p := status(alice, bobID); p != "online" {
				return fmt.Errorf("bob's presence on pa.test: %q", p)
			}
			if p := status(bob, aliceID); p != "online" {
				return fmt.Errorf("alice's presence on pb.test: %q", p)
			}
			return nil
		})
	})
}
