package uapi

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"time"

	"myelin/internal/mxid"
)

// Keys is the end-to-end encryption part of the userapi: the keys of local
// devices, and the device lists of remote users, fetched from their
// servers through a RemoteKeys and cached while they share a room with a
// local user.
type Keys interface {
	// UploadKeys stores a local device's keys (device keys, one-time keys,
	// fallback keys; each may be empty) and returns its count of unclaimed
	// one-time keys by algorithm.
	UploadKeys(ctx context.Context, req UploadKeysRequest) (map[string]int, error)
	// KeyCounts is what /sync tells a device of its one-time and
	// fallback keys.
	KeyCounts(ctx context.Context, userID, deviceID string) (*KeyCounts, error)
	// QueryKeys answers /keys/query: for each user, the keys of the devices
	// named (all when none are). Users of other servers are asked of their
	// servers in parallel, within timeout, unless LocalOnly; a server that
	// does not answer is listed in Failures.
	QueryKeys(ctx context.Context, req QueryKeysRequest) (*QueryKeysResponse, error)
	// ClaimKeys answers /keys/claim: one one-time key (else the fallback
	// key) of the algorithm named for each device.
	ClaimKeys(ctx context.Context, req ClaimKeysRequest) (*ClaimKeysResponse, error)
	// UserDevices is a local user's device list as /user/devices serves
	// it (ErrNotFound for a user of another server).
	UserDevices(ctx context.Context, userID string) (*UserDevices, error)
	// DeviceListUpdate applies an m.device_list_update EDU from origin.
	DeviceListUpdate(ctx context.Context, origin string, update DeviceListUpdate) error
	// UploadCrossSigningKeys stores a local user's cross-signing keys by
	// type (master, self_signing, user_signing), checked by the caller.
	UploadCrossSigningKeys(ctx context.Context, userID string, keys map[string]json.RawMessage) error
	// UploadSignatures stores the signatures a local user made of keys
	// (POST /keys/signatures/upload); those refused are returned by user
	// and key ID.
	UploadSignatures(ctx context.Context, signer string, signed map[string]map[string]json.RawMessage) (map[string]map[string]SignatureFailure, error)
	// SigningKeyUpdate applies an m.signing_key_update EDU from origin.
	SigningKeyUpdate(ctx context.Context, origin string, update SigningKeyUpdate) error
	// DeviceListChanges lists the users whose device lists changed in
	// (from, to]; DeviceListsPos is the head of that stream. all is true
	// when from is older than what the stream keeps (userapi.DeviceListRetention):
	// any user may have changed.
	DeviceListChanges(ctx context.Context, from, to int64) (users []string, all bool, err error)
	DeviceListsPos(ctx context.Context) (int64, error)
}

// KeyCounts is a device's unclaimed one-time keys by algorithm, and the
// algorithms of its fallback keys that were not claimed yet (a claimed one
// stays, as the last resort, until the device uploads another).
type KeyCounts struct {
	OneTime        map[string]int
	UnusedFallback []string
}

// RemoteKeys asks other servers for their users' keys; the federationapi
// implements it (setup wires it with SetRemoteKeys).
type RemoteKeys interface {
	// QueryKeys is POST /_matrix/federation/v1/user/keys/query.
	QueryKeys(ctx context.Context, server string, deviceKeys map[string][]string) (*QueryKeysResponse, error)
	// ClaimKeys is POST /_matrix/federation/v1/user/keys/claim.
	ClaimKeys(ctx context.Context, server string, oneTimeKeys map[string]map[string]string) (*ClaimKeysResponse, error)
	// UserDevices is GET /_matrix/federation/v1/user/devices/{userId}.
	UserDevices(ctx context.Context, server, userID string) (*UserDevices, error)
}

// UploadKeysRequest is the body of /keys/upload for a device. Each map is
// key ID ("<algorithm>:<id>") to the key as uploaded.
type UploadKeysRequest struct {
	UserID       string
	DeviceID     string
	DeviceKeys   json.RawMessage // nil: unchanged
	OneTimeKeys  map[string]json.RawMessage
	FallbackKeys map[string]json.RawMessage
}

// QueryKeysRequest asks for the keys of devices: user ID to device IDs
// (none: all the user's devices).
type QueryKeysRequest struct {
	DeviceKeys map[string][]string
	// Requester is the local user asking, who alone sees its own
	// user-signing key; empty for another server.
	Requester string
	Timeout   time.Duration
	// LocalOnly answers for this server's users alone (a request from
	// another server).
	LocalOnly bool
}

// QueryKeysResponse is the answer of /keys/query, on both APIs.
type QueryKeysResponse struct {
	DeviceKeys      map[string]map[string]json.RawMessage `json:"device_keys"`
	MasterKeys      map[string]json.RawMessage            `json:"master_keys,omitempty"`
	SelfSigningKeys map[string]json.RawMessage            `json:"self_signing_keys,omitempty"`
	UserSigningKeys map[string]json.RawMessage            `json:"user_signing_keys,omitempty"`
	// Failures is always there for a client, never for another server.
	Failures map[string]any `json:"failures,omitempty"`
}

// ClaimKeysRequest asks for one key of an algorithm per device: user ID
// to device ID to algorithm.
type ClaimKeysRequest struct {
	OneTimeKeys map[string]map[string]string
	Timeout     time.Duration
	LocalOnly   bool
}

// ClaimKeysResponse is the answer of /keys/claim: user ID to device ID to
// key ID to key.
type ClaimKeysResponse struct {
	OneTimeKeys map[string]map[string]map[string]json.RawMessage `json:"one_time_keys"`
	Failures    map[string]any                                   `json:"failures,omitempty"`
}

// UserDevices is the answer of /user/devices.
type UserDevices struct {
	UserID         string          `json:"user_id"`
	StreamID       int64           `json:"stream_id"`
	Devices        []UserDevice    `json:"devices"`
	MasterKey      json.RawMessage `json:"master_key,omitempty"`
	SelfSigningKey json.RawMessage `json:"self_signing_key,omitempty"`
}

// UserDevice is one device of UserDevices; Keys is absent for a device
// that uploaded none.
type UserDevice struct {
	DeviceID    string          `json:"device_id"`
	DisplayName string          `json:"device_display_name,omitempty"`
	Keys        json.RawMessage `json:"keys,omitempty"`
}

// DeviceListUpdate is the content of an m.device_list_update EDU; the
// userapi publishes one on the OutputDeviceListUpdate stream for each
// change of a local user's devices, for the federationapi to send.
type DeviceListUpdate struct {
	UserID      string          `json:"user_id"`
	DeviceID    string          `json:"device_id"`
	DisplayName string          `json:"device_display_name,omitempty"`
	StreamID    int64           `json:"stream_id"`
	PrevID      []int64         `json:"prev_id"`
	Deleted     bool            `json:"deleted,omitempty"`
	Keys        json.RawMessage `json:"keys,omitempty"`
}

// maxKeysQueryUsers and maxKeysQueryDevices bound one /keys/query or
// /keys/claim: enough for a room of thousands of members, few enough that
// one request cannot make the server ask every server it knows for
// everything.
const (
	maxKeysQueryUsers   = 10_000
	maxKeysQueryDevices = 50_000
)

// IsEd25519Key reports whether s is an ed25519 public key in unpadded
// base64, as cross-signing keys are given.
func IsEd25519Key(s string) bool {
	b, err := base64.RawStdEncoding.DecodeString(s)
	return err == nil && len(b) == ed25519.PublicKeySize
}

// CheckKeysQuery checks the user IDs and device IDs of a /keys/query or
// /keys/claim body (on either API); the error says which is wrong, for an
// M_INVALID_PARAM.
func CheckKeysQuery[T any](users map[string]T, devices func(T) []string) error {
	if len(users) > maxKeysQueryUsers {
		return fmt.Errorf("at most %d users may be asked for at once", maxKeysQueryUsers)
	}
	n := 0
	for id, v := range users {
		if err := mxid.UserID(id); err != nil {
			return fmt.Errorf("user ID %q: %w", id, err)
		}
		for _, d := range devices(v) {
			if err := mxid.Opaque(d, mxid.MaxLen); err != nil {
				return fmt.Errorf("device ID of %s: %w", id, err)
			}
			n++
		}
	}
	if n > maxKeysQueryDevices {
		return fmt.Errorf("at most %d devices may be asked for at once", maxKeysQueryDevices)
	}
	return nil
}

// SigningKeyUpdate is the content of an m.signing_key_update EDU; the
// userapi publishes one on the OutputSigningKeyUpdate stream when a local
// user uploads a master or self-signing key.
type SigningKeyUpdate struct {
	UserID         string          `json:"user_id"`
	MasterKey      json.RawMessage `json:"master_key,omitempty"`
	SelfSigningKey json.RawMessage `json:"self_signing_key,omitempty"`
}

// ClaimDevices lists the devices of one user's part of a /keys/claim
// request (device ID -> algorithm), for CheckKeysQuery.
func ClaimDevices(m map[string]string) []string { return slices.Collect(maps.Keys(m)) }

// SignatureFailure is why one signed key of a signature upload was
// refused: a Matrix error code and a message (spec: the failures of POST
// /keys/signatures/upload).
type SignatureFailure struct {
	ErrCode string `json:"errcode"`
	Error   string `json:"error"`
}
