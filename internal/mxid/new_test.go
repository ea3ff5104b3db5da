package mxid

import "testing"

func TestNewRoomID(t *testing.T) {
	seen := map[string]bool{}
	for _, server := range []string{"example.org", "localhost:8448", "[::1]:8008"} {
		for i := 0; i < 50; i++ {
			id := NewRoomID(server)
			if err := RoomID(id); err != nil {
				t.Fatalf("NewRoomID(%q) = %q: %v", server, id, err)
			}
			if seen[id] {
				t.Fatalf("NewRoomID(%q) made %q twice", server, id)
			}
			seen[id] = true
		}
	}
}
