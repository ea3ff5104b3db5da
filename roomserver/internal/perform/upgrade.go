package perform

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"myelin/internal/mxid"
	rsapi "myelin/roomserver/api"
	"myelin/setup/config"
)

const mRoomTombstone = "m.room.tombstone"

// copiedState is the state an upgrade carries into the new room
// (spec: "Server behaviour" of room upgrades).
var copiedState = []string{
	spec.MRoomJoinRules, spec.MRoomHistoryVisibility, spec.MRoomGuestAccess, spec.MRoomName,
	spec.MRoomTopic, "m.room.avatar", spec.MRoomEncryption, "m.room.server_acl", "m.room.related_groups",
}

// PerformUpgrade implements rsapi.Performer (spec: client-server API,
// "Room Upgrades"): a tombstone in the old room, a new room carrying its
// state, bans and power levels, the old room's power levels raised so that
// its members move on, and its aliases and directory entry moved. What
// belongs to users (account data, push rules) is the caller's to move.
func (p *Performer) PerformUpgrade(ctx context.Context, req *rsapi.UpgradeRequest) (*rsapi.UpgradeResponse, error) {
	if !config.SupportedRoomVersion(req.NewVersion) {
		return nil, refuse("M_UNSUPPORTED_ROOM_VERSION", "room version %q is not supported", req.NewVersion)
	}
	verImpl, err := gmsl.GetRoomVersion(gmsl.RoomVersion(req.NewVersion))
	if err != nil {
		return nil, refuse("M_UNSUPPORTED_ROOM_VERSION", "room version %q is not supported", req.NewVersion)
	}
	oldID, sender := req.RoomID, req.Sender
	old, err := p.rooms.CurrentState(ctx, oldID)
	if errors.Is(err, rsapi.ErrRoomNotFound) {
		return nil, refuse("M_NOT_FOUND", "Unknown room %s", oldID)
	}
	if err != nil {
		return nil, fmt.Errorf("state of %s: %w", oldID, err)
	}
	state := map[gmsl.StateKeyTuple]gmsl.PDU{}
	for _, ev := range old {
		state[gmsl.StateKeyTuple{EventType: ev.Type(), StateKey: *ev.StateKey()}] = ev
	}
	if m := state[gmsl.StateKeyTuple{EventType: spec.MRoomMember, StateKey: sender}]; m == nil || membershipOf(m) != spec.Join {
		return nil, forbidden("You are not in this room")
	}
	if !hasStatePower(state, sender, mRoomTombstone) {
		return nil, forbidden("You may not upgrade this room")
	}

	// Room IDs of versions before 12 are chosen here, so the tombstone can
	// name the new room before it exists and the new room can name the
	// tombstone as its predecessor; a v12 room's ID comes from its create
	// event, so its create event is made first.
	var newID, tombstoneID string
	if !verImpl.DomainlessRoomIDs() {
		newID = mxid.NewRoomID(string(p.key.ServerName))
		if tombstoneID, err = p.sendTombstone(ctx, sender, oldID, newID); err != nil {
			return nil, err
		}
	}
	newID, err = p.createReplacement(ctx, sender, oldID, newID, tombstoneID, verImpl, state, req.AdditionalCreators)
	if err != nil {
		return nil, err
	}
	if tombstoneID == "" {
		if _, err := p.sendTombstone(ctx, sender, oldID, newID); err != nil {
			return nil, err
		}
	}
	p.moveRoom(ctx, sender, oldID, newID, state)
	return &rsapi.UpgradeResponse{NewRoomID: newID}, nil
}

func membershipOf(ev gmsl.PDU) string {
	m, _ := ev.Membership()
	return m
}

// hasStatePower reports whether userID may send state of evType in a
// room with state.
func hasStatePower(state map[gmsl.StateKeyTuple]gmsl.PDU, userID, evType string) bool {
	create := state[gmsl.StateKeyTuple{EventType: spec.MRoomCreate}]
	if create == nil {
		return false
	}
	// From room v12 the creators have unlimited power.
	if v, err := gmsl.GetRoomVersion(create.Version()); err == nil && v.PrivilegedCreators() {
		for _, cr := range gmsl.CreatorsFromCreateEvent(create) {
			if cr == userID {
				return true
			}
		}
	}
	plEvent := state[gmsl.StateKeyTuple{EventType: spec.MRoomPowerLevels}]
	if plEvent == nil {
		// Without power levels the creator has them all.
		return string(create.SenderID()) == userID
	}
	pl, err := plEvent.PowerLevels()
	if err != nil {
		return false // unreadable levels: refuse
	}
	return pl.UserLevel(spec.SenderID(userID)) >= pl.EventLevel(evType, true)
}

func (p *Performer) sendTombstone(ctx context.Context, sender, oldID, newID string) (string, error) {
	return p.sendState(ctx, oldID, sender, mRoomTombstone, map[string]string{"body": "This room has been replaced", "replacement_room": newID})
}

// createReplacement creates the new room in one atomic batch and returns
// its ID.
func (p *Performer) createReplacement(ctx context.Context, sender, oldID, newID, tombstoneID string, verImpl gmsl.IRoomVersion,
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
	join, err := p.memberContent(ctx, spec.Join, sender, "", nil)
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
		} else if t == spec.MRoomGuestAccess {
			// No m.room.guest_access means forbidden (public_chat writes
			// none): the new room says so, as clients expect every
			// upgraded room to state its guest access (Synapse's upgrade
			// writes one too).
			events = append(events, stateEv(t, "", map[string]string{"guest_access": "forbidden"}))
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
	resp, err := p.rooms.Input(ctx, &rsapi.InputRequest{RoomVersion: string(verImpl.Version()), NewRoomID: newID, Events: events})
	if err != nil {
		return "", inputError(err)
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

// moveRoom does what follows an upgrade and may partly fail without
// undoing it: restricting the old room, moving the aliases, the canonical
// alias and the directory entry.
func (p *Performer) moveRoom(ctx context.Context, sender, oldID, newID string, state map[gmsl.StateKeyTuple]gmsl.PDU) {
	send := func(roomID, evType string, content any) {
		if _, err := p.sendState(ctx, roomID, sender, evType, content); err != nil {
			p.log.WithError(err).WithField("room_id", roomID).Warn("room upgrade: could not send " + evType)
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
	p.moveDirectory(ctx, oldID, newID, sender)
	if ev := state[gmsl.StateKeyTuple{EventType: spec.MRoomCanonicalAlias}]; ev != nil && len(ev.Content()) > 2 {
		send(newID, spec.MRoomCanonicalAlias, json.RawMessage(ev.Content()))
		send(oldID, spec.MRoomCanonicalAlias, map[string]any{})
	}
}

// moveDirectory points this server's aliases of oldID at newID and moves
// its entry in this server's room directory; an alias with no recorded
// creator is recorded as by, who caused the move.
func (p *Performer) moveDirectory(ctx context.Context, oldID, newID, by string) {
	if aliases, err := p.rooms.RoomAliases(ctx, oldID); err == nil {
		for _, a := range aliases {
			creator, _ := p.rooms.AliasCreator(ctx, a)
			if creator == "" {
				creator = by
			}
			if err := p.rooms.RemoveAlias(ctx, a); err == nil {
				_ = p.rooms.SetAlias(ctx, a, newID, creator)
			}
		}
	}
	if published, err := p.rooms.IsPublished(ctx, oldID); err == nil && published {
		_ = p.rooms.SetPublished(ctx, newID, true)
		_ = p.rooms.SetPublished(ctx, oldID, false)
	}
}

// followPredecessor is what this server does when it first joins a room
// that replaces another (its create event names a predecessor), as
// Synapse does: the upgrade happened on another server, which moved only
// its own aliases and directory entry; this server's follow the room now.
func (p *Performer) followPredecessor(ctx context.Context, roomID, joiner string) {
	if oldID := rsapi.Predecessor(ctx, p.rooms, roomID); oldID != "" {
		p.moveDirectory(ctx, oldID, roomID, joiner)
	}
}
