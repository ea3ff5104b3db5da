package clientapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"github.com/gorilla/mux"
	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"myelin/internal/clientevent"
	"myelin/internal/mxhttp"
	"myelin/internal/mxid"
	rsapi "myelin/roomserver/api"
	uapi "myelin/userapi/api"
)

// roomRoutes registers room creation, sending, state, membership and aliases.
func (c *ClientAPI) roomRoutes(r *mux.Router) {
	r.Handle("/createRoom", c.authed(c.createRoom)).Methods(http.MethodPost)
	r.Handle("/joined_rooms", c.authedGuest(c.joinedRooms)).Methods(http.MethodGet)
	r.Handle("/rooms/{roomId}/send/{eventType}/{txnId}", c.authedGuest(c.sendMessage)).Methods(http.MethodPut)
	r.Handle("/rooms/{roomId}/send/{eventType}", c.authedGuest(c.sendMessageNoTxn)).Methods(http.MethodPost)
	r.Handle("/rooms/{roomId}/state/{eventType}/{stateKey:.*}", c.authedGuest(c.putState)).Methods(http.MethodPut)
	r.Handle("/rooms/{roomId}/state/{eventType}", c.authedGuest(c.putState)).Methods(http.MethodPut)
	r.Handle("/rooms/{roomId}/state/{eventType}/{stateKey:.*}", c.authedGuest(c.getState)).Methods(http.MethodGet)
	r.Handle("/rooms/{roomId}/state/{eventType}", c.authedGuest(c.getState)).Methods(http.MethodGet)
	r.Handle("/rooms/{roomId}/state", c.authedGuest(c.getAllState)).Methods(http.MethodGet)
	r.Handle("/rooms/{roomId}/redact/{eventId}/{txnId}", c.authed(c.redact)).Methods(http.MethodPut)
	r.Handle("/rooms/{roomId}/redact/{eventId}", c.authed(c.redact)).Methods(http.MethodPost)
	r.Handle("/rooms/{roomId}/join", c.authedGuest(c.joinRoomByID)).Methods(http.MethodPost)
	r.Handle("/join/{roomIdOrAlias}", c.authedGuest(c.joinRoomByAlias)).Methods(http.MethodPost)
	r.Handle("/rooms/{roomId}/leave", c.authedGuest(c.leaveRoom)).Methods(http.MethodPost)
	r.Handle("/knock/{roomIdOrAlias}", c.authed(c.knock)).Methods(http.MethodPost)
	r.Handle("/rooms/{roomId}/invite", c.authed(c.invite)).Methods(http.MethodPost)
	r.Handle("/rooms/{roomId}/kick", c.authed(c.membershipChange(rsapi.Kick))).Methods(http.MethodPost)
	r.Handle("/rooms/{roomId}/ban", c.authed(c.membershipChange(rsapi.Ban))).Methods(http.MethodPost)
	r.Handle("/rooms/{roomId}/unban", c.authed(c.membershipChange(rsapi.Unban))).Methods(http.MethodPost)
	r.Handle("/directory/room/{roomAlias}", c.authed(c.putAlias)).Methods(http.MethodPut)
	r.Handle("/directory/room/{roomAlias}", mxhttp.Handler(c.getAlias)).Methods(http.MethodGet)
	r.Handle("/directory/room/{roomAlias}", c.authed(c.deleteAlias)).Methods(http.MethodDelete)
	r.Handle("/rooms/{roomId}/aliases", c.authed(c.roomAliases)).Methods(http.MethodGet)
	r.Handle("/capabilities", c.authedGuest(c.capabilities)).Methods(http.MethodGet)
	r.Handle("/rooms/{roomId}/upgrade", c.authed(c.upgradeRoom)).Methods(http.MethodPost)
}

// readObject reads a request body that must be a JSON object (an empty
// body counts as {} where allowEmpty).
func readObject(r *http.Request, allowEmpty bool) (json.RawMessage, error) {
	b, err := mxhttp.ReadBody(r)
	if err != nil {
		return nil, err
	}
	if allowEmpty && len(mxhttp.TrimJSONSpace(b)) == 0 {
		return json.RawMessage("{}"), nil
	}
	var obj map[string]json.RawMessage
	if err := mxhttp.DecodeJSON(b, &obj); err != nil {
		return nil, err
	}
	return json.RawMessage(b), nil
}

// checkContent refuses event contents the server must not accept whatever
// the auth rules say.
func checkContent(roomID, evType string, content json.RawMessage) error {
	if evType == mRoomTombstone {
		var t struct {
			ReplacementRoom string `json:"replacement_room"`
		}
		if json.Unmarshal(content, &t) == nil && t.ReplacementRoom == roomID {
			return mxhttp.BadJSON("a tombstone cannot point to its own room")
		}
	}
	return nil
}

// send submits one proto-event and returns its event ID.
func (c *ClientAPI) send(ctx context.Context, roomID string, ev rsapi.InputEvent) (string, error) {
	if ev.Proto != nil {
		if err := checkEvent(ev.Proto); err != nil {
			return "", err
		}
	}
	resp, err := c.rooms.Input(ctx, &rsapi.InputRequest{RoomID: roomID, Events: []rsapi.InputEvent{ev}})
	if err != nil {
		return "", roomError(err)
	}
	return resp.EventIDs[0], nil
}

// roomError maps roomserver refusals onto client errors.
func roomError(err error) error {
	var bad *rsapi.BadEventError
	if errors.As(err, &bad) && bad.Code == "M_NOT_FOUND" {
		return mxhttp.Forbidden("You are not in this room")
	}
	return err
}

// sendWithTxn sends ev unless the device's transaction already made an
// event, which is returned instead (also across a crash and restart).
// scope names the endpoint within the room.
func (c *ClientAPI) sendWithTxn(ctx context.Context, dev *uapi.Device, roomID, scope, txnID string, ev rsapi.InputEvent) (any, error) {
	ev.Txn = &rsapi.TxnID{SessionID: dev.SessionID, DeviceID: dev.DeviceID, TxnID: txnID, Scope: roomID + "/" + scope}
	if id, err := c.rooms.TxnEvent(ctx, *ev.Txn); err != nil {
		return nil, err
	} else if id != "" {
		return map[string]string{"event_id": id}, nil
	}
	if err := allow(c.limits.send, dev.UserID); err != nil {
		return nil, err
	}
	id, err := c.send(ctx, roomID, ev)
	if err != nil {
		return nil, err
	}
	return map[string]string{"event_id": id}, nil
}

func (c *ClientAPI) sendMessage(r *http.Request, dev *uapi.Device) (any, error) {
	content, err := readObject(r, false)
	if err != nil {
		return nil, err
	}
	evType := mxhttp.Var(r, "eventType")
	if err := checkContent(mxhttp.Var(r, "roomId"), evType, content); err != nil {
		return nil, err
	}
	if err := c.checkRelation(r.Context(), mxhttp.Var(r, "roomId"), content); err != nil {
		return nil, err
	}
	if delay, ok, err := c.delayParam(r); err != nil || ok {
		if err != nil {
			return nil, err
		}
		return c.scheduleDelayed(r.Context(), dev, mxhttp.Var(r, "roomId"), &rsapi.ProtoEvent{Sender: dev.UserID, Type: evType, Content: content}, delay)
	}
	return c.sendWithTxn(r.Context(), dev, mxhttp.Var(r, "roomId"), "send/"+evType, mxhttp.Var(r, "txnId"), rsapi.InputEvent{
		Proto: &rsapi.ProtoEvent{Sender: dev.UserID, Type: evType, Content: content},
	})
}

// sendMessageNoTxn is the transaction-less POST form of send that early
// clients used (and sytest still does): every request makes a new event.
func (c *ClientAPI) sendMessageNoTxn(r *http.Request, dev *uapi.Device) (any, error) {
	content, err := readObject(r, false)
	if err != nil {
		return nil, err
	}
	if err := checkContent(mxhttp.Var(r, "roomId"), mxhttp.Var(r, "eventType"), content); err != nil {
		return nil, err
	}
	if err := c.checkRelation(r.Context(), mxhttp.Var(r, "roomId"), content); err != nil {
		return nil, err
	}
	if err := allow(c.limits.send, dev.UserID); err != nil {
		return nil, err
	}
	id, err := c.send(r.Context(), mxhttp.Var(r, "roomId"), rsapi.InputEvent{
		Proto: &rsapi.ProtoEvent{Sender: dev.UserID, Type: mxhttp.Var(r, "eventType"), Content: content},
	})
	if err != nil {
		return nil, err
	}
	return map[string]string{"event_id": id}, nil
}

func (c *ClientAPI) putState(r *http.Request, dev *uapi.Device) (any, error) {
	ctx := r.Context()
	roomID, evType, stateKey := mxhttp.Var(r, "roomId"), mxhttp.Var(r, "eventType"), mxhttp.Var(r, "stateKey")
	content, err := readObject(r, false)
	if err != nil {
		return nil, err
	}
	if evType == spec.MRoomCanonicalAlias {
		if err := c.checkCanonicalAlias(ctx, roomID, content); err != nil {
			return nil, err
		}
	}
	if err := checkContent(roomID, evType, content); err != nil {
		return nil, err
	}
	if delay, ok, err := c.delayParam(r); err != nil || ok {
		if err != nil {
			return nil, err
		}
		return c.scheduleDelayed(ctx, dev, roomID, &rsapi.ProtoEvent{Sender: dev.UserID, Type: evType, StateKey: &stateKey, Content: content}, delay)
	}
	if err := allow(c.limits.send, dev.UserID); err != nil {
		return nil, err
	}
	id, err := c.send(ctx, roomID, rsapi.InputEvent{
		Proto:      &rsapi.ProtoEvent{Sender: dev.UserID, Type: evType, StateKey: &stateKey, Content: content},
		DedupState: true,
	})
	if err != nil {
		return nil, err
	}
	// A room closed to guests loses its local guests: the userapi, which
	// knows who is a guest, sees the change on the output stream, from
	// this server or another.
	return map[string]string{"event_id": id}, nil
}

// checkCanonicalAlias refuses aliases that do not point at the room
// (spec: m.room.canonical_alias, M_BAD_ALIAS).
func (c *ClientAPI) checkCanonicalAlias(ctx context.Context, roomID string, content json.RawMessage) error {
	var ca struct {
		Alias      *string  `json:"alias"`
		AltAliases []string `json:"alt_aliases"`
	}
	if err := json.Unmarshal(content, &ca); err != nil {
		return mxhttp.BadJSON("malformed canonical alias content")
	}
	aliases := append([]string(nil), ca.AltAliases...)
	if ca.Alias != nil && *ca.Alias != "" {
		aliases = append(aliases, *ca.Alias)
	}
	for _, a := range aliases {
		if !validAlias(a) {
			return mxhttp.InvalidParam("invalid alias %q", a)
		}
		if !strings.HasSuffix(a, ":"+c.cfg.ServerName) {
			continue // remote aliases cannot be checked here
		}
		target, err := c.rooms.ResolveAlias(ctx, a)
		if err != nil || target != roomID {
			return mxhttp.New("M_BAD_ALIAS", "alias %s does not point to this room", a)
		}
	}
	return nil
}

// validAlias reports whether a is an alias by the spec's grammar with a
// localpart Myelin would create (not empty, no whitespace), as Synapse
// checks canonical aliases.
func validAlias(a string) bool {
	return mxid.RoomAlias(a) == nil && len(a) > 1 && a[1] != ':' && !strings.ContainsAny(a, " \t\n\r")
}

// canSeeState reports whether the user may read the room's current state:
// joined, or the room is world-readable. It returns the user's membership.
func (c *ClientAPI) stateAccess(ctx context.Context, roomID, userID string) (*rsapi.Membership, error) {
	m, err := c.rooms.Membership(ctx, roomID, userID)
	if errors.Is(err, rsapi.ErrRoomNotFound) {
		return nil, mxhttp.Forbidden("You are not in this room")
	}
	if err != nil {
		return nil, err
	}
	if m.Membership == spec.Join {
		return m, nil
	}
	if hv, err := c.rooms.StateEvent(ctx, roomID, spec.MRoomHistoryVisibility, ""); err == nil {
		if v, _ := hv.HistoryVisibility(); v == gmsl.HistoryVisibilityWorldReadable {
			return m, nil
		}
	}
	// A user who left sees the state as it was when it left; a banned
	// one sees nothing, as in Synapse (sytest: "Remote banned user is
	// kicked and may not rejoin until unbanned").
	if m.Membership == spec.Leave && m.EventID != "" {
		return m, nil
	}
	return nil, mxhttp.Forbidden("You are not in this room")
}

// stateFor returns the state the user may see: current, or at its leave.
func (c *ClientAPI) stateFor(ctx context.Context, roomID string, m *rsapi.Membership, tuples ...gmsl.StateKeyTuple) ([]gmsl.PDU, error) {
	if m.Membership == spec.Join || m.EventID == "" {
		return c.rooms.CurrentState(ctx, roomID, tuples...)
	}
	before, err := c.rooms.StateBefore(ctx, m.EventID, tuples...)
	if err != nil {
		return nil, err
	}
	// The state at the leave includes the leave itself.
	own, err := c.rooms.Events(ctx, []string{m.EventID})
	if err != nil {
		return nil, err
	}
	out := before[:0:0]
	for _, p := range before {
		if !(p.Type() == spec.MRoomMember && p.StateKeyEquals(m.UserID)) {
			out = append(out, p)
		}
	}
	for _, p := range own {
		if len(tuples) == 0 || containsTuple(tuples, p) {
			out = append(out, p)
		}
	}
	return out, nil
}

func containsTuple(ts []gmsl.StateKeyTuple, p gmsl.PDU) bool {
	for _, t := range ts {
		if t.EventType == p.Type() && p.StateKeyEquals(t.StateKey) {
			return true
		}
	}
	return false
}

func (c *ClientAPI) getState(r *http.Request, dev *uapi.Device) (any, error) {
	ctx := r.Context()
	roomID, evType, stateKey := mxhttp.Var(r, "roomId"), mxhttp.Var(r, "eventType"), mxhttp.Var(r, "stateKey")
	m, err := c.stateAccess(ctx, roomID, dev.UserID)
	if err != nil {
		return nil, err
	}
	evs, err := c.stateFor(ctx, roomID, m, gmsl.StateKeyTuple{EventType: evType, StateKey: stateKey})
	if err != nil {
		return nil, err
	}
	if len(evs) == 0 {
		return nil, mxhttp.NotFound("Event not found")
	}
	if r.URL.Query().Get("format") == "event" {
		ce := clientevent.FromJSON(string(evs[0].JSON()), evs[0].EventID(), roomID)
		return ce, nil
	}
	return json.RawMessage(evs[0].Content()), nil
}

func (c *ClientAPI) getAllState(r *http.Request, dev *uapi.Device) (any, error) {
	ctx := r.Context()
	roomID := mxhttp.Var(r, "roomId")
	m, err := c.stateAccess(ctx, roomID, dev.UserID)
	if err != nil {
		return nil, err
	}
	evs, err := c.stateFor(ctx, roomID, m)
	if err != nil {
		return nil, err
	}
	now := c.now().UnixMilli()
	out := make([]clientevent.Event, 0, len(evs))
	for _, p := range evs {
		ce := clientevent.FromJSON(string(p.JSON()), p.EventID(), roomID)
		ce.SetAge(now)
		out = append(out, ce)
	}
	return out, nil
}

func (c *ClientAPI) redact(r *http.Request, dev *uapi.Device) (any, error) {
	ctx := r.Context()
	roomID, target := mxhttp.Var(r, "roomId"), mxhttp.Var(r, "eventId")
	body, err := readObject(r, true)
	if err != nil {
		return nil, err
	}
	var req struct {
		Reason *string `json:"reason"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		return nil, mxhttp.BadJSON("reason must be a string")
	}
	content := map[string]any{"redacts": target} // room v11+ keep it in the content
	if req.Reason != nil {
		content["reason"] = *req.Reason
	}
	raw, _ := json.Marshal(content)
	ev := rsapi.InputEvent{Proto: &rsapi.ProtoEvent{Sender: dev.UserID, Type: spec.MRoomRedaction, Content: raw, Redacts: target}}
	txnID := mxhttp.Var(r, "txnId")
	if txnID != "" {
		return c.sendWithTxn(ctx, dev, roomID, "redact/"+target, txnID, ev)
	}
	// The transaction-less POST form early clients used (r0, and sytest
	// still does): every request makes a new redaction.
	if err := allow(c.limits.send, dev.UserID); err != nil {
		return nil, err
	}
	id, err := c.send(ctx, roomID, ev)
	if err != nil {
		return nil, err
	}
	return map[string]string{"event_id": id}, nil
}

func (c *ClientAPI) joinedRooms(r *http.Request, dev *uapi.Device) (any, error) {
	rooms, err := c.rooms.UserRooms(r.Context(), dev.UserID, spec.Join)
	if err != nil {
		return nil, err
	}
	if rooms == nil {
		rooms = []string{}
	}
	return map[string]any{"joined_rooms": rooms}, nil
}

// memberContent is the content of a member event the server makes for a
// client, with the user's profile for joins.
func (c *ClientAPI) memberContent(ctx context.Context, membership, userID, reason string, extra map[string]any) (json.RawMessage, error) {
	content := map[string]any{"membership": membership}
	for k, v := range extra {
		content[k] = v
	}
	if reason != "" {
		content["reason"] = reason
	}
	if membership == spec.Join || membership == spec.Invite {
		if p, err := c.users.Profile(ctx, userID); err == nil {
			if _, set := content["displayname"]; !set && p.DisplayName != "" {
				content["displayname"] = p.DisplayName
			}
			if _, set := content["avatar_url"]; !set && p.AvatarURL != "" {
				content["avatar_url"] = p.AvatarURL
			}
		}
	}
	return json.Marshal(content)
}

type joinRequest struct {
	Reason string `json:"reason"`
	// ThirdPartySigned proves a third-party invite of the joining user:
	// it becomes an invite before the join.
	ThirdPartySigned *thirdPartySigned `json:"third_party_signed"`
}

// thirdPartySigned is a join's proof of a third-party invite (spec: "POST
// /join", third_party_signed): every field is required.
type thirdPartySigned struct {
	Sender     *string                      `json:"sender"`
	MXID       *string                      `json:"mxid"`
	Token      *string                      `json:"token"`
	Signatures map[string]map[string]string `json:"signatures"`
}

// Validate implements mxhttp.Validator.
func (j *joinRequest) Validate() error {
	t := j.ThirdPartySigned
	if t == nil {
		return nil
	}
	switch {
	case t.Sender == nil, t.MXID == nil, t.Token == nil, t.Signatures == nil:
		return mxhttp.BadJSON("third_party_signed needs sender, mxid, token and signatures")
	}
	if err := mxhttp.CheckParam("third_party_signed.sender", *t.Sender, mxid.UserID); err != nil {
		return err
	}
	return mxhttp.CheckParam("third_party_signed.mxid", *t.MXID, mxid.UserID)
}

func (c *ClientAPI) joinRoomByID(r *http.Request, dev *uapi.Device) (any, error) {
	return c.join(r, dev, mxhttp.Var(r, "roomId"), nil)
}

func (c *ClientAPI) joinRoomByAlias(r *http.Request, dev *uapi.Device) (any, error) {
	roomID, servers, err := c.resolveRoom(r)
	if err != nil {
		return nil, err
	}
	return c.join(r, dev, roomID, servers)
}

// resolveRoom reads the roomIdOrAlias of the path, resolving an alias, and
// the servers the client says may be in the room (the via and the older
// server_name query parameters; an alias's own server). A server name
// that is not one is left out, as when via was not read at all.
func (c *ClientAPI) resolveRoom(r *http.Request) (roomID string, servers []string, err error) {
	target := mxhttp.Var(r, "roomIdOrAlias")
	q := r.URL.Query()
	for _, s := range append(q["via"], q["server_name"]...) {
		if mxid.ServerName(s) == nil {
			servers = append(servers, s)
		}
	}
	switch {
	case strings.HasPrefix(target, "#"):
		roomID, err = c.rooms.ResolveAlias(r.Context(), target)
		if err != nil {
			if errors.Is(err, rsapi.ErrAliasNotFound) {
				return "", nil, mxhttp.NotFound("Room alias %s not found", target)
			}
			return "", nil, err
		}
		if i := strings.IndexByte(target, ':'); i > 0 {
			servers = append(servers, target[i+1:])
		}
		return roomID, servers, nil
	case strings.HasPrefix(target, "!"):
		return target, servers, nil
	}
	return "", nil, mxhttp.InvalidParam("%s is not a room ID or alias", target)
}

func (c *ClientAPI) join(r *http.Request, dev *uapi.Device, roomID string, servers []string) (any, error) {
	ctx := r.Context()
	body, err := readObject(r, true)
	if err != nil {
		return nil, err
	}
	var req joinRequest
	if err := mxhttp.DecodeJSON(body, &req); err != nil {
		return nil, err
	}
	if req.ThirdPartySigned != nil {
		var raw struct {
			Signed json.RawMessage `json:"third_party_signed"`
		}
		_ = json.Unmarshal(body, &raw)
		if err := c.joinThirdParty(ctx, dev, roomID, req.ThirdPartySigned, raw.Signed); err != nil {
			return nil, err
		}
	}
	// Other fields of the body become fields of the member event's content,
	// as Synapse does; third_party_signed is a request parameter.
	var extra map[string]any
	_ = json.Unmarshal(body, &extra)
	delete(extra, "third_party_signed")
	delete(extra, "reason")
	delete(extra, "membership")
	resp, err := c.rooms.PerformJoin(ctx, &rsapi.JoinRequest{
		RoomID: roomID, UserID: dev.UserID, ServerNames: servers, Reason: req.Reason, Content: extra, IsGuest: dev.IsGuest,
	})
	if err != nil {
		return nil, err
	}
	c.followUpgrade(ctx, dev.UserID, resp.RoomID)
	return map[string]string{"room_id": resp.RoomID}, nil
}

// knock asks to join a room whose join rule is knock
// (POST /knock/{roomIdOrAlias}; room versions 7 and later).
func (c *ClientAPI) knock(r *http.Request, dev *uapi.Device) (any, error) {
	body, err := readObject(r, true)
	if err != nil {
		return nil, err
	}
	var req struct {
		Reason string `json:"reason"`
	}
	if err := mxhttp.DecodeJSON(body, &req); err != nil {
		return nil, err
	}
	roomID, servers, err := c.resolveRoom(r)
	if err != nil {
		return nil, err
	}
	if err := allow(c.limits.send, dev.UserID); err != nil {
		return nil, err
	}
	resp, err := c.rooms.PerformKnock(r.Context(), &rsapi.KnockRequest{
		RoomID: roomID, UserID: dev.UserID, ServerNames: servers, Reason: req.Reason,
	})
	if err != nil {
		return nil, err
	}
	return map[string]string{"room_id": resp.RoomID}, nil
}

func (c *ClientAPI) leaveRoom(r *http.Request, dev *uapi.Device) (any, error) {
	body, err := readObject(r, true)
	if err != nil {
		return nil, err
	}
	var req joinRequest
	if err := mxhttp.DecodeJSON(body, &req); err != nil {
		return nil, err
	}
	if err := c.rooms.PerformLeave(r.Context(), &rsapi.LeaveRequest{
		RoomID: mxhttp.Var(r, "roomId"), UserID: dev.UserID, Reason: req.Reason,
	}); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

type targetRequest struct {
	UserID string `json:"user_id"`
	Reason string `json:"reason"`
}

func (t *targetRequest) Validate() error {
	if t.UserID == "" {
		return mxhttp.MissingParam("user_id is required")
	}
	return mxhttp.CheckParam("user_id", t.UserID, mxid.UserID)
}

// inviteRequest is POST /invite's body: a user ID, or an address to
// invite through an identity server (a third-party invite).
type inviteRequest struct {
	targetRequest
	thirdPartyInvite
}

// Validate implements mxhttp.Validator.
func (i *inviteRequest) Validate() error {
	if i.UserID == "" && (i.IDServer != "" || i.Medium != "" || i.Address != "") {
		return i.thirdPartyInvite.validate()
	}
	return i.targetRequest.Validate()
}

func (c *ClientAPI) invite(r *http.Request, dev *uapi.Device) (any, error) {
	var req inviteRequest
	if err := mxhttp.ReadJSON(r, &req); err != nil {
		return nil, err
	}
	if req.UserID == "" {
		if err := c.inviteThirdParty(r.Context(), dev, mxhttp.Var(r, "roomId"), req.thirdPartyInvite); err != nil {
			return nil, err
		}
		return struct{}{}, nil
	}
	if err := c.rooms.PerformInvite(r.Context(), &rsapi.InviteRequest{
		RoomID: mxhttp.Var(r, "roomId"), Sender: dev.UserID, Invitee: req.UserID, Reason: req.Reason,
	}); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

// membershipChange handles kick, ban and unban: rsapi.Kick, Ban or Unban.
func (c *ClientAPI) membershipChange(change string) func(r *http.Request, dev *uapi.Device) (any, error) {
	return func(r *http.Request, dev *uapi.Device) (any, error) {
		var req targetRequest
		if err := mxhttp.ReadJSON(r, &req); err != nil {
			return nil, err
		}
		if err := c.rooms.PerformMembership(r.Context(), &rsapi.MembershipRequest{
			RoomID: mxhttp.Var(r, "roomId"), Sender: dev.UserID, Target: req.UserID, Change: change, Reason: req.Reason,
		}); err != nil {
			return nil, err
		}
		return struct{}{}, nil
	}
}

// propagateProfile sends a new m.room.member event with userID's current
// profile into every room the user has joined: a join again, which the
// roomserver builds with the profile.
func (c *ClientAPI) propagateProfile(ctx context.Context, userID string) error {
	if c.rooms == nil {
		return nil
	}
	rooms, err := c.rooms.UserRooms(ctx, userID, spec.Join)
	if err != nil {
		return err
	}
	var firstErr error
	for _, roomID := range rooms {
		if _, err := c.rooms.PerformJoin(ctx, &rsapi.JoinRequest{RoomID: roomID, UserID: userID}); err != nil && firstErr == nil {
			firstErr = err
		}
	}
	return firstErr
}

// leaveAllRooms makes userID leave every room it is joined or invited to
// (deactivation).
func (c *ClientAPI) leaveAllRooms(ctx context.Context, userID string) error {
	if c.rooms == nil {
		return nil
	}
	rooms, err := c.rooms.UserRooms(ctx, userID, spec.Join, spec.Invite, spec.Knock)
	if err != nil {
		return err
	}
	var firstErr error
	for _, roomID := range rooms {
		if err := c.rooms.PerformLeave(ctx, &rsapi.LeaveRequest{RoomID: roomID, UserID: userID}); err != nil && firstErr == nil {
			firstErr = err
		}
	}
	return firstErr
}
