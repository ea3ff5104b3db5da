package clientapi

import (
	"encoding/json"
	"errors"
	"net/http"

	"github.com/gorilla/mux"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"myelin/internal/mxhttp"
	"myelin/internal/mxid"
	rsapi "myelin/roomserver/api"
	uapi "myelin/userapi/api"
)

// directoryRoutes registers the public room directory.
func (c *ClientAPI) directoryRoutes(r *mux.Router) {
	r.Handle("/publicRooms", mxhttp.Handler(c.publicRoomsGet)).Methods(http.MethodGet)
	r.Handle("/publicRooms", c.authed(c.publicRoomsPost)).Methods(http.MethodPost)
	r.Handle("/directory/list/room/{roomId}", mxhttp.Handler(c.getRoomVisibility)).Methods(http.MethodGet)
	r.Handle("/directory/list/room/{roomId}", c.authed(c.setRoomVisibility)).Methods(http.MethodPut)
	r.Handle("/user_directory/search", c.authed(c.searchUsers)).Methods(http.MethodPost)
	r.Handle("/user/{userId}/openid/request_token", c.authed(c.requestOpenIDToken)).Methods(http.MethodPost)
}

func (c *ClientAPI) publicRoomsGet(r *http.Request) (any, error) {
	req, err := rsapi.PublicRoomsQueryOf(r.URL.Query())
	if err != nil {
		return nil, err
	}
	return c.publicRooms(r, r.URL.Query().Get("server"), &req)
}

func (c *ClientAPI) publicRoomsPost(r *http.Request, _ *uapi.Device) (any, error) {
	var req rsapi.PublicRoomsQuery
	if err := mxhttp.ReadJSON(r, &req); err != nil {
		return nil, err
	}
	if req.Limit < 0 {
		return nil, mxhttp.InvalidParam("limit must be a non-negative integer")
	}
	return c.publicRooms(r, r.URL.Query().Get("server"), &req)
}

// publicRooms answers a page of this server's directory, or of the
// directory of server, asked over federation.
func (c *ClientAPI) publicRooms(r *http.Request, server string, req *rsapi.PublicRoomsQuery) (any, error) {
	if req.IncludeAllNetworks && req.ThirdPartyInstanceID != "" {
		return nil, mxhttp.InvalidParam("third_party_instance_id cannot be used with include_all_networks")
	}
	if server != "" {
		if err := mxhttp.CheckParam("server", server, mxid.ServerName); err != nil {
			return nil, err
		}
	}
	if server != "" && server != c.cfg.ServerName {
		if c.fed == nil {
			return nil, mxhttp.New("M_UNKNOWN", "cannot list the rooms of %s: this server does not federate", server).WithStatus(http.StatusBadGateway)
		}
		page, err := c.fed.PublicRooms(r.Context(), spec.ServerName(server), *req)
		if err != nil {
			return nil, remoteFailed(spec.ServerName(server), err)
		}
		return page, nil
	}
	return c.rooms.PublicRooms(r.Context(), *req)
}

func (c *ClientAPI) getRoomVisibility(r *http.Request) (any, error) {
	roomID := mxhttp.Var(r, "roomId")
	if _, err := c.rooms.RoomVersion(r.Context(), roomID); err != nil {
		if errors.Is(err, rsapi.ErrRoomNotFound) {
			return nil, mxhttp.NotFound("Room not found")
		}
		return nil, err
	}
	published, err := c.rooms.IsPublished(r.Context(), roomID)
	if err != nil {
		return nil, err
	}
	vis := "private"
	if published {
		vis = "public"
	}
	return map[string]string{"visibility": vis}, nil
}

// setRoomVisibility publishes a room or withdraws it: server admins, or
// members who may change the room's canonical alias, may.
func (c *ClientAPI) setRoomVisibility(r *http.Request, dev *uapi.Device) (any, error) {
	ctx := r.Context()
	roomID := mxhttp.Var(r, "roomId")
	var req struct {
		Visibility string `json:"visibility"`
	}
	if err := mxhttp.ReadJSON(r, &req); err != nil {
		return nil, err
	}
	if req.Visibility != "public" && req.Visibility != "private" {
		return nil, mxhttp.InvalidParam("visibility must be 'public' or 'private'")
	}
	m, err := c.rooms.Membership(ctx, roomID, dev.UserID)
	if errors.Is(err, rsapi.ErrRoomNotFound) {
		return nil, mxhttp.NotFound("Room not found")
	}
	if err != nil {
		return nil, err
	}
	if !dev.IsAdmin {
		ok, err := c.hasStatePower(r, roomID, dev.UserID, spec.MRoomCanonicalAlias)
		if err != nil {
			return nil, err
		}
		if m.Membership != spec.Join || !ok {
			return nil, mxhttp.Forbidden("You may not change this room's visibility in the directory")
		}
	}
	if err := c.rooms.SetPublished(ctx, roomID, req.Visibility == "public"); err != nil {
		return nil, err
	}
	return json.RawMessage("{}"), nil
}
