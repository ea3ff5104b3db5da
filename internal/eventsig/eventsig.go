// Package eventsig checks the signatures of events from other servers:
// gomatrixserverlib's check, with the spec's exemption for an invite made
// from a third-party invite, which the invited user's server builds and
// signs in the name of the third-party invite's sender (Synapse exempts
// it too). The auth rules then hold it to the third-party invite's keys
// and sender, which is what ties it to that sender.
package eventsig

import (
	"context"
	"errors"
	"fmt"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"

	"myelin/internal/fanout"
)

// UserIDForSender reads a sender as a user ID: in the room versions this
// server takes in, senders are user IDs.
func UserIDForSender(_ spec.RoomID, s spec.SenderID) (*spec.UserID, error) {
	if s == "" {
		return nil, errors.New("empty sender")
	}
	u, err := spec.NewUserID(string(s), true)
	if err != nil {
		return nil, fmt.Errorf("sender %q is not a user ID: %w", s, err)
	}
	return u, nil
}

// Verify checks ev's signatures: those of its sender's server and of the
// others the spec asks for, but for a third-party invite's m.room.member
// invite, the invited user's server in place of the sender's.
func Verify(ctx context.Context, ev gmsl.PDU, v gmsl.JSONVerifier) error {
	forSender := spec.UserIDForSender(UserIDForSender)
	if invitee, ok := thirdPartyInvitee(ev); ok {
		forSender = func(spec.RoomID, spec.SenderID) (*spec.UserID, error) { return invitee, nil }
	}
	return gmsl.VerifyEventSignatures(ctx, ev, v, forSender)
}

// VerifyAll is Verify of each of evs, its errors in their order. The
// checks (a redaction, a canonical encoding and an ed25519 verification
// each) run on up to GOMAXPROCS goroutines: a transaction's 50 PDUs took
// 10 ms one after the other, on the path between two transactions of an
// origin. v must be safe for concurrent use.
func VerifyAll(ctx context.Context, evs []gmsl.PDU, v gmsl.JSONVerifier) []error {
	errs := make([]error, len(evs))
	fanout.Each(len(evs), func(i int) { errs[i] = Verify(ctx, evs[i], v) })
	return errs
}

// thirdPartyInvitee is the invited user of an m.room.member invite that
// carries a third_party_invite, in a room version whose senders are user
// IDs.
func thirdPartyInvitee(ev gmsl.PDU) (*spec.UserID, bool) {
	if ev.Type() != spec.MRoomMember || ev.StateKey() == nil || ev.Version() == gmsl.RoomVersionPseudoIDs {
		return nil, false
	}
	c := gjson.GetManyBytes(ev.Content(), "membership", "third_party_invite")
	if c[0].String() != spec.Invite || !c[1].IsObject() {
		return nil, false
	}
	u, err := spec.NewUserID(*ev.StateKey(), true)
	if err != nil {
		return nil, false
	}
	return u, true
}
