package federationapi

import (
	"context"
	"errors"
	"fmt"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"myelin/internal/eventsig"
	"myelin/internal/fedpolicy"
	rsapi "myelin/roomserver/api"
)

// maxFetchedState bounds the state events one /state answer may hold.
const maxFetchedState = 100000

// Fetcher implements rsapi.Fetcher over the federation client: it asks
// the scope's servers in turn and returns only what it checked, so the
// roomserver never sees an event that is unparsable in the room's
// version, whose content hash does not match (gomatrixserverlib would
// hand it back redacted), that is of another room or not the one asked
// for, or whose signatures do not verify.
type Fetcher struct {
	self   spec.ServerName
	client fclient.FederationClient
	keys   gmsl.JSONVerifier
	// policy leaves out the servers the operator denies.
	policy *fedpolicy.Policy
}

// Fetcher returns the federation API's rsapi.Fetcher.
func (f *FederationAPI) Fetcher() *Fetcher {
	return &Fetcher{self: f.key.ServerName, client: f.client, keys: f.keys.ring, policy: f.policy}
}

var _ rsapi.Fetcher = (*Fetcher)(nil)

// errRefused is what a server answered that did not pass the checks.
var errRefused = errors.New("refused")

// ask calls try for each server of scope but this one, until one answers
// something that passes the checks.
func (x *Fetcher) ask(ctx context.Context, scope rsapi.FetchScope, what string, try func(spec.ServerName) error) error {
	err := fmt.Errorf("%s: no server to ask", what)
	for _, s := range scope.Servers {
		if s == x.self || s == "" || !x.policy.Allowed(s) {
			continue
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %w", what, ctx.Err())
		}
		e := try(s)
		if e == nil {
			return nil
		}
		err = fmt.Errorf("%s from %s: %w", what, s, e)
	}
	return err
}

// check parses raw events in the scope's room version and keeps them only
// if every one passes: a server that sends one bad event is not trusted
// for the rest of its answer.
func (x *Fetcher) check(ctx context.Context, scope rsapi.FetchScope, raws []spec.RawJSON, max int) ([]gmsl.PDU, error) {
	if len(raws) > max {
		return nil, fmt.Errorf("%w: %d events, more than %d", errRefused, len(raws), max)
	}
	ver, err := gmsl.GetRoomVersion(scope.RoomVersion)
	if err != nil {
		return nil, fmt.Errorf("room version %q: %w", scope.RoomVersion, err)
	}
	evs := make([]gmsl.PDU, 0, len(raws))
	for i, raw := range raws {
		ev, err := ver.NewEventFromUntrustedJSON(raw)
		if err != nil {
			return nil, fmt.Errorf("%w: event %d: %v", errRefused, i, err)
		}
		// A content hash mismatch comes back redacted, without an error.
		if ev.Redacted() {
			return nil, fmt.Errorf("%w: event %s: content hash mismatch", errRefused, ev.EventID())
		}
		if ev.RoomID().String() != scope.RoomID {
			return nil, fmt.Errorf("%w: event %s is of room %s", errRefused, ev.EventID(), ev.RoomID().String())
		}
		evs = append(evs, ev)
	}
	for i, err := range eventsig.VerifyAll(ctx, evs, x.keys) {
		if err != nil {
			return nil, fmt.Errorf("%w: event %s: signatures: %v", errRefused, evs[i].EventID(), err)
		}
	}
	return evs, nil
}

// MissingEvents implements rsapi.Fetcher (POST /get_missing_events).
func (x *Fetcher) MissingEvents(ctx context.Context, scope rsapi.FetchScope, earliest, latest []string, limit int) ([]gmsl.PDU, error) {
	var out []gmsl.PDU
	err := x.ask(ctx, scope, "missing events", func(s spec.ServerName) error {
		res, err := x.client.LookupMissingEvents(ctx, x.self, s, scope.RoomID, fclient.MissingEvents{
			Limit: limit, EarliestEvents: earliest, LatestEvents: latest,
		}, scope.RoomVersion)
		if err != nil {
			return err
		}
		out, err = x.check(ctx, scope, res.Events, limit)
		return err
	})
	return out, err
}

// AuthChain implements rsapi.Fetcher (GET /event_auth).
func (x *Fetcher) AuthChain(ctx context.Context, scope rsapi.FetchScope, eventID string) ([]gmsl.PDU, error) {
	var out []gmsl.PDU
	err := x.ask(ctx, scope, "auth chain of "+eventID, func(s spec.ServerName) error {
		res, err := x.client.GetEventAuth(ctx, x.self, s, scope.RoomVersion, scope.RoomID, eventID)
		if err != nil {
			return err
		}
		out, err = x.check(ctx, scope, res.AuthEvents, maxAuthChain)
		return err
	})
	return out, err
}

// Event implements rsapi.Fetcher (GET /event).
func (x *Fetcher) Event(ctx context.Context, scope rsapi.FetchScope, eventID string) (gmsl.PDU, error) {
	var out gmsl.PDU
	err := x.ask(ctx, scope, "event "+eventID, func(s spec.ServerName) error {
		txn, err := x.client.GetEvent(ctx, x.self, s, eventID)
		if err != nil {
			return err
		}
		raws := make([]spec.RawJSON, len(txn.PDUs))
		for i, p := range txn.PDUs {
			raws[i] = spec.RawJSON(p)
		}
		evs, err := x.check(ctx, scope, raws, 1)
		if err != nil {
			return err
		}
		if len(evs) != 1 || evs[0].EventID() != eventID {
			return fmt.Errorf("%w: asked for %s, got %v", errRefused, eventID, eventIDs(evs))
		}
		out = evs[0]
		return nil
	})
	return out, err
}

// StateBefore implements rsapi.Fetcher (GET /state).
func (x *Fetcher) StateBefore(ctx context.Context, scope rsapi.FetchScope, eventID string) (state, authChain []gmsl.PDU, err error) {
	err = x.ask(ctx, scope, "state before "+eventID, func(s spec.ServerName) error {
		res, err := x.client.LookupState(ctx, x.self, s, scope.RoomID, eventID, scope.RoomVersion)
		if err != nil {
			return err
		}
		if state, err = x.check(ctx, scope, res.StateEvents, maxFetchedState); err != nil {
			return err
		}
		authChain, err = x.check(ctx, scope, res.AuthEvents, maxAuthChain)
		return err
	})
	return state, authChain, err
}

// StateIDsBefore implements rsapi.Fetcher (GET /state_ids). Only IDs:
// the events are checked when they are fetched.
func (x *Fetcher) StateIDsBefore(ctx context.Context, scope rsapi.FetchScope, eventID string) ([]string, error) {
	var out []string
	err := x.ask(ctx, scope, "state IDs before "+eventID, func(s spec.ServerName) error {
		res, err := x.client.LookupStateIDs(ctx, x.self, s, scope.RoomID, eventID)
		if err != nil {
			return err
		}
		if len(res.StateEventIDs) > maxFetchedState {
			return fmt.Errorf("%w: %d state events, more than %d", errRefused, len(res.StateEventIDs), maxFetchedState)
		}
		out = res.StateEventIDs
		return nil
	})
	return out, err
}

// errNoEvents is an answer with no event, which says nothing: the server
// may lack the history, or not let this one see it.
var errNoEvents = errors.New("no events")

// Backfill implements rsapi.Fetcher (GET /backfill). An empty answer is
// no answer: the next server is asked.
func (x *Fetcher) Backfill(ctx context.Context, scope rsapi.FetchScope, from []string, limit int) ([]gmsl.PDU, spec.ServerName, error) {
	var out []gmsl.PDU
	var by spec.ServerName
	err := x.ask(ctx, scope, "backfill", func(s spec.ServerName) error {
		txn, err := x.client.Backfill(ctx, x.self, s, scope.RoomID, limit, from)
		if err != nil {
			return err
		}
		raws := make([]spec.RawJSON, len(txn.PDUs))
		for i, p := range txn.PDUs {
			raws[i] = spec.RawJSON(p)
		}
		evs, err := x.check(ctx, scope, raws, limit)
		if err != nil {
			return err
		}
		if len(evs) == 0 {
			return errNoEvents
		}
		out, by = evs, s
		return nil
	})
	if errors.Is(err, errNoEvents) {
		return nil, "", nil
	}
	return out, by, err
}
