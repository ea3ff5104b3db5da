package userapi

import (
	"context"

	uapi "myelin/userapi/api"
	"myelin/userapi/storage"
)

// AddThreepidBinding implements uapi.API.
func (u *UserAPI) AddThreepidBinding(ctx context.Context, userID string, b uapi.ThreepidBinding) error {
	return u.store.AddThreepidBinding(ctx, userID, storage.ThreepidBinding(b))
}

// RemoveThreepidBinding implements uapi.API.
func (u *UserAPI) RemoveThreepidBinding(ctx context.Context, userID string, b uapi.ThreepidBinding) error {
	return u.store.RemoveThreepidBinding(ctx, userID, storage.ThreepidBinding(b))
}

// ThreepidBindings implements uapi.API.
func (u *UserAPI) ThreepidBindings(ctx context.Context, userID, medium, address string) ([]uapi.ThreepidBinding, error) {
	bs, err := u.store.ThreepidBindings(ctx, userID, medium, address)
	out := make([]uapi.ThreepidBinding, len(bs))
	for i, b := range bs {
		out[i] = uapi.ThreepidBinding(b)
	}
	return out, err
}
