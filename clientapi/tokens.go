package clientapi

import (
	"net/http"

	"github.com/gorilla/mux"

	"myelin/internal/mxhttp"
	uapi "myelin/userapi/api"
)

// Refresh tokens (spec: "Refreshing access tokens") and login tokens
// (POST /login/get_token, then m.login.token, for signing in a second
// device from one already signed in).

const loginTypeToken = "m.login.token"

func (c *ClientAPI) tokenRoutes(r *mux.Router) {
	r.Handle("/refresh", mxhttp.Handler(c.refresh)).Methods(http.MethodPost)
}

func (c *ClientAPI) tokenV1Routes(r *mux.Router) {
	r.Handle("/login/get_token", c.authed(c.getLoginToken)).Methods(http.MethodPost)
}

// setExpiry adds the refresh token and the access token's lifetime to a
// login response.
func (c *ClientAPI) setExpiry(resp *loginResponse, t uapi.Tokens) {
	resp.RefreshToken = t.Refresh
	if t.ExpiresTS != 0 {
		resp.ExpiresInMS = max(t.ExpiresTS-c.now().UnixMilli(), 1)
	}
}

// refresh is POST /refresh: a refresh token for a new access token and
// a new refresh token. An unknown (or revoked) refresh token is 401
// M_UNKNOWN_TOKEN, as the spec has it.
func (c *ClientAPI) refresh(r *http.Request) (any, error) {
	var req struct {
		RefreshToken string `json:"refresh_token"`
	}
	if err := mxhttp.ReadJSON(r, &req); err != nil {
		return nil, err
	}
	if req.RefreshToken == "" {
		return nil, mxhttp.MissingParam("refresh_token is required")
	}
	if err := allow(c.limits.login, "ip:"+mxhttp.ClientIP(r)); err != nil {
		return nil, err
	}
	tokens, err := c.users.Refresh(r.Context(), req.RefreshToken, c.cfg.ClientAPI.AccessTokenLifetime)
	if err != nil {
		return nil, err
	}
	var resp loginResponse
	c.setExpiry(&resp, tokens)
	out := map[string]any{"access_token": tokens.Access}
	if resp.RefreshToken != "" {
		out["refresh_token"] = resp.RefreshToken
	}
	if resp.ExpiresInMS != 0 {
		out["expires_in_ms"] = resp.ExpiresInMS
	}
	return out, nil
}

func (c *ClientAPI) loginTokensEnabled() bool { return c.cfg.ClientAPI.LoginTokenLifetime > 0 }

// getLoginToken is POST /_matrix/client/v1/login/get_token: after the
// user's password, a token that logs in (once, with m.login.token)
// within client_api.login_token_lifetime.
func (c *ClientAPI) getLoginToken(r *http.Request, dev *uapi.Device) (any, error) {
	if !c.loginTokensEnabled() {
		return nil, mxhttp.Unrecognized(http.StatusNotFound)
	}
	body, err := mxhttp.ReadBody(r)
	if err != nil {
		return nil, err
	}
	var req struct{}
	if challenge, err := c.passwordAuth(r, dev, "get_token", body, &req); challenge != nil || err != nil {
		return challenge, err
	}
	if err := allow(c.limits.login, "user:"+dev.UserID); err != nil {
		return nil, err
	}
	lifetime := c.cfg.ClientAPI.LoginTokenLifetime
	token, err := c.users.CreateLoginToken(r.Context(), dev.UserID, lifetime)
	if err != nil {
		return nil, err
	}
	return map[string]any{"login_token": token, "expires_in_ms": lifetime.Milliseconds()}, nil
}

// loginWithToken is POST /login with m.login.token. A bad, used or
// expired token is 403 M_FORBIDDEN, as Synapse answers.
func (c *ClientAPI) loginWithToken(r *http.Request, req *loginRequest) (any, error) {
	if req.Token == "" {
		return nil, mxhttp.MissingParam("token is required")
	}
	if !c.loginTokensEnabled() {
		return nil, mxhttp.Unknown("Unknown login type %q", req.Type)
	}
	userID, err := c.users.TakeLoginToken(r.Context(), req.Token)
	if err != nil {
		if uapi.IsUnknownToken(err) {
			return nil, mxhttp.Forbidden("Invalid login token")
		}
		return nil, err
	}
	return c.logIn(r, userID, req.deviceFields)
}

// accountV1Routes registers the account endpoints under /_matrix/client/v1,
// and get_token on MSC3882's unstable prefix too, which the
// org.matrix.msc3882 flag of /versions promises.
func (c *ClientAPI) accountV1Routes(root, v1 *mux.Router) {
	c.tokenV1Routes(v1)
	root.Handle("/_matrix/client/unstable/org.matrix.msc3882/login/get_token", c.authed(c.getLoginToken)).Methods(http.MethodPost)
}
