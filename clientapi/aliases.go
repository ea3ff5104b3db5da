package clientapi

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"myelin/internal/mxhttp"
	"myelin/internal/mxid"
	rsapi "myelin/roomserver/api"
	uapi "myelin/userapi/api"
)

// aliasParam returns the alias in the path (whose grammar the HTTP edge
// checked), checked to be one of ours when local is set.
func (c *ClientAPI) aliasParam(r *http.Request, local bool) (string, error) {
	a := mxhttp.Var(r, "roomAlias")
	if local && !strings.HasSuffix(a, ":"+c.cfg.ServerName) {
		return "", mxhttp.InvalidParam("alias must be on this server (%s)", c.cfg.ServerName)
	}
	return a, nil
}

func (c *ClientAPI) putAlias(r *http.Request, dev *uapi.Device) (any, error) {
	ctx := r.Context()
	alias, err := c.aliasParam(r, true)
	if err != nil {
		return nil, err
	}
	if !validAlias(alias) {
		return nil, mxhttp.InvalidParam("an alias needs a local part without whitespace")
	}
	var req struct {
		RoomID string `json:"room_id"`
	}
	if err := mxhttp.ReadJSON(r, &req); err != nil {
		return nil, err
	}
	if req.RoomID == "" {
		return nil, mxhttp.InvalidParam("room_id is required")
	}
	if err := mxhttp.CheckParam("room_id", req.RoomID, mxid.RoomID); err != nil {
		return nil, err
	}
	m, err := c.rooms.Membership(ctx, req.RoomID, dev.UserID)
	if errors.Is(err, rsapi.ErrRoomNotFound) {
		return nil, mxhttp.NotFound("Room not found")
	}
	if err != nil {
		return nil, err
	}
	if m.Membership != spec.Join && !dev.IsAdmin {
		return nil, mxhttp.Forbidden("You must be in the room to give it an alias")
	}
	if err := c.rooms.SetAlias(ctx, alias, req.RoomID, dev.UserID); err != nil {
		if errors.Is(err, rsapi.ErrAliasInUse) {
			return nil, mxhttp.New("M_UNKNOWN", "Room alias %s already exists", alias).WithStatus(http.StatusConflict)
		}
		return nil, err
	}
	return struct{}{}, nil
}

func (c *ClientAPI) getAlias(r *http.Request) (any, error) {
	alias, err := c.aliasParam(r, false)
	if err != nil {
		return nil, err
	}
	roomID, err := c.rooms.ResolveAlias(r.Context(), alias)
	if errors.Is(err, rsapi.ErrAliasNotFound) {
		return nil, mxhttp.NotFound("Room alias %s not found", alias)
	}
	if err != nil {
		return nil, err
	}
	return map[string]any{"room_id": roomID, "servers": []string{c.cfg.ServerName}}, nil
}

// deleteAlias removes an alias: its creator, an admin, or a user whose
// power level allows setting m.room.canonical_alias may.
func (c *ClientAPI) deleteAlias(r *http.Request, dev *uapi.Device) (any, error) {
	ctx := r.Context()
	alias, err := c.aliasParam(r, true)
	if err != nil {
		return nil, err
	}
	roomID, err := c.rooms.ResolveAlias(ctx, alias)
	if errors.Is(err, rsapi.ErrAliasNotFound) {
		return nil, mxhttp.NotFound("Room alias %s not found", alias)
	}
	if err != nil {
		return nil, err
	}
	creator, err := c.rooms.AliasCreator(ctx, alias)
	if err != nil {
		return nil, err
	}
	if creator != dev.UserID && !dev.IsAdmin {
		ok, err := c.hasStatePower(r, roomID, dev.UserID, spec.MRoomCanonicalAlias)
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, mxhttp.Forbidden("You may not remove this alias")
		}
	}
	if err := c.rooms.RemoveAlias(ctx, alias); err != nil {
		if errors.Is(err, rsapi.ErrAliasNotFound) {
			return nil, mxhttp.NotFound("Room alias %s not found", alias)
		}
		return nil, err
	}
	c.dropCanonicalAlias(r, roomID, dev.UserID, alias)
	return struct{}{}, nil
}

// dropCanonicalAlias removes a deleted alias from the room's
// m.room.canonical_alias event, as Synapse does, so the room does not
// advertise an alias that no longer resolves. It is best effort: a user
// without the power to change the event leaves it as it is.
func (c *ClientAPI) dropCanonicalAlias(r *http.Request, roomID, userID, alias string) {
	ctx := r.Context()
	ev, err := c.rooms.StateEvent(ctx, roomID, spec.MRoomCanonicalAlias, "")
	if err != nil {
		return
	}
	var content map[string]any
	if json.Unmarshal(ev.Content(), &content) != nil {
		return
	}
	changed := false
	if a, _ := content["alias"].(string); a == alias {
		delete(content, "alias")
		changed = true
	}
	if alts, ok := content["alt_aliases"].([]any); ok {
		kept := make([]any, 0, len(alts))
		for _, a := range alts {
			if a != alias {
				kept = append(kept, a)
			}
		}
		if len(kept) != len(alts) {
			content["alt_aliases"] = kept
			changed = true
		}
	}
	if !changed {
		return
	}
	raw, _ := json.Marshal(content)
	empty := ""
	if _, err := c.send(ctx, roomID, rsapi.InputEvent{
		Proto: &rsapi.ProtoEvent{Sender: userID, Type: spec.MRoomCanonicalAlias, StateKey: &empty, Content: raw},
	}); err != nil {
		mxhttp.Logger(ctx).WithError(err).Debug("could not drop a deleted alias from the canonical alias event")
	}
}

// hasStatePower reports whether userID may send state of evType in roomID.
func (c *ClientAPI) hasStatePower(r *http.Request, roomID, userID, evType string) (bool, error) {
	state, err := c.rooms.CurrentState(r.Context(), roomID,
		gmsl.StateKeyTuple{EventType: spec.MRoomCreate}, gmsl.StateKeyTuple{EventType: spec.MRoomPowerLevels})
	if err != nil {
		return false, err
	}
	var create, plEvent gmsl.PDU
	for _, ev := range state {
		switch ev.Type() {
		case spec.MRoomCreate:
			create = ev
		case spec.MRoomPowerLevels:
			plEvent = ev
		}
	}
	if create == nil {
		return false, nil
	}
	// From room v12 the creators have unlimited power.
	if v, err := gmsl.GetRoomVersion(create.Version()); err == nil && v.PrivilegedCreators() {
		for _, cr := range gmsl.CreatorsFromCreateEvent(create) {
			if cr == userID {
				return true, nil
			}
		}
	}
	if plEvent == nil {
		// Without power levels the creator has them all.
		return string(create.SenderID()) == userID, nil
	}
	pl, err := plEvent.PowerLevels()
	if err != nil {
		return false, nil //nolint:nilerr // unreadable levels: refuse
	}
	return pl.UserLevel(spec.SenderID(userID)) >= pl.EventLevel(evType, true), nil
}

func (c *ClientAPI) roomAliases(r *http.Request, dev *uapi.Device) (any, error) {
	ctx := r.Context()
	roomID := mxhttp.Var(r, "roomId")
	if _, err := c.stateAccess(ctx, roomID, dev.UserID); err != nil {
		return nil, err
	}
	aliases, err := c.rooms.RoomAliases(ctx, roomID)
	if err != nil {
		return nil, err
	}
	if aliases == nil {
		aliases = []string{}
	}
	return map[string]any{"aliases": aliases}, nil
}

// capabilities reports what the server lets this user do.
func (c *ClientAPI) capabilities(r *http.Request, dev *uapi.Device) (any, error) {
	available := map[string]string{}
	for v := 1; v <= 12; v++ {
		available[strconv.Itoa(v)] = "stable"
	}
	caps := map[string]any{
		// Guests have no password (POST /account/password refuses them).
		"m.change_password": map[string]bool{"enabled": !dev.IsGuest},
		"m.room_versions": map[string]any{
			"default":   c.cfg.Rooms.DefaultVersion,
			"available": available,
		},
		"m.set_displayname": map[string]bool{"enabled": true},
		"m.set_avatar_url":  map[string]bool{"enabled": true},
		"m.3pid_changes":    map[string]bool{"enabled": false},
		// Guests cannot call /login/get_token (it needs a password).
		"m.get_login_token": map[string]bool{"enabled": c.loginTokensEnabled() && !dev.IsGuest},
	}
	raw, _ := json.Marshal(map[string]any{"capabilities": caps})
	return json.RawMessage(raw), nil
}
