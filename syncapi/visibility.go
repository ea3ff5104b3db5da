package syncapi

import (
	"context"
	"errors"
	"fmt"

	gmsl "github.com/matrix-org/gomatrixserverlib"

	"github.com/tidwall/gjson"

	"myelin/syncapi/storage"
	uapi "myelin/userapi/api"
)

func gjsonGet(js, path string) string { return gjson.Get(js, path).Raw }

// visibility decides which events of one room a user may see, from the
// history visibility in force at each event and the user's membership
// then (spec: "History visibility"). The user's membership log is loaded
// only when an event predates the user's current join.
type visibility struct {
	s      *SyncAPI
	roomID string
	userID string
	// currentStateVisible lets the room's current state events through
	// whatever the history visibility: /sync shows them in the timeline
	// even when set while the user could not see the room, as Synapse
	// does, so that clients' state stays right.
	currentStateVisible bool
	// joinedAt, when set, is the position of the user's current join: it
	// may see everything after it without its membership log being read.
	joinedAt int64

	loaded bool
	log    []storage.MembershipChange

	// erased caches whether senders are erased users; version is the
	// room's, for redacting their events (forErased).
	erased  map[string]bool
	version gmsl.IRoomVersion

	// ignored are the users the user ignores: their events, state events
	// aside, are hidden (spec: "Ignoring Users").
	ignored map[string]bool
}

// ignoredBy returns the users userID ignores (nil: none).
func (s *SyncAPI) ignoredBy(ctx context.Context, userID string) (map[string]bool, error) {
	raw, err := s.users.AccountData(ctx, userID, "", uapi.IgnoredUserListType)
	if err != nil && !uapi.IsNotFound(err) {
		return nil, fmt.Errorf("ignored users of %s: %w", userID, err)
	}
	return uapi.IgnoredUsers(raw), nil
}

// syncVisibility is the visibility helper of one room of a /sync, shared
// by its timeline and the timeline's unsigned data, so that the
// membership log is read once.
func (s *SyncAPI) syncVisibility(req *syncRequest, roomID string) *visibility {
	return &visibility{s: s, roomID: roomID, userID: req.dev.UserID, currentStateVisible: true, joinedAt: req.b.joinedAt[roomID]}
}

func (v *visibility) load(ctx context.Context) error {
	if v.loaded {
		return nil
	}
	log, err := v.s.store.MembershipLog(ctx, v.roomID, v.userID)
	if err != nil {
		return err
	}
	v.log, v.loaded = log, true
	return nil
}

// canSee reports whether the user may see e.
func (v *visibility) canSee(ctx context.Context, e *storage.Event) (bool, error) {
	if e.StateKey == nil && v.ignored[e.Sender] {
		return false, nil
	}
	if e.HistVis == "world_readable" {
		return true, nil
	}
	if e.Type == "m.room.member" && e.StateKey != nil && *e.StateKey == v.userID {
		return true, nil // one's own membership events
	}
	if v.joinedAt > 0 && e.Pos > v.joinedAt {
		return true, nil // joined since before the event, and still joined
	}
	if err := v.load(ctx); err != nil {
		return false, err
	}
	at := "leave" // membership just before e
	joinedLater := false
	for _, c := range v.log {
		if c.Pos < e.Pos {
			at = c.Membership
		} else if c.Membership == "join" {
			joinedLater = true
		}
	}
	switch {
	case at == "join":
		return true, nil
	case e.HistVis == "shared" && joinedLater:
		return true, nil
	case e.HistVis == "invited" && at == "invite":
		return true, nil
	}
	if v.currentStateVisible && e.StateKey != nil {
		st, err := v.s.store.StateEvent(ctx, v.roomID, e.Type, *e.StateKey)
		if errors.Is(err, storage.ErrNotFound) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		return st.EventID == e.EventID, nil
	}
	return false, nil
}

// membershipAt is the user's membership at e, e's own change included
// (unsigned.membership, MSC4115): "leave" before any.
func (v *visibility) membershipAt(ctx context.Context, e *storage.Event) (string, error) {
	if v.joinedAt > 0 && e.Pos >= v.joinedAt {
		return "join", nil // joined since, and still joined
	}
	if err := v.load(ctx); err != nil {
		return "", err
	}
	at := "leave"
	for _, c := range v.log {
		if c.Pos > e.Pos {
			break
		}
		at = c.Membership
	}
	return at, nil
}

// seen returns e as the user sees it (forErased), or nil when the user
// may not see it (canSee).
func (v *visibility) seen(ctx context.Context, e *storage.Event) (*storage.Event, error) {
	ok, err := v.canSee(ctx, e)
	if err != nil || !ok {
		return nil, err
	}
	return v.forErased(ctx, e)
}

// forErased returns e as the user may see it: redacted when its sender is
// an erased user of this server and the user was not joined to the room
// when it was sent (spec: "Account deactivation", erase; Synapse shows
// such events in full only to those who were there). A joined user's live
// timeline (past joinedAt) never needs the look-up.
func (v *visibility) forErased(ctx context.Context, e *storage.Event) (*storage.Event, error) {
	if v.joinedAt > 0 && e.Pos > v.joinedAt || e.Sender == v.userID || !v.s.isLocal(e.Sender) {
		return e, nil
	}
	if err := v.load(ctx); err != nil {
		return nil, err
	}
	at := "leave"
	for _, c := range v.log {
		if c.Pos < e.Pos {
			at = c.Membership
		}
	}
	if at == "join" {
		return e, nil
	}
	if v.erased == nil {
		v.erased = map[string]bool{}
	}
	erased, seen := v.erased[e.Sender]
	if !seen {
		a, err := v.s.users.Account(ctx, e.Sender)
		erased = err == nil && a != nil && a.Erased
		v.erased[e.Sender] = erased
	}
	if !erased {
		return e, nil
	}
	if v.version == nil {
		ver := gmsl.RoomVersionV1
		if c, err := v.s.store.StateEvent(ctx, v.roomID, "m.room.create", ""); err == nil {
			if rv := gjsonString(c.JSON, "content.room_version"); rv != "" {
				ver = gmsl.RoomVersion(rv)
			}
		}
		impl, err := gmsl.GetRoomVersion(ver)
		if err != nil {
			return e, nil
		}
		v.version = impl
	}
	redacted, err := v.version.RedactEventJSON([]byte(e.JSON))
	if err != nil {
		return e, nil
	}
	c := *e
	c.JSON = string(redacted)
	return &c, nil
}
