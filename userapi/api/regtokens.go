package uapi

import (
	"context"
	"fmt"
	"regexp"
)

// RegistrationTokens are the tokens an admin hands out so that people may
// register on a server that asks for one (registration.requires_token;
// spec: "Token-authenticated registration"), counted and expiring as in
// Synapse: a token is valid while it has not expired and its pending and
// completed registrations are fewer than uses_allowed.
type RegistrationTokens interface {
	// CreateRegistrationToken stores t (ErrTokenExists if taken).
	CreateRegistrationToken(ctx context.Context, t RegistrationToken) error
	// RegistrationTokens lists the tokens, only valid or invalid ones
	// when valid is not nil.
	RegistrationTokens(ctx context.Context, valid *bool) ([]RegistrationToken, error)
	// RegistrationToken returns one token (ErrNotFound).
	RegistrationToken(ctx context.Context, token string) (*RegistrationToken, error)
	// UpdateRegistrationToken sets uses_allowed and expiry_time where
	// set says so (nil values for unlimited and never), and returns the
	// token (ErrNotFound).
	UpdateRegistrationToken(ctx context.Context, token string, u RegistrationTokenUpdate) (*RegistrationToken, error)
	// DeleteRegistrationToken deletes a token (ErrNotFound).
	DeleteRegistrationToken(ctx context.Context, token string) error
	// RegistrationTokenValid reports whether token may be used now.
	RegistrationTokenValid(ctx context.Context, token string) (bool, error)
	// UseRegistrationToken counts a pending registration on token if it
	// is valid, and reports whether it was.
	UseRegistrationToken(ctx context.Context, token string) (bool, error)
	// CompleteRegistrationToken moves a pending registration of token to
	// the completed ones.
	CompleteRegistrationToken(ctx context.Context, token string) error
	// ReleaseRegistrationToken gives back a pending registration of
	// token that made no account.
	ReleaseRegistrationToken(ctx context.Context, token string) error
}

// RegistrationToken is a token and its counts, in the shape of Synapse's
// admin API.
type RegistrationToken struct {
	Token string `json:"token"`
	// UsesAllowed is nil for unlimited uses.
	UsesAllowed *int64 `json:"uses_allowed"`
	Pending     int64  `json:"pending"`
	Completed   int64  `json:"completed"`
	// ExpiryTime is when it expires (Unix ms), nil for never.
	ExpiryTime *int64 `json:"expiry_time"`
}

// RegistrationTokenUpdate says which fields an update sets.
type RegistrationTokenUpdate struct {
	SetUsesAllowed bool
	UsesAllowed    *int64
	SetExpiryTime  bool
	ExpiryTime     *int64
}

// ErrTokenExists answers the creation of a token that exists.
var ErrTokenExists = codedError{"M_INVALID_PARAM", "Registration token already exists"}

var regTokenRE = regexp.MustCompile(`^[A-Za-z0-9._~-]{1,64}$`)

// ValidRegistrationToken checks a token's form: 1 to 64 of
// [A-Za-z0-9._~-], as the spec and Synapse have it.
func ValidRegistrationToken(token string) error {
	if !regTokenRE.MatchString(token) {
		return fmt.Errorf("a registration token is 1 to 64 of A-Z, a-z, 0-9 and ._~-")
	}
	return nil
}
