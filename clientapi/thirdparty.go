package clientapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"myelin/internal/identity"
	"myelin/internal/mxhttp"
	rsapi "myelin/roomserver/api"
	uapi "myelin/userapi/api"
)

// Third-party invites, the client side (spec: client-server API,
// "Third-party invites"): inviting an email address. The identity server
// the client names says whether the address is bound to a Matrix user;
// if it is, that user is invited as usual; if not, the identity server
// keeps the invite and the room gets an m.room.third_party_invite event
// holding the keys that will sign the proof once the address is bound
// (then the roomserver's PerformThirdPartyInvite makes the invite).

// maxThirdPartyField bounds the address and token of a third-party
// invite: an email address is at most 254 bytes, a phone number far less.
const maxThirdPartyField = 512

// validate checks a third-party invite's fields, before any identity
// server is asked anything.
func (t *thirdPartyInvite) validate() error {
	if t.IDServer == "" || t.Medium == "" || t.Address == "" || t.IDAccessToken == "" {
		return mxhttp.MissingParam("a third-party invite needs id_server, id_access_token, medium and address")
	}
	if err := identity.CheckServer(t.IDServer); err != nil {
		return mxhttp.InvalidParam("%v", err)
	}
	if t.Medium != "email" && t.Medium != "msisdn" {
		return mxhttp.InvalidParam("medium must be email or msisdn")
	}
	if len(t.Address) > maxThirdPartyField || len(t.IDAccessToken) > maxThirdPartyField {
		return mxhttp.InvalidParam("address and id_access_token must be at most %d bytes", maxThirdPartyField)
	}
	return nil
}

// inviteThirdParty invites the owner of inv's address to roomID.
func (c *ClientAPI) inviteThirdParty(ctx context.Context, dev *uapi.Device, roomID string, inv thirdPartyInvite) error {
	if c.ids == nil {
		return mxhttp.Forbidden("Third-party invites are not available on this server")
	}
	if err := inv.validate(); err != nil {
		return err
	}
	// Nothing is asked of the identity server for a user who may not
	// invite here; the auth rules check the power level on the event.
	m, err := c.rooms.Membership(ctx, roomID, dev.UserID)
	if err != nil && !errors.Is(err, rsapi.ErrRoomNotFound) {
		return err
	}
	if m == nil || m.Membership != spec.Join {
		return mxhttp.Forbidden("You are not in this room")
	}
	userID, err := c.ids.Lookup(ctx, inv.IDServer, inv.IDAccessToken, inv.Medium, inv.Address)
	if err != nil {
		return identityError(err)
	}
	if userID != "" {
		return c.rooms.PerformInvite(ctx, &rsapi.InviteRequest{RoomID: roomID, Sender: dev.UserID, Invitee: userID})
	}
	req := identity.StoreInviteRequest{Medium: inv.Medium, Address: inv.Address, RoomID: roomID, Sender: dev.UserID}
	c.describeRoom(ctx, roomID, &req)
	if p, err := c.users.Profile(ctx, dev.UserID); err == nil {
		req.SenderDisplayName, req.SenderAvatarURL = p.DisplayName, p.AvatarURL
	}
	stored, err := c.ids.StoreInvite(ctx, inv.IDServer, inv.IDAccessToken, req)
	if err != nil {
		return identityError(err)
	}
	content, err := json.Marshal(map[string]any{
		"display_name":     stored.DisplayName,
		"key_validity_url": stored.PublicKeys[0].KeyValidityURL,
		"public_key":       stored.PublicKeys[0].PublicKey,
		"public_keys":      stored.PublicKeys,
	})
	if err != nil {
		return err
	}
	token := stored.Token
	_, err = c.send(ctx, roomID, rsapi.InputEvent{Proto: &rsapi.ProtoEvent{
		Sender: dev.UserID, Type: spec.MRoomThirdPartyInvite, StateKey: &token, Content: content,
	}})
	return err
}

// describeRoom fills in what the identity server may tell the invitee
// about the room; what cannot be read is left out.
func (c *ClientAPI) describeRoom(ctx context.Context, roomID string, req *identity.StoreInviteRequest) {
	state, err := c.rooms.CurrentState(ctx, roomID,
		gmsl.StateKeyTuple{EventType: spec.MRoomName}, gmsl.StateKeyTuple{EventType: spec.MRoomJoinRules},
		gmsl.StateKeyTuple{EventType: spec.MRoomCanonicalAlias}, gmsl.StateKeyTuple{EventType: "m.room.avatar"},
		gmsl.StateKeyTuple{EventType: spec.MRoomCreate})
	if err != nil {
		return
	}
	for _, ev := range state {
		var c struct {
			Name     string `json:"name"`
			JoinRule string `json:"join_rule"`
			Alias    string `json:"alias"`
			URL      string `json:"url"`
			Type     string `json:"type"`
		}
		if json.Unmarshal(ev.Content(), &c) != nil {
			continue
		}
		switch ev.Type() {
		case spec.MRoomName:
			req.RoomName = c.Name
		case spec.MRoomJoinRules:
			req.RoomJoinRules = c.JoinRule
		case spec.MRoomCanonicalAlias:
			req.RoomAlias = c.Alias
		case "m.room.avatar":
			req.RoomAvatarURL = c.URL
		case spec.MRoomCreate:
			req.RoomType = c.Type
		}
	}
}

// identityError tells the client why an identity server could not be
// used. Its refusals are not passed on as they are: a 401 from it is not
// the client's token being unknown here.
func identityError(err error) error {
	var ie *identity.Error
	if errors.As(err, &ie) {
		if ie.Status >= 400 && ie.Status < 500 {
			return mxhttp.Forbidden("The identity server refused: %s %s", ie.Code, ie.Msg)
		}
		return mxhttp.Unknown("The identity server could not be used: %s", ie.Msg).WithStatus(http.StatusBadGateway)
	}
	return mxhttp.InvalidParam("%v", err)
}

// joinThirdParty turns the third-party invite that signed (the body's
// third_party_signed, as the identity server signed it) proves into an
// invite of dev's user, before the join (spec: POST /join,
// third_party_signed).
func (c *ClientAPI) joinThirdParty(ctx context.Context, dev *uapi.Device, roomID string, t *thirdPartySigned, signed json.RawMessage) error {
	if *t.MXID != dev.UserID {
		return mxhttp.Forbidden("third_party_signed is for %s, not you", *t.MXID)
	}
	if m, err := c.rooms.Membership(ctx, roomID, dev.UserID); err == nil && m != nil &&
		(m.Membership == spec.Invite || m.Membership == spec.Join) {
		return nil
	}
	return c.rooms.PerformThirdPartyInvite(ctx, &rsapi.ThirdPartyInviteRequest{
		RoomID: roomID, Sender: *t.Sender, Invitee: dev.UserID, Signed: signed,
	})
}
