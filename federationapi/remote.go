package federationapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/matrix-org/gomatrix"
	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"myelin/internal/eventsig"
)

// Remote asks other servers for the membership dances of rooms this server
// is not in: it implements the roomserver's perform.Federation over the
// signed federation client. A refusal that carries a Matrix error comes
// back as an error with its code, for the client to see.
type Remote struct {
	f *FederationAPI
}

// Remote is the roomserver's way to other servers' rooms.
func (f *FederationAPI) Remote() *Remote { return &Remote{f: f} }

// remoteError keeps the Matrix error code of another server's refusal.
type remoteError struct {
	server spec.ServerName
	code   string
	msg    string
	extra  map[string]any
	cause  error
}

func (e *remoteError) Error() string {
	if e.code == "" {
		return fmt.Sprintf("%s: %v", e.server, e.cause)
	}
	return fmt.Sprintf("%s refused: %s", e.server, e.msg)
}
func (e *remoteError) Unwrap() error { return e.cause }

// coded is a remote refusal with a Matrix code, passed on to the client.
type coded struct{ *remoteError }

func (e coded) MatrixErrCode() string { return e.code }

// MatrixErrExtra passes on the fields the spec adds to a code (the room
// version of M_INCOMPATIBLE_ROOM_VERSION), so the client learns it.
func (e coded) MatrixErrExtra() map[string]any { return e.extra }

func wrapRemote(server spec.ServerName, err error) error {
	if err == nil {
		return nil
	}
	var he gomatrix.HTTPError
	if errors.As(err, &he) {
		var body struct {
			Code        string `json:"errcode"`
			Msg         string `json:"error"`
			RoomVersion string `json:"room_version"`
		}
		// 5xx and unparsable answers stay uncoded: another server may do.
		if json.Unmarshal(he.Contents, &body) == nil && body.Code != "" && he.Code < 500 {
			re := &remoteError{server: server, code: body.Code, msg: body.Msg, cause: err}
			if body.Code == "M_INCOMPATIBLE_ROOM_VERSION" && body.RoomVersion != "" {
				re.extra = map[string]any{"room_version": body.RoomVersion}
			}
			return coded{re}
		}
	}
	return &remoteError{server: server, cause: err}
}

func (r *Remote) origin() spec.ServerName { return r.f.key.ServerName }

// MakeJoin implements perform.Federation.
func (r *Remote) MakeJoin(ctx context.Context, server spec.ServerName, roomID, userID string) (fclient.RespMakeJoin, error) {
	res, err := r.f.client.MakeJoin(ctx, r.origin(), server, roomID, userID)
	return res, wrapRemote(server, err)
}

// SendJoin implements perform.Federation.
func (r *Remote) SendJoin(ctx context.Context, server spec.ServerName, ev gmsl.PDU) (fclient.RespSendJoin, error) {
	res, err := r.f.client.SendJoin(ctx, r.origin(), server, ev)
	return res, wrapRemote(server, err)
}

// MakeLeave implements perform.Federation.
func (r *Remote) MakeLeave(ctx context.Context, server spec.ServerName, roomID, userID string) (fclient.RespMakeLeave, error) {
	res, err := r.f.client.MakeLeave(ctx, r.origin(), server, roomID, userID)
	return res, wrapRemote(server, err)
}

// SendLeave implements perform.Federation.
func (r *Remote) SendLeave(ctx context.Context, server spec.ServerName, ev gmsl.PDU) error {
	return wrapRemote(server, r.f.client.SendLeave(ctx, r.origin(), server, ev))
}

// MakeKnock implements perform.Federation.
func (r *Remote) MakeKnock(ctx context.Context, server spec.ServerName, roomID, userID string, versions []gmsl.RoomVersion) (fclient.RespMakeKnock, error) {
	res, err := r.f.client.MakeKnock(ctx, r.origin(), server, roomID, userID, versions)
	return res, wrapRemote(server, err)
}

// SendKnock implements perform.Federation.
func (r *Remote) SendKnock(ctx context.Context, server spec.ServerName, ev gmsl.PDU) (fclient.RespSendKnock, error) {
	res, err := r.f.client.SendKnock(ctx, r.origin(), server, ev)
	return res, wrapRemote(server, err)
}

// Invite implements perform.Federation: the invitee's server signs the
// invite. Its answer must be the same event with a valid signature of that
// server (gomatrixserverlib's PerformInvite checks neither).
func (r *Remote) Invite(ctx context.Context, server spec.ServerName, ev gmsl.PDU, strippedState []gmsl.InviteStrippedState) (gmsl.PDU, error) {
	req, err := fclient.NewInviteV2Request(ev, strippedState)
	if err != nil {
		return nil, fmt.Errorf("invite request: %w", err)
	}
	res, err := r.f.client.SendInviteV2(ctx, r.origin(), server, req)
	if err != nil {
		return nil, wrapRemote(server, err)
	}
	verImpl, err := gmsl.GetRoomVersion(ev.Version())
	if err != nil {
		return nil, err
	}
	signed, err := verImpl.NewEventFromUntrustedJSON(res.Event)
	if err != nil {
		// The invitee's server answered an event that is not valid in the
		// room's version (a float, in version 6 and later): a bad answer,
		// told to the client as such rather than as an outage.
		return nil, coded{&remoteError{server: server, code: "M_BAD_JSON", msg: fmt.Sprintf("the signed invite is not a valid event: %v", err), cause: err}}
	}
	if signed.EventID() != ev.EventID() {
		return nil, fmt.Errorf("%s signed another event than the invite", server)
	}
	if err := eventsig.Verify(ctx, signed, r.f.keys.ring); err != nil {
		return nil, fmt.Errorf("invite signed by %s: %w", server, err)
	}
	return signed, nil
}

// ExchangeThirdPartyInvite implements perform.ThirdPartyExchanger.
func (r *Remote) ExchangeThirdPartyInvite(ctx context.Context, server spec.ServerName, proto gmsl.ProtoEvent) error {
	return wrapRemote(server, r.f.client.ExchangeThirdPartyInvite(ctx, r.origin(), server, proto))
}

// QueryRoomAlias asks server which room its alias names (GET
// /_matrix/federation/v1/query/directory).
func (r *Remote) QueryRoomAlias(ctx context.Context, server spec.ServerName, alias string) (string, error) {
	res, err := r.f.client.LookupRoomAlias(ctx, r.origin(), server, alias)
	if err != nil {
		return "", wrapRemote(server, err)
	}
	if _, err := spec.NewRoomID(res.RoomID); err != nil {
		return "", fmt.Errorf("%s answered a bad room ID for %s", server, alias)
	}
	return res.RoomID, nil
}
