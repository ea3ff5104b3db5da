package bus

import (
	"strings"
	"testing"
)

func TestRoomSubject(t *testing.T) {
	long := "!" + strings.Repeat("a", 5000) + ":localhost"
	tests := []struct {
		name   string
		roomID string
	}{
		{"plain", "!abc:localhost"},
		{"dots and port", "!x.y.z:example.org:8448"},
		{"spaces and wildcards", "!a b*>\r\n:evil"},
		{"unicode", "!Ünïcødé:例え.jp"},
		{"5,000 characters", long},
		{"empty", ""},
	}
	seen := map[string]string{}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := RoomSubject(tc.roomID)
			if want := len(InputRoomEvent) + 1 + roomTokenLen; len(got) != want {
				t.Fatalf("RoomSubject is %d bytes, want %d: %q", len(got), want, got)
			}
			token := strings.TrimPrefix(got, InputRoomEvent+".")
			if strings.Trim(token, "0123456789abcdef") != "" {
				t.Fatalf("token %q is not lower-case hex", token)
			}
			if again := RoomSubject(tc.roomID); again != got {
				t.Fatalf("not stable: %q then %q", got, again)
			}
			if other, dup := seen[got]; dup {
				t.Fatalf("%q and %q share subject %q", other, tc.roomID, got)
			}
			seen[got] = tc.roomID
		})
	}
}
