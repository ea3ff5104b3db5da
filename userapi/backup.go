package userapi

import (
	"context"
	"encoding/json"
	"strconv"

	uapi "myelin/userapi/api"
)

// parseBackupVersion reads a version as the client gives it back: our
// versions are positive integers, so anything else names none.
func parseBackupVersion(version string) (int64, error) {
	v, err := strconv.ParseInt(version, 10, 64)
	if err != nil || v <= 0 {
		return 0, uapi.ErrNotFound
	}
	return v, nil
}

func formatBackupVersion(v int64) string { return strconv.FormatInt(v, 10) }

// CreateKeyBackup implements uapi.KeyBackup.
func (u *UserAPI) CreateKeyBackup(ctx context.Context, userID, algorithm string, authData json.RawMessage) (string, error) {
	v, err := u.store.CreateBackupVersion(ctx, userID, algorithm, string(authData))
	if err != nil {
		return "", err
	}
	return formatBackupVersion(v), nil
}

// KeyBackupInfo implements uapi.KeyBackup.
func (u *UserAPI) KeyBackupInfo(ctx context.Context, userID, version string) (*uapi.KeyBackupInfo, error) {
	var v int64
	if version != "" {
		var err error
		if v, err = parseBackupVersion(version); err != nil {
			return nil, err
		}
	}
	b, err := u.store.BackupVersion(ctx, userID, v)
	if err != nil {
		return nil, err
	}
	return &uapi.KeyBackupInfo{
		Algorithm: b.Algorithm, AuthData: json.RawMessage(b.AuthData), Count: b.Count,
		ETag: strconv.FormatInt(b.ETag, 10), Version: formatBackupVersion(b.Version),
	}, nil
}

// UpdateKeyBackup implements uapi.KeyBackup.
func (u *UserAPI) UpdateKeyBackup(ctx context.Context, userID, version, algorithm string, authData json.RawMessage) error {
	v, err := parseBackupVersion(version)
	if err != nil {
		return err
	}
	return u.store.UpdateBackupVersion(ctx, userID, v, algorithm, string(authData))
}

// DeleteKeyBackup implements uapi.KeyBackup.
func (u *UserAPI) DeleteKeyBackup(ctx context.Context, userID, version string) error {
	v, err := parseBackupVersion(version)
	if err != nil {
		return err
	}
	return u.store.DeleteBackupVersion(ctx, userID, v)
}

// PutBackupKeys implements uapi.KeyBackup.
func (u *UserAPI) PutBackupKeys(ctx context.Context, userID, version string, keys []uapi.BackupKey) (*uapi.BackupKeysState, error) {
	v, err := parseBackupVersion(version)
	if err != nil {
		return nil, err
	}
	count, etag, err := u.store.PutBackupKeys(ctx, userID, v, keys)
	if err != nil {
		return nil, err
	}
	return &uapi.BackupKeysState{Count: count, ETag: strconv.FormatInt(etag, 10)}, nil
}

// BackupKeys implements uapi.KeyBackup.
func (u *UserAPI) BackupKeys(ctx context.Context, userID, version, roomID, sessionID string) ([]uapi.BackupKey, error) {
	v, err := parseBackupVersion(version)
	if err != nil {
		return nil, err
	}
	return u.store.BackupKeys(ctx, userID, v, roomID, sessionID)
}

// DeleteBackupKeys implements uapi.KeyBackup.
func (u *UserAPI) DeleteBackupKeys(ctx context.Context, userID, version, roomID, sessionID string) (*uapi.BackupKeysState, error) {
	v, err := parseBackupVersion(version)
	if err != nil {
		return nil, err
	}
	count, etag, err := u.store.DeleteBackupKeys(ctx, userID, v, roomID, sessionID)
	if err != nil {
		return nil, err
	}
	return &uapi.BackupKeysState{Count: count, ETag: strconv.FormatInt(etag, 10)}, nil
}
