package clientapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"myelin/internal/mxhttp"
	"myelin/internal/mxid"
	rsapi "myelin/roomserver/api"
	"myelin/setup/config"
	uapi "myelin/userapi/api"
)

const mRoomTombstone = "m.room.tombstone"

// copiedState is the state an upgrade carries into the new room
// (spec: "Server behaviour" of room upgrades).
var copiedState = []string{
	spec.MRoomJoinRules, spec.MRoomHistoryVisibility, spec.MRoomGuestAccess, spec.MRoomName,
	spec.MRoomTopic, "m.room.avatar", spec.MRoomEncryption, "m.room.server_acl", "m.room.related_groups",
}

// upgradeRoom replaces a room with a new one of another version
// (POST /rooms/{roomId}/upgrade): a tombstone in the old room, a new room
// carrying its state, bans, power levels, aliases and directory entry, and
// the old room's power levels raised so that its members move on.
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
	verImpl, err := gmsl.GetRoomVersion(gmsl.RoomVersion(req.NewVersion))
	if err != nil {
		return nil, mxhttp.New("M_UNSUPPORTED_ROOM_VERSION", "room version %q is not supported", req.NewVersion)
	}
	old, err := c.rooms.CurrentState(ctx, oldID)
	if errors.Is(err, rsapi.ErrRoomNotFound) {
		return nil, mxhttp.NotFound("Unknown room %s", oldID)
	}
	if err != nil {
		return nil, err
	}
	state := map[gmsl.StateKeyTuple]gmsl.PDU{}
	for _, ev := range old {
		state[gmsl.StateKeyTuple{EventType: ev.Type(), StateKey: *ev.StateKey()}] = ev
	}
	if m := state[gmsl.StateKeyTuple{EventType: spec.MRoomMember, StateKey: dev.UserID}]; m == nil || membershipOf(m) != spec.Join {
		return nil, mxhttp.Forbidden("You are not in this room")
	}
	if ok, err := c.hasStatePower(r, oldID, dev.UserID, mRoomTombstone); err != nil {
		return nil, err
	} else if !ok {
		return nil, mxhttp.Forbidden("You may not upgrade this room")
	}
	if err := allow(c.limits.send, dev.UserID); err != nil {
		return nil, err
	}

	// Room IDs of versions before 12 are chosen here, so the tombstone can
	// name the new room before it exists and the new room can name the
	// tombstone as its predecessor; a v12 room's ID comes from its create
	// event, so its create event is made first.
	var newID, tombstoneID string
	if !verImpl.DomainlessRoomIDs() {
		newID = "!" + randomString(18) + ":" + c.cfg.ServerName
		if tombstoneID, err = c.sendTombstone(ctx, dev.UserID, oldID, newID); err != nil {
			return nil, err
		}
	}
	newID, err = c.createReplacement(ctx, dev.UserID, oldID, newID, tombstoneID, verImpl, state, req.AdditionalCreators)
	if err != nil {
		return nil, err
	}
	if tombstoneID == "" {
		if _, err := c.sendTombstone(ctx, dev.UserID, oldID, newID); err != nil {
			return nil, err
		}
	}
	c.moveRoomExtras(ctx, dev, oldID, newID, state)
	c.copyRoomPushRules(ctx, oldID, newID, state)
	return map[string]string{"replacement_room": newID}, nil
}

func membershipOf(ev gmsl.PDU) string {
	m, _ := ev.Membership()
	return m
}

func (c *ClientAPI) sendTombstone(ctx context.Context, sender, oldID, newID string) (string, error) {
	content, _ := json.Marshal(map[string]string{"body": "This room has been replaced", "replacement_room": newID})
	empty := ""
	return c.send(ctx, oldID, rsapi.InputEvent{Proto: &rsapi.ProtoEvent{Sender: sender, Type: mRoomTombstone, StateKey: &empty, Content: content}})
}

// createReplacement creates the new room in one atomic batch and returns
// its ID.
func (c *ClientAPI) createReplacement(ctx context.Context, sender, oldID, newID, tombstoneID string, verImpl gmsl.IRoomVersion,
	state map[gmsl.StateKeyTuple]gmsl.PDU, extraCreators []string) (string, error) {
	stateEv := func(evType, key string, content any) rsapi.InputEvent {
		raw, _ := json.Marshal(content)
		k := key
		return rsapi.InputEvent{Proto: &rsapi.ProtoEvent{Sender: sender, Type: evType, StateKey: &k, Content: raw}}
	}
	create := map[string]any{}
	if oldCreate := state[gmsl.StateKeyTuple{EventType: spec.MRoomCreate}]; oldCreate != nil {
		var oc map[string]any
		_ = json.Unmarshal(oldCreate.Content(), &oc)
		for _, k := range []string{"m.federate", "type"} {
			if v, ok := oc[k]; ok {
				create[k] = v
			}
		}
	}
	predecessor := map[string]string{"room_id": oldID}
	if tombstoneID != "" {
		predecessor["event_id"] = tombstoneID
	}
	create["predecessor"] = predecessor
	create["room_version"] = string(verImpl.Version())
	if verImpl.CreatorInCreateEvent() {
		create["creator"] = sender
	}
	if !verImpl.PrivilegedCreators() {
		extraCreators = nil // only version 12's create event has them
	}
	if len(extraCreators) > 0 {
		create["additional_creators"] = extraCreators
	}
	events := []rsapi.InputEvent{stateEv(spec.MRoomCreate, "", create)}
	join, err := c.memberContent(ctx, spec.Join, sender, "", nil)
	if err != nil {
		return "", err
	}
	events = append(events, rsapi.InputEvent{Proto: &rsapi.ProtoEvent{Sender: sender, Type: spec.MRoomMember, StateKey: &sender, Content: join}})

	// Power levels: the old room's, but the upgrader needs the power to
	// send the initial state, so it is raised for the creation and put
	// back at the end. From v12 the creator's power is unlimited and it
	// must not be listed.
	var pl map[string]any
	if ev := state[gmsl.StateKeyTuple{EventType: spec.MRoomPowerLevels}]; ev != nil {
		_ = json.Unmarshal(ev.Content(), &pl)
	}
	if pl == nil {
		pl = map[string]any{}
	}
	users, _ := pl["users"].(map[string]any)
	if users == nil {
		users = map[string]any{}
	}
	restore := false
	if verImpl.PrivilegedCreators() {
		delete(users, sender)
		for _, u := range extraCreators {
			delete(users, u)
		}
		pl["users"] = users
		events = append(events, stateEv(spec.MRoomPowerLevels, "", pl))
	} else {
		need := maxLevel(pl)
		if have := levelOf(users[sender], levelOf(pl["users_default"], 0)); have < need {
			boosted := map[string]any{}
			for k, v := range pl {
				boosted[k] = v
			}
			boostedUsers := map[string]any{}
			for k, v := range users {
				boostedUsers[k] = v
			}
			boostedUsers[sender] = need
			boosted["users"] = boostedUsers
			events = append(events, stateEv(spec.MRoomPowerLevels, "", boosted))
			restore = true
		} else {
			pl["users"] = users
			events = append(events, stateEv(spec.MRoomPowerLevels, "", pl))
		}
	}
	for _, t := range copiedState {
		if ev := state[gmsl.StateKeyTuple{EventType: t}]; ev != nil {
			events = append(events, stateEv(t, "", json.RawMessage(ev.Content())))
		}
	}
	for tuple, ev := range state {
		if tuple.EventType == spec.MRoomMember && membershipOf(ev) == spec.Ban {
			events = append(events, stateEv(spec.MRoomMember, tuple.StateKey, map[string]string{"membership": spec.Ban}))
		}
	}
	if restore {
		pl["users"] = users
		events = append(events, stateEv(spec.MRoomPowerLevels, "", pl))
	}
	resp, err := c.rooms.Input(ctx, &rsapi.InputRequest{RoomVersion: string(verImpl.Version()), NewRoomID: newID, Events: events})
	if err != nil {
		return "", roomError(err)
	}
	return resp.RoomID, nil
}

// levelOf reads a power level from decoded JSON.
func levelOf(v any, def int) int {
	if f, ok := v.(float64); ok {
		return int(f)
	}
	return def
}

// maxLevel is the highest level any action or event needs in a power
// levels content, at least 100.
func maxLevel(pl map[string]any) int {
	m := 100
	for _, k := range []string{"ban", "kick", "redact", "invite", "state_default", "events_default"} {
		m = max(m, levelOf(pl[k], 0))
	}
	if evs, ok := pl["events"].(map[string]any); ok {
		for _, v := range evs {
			m = max(m, levelOf(v, 0))
		}
	}
	return m
}

// moveRoomExtras does what follows an upgrade and may partly fail without
// undoing it: restricting the old room, moving aliases and the directory
// entry, and the upgrader's direct-chat and tag account data.
func (c *ClientAPI) moveRoomExtras(ctx context.Context, dev *uapi.Device, oldID, newID string, state map[gmsl.StateKeyTuple]gmsl.PDU) {
	log := mxhttp.Logger(ctx)
	empty := ""
	send := func(roomID, evType string, content any) {
		raw, _ := json.Marshal(content)
		if _, err := c.send(ctx, roomID, rsapi.InputEvent{Proto: &rsapi.ProtoEvent{Sender: dev.UserID, Type: evType, StateKey: &empty, Content: raw}}); err != nil {
			log.WithError(err).WithField("room_id", roomID).Warn("room upgrade: could not send " + evType)
		}
	}
	// Members of the old room can no longer talk or invite there.
	if ev := state[gmsl.StateKeyTuple{EventType: spec.MRoomPowerLevels}]; ev != nil {
		var pl map[string]any
		if json.Unmarshal(ev.Content(), &pl) == nil {
			restricted := max(50, levelOf(pl["users_default"], 0)+1)
			changed := false
			for _, k := range []string{"events_default", "invite"} {
				if levelOf(pl[k], 0) < restricted {
					pl[k] = restricted
					changed = true
				}
			}
			if changed {
				send(oldID, spec.MRoomPowerLevels, pl)
			}
		}
	}
	// Local aliases point at the new room; the canonical alias moves.
	if aliases, err := c.rooms.RoomAliases(ctx, oldID); err == nil {
		for _, a := range aliases {
			creator, _ := c.rooms.AliasCreator(ctx, a)
			if creator == "" {
				creator = dev.UserID
			}
			if err := c.rooms.RemoveAlias(ctx, a); err == nil {
				_ = c.rooms.SetAlias(ctx, a, newID, creator)
			}
		}
	}
	if ev := state[gmsl.StateKeyTuple{EventType: spec.MRoomCanonicalAlias}]; ev != nil && len(ev.Content()) > 2 {
		send(newID, spec.MRoomCanonicalAlias, json.RawMessage(ev.Content()))
		send(oldID, spec.MRoomCanonicalAlias, map[string]any{})
	}
	if published, err := c.rooms.IsPublished(ctx, oldID); err == nil && published {
		_ = c.rooms.SetPublished(ctx, newID, true)
		_ = c.rooms.SetPublished(ctx, oldID, false)
	}
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
