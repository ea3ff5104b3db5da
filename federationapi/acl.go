package federationapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/tidwall/gjson"

	"myelin/internal/fedpolicy"
	"myelin/internal/mxhttp"
	rsapi "myelin/roomserver/api"
)

// mRoomServerACL is the state event type of a room's server ACL.
const mRoomServerACL = "m.room.server_acl"

// serverACL is a room's m.room.server_acl, parsed (spec: "Server Access
// Control Lists"): globs lower-cased, entries that are not strings left
// out.
type serverACL struct {
	allow, deny     []string
	allowIPLiterals bool
}

// parseACL reads the content of an m.room.server_acl event. What the spec
// leaves unsaid follows Synapse: a missing or malformed allow list allows
// no one (an ACL redacted to {} shuts every server out, as its deny-all
// reading says), and allow_ip_literals is true unless it is false.
func parseACL(content []byte) *serverACL {
	c := gjson.ParseBytes(content)
	strs := func(key string) []string {
		var out []string
		list := c.Get(key)
		if !list.IsArray() {
			return nil
		}
		for _, v := range list.Array() {
			if v.Type == gjson.String {
				out = append(out, strings.ToLower(v.Str))
			}
		}
		return out
	}
	ip := c.Get("allow_ip_literals")
	return &serverACL{allow: strs("allow"), deny: strs("deny"), allowIPLiterals: ip.Type != gjson.False}
}

// allows reports whether the ACL lets server take part in the room: not an
// IP literal when those are refused, matched by no deny glob and by an
// allow glob, its port left out and case ignored.
func (a *serverACL) allows(server spec.ServerName) bool {
	host := fedpolicy.Host(server)
	if !a.allowIPLiterals && fedpolicy.IsIPLiteral(host) {
		return false
	}
	return !fedpolicy.MatchAny(a.deny, host) && fedpolicy.MatchAny(a.allow, host)
}

// maxCachedACLs bounds the ACL cache; past it the cache starts again
// empty (a room's ACL is one state lookup away).
const maxCachedACLs = 10000

// aclCache keeps each room's parsed ACL (nil for a room without one).
// The OutputRoomEvent consumer drops a room's entry when its ACL changes
// (invalidateACL); the generation keeps a lookup that raced such a change
// from storing what it read before it.
type aclCache struct {
	mu    sync.Mutex
	rooms map[string]*serverACL
	gen   uint64
}

func (c *aclCache) get(roomID string) (acl *serverACL, ok bool, gen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	acl, ok = c.rooms[roomID]
	return acl, ok, c.gen
}

func (c *aclCache) put(roomID string, acl *serverACL, gen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen != c.gen {
		return
	}
	if c.rooms == nil || len(c.rooms) >= maxCachedACLs {
		c.rooms = map[string]*serverACL{}
	}
	c.rooms[roomID] = acl
}

func (c *aclCache) invalidate(roomID string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	delete(c.rooms, roomID)
}

// aclAllows reports whether origin may take part in roomID under the
// room's server ACL: true for a room without one, and for a room this
// server does not know (its handlers answer that themselves). Every
// federation request about a room asks it, /send for each PDU's and each
// room EDU's room.
func (f *FederationAPI) aclAllows(ctx context.Context, roomID string, origin spec.ServerName) (bool, error) {
	if f.rooms == nil {
		return true, nil // no rooms served yet
	}
	acl, ok, gen := f.acls.get(roomID)
	if !ok {
		state, err := f.rooms.CurrentState(ctx, roomID, gmsl.StateKeyTuple{EventType: mRoomServerACL, StateKey: ""})
		if errors.Is(err, rsapi.ErrRoomNotFound) {
			return true, nil
		}
		if err != nil {
			return false, fmt.Errorf("server ACL of %s: %w", roomID, err)
		}
		for _, ev := range state {
			acl = parseACL(ev.Content())
		}
		f.acls.put(roomID, acl, gen)
	}
	return acl == nil || acl.allows(origin), nil
}

// checkACL answers 403 M_FORBIDDEN when the request's origin is denied by
// roomID's server ACL.
func (f *FederationAPI) checkACL(ctx context.Context, roomID string) error {
	origin := Origin(ctx)
	ok, err := f.aclAllows(ctx, roomID, origin)
	if err != nil {
		return err
	}
	if !ok {
		return mxhttp.Forbidden("Server %s is denied by the room's server ACL", origin)
	}
	return nil
}

// roomACL wraps an authenticated handler of a path with a {roomId}: the
// room's server ACL must allow the origin.
func (f *FederationAPI) roomACL(h mxhttp.Handler) mxhttp.Handler {
	return func(r *http.Request) (any, error) {
		if err := f.checkACL(r.Context(), mxhttp.Var(r, "roomId")); err != nil {
			return nil, err
		}
		return h(r)
	}
}

// invalidateACL forgets roomID's cached ACL; the output consumer calls it
// when the room's m.room.server_acl changes or an event of the room is
// redacted (a redacted ACL allows no one).
func (f *FederationAPI) invalidateACL(roomID string) { f.acls.invalidate(roomID) }
