package userapi

import (
	"context"

	uapi "myelin/userapi/api"
)

// CreateRegistrationToken implements uapi.API.
func (u *UserAPI) CreateRegistrationToken(ctx context.Context, t uapi.RegistrationToken) error {
	return u.store.InsertRegistrationToken(ctx, t)
}

// RegistrationTokens implements uapi.API.
func (u *UserAPI) RegistrationTokens(ctx context.Context, valid *bool) ([]uapi.RegistrationToken, error) {
	return u.store.RegistrationTokens(ctx, valid, u.now().UnixMilli())
}

// RegistrationToken implements uapi.API.
func (u *UserAPI) RegistrationToken(ctx context.Context, token string) (*uapi.RegistrationToken, error) {
	return u.store.RegistrationToken(ctx, token)
}

// UpdateRegistrationToken implements uapi.API.
func (u *UserAPI) UpdateRegistrationToken(ctx context.Context, token string, upd uapi.RegistrationTokenUpdate) (*uapi.RegistrationToken, error) {
	return u.store.UpdateRegistrationToken(ctx, token, upd)
}

// DeleteRegistrationToken implements uapi.API.
func (u *UserAPI) DeleteRegistrationToken(ctx context.Context, token string) error {
	return u.store.DeleteRegistrationToken(ctx, token)
}

// RegistrationTokenValid implements uapi.API.
func (u *UserAPI) RegistrationTokenValid(ctx context.Context, token string) (bool, error) {
	return u.store.RegistrationTokenValid(ctx, token, u.now().UnixMilli())
}

// UseRegistrationToken implements uapi.API.
func (u *UserAPI) UseRegistrationToken(ctx context.Context, token string) (bool, error) {
	return u.store.UseRegistrationToken(ctx, token, u.now().UnixMilli())
}

// CompleteRegistrationToken implements uapi.API.
func (u *UserAPI) CompleteRegistrationToken(ctx context.Context, token string) error {
	return u.store.CompleteRegistrationToken(ctx, token)
}

// ReleaseRegistrationToken implements uapi.API.
func (u *UserAPI) ReleaseRegistrationToken(ctx context.Context, token string) error {
	return u.store.ReleaseRegistrationToken(ctx, token)
}
