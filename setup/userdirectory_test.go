package setup_test

import (
	"net/url"
	"strings"
	"testing"

	"myelin/internal/sqldb/sqldbtest"
	"myelin/internal/testserver"
)

func TestUserDirectory(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		srv := testserver.Start(t, testserver.Config(t.TempDir(), dbURL))
		alice := srv.Register(t, "alice")
		bob := srv.Register(t, "bob")
		carol := srv.Register(t, "carol")
		dave := srv.Register(t, "dave")
		public := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{"preset": "public_chat"}).MustOK(t).String("room_id")
		bob.Do(t, "POST", "/_matrix/client/v3/join/"+public, map[string]any{}).MustOK(t)
		private := carol.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{"preset": "private_chat", "invite": []string{"@dave:localhost"}}).MustOK(t).String("room_id")
		dave.Do(t, "POST", "/_matrix/client/v3/join/"+private, map[string]any{}).MustOK(t)
		tests := []struct {
			name     string
			searcher *testserver.Client
			term     string
			want     []string
			notWant  []string
		}{
			{"members of public rooms are found by anyone", dave, "bob", []string{"@bob:localhost"}, nil},
			{"private rooms hide their members", alice, "carol", nil, []string{"@carol:localhost"}},
			{"sharing a private room reveals", dave, "carol", []string{"@carol:localhost"}, nil},
			{"display names match case-insensitively", carol, "ALI", []string{"@alice:localhost"}, nil},
			{"a private room does not reveal the searcher", dave, "dave", nil, []string{"@dave:localhost"}},
			{"a public room reveals the searcher too", bob, "bob", []string{"@bob:localhost"}, nil},
		}
		for _, tt := range tests {
			r := tt.searcher.Do(t, "POST", "/_matrix/client/v3/user_directory/search", map[string]any{"search_term": tt.term}).MustOK(t)
			for _, w := range tt.want {
				if !strings.Contains(string(r.Raw), w) {
					t.Errorf("%s: %s not in %s", tt.name, w, r.Raw)
				}
			}
			for _, w := range tt.notWant {
				if strings.Contains(string(r.Raw), w) {
					t.Errorf("%s: %s in %s", tt.name, w, r.Raw)
				}
			}
		}
	})
}

// TestUserDirectoryFederated: a server lists the members of a public room
// of another server while one of its users is in it, and stops once none
// is (it no longer follows the room, so what it last saw is stale).
func TestUserDirectoryFederated(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		fed := newFedNet(t)
		hsA := fed.start(t, "hsa.test", "127.0.0.4", dbURL)
		hsB := fed.start(t, "hsb.test", "127.0.0.5", sqldbtest.URL(t, dialectOf(dbURL)))
		alice := hsA.Register(t, "alice")
		bob := hsB.Register(t, "bob")
		room := alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{"preset": "public_chat"}).MustOK(t).String("room_id")
		bob.Do(t, "POST", "/_matrix/client/v3/join/"+url.PathEscape(room)+"?server_name=hsa.test", map[string]any{}).MustOK(t)
		search := func() string {
			return string(bob.Do(t, "POST", "/_matrix/client/v3/user_directory/search", map[string]any{"search_term": "alice"}).MustOK(t).Raw)
		}
		if r := search(); !strings.Contains(r, "@alice:hsa.test") {
			t.Fatalf("alice not found on hsb while bob is in her room: %s", r)
		}
		bob.Do(t, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/leave", map[string]any{}).MustOK(t)
		if r := search(); strings.Contains(r, "@alice:hsa.test") {
			t.Fatalf("alice still found on hsb after it left her room: %s", r)
		}
	})
}
