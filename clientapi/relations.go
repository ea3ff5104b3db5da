package clientapi

import (
	"context"
	"encoding/json"

	"github.com/tidwall/gjson"

	"myelin/internal/mxhttp"
)

// checkRelation refuses a relation the server can tell is broken before
// it is sent (spec: "Validation of m.thread relationships"): a parent of
// another room, and a thread started from an event that is itself a
// child (threads do not nest), both 400 M_UNKNOWN as the spec says. A
// parent this server does not have is let through: the client may know
// it from elsewhere, and the relation is then ignored as the spec says.
func (c *ClientAPI) checkRelation(ctx context.Context, roomID string, content json.RawMessage) error {
	r := gjson.GetManyBytes(content, `m\.relates_to.rel_type`, `m\.relates_to.event_id`)
	if r[0].Type != gjson.String || r[1].Type != gjson.String || c.rooms == nil {
		return nil
	}
	relType, parentID := r[0].String(), r[1].String()
	parents, err := c.rooms.Events(ctx, []string{parentID})
	if err != nil {
		return err
	}
	if len(parents) == 0 {
		return nil
	}
	parent := parents[0]
	if parent.RoomID().String() != roomID {
		return mxhttp.Unknown("Relations must be in the same room")
	}
	if relType == "m.thread" && gjson.GetBytes(parent.Content(), `m\.relates_to.rel_type`).Exists() {
		return mxhttp.Unknown("Cannot start threads from an event with a relation")
	}
	return nil
}
