package federationapi

import (
	"encoding/json"
	"net/http"

	"github.com/gorilla/mux"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"myelin/internal/mxhttp"
	"myelin/internal/mxid"
	rsapi "myelin/roomserver/api"
)

// Third-party invites, the server side (spec: server-server API,
// "Third-party invites"): an identity server tells this server that an
// address was bound to one of its users, with the invites waiting for
// it (onbind), and another server whose user was bound asks this one to
// turn the invite of one of this server's users into an invite
// (exchange_third_party_invite). The roomserver's PerformThirdPartyInvite
// does both; these handlers check their input.

// ThirdPartyRoutes registers POST /_matrix/federation/v1/3pid/onbind.
// Setup serves it on the client listener too, as Synapse's single
// listener does: identity servers (sytest's among them) reach a
// homeserver at its client URL, and the request carries no server
// signature to check; what it asks is checked against the keys in each
// room's m.room.third_party_invite.
func (f *FederationAPI) ThirdPartyRoutes(root *mux.Router) {
	root.Handle("/_matrix/federation/v1/3pid/onbind", f.open(f.onBind)).Methods(http.MethodPost)
}

// onBindRequest is an identity server's notice of a new binding.
type onBindRequest struct {
	Medium  string `json:"medium"`
	Address string `json:"address"`
	MXID    string `json:"mxid"`
	Invites []struct {
		RoomID string          `json:"room_id"`
		Sender string          `json:"sender"`
		MXID   string          `json:"mxid"`
		Signed json.RawMessage `json:"signed"`
	} `json:"invites"`
}

// Validate implements mxhttp.Validator.
func (b *onBindRequest) Validate() error {
	if err := mxhttp.CheckParam("mxid", b.MXID, mxid.UserID); err != nil {
		return err
	}
	for _, inv := range b.Invites {
		if inv.RoomID == "" || inv.Sender == "" || len(inv.Signed) == 0 {
			return mxhttp.BadJSON("each invite needs room_id, sender and signed")
		}
	}
	return nil
}

func (f *FederationAPI) onBind(r *http.Request) (any, error) {
	var req onBindRequest
	if err := mxhttp.ReadJSON(r, &req); err != nil {
		return nil, err
	}
	if domainOf(req.MXID) != f.key.ServerName {
		return nil, mxhttp.InvalidParam("%s is not a user of this server", req.MXID)
	}
	rs, err := f.memberRooms()
	if err != nil {
		return nil, err
	}
	// Each invite is its own: one that fails (its room gone, its key
	// revoked) does not stop the others; the answer is the last failure,
	// as Synapse's, so that the identity server knows.
	var last error
	for _, inv := range req.Invites {
		if inv.MXID != "" && inv.MXID != req.MXID {
			continue
		}
		err := rs.PerformThirdPartyInvite(r.Context(), &rsapi.ThirdPartyInviteRequest{
			RoomID: inv.RoomID, Sender: inv.Sender, Invitee: req.MXID, Signed: inv.Signed,
		})
		if err != nil {
			f.log.WithError(err).WithField("room_id", inv.RoomID).Info("third-party invite not exchanged")
			last = err
		}
	}
	if last != nil {
		return nil, last
	}
	return struct{}{}, nil
}

// exchangeRequest is the member event a server asks this one to make:
// an invite sent by one of this server's users.
type exchangeRequest struct {
	Type     string `json:"type"`
	RoomID   string `json:"room_id"`
	Sender   string `json:"sender"`
	StateKey string `json:"state_key"`
	Content  struct {
		Membership       string `json:"membership"`
		ThirdPartyInvite *struct {
			Signed json.RawMessage `json:"signed"`
		} `json:"third_party_invite"`
	} `json:"content"`
}

// exchangeThirdPartyInvite is PUT
// /_matrix/federation/v1/exchange_third_party_invite/{roomId}.
func (f *FederationAPI) exchangeThirdPartyInvite(r *http.Request) (any, error) {
	var req exchangeRequest
	if err := mxhttp.ReadJSON(r, &req); err != nil {
		return nil, err
	}
	roomID := mxhttp.Var(r, "roomId")
	switch {
	case req.Type != spec.MRoomMember || req.Content.Membership != spec.Invite:
		return nil, mxhttp.BadJSON("the event must be an m.room.member invite")
	case req.RoomID != roomID:
		return nil, mxhttp.BadJSON("room_id does not match the path")
	case req.Content.ThirdPartyInvite == nil || len(req.Content.ThirdPartyInvite.Signed) == 0:
		return nil, mxhttp.BadJSON("content.third_party_invite.signed is required")
	case mxid.UserID(req.StateKey) != nil:
		return nil, mxhttp.BadJSON("state_key must be a user ID")
	}
	if domainOf(req.Sender) != f.key.ServerName {
		return nil, mxhttp.Forbidden("The invite's sender is not a user of this server")
	}
	rs, err := f.memberRooms()
	if err != nil {
		return nil, err
	}
	if err := rs.PerformThirdPartyInvite(r.Context(), &rsapi.ThirdPartyInviteRequest{
		RoomID: roomID, Sender: req.Sender, Invitee: req.StateKey, Signed: req.Content.ThirdPartyInvite.Signed,
	}); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}
