package userapi

import (
	"context"

	uapi "myelin/userapi/api"
)

// PutDehydratedDevice implements uapi.DehydratedDevices. The device is
// made (with an access token nobody holds) and given its keys before it is
// recorded as dehydrated, so that GET never names a device without keys.
func (u *UserAPI) PutDehydratedDevice(ctx context.Context, req uapi.PutDehydratedDeviceRequest) error {
	old, err := u.store.DehydratedDevice(ctx, req.UserID)
	if err != nil && !uapi.IsNotFound(err) {
		return err
	}
	if old == nil || old.DeviceID != req.DeviceID {
		// Reusing a device ID revokes that device's tokens: never one of
		// the user's working devices.
		if _, err := u.store.Device(ctx, req.UserID, req.DeviceID); err == nil {
			return uapi.ErrDeviceIDInUse
		} else if !uapi.IsNotFound(err) {
			return err
		}
	}
	if old != nil && old.DeviceID != req.DeviceID {
		if err := u.store.ForgetDehydratedDevice(ctx, req.UserID, old.DeviceID); err != nil {
			return err
		}
		if err := u.DeleteDevices(ctx, req.UserID, []string{old.DeviceID}); err != nil {
			return err
		}
	}
	if _, _, err := u.CreateDevice(ctx, uapi.CreateDeviceRequest{
		UserID: req.UserID, DeviceID: req.DeviceID, DisplayName: req.DisplayName,
	}); err != nil {
		return err
	}
	keys := req.Keys
	keys.UserID, keys.DeviceID = req.UserID, req.DeviceID
	if _, err := u.UploadKeys(ctx, keys); err != nil {
		return err
	}
	return u.store.SetDehydratedDevice(ctx, req.UserID, req.DeviceID, string(req.DeviceData))
}

// DehydratedDevice implements uapi.DehydratedDevices.
func (u *UserAPI) DehydratedDevice(ctx context.Context, userID string) (*uapi.DehydratedDevice, error) {
	return u.store.DehydratedDevice(ctx, userID)
}

// DeleteDehydratedDevice implements uapi.DehydratedDevices.
func (u *UserAPI) DeleteDehydratedDevice(ctx context.Context, userID string) (string, error) {
	d, err := u.store.DehydratedDevice(ctx, userID)
	if err != nil {
		return "", err
	}
	if err := u.store.ForgetDehydratedDevice(ctx, userID, d.DeviceID); err != nil {
		return "", err
	}
	return d.DeviceID, u.DeleteDevices(ctx, userID, []string{d.DeviceID})
}
