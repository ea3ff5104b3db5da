package clientapi

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"myelin/internal/mxhttp"
	"myelin/internal/mxid"
	rsapi "myelin/roomserver/api"
	"myelin/setup/config"
	uapi "myelin/userapi/api"
)

type createRoomRequest struct {
	Visibility    string   `json:"visibility"`
	RoomAliasName string   `json:"room_alias_name"`
	Name          *string  `json:"name"`
	Topic         *string  `json:"topic"`
	Invite        []string `json:"invite"`
	// Invite3PID are addresses invited through identity servers once the
	// room exists.
	Invite3PID                []thirdPartyInvite `json:"invite_3pid"`
	RoomVersion               string             `json:"room_version"`
	CreationContent           json.RawMessage    `json:"creation_content"`
	InitialState              []initialStateEvt  `json:"initial_state"`
	Preset                    string             `json:"preset"`
	IsDirect                  bool               `json:"is_direct"`
	PowerLevelContentOverride json.RawMessage    `json:"power_level_content_override"`
}

// thirdPartyInvite is an entry of invite_3pid (spec: POST /createRoom).
type thirdPartyInvite struct {
	IDServer      string `json:"id_server"`
	IDAccessToken string `json:"id_access_token"`
	Medium        string `json:"medium"`
	Address       string `json:"address"`
}

type initialStateEvt struct {
	Type     string          `json:"type"`
	StateKey string          `json:"state_key"`
	Content  json.RawMessage `json:"content"`
}

func (req *createRoomRequest) Validate() error {
	switch req.Visibility {
	case "", "public", "private":
	default:
		return mxhttp.BadJSON("visibility must be 'public' or 'private'")
	}
	switch req.Preset {
	case "", "private_chat", "public_chat", "trusted_private_chat":
	default:
		return mxhttp.BadJSON("unknown preset %q", req.Preset)
	}
	if req.RoomAliasName != "" && strings.ContainsAny(req.RoomAliasName, ":# \t\n") {
		return mxhttp.New("M_INVALID_PARAM", "room_alias_name must be the local part of an alias")
	}
	for _, u := range req.Invite {
		if err := mxhttp.CheckParam("invite", u, mxid.UserID); err != nil {
			return err
		}
	}
	for i := range req.Invite3PID {
		if err := req.Invite3PID[i].validate(); err != nil {
			return err
		}
	}
	for _, obj := range []json.RawMessage{req.CreationContent, req.PowerLevelContentOverride} {
		if len(obj) > 0 && string(obj) != "null" && !isObject(obj) {
			return mxhttp.BadJSON("creation_content and power_level_content_override must be objects")
		}
	}
	for _, e := range req.InitialState {
		if e.Type == "" || !isObject(e.Content) {
			return mxhttp.BadJSON("initial_state events need a type and an object content")
		}
	}
	return nil
}

func isObject(b json.RawMessage) bool {
	s := strings.TrimSpace(string(b))
	return strings.HasPrefix(s, "{") && json.Valid(b)
}

// checkNoCreators refuses power levels whose users name a room creator
// (room version 12: creators are not listed).
func checkNoCreators(users any, sender string, additional any) error {
	listed, _ := users.(map[string]any)
	creators := []string{sender}
	if extra, ok := additional.([]any); ok {
		for _, c := range extra {
			if s, ok := c.(string); ok {
				creators = append(creators, s)
			}
		}
	}
	for _, c := range creators {
		if _, ok := listed[c]; ok {
			return mxhttp.BadJSON("the room's creator %s may not be given a power level in room version 12", c)
		}
	}
	return nil
}

// presetConfig is what a room preset sets (spec: POST /createRoom, preset).
type presetConfig struct {
	joinRules     string
	historyVis    string
	guestAccess   string
	inviteesAdmin bool
	inviteLevel   int
}

var presets = map[string]presetConfig{
	"private_chat":         {joinRules: "invite", historyVis: "shared", guestAccess: "can_join", inviteLevel: 0},
	"trusted_private_chat": {joinRules: "invite", historyVis: "shared", guestAccess: "can_join", inviteesAdmin: true, inviteLevel: 0},
	"public_chat":          {joinRules: "public", historyVis: "shared", guestAccess: "forbidden", inviteLevel: 50},
}

func (c *ClientAPI) createRoom(r *http.Request, dev *uapi.Device) (any, error) {
	ctx := r.Context()
	var req createRoomRequest
	if err := mxhttp.ReadJSON(r, &req); err != nil {
		return nil, err
	}
	version := req.RoomVersion
	if version == "" {
		version = c.cfg.Rooms.DefaultVersion
	}
	if !config.SupportedRoomVersion(version) {
		return nil, mxhttp.New("M_UNSUPPORTED_ROOM_VERSION", "room version %q is not supported", version)
	}
	verImpl, err := gmsl.GetRoomVersion(gmsl.RoomVersion(version))
	if err != nil {
		return nil, mxhttp.New("M_UNSUPPORTED_ROOM_VERSION", "room version %q is not supported", version)
	}
	if err := allow(c.limits.send, dev.UserID); err != nil {
		return nil, err
	}
	var alias string
	if req.RoomAliasName != "" {
		alias = "#" + req.RoomAliasName + ":" + c.cfg.ServerName
		if !validAlias(alias) {
			return nil, mxhttp.InvalidParam("invalid room_alias_name")
		}
		if _, err := c.rooms.ResolveAlias(ctx, alias); err == nil {
			return nil, mxhttp.New("M_ROOM_IN_USE", "Room alias %s already taken", alias)
		} else if !errors.Is(err, rsapi.ErrAliasNotFound) {
			return nil, err
		}
	}
	presetName := req.Preset
	if presetName == "" {
		presetName = "private_chat"
		if req.Visibility == "public" {
			presetName = "public_chat"
		}
	}
	preset := presets[presetName]
	sender := dev.UserID
	state := func(evType, key string, content any) rsapi.InputEvent {
		raw, _ := json.Marshal(content)
		return rsapi.InputEvent{Proto: &rsapi.ProtoEvent{Sender: sender, Type: evType, StateKey: &key, Content: raw}}
	}

	// 1. m.room.create, from creation_content plus what the version needs.
	create := map[string]any{}
	if len(req.CreationContent) > 0 && string(req.CreationContent) != "null" {
		if err := json.Unmarshal(req.CreationContent, &create); err != nil {
			return nil, mxhttp.BadJSON("creation_content must be an object")
		}
	}
	create["room_version"] = version
	if verImpl.CreatorInCreateEvent() {
		create["creator"] = sender
	} else {
		delete(create, "creator")
	}
	events := []rsapi.InputEvent{state(spec.MRoomCreate, "", create)}

	// 2. The creator joins.
	joinContent, err := c.memberContent(ctx, spec.Join, sender, "", nil)
	if err != nil {
		return nil, err
	}
	events = append(events, rsapi.InputEvent{Proto: &rsapi.ProtoEvent{Sender: sender, Type: spec.MRoomMember, StateKey: &sender, Content: joinContent}})

	// 3. Power levels: defaults, the preset, then the client's override.
	users := map[string]any{}
	if !verImpl.PrivilegedCreators() {
		users[sender] = 100 // from v12 creators have infinite power and must not be listed
	}
	if preset.inviteesAdmin {
		for _, u := range req.Invite {
			users[u] = 100
		}
	}
	pl := map[string]any{
		"users":         users,
		"users_default": 0,
		"events": map[string]any{
			spec.MRoomName: 50, spec.MRoomPowerLevels: 100, spec.MRoomHistoryVisibility: 100,
			spec.MRoomCanonicalAlias: 50, "m.room.avatar": 50, "m.room.tombstone": 100,
			"m.room.server_acl": 100, spec.MRoomEncryption: 100,
		},
		"events_default": 0,
		"state_default":  50,
		"ban":            50,
		"kick":           50,
		"redact":         50,
		"invite":         preset.inviteLevel,
		"historical":     100,
	}
	if verImpl.PrivilegedCreators() {
		// From room version 12 upgrading a room needs more than any
		// administrator has (spec: room version 12, default power levels).
		pl["events"].(map[string]any)["m.room.tombstone"] = 150
	}
	if len(req.PowerLevelContentOverride) > 0 && string(req.PowerLevelContentOverride) != "null" {
		var override map[string]any
		if err := json.Unmarshal(req.PowerLevelContentOverride, &override); err != nil {
			return nil, mxhttp.BadJSON("power_level_content_override must be an object")
		}
		for k, v := range override {
			pl[k] = v
		}
	}
	if verImpl.PrivilegedCreators() {
		// The creators have infinite power: naming one in users is a
		// request the room version cannot honour (400, as Synapse).
		if err := checkNoCreators(pl["users"], sender, create["additional_creators"]); err != nil {
			return nil, err
		}
	}
	plIndex := len(events)
	events = append(events, state(spec.MRoomPowerLevels, "", pl))

	// 4. The canonical alias.
	if alias != "" {
		events = append(events, state(spec.MRoomCanonicalAlias, "", map[string]string{"alias": alias}))
	}

	// 5. What the preset sets, unless initial_state sets it too.
	initial := map[[2]string]bool{}
	for _, e := range req.InitialState {
		initial[[2]string{e.Type, e.StateKey}] = true
	}
	for _, p := range []struct {
		evType string
		body   map[string]string
	}{
		{spec.MRoomJoinRules, map[string]string{"join_rule": preset.joinRules}},
		{spec.MRoomHistoryVisibility, map[string]string{"history_visibility": preset.historyVis}},
		{spec.MRoomGuestAccess, map[string]string{"guest_access": preset.guestAccess}},
	} {
		// A room without m.room.guest_access is closed to guests: public_chat's
		// "forbidden" needs no event (Synapse writes none either).
		if p.evType == spec.MRoomGuestAccess && preset.guestAccess == "forbidden" {
			continue
		}
		if !initial[[2]string{p.evType, ""}] {
			events = append(events, state(p.evType, "", p.body))
		}
	}

	// 6. initial_state; a power_levels entry replaces the generated one.
	for _, e := range req.InitialState {
		if e.Type == spec.MRoomPowerLevels && e.StateKey == "" {
			events[plIndex] = state(e.Type, "", e.Content)
			continue
		}
		if e.Type == spec.MRoomCreate || (e.Type == spec.MRoomMember && e.StateKey == sender) {
			continue
		}
		events = append(events, state(e.Type, e.StateKey, e.Content))
	}

	// 7. Name and topic take precedence over initial_state.
	if req.Name != nil {
		events = append(events, state(spec.MRoomName, "", map[string]string{"name": *req.Name}))
	}
	if req.Topic != nil {
		// The plain topic and its rich representation (spec v1.15:
		// m.topic, the text/plain body).
		events = append(events, state(spec.MRoomTopic, "", map[string]any{
			"topic":   *req.Topic,
			"m.topic": map[string]any{"m.text": []map[string]string{{"mimetype": "text/plain", "body": *req.Topic}}},
		}))
	}

	// 8. Invites. An invitee of another server is invited once the room
	// exists: its server must sign the invite (spec: server-server API,
	// "Inviting to a room"), which a batch built here cannot wait for.
	var remoteInvites []string
	for _, u := range req.Invite {
		if u == sender {
			continue
		}
		if uid, err := spec.NewUserID(u, true); err == nil && string(uid.Domain()) != c.cfg.ServerName {
			remoteInvites = append(remoteInvites, u)
			continue
		}
		extra := map[string]any{}
		if req.IsDirect {
			extra["is_direct"] = true
		}
		content, err := c.memberContent(ctx, spec.Invite, u, "", extra)
		if err != nil {
			return nil, err
		}
		invitee := u
		events = append(events, rsapi.InputEvent{Proto: &rsapi.ProtoEvent{Sender: sender, Type: spec.MRoomMember, StateKey: &invitee, Content: content}})
	}

	// Refused here rather than after the bus carried them to the
	// roomserver: events too large, or too many bytes for one message.
	total := 0
	for _, ev := range events {
		if err := checkEvent(ev.Proto); err != nil {
			return nil, err
		}
		total += len(ev.Proto.Content)
	}
	if total > maxInputBytes {
		return nil, mxhttp.New("M_TOO_LARGE", "the room's initial events come to more than %d bytes", maxInputBytes)
	}
	in := &rsapi.InputRequest{RoomVersion: version, Events: events}
	if !verImpl.DomainlessRoomIDs() {
		in.NewRoomID = mxid.NewRoomID(c.cfg.ServerName)
	}
	resp, err := c.rooms.Input(ctx, in)
	if err != nil {
		var bad *rsapi.BadEventError
		if errors.As(err, &bad) && bad.Code == "M_TOO_LARGE" {
			return nil, mxhttp.New("M_TOO_LARGE", "cannot create room: %v", err)
		}
		if rsapi.IsNotAllowed(err) || errors.As(err, &bad) {
			// A refused initial event means the request was bad (e.g. an
			// override the auth rules reject).
			return nil, mxhttp.BadJSON("cannot create room: %v", err)
		}
		return nil, err
	}
	for _, u := range remoteInvites {
		// The room stands without them, as in Synapse and Dendrite: an
		// invitee's server that fails costs only that invite.
		if err := c.rooms.PerformInvite(ctx, &rsapi.InviteRequest{RoomID: resp.RoomID, Sender: sender, Invitee: u, IsDirect: req.IsDirect}); err != nil {
			c.log.WithError(err).WithField("room_id", resp.RoomID).WithField("invitee", u).Warn("createRoom: invite of a remote user failed")
		}
	}
	for _, inv := range req.Invite3PID {
		// Likewise: an identity server that fails costs only its invite.
		if err := c.inviteThirdParty(ctx, dev, resp.RoomID, inv); err != nil {
			c.log.WithError(err).WithField("room_id", resp.RoomID).Warn("createRoom: third-party invite failed")
		}
	}
	out := map[string]string{"room_id": resp.RoomID}
	if req.Visibility == "public" {
		if err := c.rooms.SetPublished(ctx, resp.RoomID, true); err != nil {
			return nil, err
		}
	}
	if alias != "" {
		if err := c.rooms.SetAlias(ctx, alias, resp.RoomID, sender); err != nil {
			if errors.Is(err, rsapi.ErrAliasInUse) {
				return nil, mxhttp.New("M_ROOM_IN_USE", "Room alias %s already taken", alias)
			}
			return nil, err
		}
		out["room_alias"] = alias
	}
	return out, nil
}
