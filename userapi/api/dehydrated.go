package uapi

import (
	"context"
	"encoding/json"
)

// DehydratedDevices is MSC3814: a user keeps one device with no client
// behind it, which other devices encrypt room keys to like any other; the
// user's next client fetches its to-device messages and takes the keys
// over, with the device's secrets from device_data, which only clients
// can read.
type DehydratedDevices interface {
	// PutDehydratedDevice makes req's device the user's dehydrated device
	// with its keys, deleting the one it replaces.
	PutDehydratedDevice(ctx context.Context, req PutDehydratedDeviceRequest) error
	// DehydratedDevice is the user's dehydrated device (ErrNotFound).
	DehydratedDevice(ctx context.Context, userID string) (*DehydratedDevice, error)
	// DeleteDehydratedDevice deletes it and returns its ID (ErrNotFound).
	DeleteDehydratedDevice(ctx context.Context, userID string) (string, error)
}

// DehydratedDevice is a user's dehydrated device: its ID and the client's
// opaque (encrypted) data.
type DehydratedDevice struct {
	DeviceID   string          `json:"device_id"`
	DeviceData json.RawMessage `json:"device_data"`
}

// PutDehydratedDeviceRequest is PUT /dehydrated_device: the device, its
// data and display name, and its keys as /keys/upload takes them.
type PutDehydratedDeviceRequest struct {
	DehydratedDevice
	UserID      string
	DisplayName string
	Keys        UploadKeysRequest
}

// ErrDeviceIDInUse: a dehydrated device was to take the ID of one of the
// user's other devices.
var ErrDeviceIDInUse = codedError{"M_INVALID_PARAM", "The device ID is taken by another device"}
