package federationapi

import (
	"context"
	"errors"
	"net/http"
	"net/url"
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

// OpenIDTokens resolves the OpenID tokens this server's users handed out.
type OpenIDTokens interface {
	OpenIDUser(ctx context.Context, token string) (string, error)
}

// openIDUserInfo is GET /_matrix/federation/v1/openid/userinfo: whose an
// OpenID token is. The token is the only credential (no X-Matrix: the
// caller may be any service), so it is rate-limited by IP; an unknown or
// expired token is 401 M_UNKNOWN_TOKEN.
func (f *FederationAPI) openIDUserInfo(r *http.Request) (any, error) {
	token := r.URL.Query().Get("access_token")
	if token == "" {
		return nil, mxhttp.MissingToken()
	}
	if f.openID == nil {
		return nil, mxhttp.UnknownToken(false)
	}
	userID, err := f.openID.OpenIDUser(r.Context(), token)
	if err != nil {
		if errors.Is(err, uapi.ErrUnknownToken) {
			return nil, mxhttp.New("M_UNKNOWN_TOKEN", "Unknown or expired OpenID token")
		}
		return nil, err
	}
	return map[string]string{"sub": userID}, nil
}

// Profile asks the user's server for its public profile (GET
// /_matrix/federation/v1/query/profile), for a client's GET /profile of a
// user of another server. field is "displayname", "avatar_url" or "" for
// both.
func (r *Remote) Profile(ctx context.Context, userID, field string) (*uapi.Profile, error) {
	server := domainOf(userID)
	if server == "" {
		return nil, mxhttp.InvalidParam("%q is not a user ID", userID)
	}
	q := url.Values{"user_id": {userID}}
	if field != "" {
		q.Set("field", field)
	}
	var res struct {
		DisplayName *string `json:"displayname"`
		AvatarURL   *string `json:"avatar_url"`
	}
	if err := r.f.signed(ctx, http.MethodGet, server, "/_matrix/federation/v1/query/profile?"+q.Encode(), nil, &res); err != nil {
		return nil, err
	}
	p := &uapi.Profile{}
	if res.DisplayName != nil {
		p.DisplayName = *res.DisplayName
	}
	if res.AvatarURL != nil {
		p.AvatarURL = *res.AvatarURL
	}
	return p, nil
}
