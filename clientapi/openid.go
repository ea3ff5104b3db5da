package clientapi

import (
	"net/http"

	"myelin/internal/mxhttp"
	uapi "myelin/userapi/api"
)

// openIDResponse is the spec's OpenIdCredentials.
type openIDResponse struct {
	AccessToken      string `json:"access_token"`
	TokenType        string `json:"token_type"`
	MatrixServerName string `json:"matrix_server_name"`
	ExpiresIn        int64  `json:"expires_in"`
}

// requestOpenIDToken is POST /user/{userId}/openid/request_token: a token
// the user hands a third party, which asks this server who it belongs to
// (GET /_matrix/federation/v1/openid/userinfo).
func (c *ClientAPI) requestOpenIDToken(r *http.Request, dev *uapi.Device) (any, error) {
	if _, err := readObject(r, true); err != nil {
		return nil, err
	}
	if mxhttp.Var(r, "userId") != dev.UserID {
		return nil, mxhttp.Forbidden("You may only request OpenID tokens for yourself")
	}
	tok, err := c.users.CreateOpenIDToken(r.Context(), dev.UserID)
	if err != nil {
		return nil, err
	}
	return &openIDResponse{
		AccessToken:      tok.Token,
		TokenType:        "Bearer",
		MatrixServerName: c.cfg.ServerName,
		ExpiresIn:        int64(tok.ExpiresIn.Seconds()),
	}, nil
}
