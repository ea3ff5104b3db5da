package clientapi

import (
	"net/http"

	"myelin/internal/mxhttp"
	rsapi "myelin/roomserver/api"
	uapi "myelin/userapi/api"
)

type userSearchRequest struct {
	SearchTerm *string `json:"search_term"`
	Limit      int     `json:"limit"`
}

func (q *userSearchRequest) Validate() error {
	if q.SearchTerm == nil {
		return mxhttp.MissingParam("search_term is required")
	}
	if q.Limit < 0 {
		return mxhttp.InvalidParam("limit must not be negative")
	}
	return nil
}

// searchUsers is POST /user_directory/search: users who share a room with
// the searcher or are in a room anyone may join.
func (c *ClientAPI) searchUsers(r *http.Request, dev *uapi.Device) (any, error) {
	var req userSearchRequest
	if err := mxhttp.ReadJSON(r, &req); err != nil {
		return nil, err
	}
	if req.Limit == 0 {
		req.Limit = 10
	}
	results, limited, err := c.rooms.SearchUsers(r.Context(), dev.UserID, *req.SearchTerm, min(req.Limit, 1000))
	if err != nil {
		return nil, err
	}
	if results == nil {
		results = []rsapi.DirectoryUser{}
	}
	return map[string]any{"limited": limited, "results": results}, nil
}
