package userapi

import (
	"context"
	"time"

	uapi "myelin/userapi/api"
)

// openIDTokenTTL is how long an OpenID token is valid (Synapse's default
// too): long enough for a widget or an integration manager to check it.
const openIDTokenTTL = time.Hour

// CreateOpenIDToken implements uapi.API: a new random token for userID,
// stored as its hash with its expiry.
func (u *UserAPI) CreateOpenIDToken(ctx context.Context, userID string) (*uapi.OpenIDToken, error) {
	token, err := randomString(32)
	if err != nil {
		return nil, err
	}
	now := u.now()
	if err := u.store.InsertOpenIDToken(ctx, hashToken(token), userID, now.Add(openIDTokenTTL).UnixMilli(), now.UnixMilli()); err != nil {
		return nil, err
	}
	return &uapi.OpenIDToken{Token: token, ExpiresIn: openIDTokenTTL}, nil
}

// OpenIDUser implements uapi.API: the user an unexpired OpenID token was
// given to (uapi.ErrUnknownToken otherwise).
func (u *UserAPI) OpenIDUser(ctx context.Context, token string) (string, error) {
	if token == "" || len(token) > maxTokenLen {
		return "", uapi.ErrUnknownToken
	}
	return u.store.OpenIDUser(ctx, hashToken(token), u.now().UnixMilli())
}
