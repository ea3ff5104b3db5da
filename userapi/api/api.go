// Package uapi is what the userapi component offers the others: accounts,
// devices and access tokens, profiles, and account data. Callers import only
// this package; setup hands them an implementation (in process, or later a
// NATS request/reply client when split apart).
package uapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Errors the userapi returns; each knows its Matrix error code.
var (
	ErrUserInUse       = codedError{"M_USER_IN_USE", "User ID already taken"}
	ErrInvalidUsername = codedError{"M_INVALID_USERNAME", "Invalid user ID"}
	ErrUnknownToken    = codedError{"M_UNKNOWN_TOKEN", "Unknown or expired access token"}
	ErrBadPassword     = codedError{"M_FORBIDDEN", "Invalid username or password"}
	ErrUserDeactivated = codedError{"M_USER_DEACTIVATED", "This account has been deactivated"}
	ErrNotFound        = codedError{"M_NOT_FOUND", "Not found"}
	// ErrInvalidSignature: a self-signing or user-signing key that the
	// master key did not sign.
	ErrInvalidSignature = codedError{"M_INVALID_SIGNATURE", "The key is not signed by the master key"}
)

// ErrTokenExpired is an access token past its expiry: M_UNKNOWN_TOKEN
// with soft_logout, so the client refreshes it (or signs in again)
// without losing its device. errors.Is(ErrTokenExpired, ErrUnknownToken).
var ErrTokenExpired error = expiredToken{}

type expiredToken struct{}

func (expiredToken) Error() string                  { return "Access token has expired" }
func (expiredToken) MatrixErrCode() string          { return "M_UNKNOWN_TOKEN" }
func (expiredToken) MatrixErrExtra() map[string]any { return map[string]any{"soft_logout": true} }
func (expiredToken) Is(target error) bool           { return target == error(ErrUnknownToken) }

type codedError struct{ code, msg string }

func (e codedError) Error() string         { return e.msg }
func (e codedError) MatrixErrCode() string { return e.code }

// IsUnknownToken reports whether err means a token is not (or no longer)
// valid.
func IsUnknownToken(err error) bool { return errors.Is(err, ErrUnknownToken) }

// IsNotFound reports whether err means the thing asked for does not exist.
func IsNotFound(err error) bool { return errors.Is(err, ErrNotFound) }

// Account is a local user account.
type Account struct {
	UserID      string
	Localpart   string
	IsAdmin     bool
	IsGuest     bool
	Deactivated bool
	// Erased: deactivated with erase, asking that what the user sent be
	// forgotten.
	Erased    bool
	CreatedTS int64
}

// Device is one logged-in session of a user, as resolved from an access
// token. SessionID is unique across all devices ever made (device IDs can
// be reused after deletion), so transaction IDs are scoped to it.
type Device struct {
	UserID      string `json:"user_id"`
	DeviceID    string `json:"device_id"`
	SessionID   int64  `json:"session_id"`
	DisplayName string `json:"display_name,omitempty"`
	LastSeenTS  int64  `json:"last_seen_ts,omitempty"`
	LastSeenIP  string `json:"last_seen_ip,omitempty"`
	// UserAgent is the client's User-Agent when it signed in.
	UserAgent string `json:"user_agent,omitempty"`
	IsAdmin   bool   `json:"is_admin,omitempty"`
	IsGuest   bool   `json:"is_guest,omitempty"`
	// ExpiresTS is when the device's access token expires (Unix ms); 0
	// for never.
	ExpiresTS int64 `json:"expires_ts,omitempty"`
}

// Tokens are the credentials a login (or a refresh) hands out.
type Tokens struct {
	Access string
	// Refresh is "" unless the client asked for one and the server gives
	// them; ExpiresTS is when Access expires (Unix ms, 0 for never).
	Refresh   string
	ExpiresTS int64
}

// Profile is a user's global profile.
type Profile struct {
	DisplayName string `json:"displayname,omitempty"`
	AvatarURL   string `json:"avatar_url,omitempty"`
}

// AccountData is one account-data item; RoomID is empty for global data.
// Pos is its position in the account-data stream.
type AccountData struct {
	RoomID  string          `json:"room_id,omitempty"`
	Type    string          `json:"type"`
	Content json.RawMessage `json:"content"`
	Pos     int64           `json:"pos"`
}

// IgnoredUserListType is the global account data listing the users a user
// ignores (spec: "Ignoring Users").
const IgnoredUserListType = "m.ignored_user_list"

// IgnoredUsers reads the users of m.ignored_user_list content; nil when
// there are none or the content is not the spec's shape.
func IgnoredUsers(content json.RawMessage) map[string]bool {
	var c struct {
		IgnoredUsers map[string]json.RawMessage `json:"ignored_users"`
	}
	if len(content) == 0 || json.Unmarshal(content, &c) != nil || len(c.IgnoredUsers) == 0 {
		return nil
	}
	out := make(map[string]bool, len(c.IgnoredUsers))
	for u := range c.IgnoredUsers {
		out[u] = true
	}
	return out
}

// CreateAccountRequest makes a local account.
type CreateAccountRequest struct {
	Localpart string
	Password  string // empty: no password login
	IsAdmin   bool
	IsGuest   bool
}

// CreateDeviceRequest logs a user in on a (new or existing) device.
type CreateDeviceRequest struct {
	UserID string
	// DeviceID reuses an existing device (its old tokens are revoked) or
	// names a new one; empty generates one.
	DeviceID    string
	DisplayName string
	IP          string
	UserAgent   string
	// RefreshLifetime, when positive, makes the access token expire after
	// it and hands out a refresh token with it.
	RefreshLifetime time.Duration
}

// UserDataUpdate is published on the OutputUserData stream when a user's
// data changes, so /sync can wake that user.
type UserDataUpdate struct {
	UserID string `json:"user_id"`
	// Stream is the sync stream that moved ("account_data").
	Stream string `json:"stream"`
	Pos    int64  `json:"pos"`
}

// API is the userapi component.
// ThreepidBinding is a third-party identifier bound on an identity server.
type ThreepidBinding struct {
	Medium, Address, IDServer string
}

type API interface {
	// Accounts.
	CreateAccount(ctx context.Context, req CreateAccountRequest) (*Account, error)
	Account(ctx context.Context, userID string) (*Account, error)
	// CheckPassword returns the account if password is right (ErrBadPassword
	// otherwise, also for unknown users).
	CheckPassword(ctx context.Context, userID, password string) (*Account, error)
	// SetPassword changes the password; when logoutOthers is set, every
	// device but keepDevice is deleted.
	SetPassword(ctx context.Context, userID, password string, logoutOthers bool, keepDeviceID string) error
	// UpgradeGuest turns a guest account into a full one with a password
	// (ErrNotFound if it is not a guest).
	UpgradeGuest(ctx context.Context, userID, password string) error
	// Deactivate disables the account and deletes its devices; erase
	// also marks it erased and deletes its account data.
	Deactivate(ctx context.Context, userID string, erase bool) error
	// AddThreepidBinding, RemoveThreepidBinding and ThreepidBindings keep
	// the identity servers a user bound third-party identifiers on
	// through this server (all of the user's when medium is empty).
	AddThreepidBinding(ctx context.Context, userID string, b ThreepidBinding) error
	RemoveThreepidBinding(ctx context.Context, userID string, b ThreepidBinding) error
	ThreepidBindings(ctx context.Context, userID, medium, address string) ([]ThreepidBinding, error)

	// Devices and access tokens.
	CreateDevice(ctx context.Context, req CreateDeviceRequest) (*Device, Tokens, error)
	// DeviceByToken resolves an access token (ErrUnknownToken if invalid,
	// ErrTokenExpired if expired).
	DeviceByToken(ctx context.Context, token string) (*Device, error)
	// DeviceByTokenForLogout is DeviceByToken that also accepts an
	// expired access token: a client may log out with one (as in
	// Synapse), and nothing else.
	DeviceByTokenForLogout(ctx context.Context, token string) (*Device, error)
	// Refresh gives the device of a refresh token a new access token (of
	// lifetime, 0 for never expiring) and a new refresh token
	// (ErrUnknownToken if invalid). The old refresh token keeps working
	// until the new access token is first used.
	Refresh(ctx context.Context, refreshToken string, lifetime time.Duration) (Tokens, error)
	// CreateLoginToken gives userID a token that logs in once
	// (m.login.token) within lifetime.
	CreateLoginToken(ctx context.Context, userID string, lifetime time.Duration) (string, error)
	// TakeLoginToken uses up a login token and returns its user
	// (ErrUnknownToken if invalid, used or expired).
	TakeLoginToken(ctx context.Context, token string) (string, error)
	Devices(ctx context.Context, userID string) ([]Device, error)
	Device(ctx context.Context, userID, deviceID string) (*Device, error)
	SetDeviceName(ctx context.Context, userID, deviceID, name string) error
	// DeleteDevices deletes the devices (all of the user's if deviceIDs is
	// nil) and revokes their tokens.
	DeleteDevices(ctx context.Context, userID string, deviceIDs []string) error

	// Profiles.
	Profile(ctx context.Context, userID string) (*Profile, error)

	// CreateOpenIDToken gives userID a token other services check with
	// this server (OpenIDUser) to learn who the user is.
	CreateOpenIDToken(ctx context.Context, userID string) (*OpenIDToken, error)
	// OpenIDUser is the user of an unexpired OpenID token (ErrUnknownToken).
	OpenIDUser(ctx context.Context, token string) (string, error)
	SetProfile(ctx context.Context, userID string, displayName, avatarURL *string) error

	// Account data.
	SetAccountData(ctx context.Context, userID, roomID, dataType string, content json.RawMessage) (pos int64, err error)
	// AccountData returns one item (ErrNotFound if unset).
	AccountData(ctx context.Context, userID, roomID, dataType string) (json.RawMessage, error)
	// AccountDataSince returns the user's items changed in (from, to], the
	// latest version of each.
	AccountDataSince(ctx context.Context, userID string, from, to int64) ([]AccountData, error)
	// AccountDataPos is the current head of the account-data stream.
	AccountDataPos(ctx context.Context) (int64, error)

	// Push rules, pushers and notifications.
	Push

	// End-to-end encryption keys and device lists.
	Keys
	// Server-side key backup.
	KeyBackup
	// Dehydrated devices (MSC3814).
	DehydratedDevices
	// Registration tokens.
	RegistrationTokens
}

// ValidLocalpart checks the localpart of a new account on serverName: only
// a-z, 0-9 and "._=-/+", and the whole user ID at most 255 bytes (spec,
// appendices, "User Identifiers"; older IDs may use more, new ones may not).
// It returns an error wrapping ErrInvalidUsername that says what is wrong.
func ValidLocalpart(localpart, serverName string) error {
	if localpart == "" {
		return fmt.Errorf("%w: the user name must not be empty", ErrInvalidUsername)
	}
	for i := 0; i < len(localpart); i++ {
		c := localpart[i]
		ok := c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || strings.IndexByte("._=-/+", c) >= 0
		if !ok {
			return fmt.Errorf("%w: user names may only contain a-z, 0-9 and ._=-/+", ErrInvalidUsername)
		}
	}
	if n := len("@:") + len(localpart) + len(serverName); n > 255 {
		return fmt.Errorf("%w: the user ID would be %d bytes long, more than 255", ErrInvalidUsername, n)
	}
	return nil
}

type clientIPKey struct{}

// WithClientIP returns ctx carrying the IP address of the client whose
// request it is; DeviceByToken records it as the device's last-seen IP.
func WithClientIP(ctx context.Context, ip string) context.Context {
	return context.WithValue(ctx, clientIPKey{}, ip)
}

// ClientIP returns the client IP address in ctx, or "".
func ClientIP(ctx context.Context) string {
	ip, _ := ctx.Value(clientIPKey{}).(string)
	return ip
}

// OpenIDToken is a token a user gives another service to prove who they
// are (spec: "OpenID").
type OpenIDToken struct {
	Token     string
	ExpiresIn time.Duration
}
