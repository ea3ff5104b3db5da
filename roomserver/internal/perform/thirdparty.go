package perform

import (
	"context"
	"encoding/json"
	"fmt"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	rsapi "myelin/roomserver/api"
	"myelin/roomserver/internal/input"
)

// Third-party invites (spec: client-server API, "Third-party invites";
// server-server API, "Third-party invites"). A user invites an email
// address: the room gets an m.room.third_party_invite event holding the
// identity server's public keys, with the identity server's token as its
// state key. Once the address is bound, the identity server tells the
// bound user's server, with a proof signed by one of those keys; that
// server has the inviter's server turn the proof into an invite (the
// invite's sender is the inviter, so only its server can sign it).

// ThirdPartyExchanger asks another server to turn a third-party invite of
// one of its users into an invite (PUT
// /_matrix/federation/v1/exchange_third_party_invite). The Federation given
// to the performer may implement it.
type ThirdPartyExchanger interface {
	ExchangeThirdPartyInvite(ctx context.Context, server spec.ServerName, proto gmsl.ProtoEvent) error
}

// KeyValidityFunc asks an identity server whether publicKey is still one
// of its keys, at the key's validity URL.
type KeyValidityFunc func(ctx context.Context, validityURL, publicKey string) (bool, error)

// SetKeyValidity sets how an identity server's key is confirmed before
// its proof is accepted; unset, a proof whose signature verifies is
// accepted without asking.
func (p *Performer) SetKeyValidity(f KeyValidityFunc) { p.keyValid = f }

// signedProof is the identity server's proof that an invited address is
// bound to mxid.
type signedProof struct {
	MXID       string                       `json:"mxid"`
	Token      string                       `json:"token"`
	Signatures map[string]map[string]string `json:"signatures"`
}

// PerformThirdPartyInvite implements rsapi.Performer.
func (p *Performer) PerformThirdPartyInvite(ctx context.Context, req *rsapi.ThirdPartyInviteRequest) error {
	var proof signedProof
	if err := json.Unmarshal(req.Signed, &proof); err != nil || proof.Token == "" || len(proof.Signatures) == 0 {
		return refuse("M_BAD_JSON", "signed needs mxid, token and signatures")
	}
	if proof.MXID != req.Invitee {
		return forbidden("The identity server's proof is for %s, not %s", proof.MXID, req.Invitee)
	}
	sender, err := spec.NewUserID(req.Sender, true)
	if err != nil {
		return refuse("M_INVALID_PARAM", "sender is not a user ID")
	}
	if sender.Domain() != p.key.ServerName {
		return p.exchangeRemote(ctx, req, sender.Domain())
	}
	if known, err := p.roomKnown(ctx, req.RoomID); err != nil {
		return err
	} else if !known {
		return forbidden("This server is not in room %s", req.RoomID)
	}
	tpi, err := p.rooms.CurrentState(ctx, req.RoomID, gmsl.StateKeyTuple{EventType: spec.MRoomThirdPartyInvite, StateKey: proof.Token})
	if err != nil {
		return fmt.Errorf("third-party invite of %s: %w", req.RoomID, err)
	}
	if len(tpi) == 0 {
		return forbidden("No third-party invite in %s has this token", req.RoomID)
	}
	// The spec's auth rules require these two; gomatrixserverlib's
	// checks neither, so they are checked here and in the input.
	if string(tpi[0].SenderID()) != req.Sender {
		return forbidden("The third-party invite was sent by another user")
	}
	if m, err := p.rooms.Membership(ctx, req.RoomID, req.Invitee); err == nil && m != nil && m.Membership == spec.Ban {
		return forbidden("%s is banned from the room", req.Invitee)
	}
	var content input.ThirdPartyInviteContent
	if err := json.Unmarshal(tpi[0].Content(), &content); err != nil {
		return forbidden("The third-party invite's content is not valid")
	}
	key, validityURL, ok := input.VerifyThirdPartyProof(req.Signed, content)
	if !ok {
		return forbidden("The identity server's signature does not verify with the invite's keys")
	}
	if validityURL != "" && p.keyValid != nil {
		valid, err := p.keyValid(ctx, validityURL, key)
		if err != nil {
			return forbidden("Could not confirm the identity server's key: %v", err)
		}
		if !valid {
			return forbidden("The identity server no longer vouches for the key of this invite")
		}
	}
	memberContent, err := p.memberContent(ctx, spec.Invite, req.Invitee, "", map[string]any{
		"third_party_invite": map[string]any{"display_name": content.DisplayName, "signed": req.Signed},
	})
	if err != nil {
		return err
	}
	return p.invite(ctx, &rsapi.InviteRequest{RoomID: req.RoomID, Sender: req.Sender, Invitee: req.Invitee}, memberContent)
}

// exchangeRemote has the inviter's server (then the room's) make the
// invite.
func (p *Performer) exchangeRemote(ctx context.Context, req *rsapi.ThirdPartyInviteRequest, server spec.ServerName) error {
	ex, ok := p.fed.(ThirdPartyExchanger)
	if p.fed == nil || !ok {
		return forbidden("The inviter's server cannot be asked")
	}
	content, err := json.Marshal(map[string]any{
		"membership":         spec.Invite,
		"third_party_invite": map[string]any{"signed": req.Signed},
	})
	if err != nil {
		return err
	}
	invitee := req.Invitee
	proto := gmsl.ProtoEvent{SenderID: req.Sender, RoomID: req.RoomID, Type: spec.MRoomMember, StateKey: &invitee, Content: content}
	var errs []error
	for _, s := range p.servers(req.RoomID, []string{string(server)}) {
		err := ex.ExchangeThirdPartyInvite(ctx, s, proto)
		if err == nil {
			return nil
		}
		errs = append(errs, fmt.Errorf("exchange via %s: %w", s, err))
	}
	if len(errs) == 0 {
		return forbidden("No server to ask about room %s", req.RoomID)
	}
	return remoteError("exchange a third-party invite in", req.RoomID, errs)
}
