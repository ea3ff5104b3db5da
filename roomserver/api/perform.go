package rsapi

import (
	"context"
	"encoding/json"

	gmsl "github.com/matrix-org/gomatrixserverlib"
)

// Performer is the roomserver's membership and room operations: it
// decides what a join, leave, invite, knock, kick, ban, unban or upgrade
// does (whether the room is known here, whom to ask when it is not, which
// events to make) so that clientapi and federationapi only check their
// own input and call it. Each method returns a *PerformError (or another
// coded error) when the request is refused.
type Performer interface {
	// PerformJoin joins a user to a room, here or through another server.
	PerformJoin(ctx context.Context, req *JoinRequest) (*JoinResponse, error)
	// PerformLeave makes a user leave a room, or reject an invite or a knock.
	PerformLeave(ctx context.Context, req *LeaveRequest) error
	// PerformInvite invites a user to a room.
	PerformInvite(ctx context.Context, req *InviteRequest) error
	// PerformThirdPartyInvite turns a third-party invite (an
	// m.room.third_party_invite event) into an invite of the Matrix user
	// the identity server bound its address to, here when the inviter is
	// a user of this server, else through the inviter's server (spec:
	// PUT /_matrix/federation/v1/exchange_third_party_invite).
	PerformThirdPartyInvite(ctx context.Context, req *ThirdPartyInviteRequest) error
	// PerformKnock asks to join a room whose join rule is knock.
	PerformKnock(ctx context.Context, req *KnockRequest) (*JoinResponse, error)
	// PerformMembership changes another user's membership: kick, ban or unban.
	PerformMembership(ctx context.Context, req *MembershipRequest) error
	// PerformUpgrade replaces a room with a new one of another version.
	PerformUpgrade(ctx context.Context, req *UpgradeRequest) (*UpgradeResponse, error)
	// PerformBackfill gets history of a room older than what this server
	// has from the room's other servers and stores it as historical
	// events (syncapi's /messages calls it when it reaches the start of
	// what it has). One runs at a time per room; a call while one runs
	// waits for it and stores nothing more.
	PerformBackfill(ctx context.Context, req *BackfillRequest) (*BackfillResponse, error)
	// BuildEventTemplate completes a member event another server's user
	// asks this server to prepare (make_join, make_leave, make_knock)
	// from the room's current state, and returns it built and signed
	// here with the state it was authorised against. Nothing is stored.
	BuildEventTemplate(ctx context.Context, proto *gmsl.ProtoEvent) (gmsl.PDU, []gmsl.PDU, error)
}

// PerformError is a perform request refused, with the Matrix error code
// that says why (M_FORBIDDEN, M_NOT_FOUND, M_GUEST_ACCESS_FORBIDDEN, ...).
type PerformError struct {
	Code   string
	Reason string
	// Extra holds the response fields the spec adds for Code
	// (room_version with M_INCOMPATIBLE_ROOM_VERSION).
	Extra map[string]any
}

func (e *PerformError) Error() string                  { return e.Reason }
func (e *PerformError) MatrixErrCode() string          { return e.Code }
func (e *PerformError) MatrixErrExtra() map[string]any { return e.Extra }

// JoinRequest asks for UserID to join RoomID.
type JoinRequest struct {
	RoomID string `json:"room_id"`
	UserID string `json:"user_id"`
	// ServerNames are servers that may be in the room (the client's via,
	// the alias's server), asked when this server is not in it.
	ServerNames []string `json:"server_names,omitempty"`
	Reason      string   `json:"reason,omitempty"`
	// Content holds more fields of the member event's content (the
	// request body's other fields, as Synapse keeps them).
	Content map[string]any `json:"content,omitempty"`
	// IsGuest says the user is a guest, who may join only rooms that
	// allow guests (spec: "Guest Access").
	IsGuest bool `json:"is_guest,omitempty"`
}

// JoinResponse is the room joined (or knocked on) and the member event.
type JoinResponse struct {
	RoomID  string `json:"room_id"`
	EventID string `json:"event_id"`
}

// LeaveRequest asks for UserID to leave RoomID.
type LeaveRequest struct {
	RoomID string `json:"room_id"`
	UserID string `json:"user_id"`
	Reason string `json:"reason,omitempty"`
}

// InviteRequest asks for Sender to invite Invitee to RoomID.
type InviteRequest struct {
	RoomID  string `json:"room_id"`
	Sender  string `json:"sender"`
	Invitee string `json:"invitee"`
	Reason  string `json:"reason,omitempty"`
	// IsDirect marks the invite as a direct chat's.
	IsDirect bool `json:"is_direct,omitempty"`
}

// ThirdPartyInviteRequest asks for Invitee to be invited to RoomID on the
// strength of Sender's third-party invite.
type ThirdPartyInviteRequest struct {
	RoomID  string `json:"room_id"`
	Sender  string `json:"sender"`
	Invitee string `json:"invitee"`
	// Signed is the identity server's signed proof that the invite's
	// address is bound to Invitee: mxid, token and signatures.
	Signed json.RawMessage `json:"signed"`
}

// KnockRequest asks for UserID to knock on RoomID.
type KnockRequest struct {
	RoomID      string   `json:"room_id"`
	UserID      string   `json:"user_id"`
	ServerNames []string `json:"server_names,omitempty"`
	Reason      string   `json:"reason,omitempty"`
}

// Membership changes PerformMembership makes.
const (
	Kick  = "kick"
	Ban   = "ban"
	Unban = "unban"
)

// MembershipRequest asks for Sender to kick, ban or unban Target.
type MembershipRequest struct {
	RoomID string `json:"room_id"`
	Sender string `json:"sender"`
	Target string `json:"target"`
	// Change is Kick, Ban or Unban.
	Change string `json:"change"`
	Reason string `json:"reason,omitempty"`
}

// UpgradeRequest asks for Sender to replace RoomID with a room of
// NewVersion.
type UpgradeRequest struct {
	RoomID     string `json:"room_id"`
	Sender     string `json:"sender"`
	NewVersion string `json:"new_version"`
	// AdditionalCreators share the sender's unlimited power in a new
	// room of version 12 or later; ignored for older versions.
	AdditionalCreators []string `json:"additional_creators,omitempty"`
}

// UpgradeResponse names the new room.
type UpgradeResponse struct {
	NewRoomID string `json:"replacement_room"`
}

// BackfillRequest asks for up to Limit events of RoomID older than the
// oldest this server has.
type BackfillRequest struct {
	RoomID string `json:"room_id"`
	Limit  int    `json:"limit"`
	// From, when set, asks for the history before these missing events
	// (a gap in the middle of the history here) rather than before the
	// oldest events here; After is the event here that refers to them.
	From  []string `json:"from,omitempty"`
	After string   `json:"after,omitempty"`
}

// BackfillResponse says what a backfill stored.
type BackfillResponse struct {
	// Stored counts the events stored (outputs published: a reader of
	// OutputRoomEvent that has caught up has them).
	Stored int `json:"stored"`
	// Complete says there is nothing older to get: the room's create
	// event is in its timeline here (or the room is unknown).
	Complete bool `json:"complete"`
}
