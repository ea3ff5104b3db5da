package userapi

import (
	"testing"
	"time"

	uapi "myelin/userapi/api"
)

func TestTokenCache(t *testing.T) {
	now := time.UnixMilli(1_700_000_000_000)
	dev := func(user, id string) uapi.Device {
		return uapi.Device{UserID: user, DeviceID: id, LastSeenTS: now.UnixMilli()}
	}
	steps := []struct {
		name string
		do   func(c *tokenCache)
		// hashes expected cached (true) or not (false) afterwards
		want map[string]bool
	}{
		{
			name: "put and get",
			do: func(c *tokenCache) {
				c.put("h1", dev("@a:x", "A1"), c.generation(), now, "")
				c.put("h2", dev("@a:x", "A2"), c.generation(), now, "")
				c.put("h3", dev("@b:x", "B1"), c.generation(), now, "")
			},
			want: map[string]bool{"h1": true, "h2": true, "h3": true},
		},
		{
			name: "a put that raced an invalidation is dropped",
			do: func(c *tokenCache) {
				gen := c.generation()
				c.invalidateDevices("@b:x", "B9")
				c.put("h4", dev("@b:x", "B2"), gen, now, "")
			},
			want: map[string]bool{"h4": false, "h3": true},
		},
		{
			name: "invalidate one device",
			do:   func(c *tokenCache) { c.invalidateDevices("@a:x", "A2") },
			want: map[string]bool{"h1": true, "h2": false, "h3": true},
		},
		{
			name: "invalidate a user",
			do:   func(c *tokenCache) { c.invalidateUser("@a:x") },
			want: map[string]bool{"h1": false, "h3": true},
		},
		{
			name: "bounded",
			do: func(c *tokenCache) {
				for _, h := range []string{"h5", "h6", "h7", "h8"} {
					c.put(h, dev("@c:x", h), c.generation(), now, "")
				}
				if len(c.byHash) > c.max {
					t.Fatalf("%d entries, max %d", len(c.byHash), c.max)
				}
			},
			want: map[string]bool{"h8": true},
		},
		{
			name: "expired entries are reloaded",
			do:   func(c *tokenCache) { now = now.Add(c.ttl + time.Second) },
			want: map[string]bool{"h8": false},
		},
	}
	c := newTokenCache(3, time.Minute, time.Minute)
	for _, s := range steps {
		s.do(c)
		for h, want := range s.want {
			if _, _, ok := c.get(h, now, ""); ok != want {
				t.Fatalf("%s: %s cached = %v, want %v", s.name, h, ok, want)
			}
		}
	}
	if len(c.byUser) > len(c.byHash) {
		t.Fatalf("user index holds %d users for %d entries", len(c.byUser), len(c.byHash))
	}
}

func BenchmarkDeviceByTokenCached(b *testing.B) {
	c := newTokenCache(tokenCacheSize, tokenCacheTTL, lastSeenEvery)
	now := time.Now()
	c.put(hashToken("tok"), uapi.Device{UserID: "@a:x", DeviceID: "D", LastSeenTS: now.UnixMilli()}, 0, now, "")
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, _, ok := c.get(hashToken("tok"), now, "127.0.0.1"); !ok {
			b.Fatal("miss")
		}
	}
}
