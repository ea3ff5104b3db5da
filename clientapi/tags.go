package clientapi

import (
	"encoding/json"
	"net/http"

	"github.com/gorilla/mux"

	"myelin/internal/mxhttp"
	uapi "myelin/userapi/api"
)

// Room tags (spec: "Room Tagging") are the m.tag room account data of a
// user: {"tags": {"<tag>": {"order": 0.5}}}.

func (c *ClientAPI) tagRoutes(r *mux.Router) {
	r.Handle("/user/{userId}/rooms/{roomId}/tags", c.authed(c.getTags)).Methods(http.MethodGet)
	r.Handle("/user/{userId}/rooms/{roomId}/tags/{tag}", c.authed(c.putTag)).Methods(http.MethodPut)
	r.Handle("/user/{userId}/rooms/{roomId}/tags/{tag}", c.authed(c.deleteTag)).Methods(http.MethodDelete)
}

type tagContent struct {
	Tags map[string]json.RawMessage `json:"tags"`
}

func (c *ClientAPI) loadTags(r *http.Request, dev *uapi.Device) (*tagContent, error) {
	if mxhttp.Var(r, "userId") != dev.UserID {
		return nil, mxhttp.Forbidden("cannot access the tags of other users")
	}
	tc := &tagContent{Tags: map[string]json.RawMessage{}}
	raw, err := c.users.AccountData(r.Context(), dev.UserID, mxhttp.Var(r, "roomId"), "m.tag")
	if uapi.IsNotFound(err) {
		return tc, nil
	}
	if err != nil {
		return nil, err
	}
	_ = json.Unmarshal(raw, tc)
	if tc.Tags == nil {
		tc.Tags = map[string]json.RawMessage{}
	}
	return tc, nil
}

func (c *ClientAPI) saveTags(r *http.Request, dev *uapi.Device, tc *tagContent) error {
	raw, err := json.Marshal(tc)
	if err != nil {
		return err
	}
	_, err = c.users.SetAccountData(r.Context(), dev.UserID, mxhttp.Var(r, "roomId"), "m.tag", raw)
	return err
}

func (c *ClientAPI) getTags(r *http.Request, dev *uapi.Device) (any, error) {
	return c.loadTags(r, dev)
}

func (c *ClientAPI) putTag(r *http.Request, dev *uapi.Device) (any, error) {
	var body map[string]json.RawMessage
	if err := mxhttp.ReadJSON(r, &body); err != nil {
		return nil, err
	}
	if order, ok := body["order"]; ok {
		var f float64
		if json.Unmarshal(order, &f) != nil {
			return nil, mxhttp.BadJSON("order must be a number")
		}
	}
	tc, err := c.loadTags(r, dev)
	if err != nil {
		return nil, err
	}
	raw, _ := json.Marshal(body)
	tc.Tags[mxhttp.Var(r, "tag")] = raw
	if err := c.saveTags(r, dev, tc); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

func (c *ClientAPI) deleteTag(r *http.Request, dev *uapi.Device) (any, error) {
	tc, err := c.loadTags(r, dev)
	if err != nil {
		return nil, err
	}
	if _, ok := tc.Tags[mxhttp.Var(r, "tag")]; ok {
		delete(tc.Tags, mxhttp.Var(r, "tag"))
		if err := c.saveTags(r, dev, tc); err != nil {
			return nil, err
		}
	}
	return struct{}{}, nil
}
