package storage

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"

	"myelin/internal/sqldb"
	uapi "myelin/userapi/api"
)

// BackupVersion is a key backup version's row with its key count.
type BackupVersion struct {
	Version   int64
	Algorithm string
	AuthData  string
	ETag      int64
	Count     int64
}

// errBackupRace: two versions were created at once for one user; the
// loser tries again.
var errBackupRace = errors.New("backup version taken")

// CreateBackupVersion adds a version numbered one past the user's highest,
// deleted ones included.
func (s *Storage) CreateBackupVersion(ctx context.Context, userID, algorithm, authData string) (int64, error) {
	for attempt := 0; ; attempt++ {
		var v int64
		err := s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
			if err := tx.QueryRow(ctx, `SELECT COALESCE(MAX(version), 0) FROM userapi_key_backup_versions WHERE user_id = $1`,
				userID).Scan(&v); err != nil {
				return fmt.Errorf("select backup versions of %s: %w", userID, err)
			}
			v++
			_, err := tx.Exec(ctx, `INSERT INTO userapi_key_backup_versions (user_id, version, algorithm, auth_data)
				VALUES ($1, $2, $3, $4)`, userID, v, algorithm, authData)
			if sqldb.IsUniqueViolation(err) {
				return errBackupRace
			}
			if err != nil {
				return fmt.Errorf("insert backup version of %s: %w", userID, err)
			}
			return nil
		})
		if errors.Is(err, errBackupRace) && attempt < 3 {
			continue
		}
		return v, err
	}
}

// latestBackupVersion is the user's highest version not deleted (0 if none).
func latestBackupVersion(ctx context.Context, q querier, userID string) (int64, error) {
	var v int64
	err := q.QueryRow(ctx, `SELECT COALESCE(MAX(version), 0) FROM userapi_key_backup_versions
		WHERE user_id = $1 AND NOT deleted`, userID).Scan(&v)
	if err != nil {
		return 0, fmt.Errorf("select latest backup version of %s: %w", userID, err)
	}
	return v, nil
}

// querier is what a DB and a Tx both answer.
type querier interface {
	QueryRow(ctx context.Context, q string, args ...any) *sqldb.Row
}

// BackupVersion returns a version (the latest if version is 0) with its
// key count; uapi.ErrNotFound if it does not exist or was deleted.
func (s *Storage) BackupVersion(ctx context.Context, userID string, version int64) (*BackupVersion, error) {
	if version == 0 {
		v, err := latestBackupVersion(ctx, s.db, userID)
		if err != nil {
			return nil, err
		}
		if v == 0 {
			return nil, uapi.ErrNotFound
		}
		version = v
	}
	b := BackupVersion{Version: version}
	err := s.db.QueryRow(ctx, `SELECT algorithm, auth_data, etag,
		(SELECT COUNT(*) FROM userapi_key_backup_keys k WHERE k.user_id = v.user_id AND k.version = v.version)
		FROM userapi_key_backup_versions v WHERE user_id = $1 AND version = $2 AND NOT deleted`,
		userID, version).Scan(&b.Algorithm, &b.AuthData, &b.ETag, &b.Count)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, uapi.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("select backup version %d of %s: %w", version, userID, err)
	}
	return &b, nil
}

// versionAlive checks, in tx, that a version exists and is not deleted.
func versionAlive(ctx context.Context, tx *sqldb.Tx, userID string, version int64) (algorithm string, err error) {
	err = tx.QueryRow(ctx, `SELECT algorithm FROM userapi_key_backup_versions
		WHERE user_id = $1 AND version = $2 AND NOT deleted`, userID, version).Scan(&algorithm)
	if errors.Is(err, sql.ErrNoRows) {
		return "", uapi.ErrNotFound
	}
	if err != nil {
		return "", fmt.Errorf("select backup version %d of %s: %w", version, userID, err)
	}
	return algorithm, nil
}

// UpdateBackupVersion replaces a version's auth data, keeping its
// algorithm (uapi.ErrBackupAlgorithm if another is named).
func (s *Storage) UpdateBackupVersion(ctx context.Context, userID string, version int64, algorithm, authData string) error {
	return s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		old, err := versionAlive(ctx, tx, userID, version)
		if err != nil {
			return err
		}
		if old != algorithm {
			return uapi.ErrBackupAlgorithm
		}
		if _, err := tx.Exec(ctx, `UPDATE userapi_key_backup_versions SET auth_data = $3
			WHERE user_id = $1 AND version = $2`, userID, version, authData); err != nil {
			return fmt.Errorf("update backup version %d of %s: %w", version, userID, err)
		}
		return nil
	})
}

// DeleteBackupVersion marks a version deleted and removes its keys.
func (s *Storage) DeleteBackupVersion(ctx context.Context, userID string, version int64) error {
	return s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		if _, err := versionAlive(ctx, tx, userID, version); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE userapi_key_backup_versions SET deleted = TRUE
			WHERE user_id = $1 AND version = $2`, userID, version); err != nil {
			return fmt.Errorf("delete backup version %d of %s: %w", version, userID, err)
		}
		if _, err := tx.Exec(ctx, `DELETE FROM userapi_key_backup_keys WHERE user_id = $1 AND version = $2`,
			userID, version); err != nil {
			return fmt.Errorf("delete keys of backup version %d of %s: %w", version, userID, err)
		}
		return nil
	})
}

// PutBackupKeys stores keys in the user's latest version, each only where
// it is better than the stored key of its session, and moves the etag on
// if any was stored.
func (s *Storage) PutBackupKeys(ctx context.Context, userID string, version int64, keys []uapi.BackupKey) (count, etag int64, err error) {
	err = s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		if _, err := versionAlive(ctx, tx, userID, version); err != nil {
			return err
		}
		latest, err := latestBackupVersion(ctx, tx, userID)
		if err != nil {
			return err
		}
		if latest != version {
			return &uapi.WrongBackupVersionError{Current: fmt.Sprint(latest)}
		}
		changed := false
		for _, k := range keys {
			var old uapi.BackupKey
			err := tx.QueryRow(ctx, `SELECT first_message_index, forwarded_count, is_verified
				FROM userapi_key_backup_keys WHERE user_id = $1 AND version = $2 AND room_id = $3 AND session_id = $4`,
				userID, version, k.RoomID, k.SessionID).Scan(&old.FirstMessageIndex, &old.ForwardedCount, &old.IsVerified)
			switch {
			case errors.Is(err, sql.ErrNoRows):
			case err != nil:
				return fmt.Errorf("select backup key %s %s: %w", k.RoomID, k.SessionID, err)
			case !k.Better(old):
				continue
			}
			if _, err := tx.Exec(ctx, `INSERT INTO userapi_key_backup_keys
				(user_id, version, room_id, session_id, first_message_index, forwarded_count, is_verified, session_data)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
				ON CONFLICT (user_id, version, room_id, session_id) DO UPDATE SET
				first_message_index = excluded.first_message_index, forwarded_count = excluded.forwarded_count,
				is_verified = excluded.is_verified, session_data = excluded.session_data`,
				userID, version, k.RoomID, k.SessionID, k.FirstMessageIndex, k.ForwardedCount, k.IsVerified,
				string(k.SessionData)); err != nil {
				return fmt.Errorf("store backup key %s %s: %w", k.RoomID, k.SessionID, err)
			}
			changed = true
		}
		count, etag, err = bumpBackupETag(ctx, tx, userID, version, changed)
		return err
	})
	return count, etag, err
}

// bumpBackupETag moves a version's etag on when its keys changed and
// returns its key count and etag.
func bumpBackupETag(ctx context.Context, tx *sqldb.Tx, userID string, version int64, changed bool) (count, etag int64, err error) {
	if changed {
		if _, err := tx.Exec(ctx, `UPDATE userapi_key_backup_versions SET etag = etag + 1
			WHERE user_id = $1 AND version = $2`, userID, version); err != nil {
			return 0, 0, fmt.Errorf("bump backup etag: %w", err)
		}
	}
	err = tx.QueryRow(ctx, `SELECT etag,
		(SELECT COUNT(*) FROM userapi_key_backup_keys k WHERE k.user_id = v.user_id AND k.version = v.version)
		FROM userapi_key_backup_versions v WHERE user_id = $1 AND version = $2`,
		userID, version).Scan(&etag, &count)
	if err != nil {
		return 0, 0, fmt.Errorf("select backup etag: %w", err)
	}
	return count, etag, nil
}

// keysFilter is the WHERE clause and arguments selecting a version's keys,
// of one room and session when they are set.
func keysFilter(userID string, version int64, roomID, sessionID string) (string, []any) {
	where := []string{"user_id = $1", "version = $2"}
	args := []any{userID, version}
	if roomID != "" {
		args = append(args, roomID)
		where = append(where, fmt.Sprintf("room_id = $%d", len(args)))
		if sessionID != "" {
			args = append(args, sessionID)
			where = append(where, fmt.Sprintf("session_id = $%d", len(args)))
		}
	}
	return strings.Join(where, " AND "), args
}

// BackupKeys lists a version's keys (of a room, of a session);
// uapi.ErrNotFound if the version does not exist or was deleted.
func (s *Storage) BackupKeys(ctx context.Context, userID string, version int64, roomID, sessionID string) ([]uapi.BackupKey, error) {
	if _, err := s.BackupVersion(ctx, userID, version); err != nil {
		return nil, err
	}
	where, args := keysFilter(userID, version, roomID, sessionID)
	rows, err := s.db.Query(ctx, `SELECT room_id, session_id, first_message_index, forwarded_count, is_verified, session_data
		FROM userapi_key_backup_keys WHERE `+where, args...)
	if err != nil {
		return nil, fmt.Errorf("select backup keys of %s: %w", userID, err)
	}
	defer rows.Close()
	var out []uapi.BackupKey
	for rows.Next() {
		var k uapi.BackupKey
		var data string
		if err := rows.Scan(&k.RoomID, &k.SessionID, &k.FirstMessageIndex, &k.ForwardedCount, &k.IsVerified, &data); err != nil {
			return nil, fmt.Errorf("scan backup key: %w", err)
		}
		k.SessionData = []byte(data)
		out = append(out, k)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("select backup keys of %s: %w", userID, err)
	}
	return out, nil
}

// DeleteBackupKeys deletes a version's keys (of a room, of a session) and
// moves its etag on if any went.
func (s *Storage) DeleteBackupKeys(ctx context.Context, userID string, version int64, roomID, sessionID string) (count, etag int64, err error) {
	err = s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		if _, err := versionAlive(ctx, tx, userID, version); err != nil {
			return err
		}
		where, args := keysFilter(userID, version, roomID, sessionID)
		res, err := tx.Exec(ctx, `DELETE FROM userapi_key_backup_keys WHERE `+where, args...)
		if err != nil {
			return fmt.Errorf("delete backup keys of %s: %w", userID, err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return fmt.Errorf("delete backup keys of %s: %w", userID, err)
		}
		count, etag, err = bumpBackupETag(ctx, tx, userID, version, n > 0)
		return err
	})
	return count, etag, err
}
