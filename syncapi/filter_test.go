package syncapi

import "testing"

func TestMatchType(t *testing.T) {
	tests := []struct {
		pattern, s string
		want       bool
	}{
		{"m.room.message", "m.room.message", true},
		{"m.room.message", "m.room.member", false},
		{"m.room.*", "m.room.member", true},
		{"m.*.member", "m.room.member", true},
		{"*", "anything", true},
		{"m.room.*", "m.roomx", false},
		{"*.member", "m.room.message", false},
	}
	for _, tt := range tests {
		if got := matchType(tt.pattern, tt.s); got != tt.want {
			t.Errorf("matchType(%q, %q) = %v", tt.pattern, tt.s, got)
		}
	}
}

func TestEventFilterAllows(t *testing.T) {
	types := []string{"m.room.*"}
	senders := []string{"@a:x"}
	f := EventFilter{Types: &types, NotTypes: []string{"m.room.member"}, Senders: &senders}
	tests := []struct {
		evType, sender string
		want           bool
	}{
		{"m.room.message", "@a:x", true},
		{"m.room.member", "@a:x", false},
		{"m.typing", "@a:x", false},
		{"m.room.message", "@b:x", false},
	}
	for _, tt := range tests {
		if got := f.Allows(tt.evType, tt.sender); got != tt.want {
			t.Errorf("Allows(%q, %q) = %v", tt.evType, tt.sender, got)
		}
	}
	empty := []string{}
	none := EventFilter{Types: &empty}
	if none.Allows("m.room.message", "@a:x") {
		t.Error("an empty types list must allow nothing")
	}
}
