package clientapi

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"

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
}

type publicRoomsRequest struct {
	Limit  int    `json:"limit"`
	Since  string `json:"since"`
	Filter struct {
		GenericSearchTerm string    `json:"generic_search_term"`
		RoomTypes         []*string `json:"room_types"`
	} `json:"filter"`
	IncludeAllNetworks   bool   `json:"include_all_networks"`
	ThirdPartyInstanceID string `json:"third_party_instance_id"`
}

type publicRoomsResponse struct {
	Chunk     []rsapi.PublicRoom `json:"chunk"`
	NextBatch string             `json:"next_batch,omitempty"`
	PrevBatch string             `json:"prev_batch,omitempty"`
	Total     int                `json:"total_room_count_estimate"`
}

func (c *ClientAPI) publicRoomsGet(r *http.Request) (any, error) {
	q := r.URL.Query()
	req := publicRoomsRequest{Since: q.Get("since")}
	if l := q.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 0 {
			return nil, mxhttp.InvalidParam("limit must be a non-negative integer")
		}
		req.Limit = n
	}
	return c.publicRooms(r, q.Get("server"), &req)
}

func (c *ClientAPI) publicRoomsPost(r *http.Request, _ *uapi.Device) (any, error) {
	var req publicRoomsRequest
	if err := mxhttp.ReadJSON(r, &req); err != nil {
		return nil, err
	}
	if req.Limit < 0 {
		return nil, mxhttp.InvalidParam("limit must be a non-negative integer")
	}
	return c.publicRooms(r, r.URL.Query().Get("server"), &req)
}

// publicRooms pages through the directory. Tokens are offsets ("o<n>").
func (c *ClientAPI) publicRooms(r *http.Request, server string, req *publicRoomsRequest) (any, error) {
	if server != "" {
		if err := mxhttp.CheckParam("server", server, mxid.ServerName); err != nil {
			return nil, err
		}
	}
	if server != "" && server != c.cfg.ServerName {
		return nil, mxhttp.New("M_UNKNOWN", "cannot list the rooms of %s: this server does not federate yet", server).WithStatus(http.StatusBadGateway)
	}
	rooms, err := c.rooms.PublicRooms(r.Context())
	if err != nil {
		return nil, err
	}
	term := strings.ToLower(req.Filter.GenericSearchTerm)
	matched := rooms[:0:0]
	for _, pr := range rooms {
		if term != "" && !strings.Contains(strings.ToLower(pr.Name+"\x00"+pr.Topic+"\x00"+pr.CanonicalAlias), term) {
			continue
		}
		if req.Filter.RoomTypes != nil && !roomTypeWanted(req.Filter.RoomTypes, pr.RoomType) {
			continue
		}
		matched = append(matched, pr)
	}
	offset := 0
	if req.Since != "" {
		n, err := strconv.Atoi(strings.TrimPrefix(req.Since, "o"))
		if err != nil || n < 0 || !strings.HasPrefix(req.Since, "o") {
			return nil, mxhttp.InvalidParam("bad since token")
		}
		offset = min(n, len(matched))
	}
	end := len(matched)
	if req.Limit > 0 {
		end = min(offset+req.Limit, len(matched))
	}
	resp := &publicRoomsResponse{Chunk: matched[offset:end], Total: len(matched)}
	if end < len(matched) {
		resp.NextBatch = "o" + strconv.Itoa(end)
	}
	if offset > 0 {
		resp.PrevBatch = "o" + strconv.Itoa(max(offset-max(req.Limit, 0), 0))
	}
	return resp, nil
}

// roomTypeWanted matches a room's type against a filter's room_types, where
// null stands for rooms without a type.
func roomTypeWanted(types []*string, roomType string) bool {
	for _, t := range types {
		if (t == nil && roomType == "") || (t != nil && *t == roomType) {
			return true
		}
	}
	return false
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
