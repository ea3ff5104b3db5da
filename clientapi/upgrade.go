package clientapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"

	gmsl "github.com/matrix-org/gomatrixserverlib"

	"myelin/internal/mxhttp"
	"myelin/internal/mxid"
	rsapi "myelin/roomserver/api"
	"myelin/setup/config"
	uapi "myelin/userapi/api"
)

const mRoomTombstone = "m.room.tombstone"

// upgradeRoom replaces a room with a new one of another version
// (POST /rooms/{roomId}/upgrade). The roomserver does the upgrade
// (rsapi.Performer); what follows here is the users' data of the room.
func (c *ClientAPI) upgradeRoom(r *http.Request, dev *uapi.Device) (any, error) {
	ctx := r.Context()
	oldID := mxhttp.Var(r, "roomId")
	var req struct {
		NewVersion string `json:"new_version"`
		// From room version 12 the upgrader may name more creators, who
		// share its unlimited power in the new room.
		AdditionalCreators []string `json:"additional_creators"`
	}
	if err := mxhttp.ReadJSON(r, &req); err != nil {
		return nil, err
	}
	for _, u := range req.AdditionalCreators {
		if err := mxhttp.CheckParam("additional_creators", u, mxid.UserID); err != nil {
			return nil, err
		}
	}
	if !config.SupportedRoomVersion(req.NewVersion) {
		return nil, mxhttp.New("M_UNSUPPORTED_ROOM_VERSION", "room version %q is not supported", req.NewVersion)
	}
	if _, err := gmsl.GetRoomVersion(gmsl.RoomVersion(req.NewVersion)); err != nil {
		return nil, mxhttp.New("M_UNSUPPORTED_ROOM_VERSION", "room version %q is not supported", req.NewVersion)
	}
	if err := allow(c.limits.send, dev.UserID); err != nil {
		return nil, err
	}
	resp, err := c.rooms.PerformUpgrade(ctx, &rsapi.UpgradeRequest{
		RoomID: oldID, Sender: dev.UserID, NewVersion: req.NewVersion, AdditionalCreators: req.AdditionalCreators,
	})
	if err != nil {
		return nil, err
	}
	newID := resp.NewRoomID
	// What follows the room for its users: the upgrader's room account
	// data, and each local member's push rules for it. The old room's
	// members are as they were: the upgrade changed none.
	state := map[gmsl.StateKeyTuple]gmsl.PDU{}
	if old, err := c.rooms.CurrentState(ctx, oldID); err == nil {
		for _, ev := range old {
			state[gmsl.StateKeyTuple{EventType: ev.Type(), StateKey: *ev.StateKey()}] = ev
		}
	}
	c.moveAccountData(ctx, dev, oldID, newID)
	c.copyRoomPushRules(ctx, oldID, newID, state)
	return map[string]string{"replacement_room": newID}, nil
}

func membershipOf(ev gmsl.PDU) string {
	m, _ := ev.Membership()
	return m
}

// moveAccountData gives the upgrader's direct-chat and tag account data
// of the old room to the new one; a failure does not undo the upgrade.
func (c *ClientAPI) moveAccountData(ctx context.Context, dev *uapi.Device, oldID, newID string) {
	log := mxhttp.Logger(ctx)
	// The upgrader's own room data follows the room.
	if raw, err := c.users.AccountData(ctx, dev.UserID, "", "m.direct"); err == nil {
		var direct map[string][]string
		if json.Unmarshal(raw, &direct) == nil {
			changed := false
			for u, rooms := range direct {
				for _, r := range rooms {
					if r == oldID {
						direct[u] = append(rooms, newID)
						changed = true
						break
					}
				}
			}
			if changed {
				b, _ := json.Marshal(direct)
				if _, err := c.users.SetAccountData(ctx, dev.UserID, "", "m.direct", b); err != nil {
					log.WithError(err).Warn("room upgrade: could not update m.direct")
				}
			}
		}
	}
	if raw, err := c.users.AccountData(ctx, dev.UserID, oldID, "m.tag"); err == nil {
		if _, err := c.users.SetAccountData(ctx, dev.UserID, newID, "m.tag", raw); err != nil {
			log.WithError(err).Warn("room upgrade: could not copy tags")
		}
	}
}

// followUpgrade gives a user joining an upgraded room's replacement the
// tags and push rules they had for the old room, as Synapse does when a
// user joins a room with a predecessor: members of other servers and
// local members who join later get them this way (the upgrade itself
// copies those of the upgrader and of local members). Data already set
// for the new room is left alone; a failure does not undo the join.
func (c *ClientAPI) followUpgrade(ctx context.Context, userID, roomID string) {
	oldID := rsapi.Predecessor(ctx, c.rooms, roomID)
	if oldID == "" {
		return
	}
	log := mxhttp.Logger(ctx).WithField("user_id", userID).WithField("room_id", roomID)
	if _, err := c.users.AccountData(ctx, userID, roomID, "m.tag"); errors.Is(err, uapi.ErrNotFound) {
		if raw, err := c.users.AccountData(ctx, userID, oldID, "m.tag"); err == nil {
			if _, err := c.users.SetAccountData(ctx, userID, roomID, "m.tag", raw); err != nil {
				log.WithError(err).Warn("join of an upgraded room: could not copy tags")
			}
		}
	}
	c.copyUserPushRules(ctx, userID, oldID, roomID)
}
