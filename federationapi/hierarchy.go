package federationapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"

	"github.com/matrix-org/gomatrixserverlib/spec"

	"myelin/internal/mxhttp"
	rsapi "myelin/roomserver/api"
)

// maxHierarchyChildren bounds the children one hierarchy answer lists
// (and the summaries it reads to make it).
const maxHierarchyChildren = 500

// hierarchy is GET /_matrix/federation/v1/hierarchy/{roomId}: the room and
// the children (its m.space.child events with a via) this server knows,
// those the origin could peek or join in children, the others' IDs in
// inaccessible_children; children this server does not know are left
// out, for the origin to ask of their via servers. A room the origin may
// not see is 404, as one unknown here (spec).
func (f *FederationAPI) hierarchy(r *http.Request) (any, error) {
	ctx := r.Context()
	origin := Origin(ctx)
	suggestedOnly := r.URL.Query().Get("suggested_only") == "true"
	rs, err := f.memberRooms()
	if err != nil {
		return nil, err
	}
	root, err := rs.RoomSummary(ctx, mxhttp.Var(r, "roomId"))
	if errors.Is(err, rsapi.ErrRoomNotFound) {
		return nil, mxhttp.NotFound("Room not found")
	}
	if err != nil {
		return nil, err
	}
	if ok, err := f.peekable(ctx, origin, root); err != nil || !ok {
		if err != nil {
			return nil, err
		}
		return nil, mxhttp.NotFound("Room not found or not accessible")
	}
	out := &rsapi.Hierarchy{Room: shown(*root, suggestedOnly), Children: []rsapi.RoomSummary{}, Inaccessible: []string{}}
	for _, child := range root.Children(suggestedOnly) {
		if len(out.Children)+len(out.Inaccessible) >= maxHierarchyChildren {
			break
		}
		sum, err := rs.RoomSummary(ctx, child.RoomID)
		if errors.Is(err, rsapi.ErrRoomNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		ok, err := f.peekable(ctx, origin, sum)
		if err != nil {
			return nil, err
		}
		if ok {
			out.Children = append(out.Children, shown(*sum, suggestedOnly))
		} else {
			out.Inaccessible = append(out.Inaccessible, child.RoomID)
		}
	}
	return out, nil
}

// shown is sum as a hierarchy shows it: only its suggested children
// when suggestedOnly (as Synapse does).
func shown(sum rsapi.RoomSummary, suggestedOnly bool) rsapi.RoomSummary {
	if suggestedOnly {
		return sum.SuggestedOnly()
	}
	return sum
}

// peekable reports whether a server could peek or join a room for its
// users (spec: "all the space-room's children the requesting server could
// feasibly peek/join"): a world_readable room, one anyone may join or
// knock on, a restricted one whose allowed rooms hold a member of the
// server, or one the server is in.
func (f *FederationAPI) peekable(ctx context.Context, server spec.ServerName, sum *rsapi.RoomSummary) (bool, error) {
	switch sum.JoinRule {
	case spec.Public, spec.Knock, spec.KnockRestricted:
		return true, nil
	}
	if sum.WorldReadable {
		return true, nil
	}
	rooms := append([]string{sum.RoomID}, sum.AllowedRoomIDs...)
	for _, id := range rooms {
		joined, err := f.rooms.ServerJoined(ctx, id, server)
		if errors.Is(err, rsapi.ErrRoomNotFound) {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("is %s in %s: %w", server, id, err)
		}
		if joined {
			return true, nil
		}
	}
	return false, nil
}

// Hierarchy asks server for roomID's hierarchy (GET
// /_matrix/federation/v1/hierarchy), for a client walking a space whose
// child this server is not in. The answer must be of roomID.
func (r *Remote) Hierarchy(ctx context.Context, server spec.ServerName, roomID string, suggestedOnly bool) (*rsapi.Hierarchy, error) {
	path := "/_matrix/federation/v1/hierarchy/" + url.PathEscape(roomID)
	if suggestedOnly {
		path += "?suggested_only=true"
	}
	var h rsapi.Hierarchy
	if err := r.f.signed(ctx, http.MethodGet, server, path, nil, &h); err != nil {
		return nil, err
	}
	if h.Room.RoomID != roomID {
		return nil, fmt.Errorf("%s answered the hierarchy of %q for %s", server, h.Room.RoomID, roomID)
	}
	return &h, nil
}
