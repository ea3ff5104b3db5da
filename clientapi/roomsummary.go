package clientapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/gorilla/mux"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"myelin/internal/mxhttp"
	rsapi "myelin/roomserver/api"
	uapi "myelin/userapi/api"
)

// roomSummaryRoutes registers the room summary (spec v1.15, MSC3266) and
// the unstable paths of MSC3266 that clients still call.
func (c *ClientAPI) roomSummaryRoutes(root, v1 *mux.Router) {
	h := mxhttp.Handler(c.roomSummary)
	v1.Handle("/room_summary/{roomIdOrAlias}", h).Methods(http.MethodGet)
	root.Handle("/_matrix/client/unstable/im.nheko.summary/rooms/{roomIdOrAlias}/summary", h).Methods(http.MethodGet)
	root.Handle("/_matrix/client/unstable/im.nheko.summary/summary/{roomIdOrAlias}", h).Methods(http.MethodGet)
}

// roomSummaryResponse is a room's summary for a client (spec: GET
// /_matrix/client/v1/room_summary): the hierarchy's summary without its
// children, with the caller's membership.
type roomSummaryResponse struct {
	rsapi.PublicRoom
	RoomVersion    string   `json:"room_version,omitempty"`
	Encryption     string   `json:"encryption,omitempty"`
	AllowedRoomIDs []string `json:"allowed_room_ids,omitempty"`
	Membership     string   `json:"membership,omitempty"`
}

// roomSummary is GET /_matrix/client/v1/room_summary/{roomIdOrAlias}:
// a room this server knows is summarised from its state; another is
// asked of the via servers (and an alias's server) through the
// federation hierarchy. The caller must be able to see the room as in a
// space hierarchy (joined or invited, world_readable, public, knock,
// restricted to a room it is in); without an access token, which the
// spec allows, only a room anyone may join, knock on or read. A room the
// caller may not see is as unknown (404), so that its existence does not
// leak.
func (c *ClientAPI) roomSummary(r *http.Request) (any, error) {
	ctx := r.Context()
	var dev *uapi.Device
	if tok, err := mxhttp.AccessToken(r); err == nil {
		if dev, err = c.users.DeviceByToken(ctx, tok); err != nil {
			return nil, err
		}
	}
	roomID, servers, err := c.resolveRoom(r)
	if err != nil {
		return nil, err
	}
	sum, err := c.summaryOf(ctx, roomID, servers)
	if err != nil {
		return nil, err
	}
	notFound := mxhttp.NotFound("Room %s not found", roomID)
	if sum == nil {
		return nil, notFound
	}
	resp := &roomSummaryResponse{PublicRoom: sum.PublicRoom, RoomVersion: sum.RoomVersion, Encryption: sum.Encryption, AllowedRoomIDs: sum.AllowedRoomIDs}
	if dev == nil {
		switch {
		case sum.JoinRule == spec.Public, sum.JoinRule == spec.Knock, sum.JoinRule == spec.KnockRestricted, sum.WorldReadable:
			return resp, nil
		}
		return nil, notFound
	}
	ok, err := c.maySee(ctx, dev.UserID, sum)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, notFound
	}
	resp.Membership = spec.Leave
	m, err := c.rooms.Membership(ctx, roomID, dev.UserID)
	switch {
	case err == nil && m.Membership != "":
		resp.Membership = m.Membership
	case err != nil && !errors.Is(err, rsapi.ErrRoomNotFound):
		return nil, fmt.Errorf("membership of %s in %s: %w", dev.UserID, roomID, err)
	}
	return resp, nil
}

// summaryOf summarises a room from this server's state, else from the
// first of servers that answers; nil when none does.
func (c *ClientAPI) summaryOf(ctx context.Context, roomID string, servers []string) (*rsapi.RoomSummary, error) {
	sum, err := c.rooms.RoomSummary(ctx, roomID)
	if err == nil {
		return sum, nil
	}
	if !errors.Is(err, rsapi.ErrRoomNotFound) {
		return nil, err
	}
	if c.fed == nil {
		return nil, nil
	}
	asked := map[string]bool{}
	for _, s := range servers {
		if s == c.cfg.ServerName || asked[s] || len(asked) >= 3 {
			continue
		}
		asked[s] = true
		h, err := c.fed.Hierarchy(ctx, spec.ServerName(s), roomID, false)
		if err != nil {
			c.log.WithError(err).WithField("room_id", roomID).Debug("room not summarised by a via server")
			continue
		}
		if h.Room.RoomID == roomID {
			return &h.Room, nil
		}
	}
	return nil, nil
}
