package rsapi

import (
	"encoding/json"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"

	"myelin/internal/mxid"
)

// SpaceChild is one child a space names: its room ID and the servers to
// reach it through.
type SpaceChild struct {
	RoomID    string
	Via       []spec.ServerName
	Suggested bool
}

// Children reads the summary's children_state: the children with a room
// ID for a state key and at least one valid via (spec: m.space.child),
// only the suggested ones when suggestedOnly. A summary from another
// server is read the same way, so nothing it names unchecked gets out.
func (s *RoomSummary) Children(suggestedOnly bool) []SpaceChild {
	var out []SpaceChild
	for _, raw := range s.ChildrenState {
		g := gjson.ParseBytes(raw)
		id := g.Get("state_key").String()
		if g.Get("type").String() != "m.space.child" || mxid.RoomID(id) != nil {
			continue
		}
		c := SpaceChild{RoomID: id, Suggested: g.Get("content.suggested").Type == gjson.True}
		if suggestedOnly && !c.Suggested {
			continue
		}
		for _, v := range g.Get("content.via").Array() {
			if v.Type == gjson.String && mxid.ServerName(v.Str) == nil {
				c.Via = append(c.Via, spec.ServerName(v.Str))
			}
		}
		if len(c.Via) > 0 {
			out = append(out, c)
		}
	}
	return out
}

// SuggestedOnly is the summary with only the suggested children in its
// children_state, as a hierarchy asked with suggested_only shows it.
func (s RoomSummary) SuggestedOnly() RoomSummary {
	kept := make([]json.RawMessage, 0, len(s.ChildrenState))
	for _, raw := range s.ChildrenState {
		if gjson.GetBytes(raw, "content.suggested").Type == gjson.True {
			kept = append(kept, raw)
		}
	}
	s.ChildrenState = kept
	return s
}
