package federationapi

import (
	"net/http"
	"strings"

	"myelin/internal/mxhttp"
	"myelin/internal/mxid"
	uapi "myelin/userapi/api"
)

// queryProfile is GET /_matrix/federation/v1/query/profile: a local user's
// public profile, or one field of it. A user who does not exist, has no
// profile, or lacks the field asked for is 404 (spec).
func (f *FederationAPI) queryProfile(r *http.Request) (any, error) {
	q := r.URL.Query()
	userID := q.Get("user_id")
	if userID == "" {
		return nil, mxhttp.MissingParam("user_id is required")
	}
	if err := mxhttp.CheckParam("user_id", userID, mxid.UserID); err != nil {
		return nil, err
	}
	if _, domain, _ := strings.Cut(userID, ":"); domain != string(f.key.ServerName) {
		return nil, mxhttp.InvalidParam("user_id is not a user of this server")
	}
	p, err := f.profiles.Profile(r.Context(), userID)
	if uapi.IsNotFound(err) {
		return nil, mxhttp.NotFound("Profile not found")
	}
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	if p.DisplayName != "" {
		out["displayname"] = p.DisplayName
	}
	if p.AvatarURL != "" {
		out["avatar_url"] = p.AvatarURL
	}
	field := q.Get("field")
	if field == "" {
		if len(out) == 0 {
			return nil, mxhttp.NotFound("Profile not found")
		}
		return out, nil
	}
	v, ok := out[field]
	if !ok {
		return nil, mxhttp.NotFound("Profile field not found")
	}
	return map[string]string{field: v}, nil
}
