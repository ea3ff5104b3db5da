package uapi

import (
	"context"
	"encoding/json"
	"fmt"
)

// KeyBackup is server-side key backup (spec: "Server-side key backups"):
// a user's backup versions, each with opaque auth data, and the room keys
// stored in them. Versions are numbered per user and never reused; only
// the latest version takes new keys.
type KeyBackup interface {
	// CreateKeyBackup makes a new version, which becomes the latest.
	CreateKeyBackup(ctx context.Context, userID, algorithm string, authData json.RawMessage) (version string, err error)
	// KeyBackupInfo describes a version ("" for the latest); ErrNotFound
	// if there is none or it was deleted.
	KeyBackupInfo(ctx context.Context, userID, version string) (*KeyBackupInfo, error)
	// UpdateKeyBackup replaces a version's auth data; the algorithm must be
	// the version's (ErrBackupAlgorithm otherwise).
	UpdateKeyBackup(ctx context.Context, userID, version, algorithm string, authData json.RawMessage) error
	// DeleteKeyBackup deletes a version and its keys.
	DeleteKeyBackup(ctx context.Context, userID, version string) error
	// PutBackupKeys stores keys in the latest version: a key replaces the
	// stored one of its session only if it is better (BackupKey.Better).
	// A version that is not the latest gives a *WrongBackupVersionError.
	PutBackupKeys(ctx context.Context, userID, version string, keys []BackupKey) (*BackupKeysState, error)
	// BackupKeys lists a version's keys, of one room if roomID is set and
	// one session if sessionID is too.
	BackupKeys(ctx context.Context, userID, version, roomID, sessionID string) ([]BackupKey, error)
	// DeleteBackupKeys deletes a version's keys, selected as BackupKeys
	// selects them.
	DeleteBackupKeys(ctx context.Context, userID, version, roomID, sessionID string) (*BackupKeysState, error)
}

// KeyBackupInfo is a backup version as GET /room_keys/version gives it.
type KeyBackupInfo struct {
	Algorithm string          `json:"algorithm"`
	AuthData  json.RawMessage `json:"auth_data"`
	Count     int64           `json:"count"`
	ETag      string          `json:"etag"`
	Version   string          `json:"version"`
}

// BackupKeysState is a version's key count and etag after a change; the
// etag moves whenever its keys change.
type BackupKeysState struct {
	Count int64  `json:"count"`
	ETag  string `json:"etag"`
}

// BackupKey is one session's key in a backup (KeyBackupData in the spec).
type BackupKey struct {
	RoomID            string          `json:"-"`
	SessionID         string          `json:"-"`
	FirstMessageIndex int64           `json:"first_message_index"`
	ForwardedCount    int64           `json:"forwarded_count"`
	IsVerified        bool            `json:"is_verified"`
	SessionData       json.RawMessage `json:"session_data"`
}

// Better reports whether k should replace old, the key stored for the same
// session: a verified key beats an unverified one; then the key that
// decrypts from an earlier message; then the one forwarded fewer times.
func (k BackupKey) Better(old BackupKey) bool {
	if k.IsVerified != old.IsVerified {
		return k.IsVerified
	}
	if k.FirstMessageIndex != old.FirstMessageIndex {
		return k.FirstMessageIndex < old.FirstMessageIndex
	}
	return k.ForwardedCount < old.ForwardedCount
}

var (
	// ErrBackupAlgorithm: an update named another algorithm than the
	// version's.
	ErrBackupAlgorithm = codedError{"M_INVALID_PARAM", "The algorithm of a backup version cannot change"}
)

// WrongBackupVersionError refuses keys for a version that is not the
// latest; Current is the latest ("" when there is none).
type WrongBackupVersionError struct{ Current string }

func (e *WrongBackupVersionError) Error() string {
	return fmt.Sprintf("backup version is not the current one (%q)", e.Current)
}

// MatrixErrCode is the spec's code for it.
func (e *WrongBackupVersionError) MatrixErrCode() string { return "M_WRONG_ROOM_KEYS_VERSION" }
