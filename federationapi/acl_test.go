package federationapi

import (
	"testing"

	"github.com/matrix-org/gomatrixserverlib/spec"
)

// TestServerACL parses m.room.server_acl contents and matches servers
// against them as the spec's "Server Access Control Lists" says.
func TestServerACL(t *testing.T) {
	tests := []struct {
		name    string
		content string
		allowed []spec.ServerName
		denied  []spec.ServerName
	}{
		{"allow all", `{"allow":["*"]}`,
			[]spec.ServerName{"a.example", "1.2.3.4", "[::1]:8448"}, nil},
		{"deny one", `{"allow":["*"],"deny":["evil.example"]}`,
			[]spec.ServerName{"good.example", "evil.example.org", "sub.evil.example"},
			[]spec.ServerName{"evil.example", "evil.example:8448", "EVIL.Example"}},
		{"deny a glob", `{"allow":["*"],"deny":["*.evil.example","bad?.example"]}`,
			[]spec.ServerName{"evil.example", "bad.example", "bad12.example"},
			[]spec.ServerName{"a.evil.example", "a.b.evil.example", "bad1.example", "badX.example:443"}},
		{"allow list", `{"allow":["*.friends.example","friend.example"]}`,
			[]spec.ServerName{"a.friends.example", "friend.example:8448", "FRIEND.EXAMPLE"},
			[]spec.ServerName{"friends.example", "stranger.example"}},
		{"globs are case-insensitive", `{"allow":["*.Friends.EXAMPLE"]}`,
			[]spec.ServerName{"a.friends.example"}, nil},
		{"no IP literals", `{"allow":["*"],"allow_ip_literals":false}`,
			[]spec.ServerName{"a.example", "1.2.3.4.example"},
			[]spec.ServerName{"1.2.3.4", "1.2.3.4:8448", "[::1]", "[2001:db8::1]:8448"}},
		{"IP literals by default", `{"allow":["*"]}`, []spec.ServerName{"1.2.3.4"}, nil},
		{"a non-boolean allow_ip_literals allows them", `{"allow":["*"],"allow_ip_literals":"no"}`, []spec.ServerName{"1.2.3.4"}, nil},
		{"deny beats allow", `{"allow":["*"],"deny":["*"]}`, nil, []spec.ServerName{"a.example"}},
		{"no allow list allows no one", `{"deny":[]}`, nil, []spec.ServerName{"a.example"}},
		{"redacted ACL allows no one", `{}`, nil, []spec.ServerName{"a.example"}},
		{"allow not a list", `{"allow":"*"}`, nil, []spec.ServerName{"a.example"}},
		{"entries that are not strings are left out", `{"allow":[1,null,{"a":"*"},["*"],"ok.example"],"deny":[true]}`,
			[]spec.ServerName{"ok.example"}, []spec.ServerName{"a.example"}},
		{"ports in globs never match", `{"allow":["a.example:8448"]}`, nil, []spec.ServerName{"a.example:8448", "a.example"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			acl := parseACL([]byte(tt.content))
			for _, s := range tt.allowed {
				if !acl.allows(s) {
					t.Errorf("%s denied, want allowed", s)
				}
			}
			for _, s := range tt.denied {
				if acl.allows(s) {
					t.Errorf("%s allowed, want denied", s)
				}
			}
		})
	}
}

// TestACLCache: an invalidation between a lookup and its store keeps the
// stale ACL out of the cache.
func TestACLCache(t *testing.T) {
	var c aclCache
	old := parseACL([]byte(`{"allow":["*"]}`))
	_, ok, gen := c.get("!r:x")
	if ok {
		t.Fatal("empty cache has the room")
	}
	c.invalidate("!r:x") // the ACL changed while it was being read
	c.put("!r:x", old, gen)
	if _, ok, _ := c.get("!r:x"); ok {
		t.Fatal("a stale lookup was stored")
	}
	_, _, gen = c.get("!r:x")
	c.put("!r:x", nil, gen)
	if acl, ok, _ := c.get("!r:x"); !ok || acl != nil {
		t.Fatalf("room without an ACL: %v %v", acl, ok)
	}
}
