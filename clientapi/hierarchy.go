package clientapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"myelin/internal/mxhttp"
	rsapi "myelin/roomserver/api"
	uapi "myelin/userapi/api"
)

// Bounds of a space hierarchy walk.
const (
	// hierarchyDefaultLimit and hierarchyMaxLimit bound a page.
	hierarchyDefaultLimit = 50
	hierarchyMaxLimit     = 500
	// hierarchyMaxRooms bounds the rooms one walk visits (every page
	// walks again from the root, so the pages of one walk agree).
	hierarchyMaxRooms = 1000
	// hierarchyMaxDepth is the deepest a walk goes whatever max_depth
	// says.
	hierarchyMaxDepth = 50
	// hierarchyMaxRemote bounds the requests one walk makes to other
	// servers.
	hierarchyMaxRemote = 50
)

type hierarchyResponse struct {
	Rooms     []rsapi.RoomSummary `json:"rooms"`
	NextBatch string              `json:"next_batch,omitempty"`
}

// hierarchy is GET /_matrix/client/v1/rooms/{roomId}/hierarchy: the
// space's rooms, breadth first from it, those the user may see (joined or
// invited, world_readable, anyone may join or knock, or restricted to a
// room the user is in). A room this server knows is summarised from its
// state; one it does not is asked of the via servers of the m.space.child
// naming it (GET /_matrix/federation/v1/hierarchy), whose answer also
// summarises that room's children. Pages are offsets into one walk
// ("h<offset>_<max_depth>_<suggested_only>": a page asked with other
// options is M_INVALID_PARAM).
func (c *ClientAPI) hierarchy(r *http.Request, dev *uapi.Device) (any, error) {
	ctx := r.Context()
	q := r.URL.Query()
	roomID := mxhttp.Var(r, "roomId")
	suggestedOnly := q.Get("suggested_only") == "true"
	limit, err := intParam(q.Get("limit"), hierarchyDefaultLimit)
	if err != nil || limit < 1 {
		return nil, mxhttp.InvalidParam("limit must be a positive integer")
	}
	limit = min(limit, hierarchyMaxLimit)
	maxDepth, err := intParam(q.Get("max_depth"), hierarchyMaxDepth)
	if err != nil || maxDepth < 0 {
		return nil, mxhttp.InvalidParam("max_depth must be a non-negative integer")
	}
	maxDepth = min(maxDepth, hierarchyMaxDepth)
	opts := strconv.Itoa(maxDepth) + "_" + strconv.FormatBool(suggestedOnly)
	offset := 0
	if from := q.Get("from"); from != "" {
		off, rest, ok := strings.Cut(strings.TrimPrefix(from, "h"), "_")
		n, err := strconv.Atoi(off)
		if !ok || !strings.HasPrefix(from, "h") || err != nil || n < 0 || rest != opts {
			return nil, mxhttp.InvalidParam("from is not a token of this walk")
		}
		offset = n
	}
	root, err := c.rooms.RoomSummary(ctx, roomID)
	if err != nil && !errors.Is(err, rsapi.ErrRoomNotFound) {
		return nil, err
	}
	if root == nil {
		return nil, mxhttp.Forbidden("You may not see room %s", roomID)
	}
	ok, err := c.maySee(ctx, dev.UserID, root)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, mxhttp.Forbidden("You may not see room %s", roomID)
	}
	w := &spaceWalk{c: c, userID: dev.UserID, suggestedOnly: suggestedOnly, known: map[string]*rsapi.RoomSummary{}}
	rooms, err := w.walk(ctx, root, maxDepth, offset+limit)
	if err != nil {
		return nil, err
	}
	resp := &hierarchyResponse{Rooms: []rsapi.RoomSummary{}}
	if offset < len(rooms) {
		resp.Rooms = rooms[offset:min(offset+limit, len(rooms))]
	}
	if w.more || offset+limit < len(rooms) {
		resp.NextBatch = "h" + strconv.Itoa(offset+limit) + "_" + opts
	}
	return resp, nil
}

func intParam(s string, def int) (int, error) {
	if s == "" {
		return def, nil
	}
	return strconv.Atoi(s)
}

// spaceWalk is one walk of a space for a user.
type spaceWalk struct {
	c             *ClientAPI
	userID        string
	suggestedOnly bool
	// known are summaries of rooms this server is not in, as other
	// servers gave them (a room's answer summarises its children).
	known  map[string]*rsapi.RoomSummary
	remote int
	// more says the walk stopped before it was done.
	more bool
}

// walk visits the space breadth first from root, at most maxDepth below
// it, and returns the first want rooms the user may see.
func (w *spaceWalk) walk(ctx context.Context, root *rsapi.RoomSummary, maxDepth, want int) ([]rsapi.RoomSummary, error) {
	type item struct {
		sum   *rsapi.RoomSummary
		depth int
	}
	seen := map[string]bool{root.RoomID: true}
	queue := []item{{root, 0}}
	var out []rsapi.RoomSummary
	for visited := 0; len(queue) > 0; visited++ {
		if len(out) >= want || visited >= hierarchyMaxRooms {
			w.more = true
			break
		}
		it := queue[0]
		queue = queue[1:]
		if w.suggestedOnly {
			out = append(out, it.sum.SuggestedOnly())
		} else {
			out = append(out, *it.sum)
		}
		if it.depth >= maxDepth {
			continue
		}
		for _, child := range it.sum.Children(w.suggestedOnly) {
			if seen[child.RoomID] {
				continue
			}
			seen[child.RoomID] = true
			sum, err := w.summary(ctx, child)
			if err != nil {
				return nil, err
			}
			if sum == nil {
				continue
			}
			ok, err := w.c.maySee(ctx, w.userID, sum)
			if err != nil {
				return nil, err
			}
			if ok {
				queue = append(queue, item{sum, it.depth + 1})
			}
		}
	}
	return out, nil
}

// summary is a child's summary: from this server's state when it knows
// the room, else from another server's answer (the child's via servers
// asked in turn). Nil when no one answers.
func (w *spaceWalk) summary(ctx context.Context, child rsapi.SpaceChild) (*rsapi.RoomSummary, error) {
	sum, err := w.c.rooms.RoomSummary(ctx, child.RoomID)
	if err == nil {
		return sum, nil
	}
	if !errors.Is(err, rsapi.ErrRoomNotFound) {
		return nil, err
	}
	if s, ok := w.known[child.RoomID]; ok {
		return s, nil
	}
	if w.c.fed == nil {
		return nil, nil
	}
	for _, via := range child.Via {
		if via == spec.ServerName(w.c.cfg.ServerName) || w.remote >= hierarchyMaxRemote {
			continue
		}
		w.remote++
		h, err := w.c.fed.Hierarchy(ctx, via, child.RoomID, w.suggestedOnly)
		if err != nil {
			w.c.log.WithError(err).WithField("room_id", child.RoomID).Debug("space child not summarised by its via server")
			continue
		}
		for i := range h.Children {
			if ch := &h.Children[i]; ch.RoomID != "" {
				w.known[ch.RoomID] = ch
			}
		}
		return &h.Room, nil
	}
	return nil, nil
}

// maySee reports whether userID may see a room in a space hierarchy: a
// room anyone may join or knock on, a world_readable one, one the user is
// joined to or invited to, or one restricted to a room the user is in.
func (c *ClientAPI) maySee(ctx context.Context, userID string, sum *rsapi.RoomSummary) (bool, error) {
	switch sum.JoinRule {
	case spec.Public, spec.Knock, spec.KnockRestricted:
		return true, nil
	}
	if sum.WorldReadable {
		return true, nil
	}
	m, err := c.rooms.Membership(ctx, sum.RoomID, userID)
	if err != nil && !errors.Is(err, rsapi.ErrRoomNotFound) {
		return false, fmt.Errorf("membership of %s in %s: %w", userID, sum.RoomID, err)
	}
	if err == nil && (m.Membership == spec.Join || m.Membership == spec.Invite) {
		return true, nil
	}
	for _, id := range sum.AllowedRoomIDs {
		m, err := c.rooms.Membership(ctx, id, userID)
		if errors.Is(err, rsapi.ErrRoomNotFound) {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("membership of %s in %s: %w", userID, id, err)
		}
		if m.Membership == spec.Join {
			return true, nil
		}
	}
	return false, nil
}
