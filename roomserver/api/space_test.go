package rsapi

import (
	"encoding/json"
	"slices"
	"testing"
)

// TestSpaceChildren reads children_state as the spec's m.space.child
// says: a room ID state key and a non-empty via of server names.
func TestSpaceChildren(t *testing.T) {
	ev := func(stateKey string, content string) json.RawMessage {
		raw, _ := json.Marshal(map[string]any{"type": "m.space.child", "state_key": stateKey, "content": json.RawMessage(content), "sender": "@a:x", "origin_server_ts": 1})
		return raw
	}
	sum := RoomSummary{ChildrenState: []json.RawMessage{
		ev("!a:x", `{"via":["x","y:8448"],"suggested":true}`),
		ev("!b:x", `{"via":["x"]}`),
		ev("!c:x", `{"via":[]}`),
		ev("!d:x", `{}`),
		ev("not a room", `{"via":["x"]}`),
		ev("!e:x", `{"via":["bad name!", 3]}`),
		ev("!f:x", `{"via":["bad name!", "z"],"suggested":"yes"}`),
		json.RawMessage(`{"type":"m.space.parent","state_key":"!g:x","content":{"via":["x"]}}`),
	}}
	ids := func(cs []SpaceChild) []string {
		var out []string
		for _, c := range cs {
			out = append(out, c.RoomID)
		}
		return out
	}
	if got, want := ids(sum.Children(false)), []string{"!a:x", "!b:x", "!f:x"}; !slices.Equal(got, want) {
		t.Errorf("children %v, want %v", got, want)
	}
	if got, want := ids(sum.Children(true)), []string{"!a:x"}; !slices.Equal(got, want) {
		t.Errorf("suggested children %v, want %v", got, want)
	}
	if via := sum.Children(false)[2].Via; len(via) != 1 || via[0] != "z" {
		t.Errorf("via of !f:x: %v", via)
	}
	if n := len(sum.SuggestedOnly().ChildrenState); n != 1 {
		t.Errorf("SuggestedOnly keeps %d events", n)
	}
	if len(sum.ChildrenState) != 8 {
		t.Error("SuggestedOnly changed the summary it was called on")
	}
}
