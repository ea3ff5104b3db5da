// Package storage keeps the userapi's tables: accounts (with their
// profiles), devices with the hashes of their access tokens, account data,
// and what push notifications need (pushers, notifications, room
// members). One implementation serves SQLite and PostgreSQL through sqldb.
// Only package userapi imports it.
package storage

import (
	"context"
	"database/sql"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"

	"myelin/internal/sqldb"
	uapi "myelin/userapi/api"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Storage is the userapi's view of the shared database.
type Storage struct {
	db      *sqldb.DB
	pushers *pusherCache
}

// Open applies the userapi's migrations to db.
func Open(ctx context.Context, db *sqldb.DB) (*Storage, error) {
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return nil, fmt.Errorf("userapi migrations: %w", err)
	}
	if err := sqldb.Migrate(ctx, db, "userapi", sub); err != nil {
		return nil, err
	}
	return &Storage{db: db, pushers: newPusherCache()}, nil
}

// NewAccount is a row to insert into the accounts table.
type NewAccount struct {
	UserID       string
	Localpart    string
	PasswordHash string
	IsAdmin      bool
	IsGuest      bool
	DisplayName  string
	CreatedTS    int64
}

// InsertAccount adds an account; uapi.ErrUserInUse if the user ID is taken.
func (s *Storage) InsertAccount(ctx context.Context, a NewAccount) error {
	_, err := s.db.Exec(ctx, `INSERT INTO userapi_accounts
		(user_id, localpart, password_hash, is_admin, created_ts, display_name, is_guest)
		VALUES ($1, $2, $3, $4, $5, $6, $7)`,
		a.UserID, a.Localpart, a.PasswordHash, a.IsAdmin, a.CreatedTS, a.DisplayName, a.IsGuest)
	if sqldb.IsUniqueViolation(err) {
		return uapi.ErrUserInUse
	}
	if err != nil {
		return fmt.Errorf("insert account %s: %w", a.UserID, err)
	}
	return nil
}

// CountAccounts returns the number of accounts, deactivated ones included.
func (s *Storage) CountAccounts(ctx context.Context) (int64, error) {
	var n int64
	if err := s.db.QueryRow(ctx, `SELECT COUNT(*) FROM userapi_accounts`).Scan(&n); err != nil {
		return 0, fmt.Errorf("count accounts: %w", err)
	}
	return n, nil
}

// Account returns an account and its password hash (uapi.ErrNotFound if
// there is none).
func (s *Storage) Account(ctx context.Context, userID string) (*uapi.Account, string, error) {
	a := uapi.Account{UserID: userID}
	var hash string
	err := s.db.QueryRow(ctx, `SELECT localpart, password_hash, is_admin, deactivated, created_ts, is_guest, erased
		FROM userapi_accounts WHERE user_id = $1`, userID).
		Scan(&a.Localpart, &hash, &a.IsAdmin, &a.Deactivated, &a.CreatedTS, &a.IsGuest, &a.Erased)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, "", uapi.ErrNotFound
	}
	if err != nil {
		return nil, "", fmt.Errorf("select account %s: %w", userID, err)
	}
	return &a, hash, nil
}

// SetPasswordHash replaces an account's password hash and, when
// logoutOthers is set, deletes every device of the user but keepDeviceID.
func (s *Storage) SetPasswordHash(ctx context.Context, userID, hash string, logoutOthers bool, keepDeviceID string) error {
	return s.withPusherTx(ctx, func(tx *sqldb.Tx) error {
		res, err := tx.Exec(ctx, `UPDATE userapi_accounts SET password_hash = $2 WHERE user_id = $1`, userID, hash)
		if err != nil {
			return fmt.Errorf("update password of %s: %w", userID, err)
		}
		if err := mustAffect(res, userID); err != nil {
			return err
		}
		if !logoutOthers {
			return nil
		}
		if _, err := tx.Exec(ctx, `DELETE FROM userapi_devices WHERE user_id = $1 AND device_id <> $2`, userID, keepDeviceID); err != nil {
			return fmt.Errorf("delete other devices of %s: %w", userID, err)
		}
		return deleteOrphanPushers(ctx, tx, userID)
	})
}

// Deactivate marks an account deactivated, clears its profile and deletes
// its devices; erase also marks it erased and deletes its account data.
func (s *Storage) Deactivate(ctx context.Context, userID string, erase bool) error {
	return s.withPusherTx(ctx, func(tx *sqldb.Tx) error {
		res, err := tx.Exec(ctx, `UPDATE userapi_accounts
			SET deactivated = TRUE, erased = erased OR $2, display_name = '', avatar_url = '' WHERE user_id = $1`, userID, erase)
		if err != nil {
			return fmt.Errorf("deactivate %s: %w", userID, err)
		}
		if err := mustAffect(res, userID); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM userapi_devices WHERE user_id = $1`, userID); err != nil {
			return fmt.Errorf("delete devices of %s: %w", userID, err)
		}
		if erase {
			if _, err := tx.Exec(ctx, `DELETE FROM userapi_account_data WHERE user_id = $1`, userID); err != nil {
				return fmt.Errorf("delete account data of %s: %w", userID, err)
			}
		}
		return deleteOrphanPushers(ctx, tx, userID)
	})
}

// mustAffect turns an update that matched no row into uapi.ErrNotFound.
func mustAffect(res sql.Result, what string) error {
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("rows affected for %s: %w", what, err)
	}
	if n == 0 {
		return uapi.ErrNotFound
	}
	return nil
}

// Profile returns a user's profile (uapi.ErrNotFound for no such account).
func (s *Storage) Profile(ctx context.Context, userID string) (*uapi.Profile, error) {
	var p uapi.Profile
	err := s.db.QueryRow(ctx, `SELECT display_name, avatar_url FROM userapi_accounts WHERE user_id = $1`, userID).
		Scan(&p.DisplayName, &p.AvatarURL)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, uapi.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("select profile of %s: %w", userID, err)
	}
	return &p, nil
}

// SetProfile sets the fields that are not nil.
func (s *Storage) SetProfile(ctx context.Context, userID string, displayName, avatarURL *string) error {
	// COALESCE keeps a field the caller left out; one statement for every
	// combination keeps the prepared-statement cache small.
	res, err := s.db.Exec(ctx, `UPDATE userapi_accounts
		SET display_name = COALESCE($2, display_name), avatar_url = COALESCE($3, avatar_url)
		WHERE user_id = $1`, userID, nullString(displayName), nullString(avatarURL))
	if err != nil {
		return fmt.Errorf("update profile of %s: %w", userID, err)
	}
	return mustAffect(res, userID)
}

func nullString(s *string) sql.NullString {
	if s == nil {
		return sql.NullString{}
	}
	return sql.NullString{String: *s, Valid: true}
}

// NewDevice is a device to create, or to take over when Replace is set.
type NewDevice struct {
	UserID      string
	DeviceID    string
	DisplayName string
	TokenHash   string
	IP          string
	UserAgent   string
	TS          int64
	// TokenExpiresTS is when the access token expires (0: never);
	// RefreshHash the hash of its refresh token ("" for none).
	TokenExpiresTS int64
	RefreshHash    string
	// Replace gives an existing device of that ID the new token (a login
	// naming its device_id); otherwise an existing ID is uapi.ErrUserInUse,
	// so that a generated ID never takes over another device.
	Replace bool
}

// InsertDevice creates a device, or replaces its token (see Replace), and
// returns it.
func (s *Storage) InsertDevice(ctx context.Context, d NewDevice) (*uapi.Device, error) {
	// A replaced device keeps its display name, session ID and creation
	// time: it is the same device, logged in again.
	q := `INSERT INTO userapi_devices
		(user_id, device_id, token_hash, display_name, created_ts, last_seen_ts, last_seen_ip, user_agent, token_expires_ts, refresh_hash)
		VALUES ($1, $2, $3, $4, $5, $5, $6, $7, $8, $9)
		RETURNING session_id, display_name`
	if d.Replace {
		q = `INSERT INTO userapi_devices
		(user_id, device_id, token_hash, display_name, created_ts, last_seen_ts, last_seen_ip, user_agent, token_expires_ts, refresh_hash)
		VALUES ($1, $2, $3, $4, $5, $5, $6, $7, $8, $9)
		ON CONFLICT (user_id, device_id) DO UPDATE SET token_hash = excluded.token_hash,
			last_seen_ts = excluded.last_seen_ts, last_seen_ip = excluded.last_seen_ip,
			user_agent = excluded.user_agent, token_expires_ts = excluded.token_expires_ts,
			refresh_hash = excluded.refresh_hash, prev_refresh_hash = NULL
		RETURNING session_id, display_name`
	}
	dev := uapi.Device{UserID: d.UserID, DeviceID: d.DeviceID, LastSeenTS: d.TS, LastSeenIP: d.IP, UserAgent: d.UserAgent, ExpiresTS: d.TokenExpiresTS}
	refresh := sql.NullString{String: d.RefreshHash, Valid: d.RefreshHash != ""}
	err := s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		return tx.QueryRow(ctx, q, d.UserID, d.DeviceID, d.TokenHash, d.DisplayName, d.TS, d.IP, d.UserAgent, d.TokenExpiresTS, refresh).
			Scan(&dev.SessionID, &dev.DisplayName)
	})
	if sqldb.IsUniqueViolation(err) {
		return nil, uapi.ErrUserInUse
	}
	if err != nil {
		return nil, fmt.Errorf("insert device %s of %s: %w", d.DeviceID, d.UserID, err)
	}
	return &dev, nil
}

const deviceColumns = `d.user_id, d.device_id, d.session_id, d.display_name, d.last_seen_ts, d.last_seen_ip, d.user_agent, a.is_admin, a.is_guest, d.token_expires_ts`

func scanDevice(sc interface{ Scan(...any) error }) (*uapi.Device, error) {
	var d uapi.Device
	err := sc.Scan(&d.UserID, &d.DeviceID, &d.SessionID, &d.DisplayName, &d.LastSeenTS, &d.LastSeenIP, &d.UserAgent, &d.IsAdmin, &d.IsGuest, &d.ExpiresTS)
	return &d, err
}

// UpgradeGuest makes a guest account a full one with a password.
func (s *Storage) UpgradeGuest(ctx context.Context, userID, hash string) error {
	res, err := s.db.Exec(ctx, `UPDATE userapi_accounts SET is_guest = FALSE, password_hash = $2 WHERE user_id = $1 AND is_guest`, userID, hash)
	if err != nil {
		return fmt.Errorf("upgrade guest %s: %w", userID, err)
	}
	return mustAffect(res, userID)
}

// DeviceByTokenHash returns the device whose token hashes to hash, if its
// account is active (uapi.ErrUnknownToken otherwise). The first use of
// an access token made by a refresh revokes the refresh token before it.
func (s *Storage) DeviceByTokenHash(ctx context.Context, hash string) (*uapi.Device, error) {
	var prev sql.NullString
	d, err := scanDevice(rowWith(s.db.QueryRow(ctx, `SELECT `+deviceColumns+`, d.prev_refresh_hash
		FROM userapi_devices d JOIN userapi_accounts a ON a.user_id = d.user_id
		WHERE d.token_hash = $1 AND NOT a.deactivated`, hash), &prev))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, uapi.ErrUnknownToken
	}
	if err != nil {
		return nil, fmt.Errorf("select device by token: %w", err)
	}
	if prev.Valid {
		if _, err := s.db.Exec(ctx, `UPDATE userapi_devices SET prev_refresh_hash = NULL
			WHERE session_id = $1 AND token_hash = $2`, d.SessionID, hash); err != nil {
			return nil, fmt.Errorf("revoke previous refresh token of %s: %w", d.DeviceID, err)
		}
	}
	return d, nil
}

// rowWith scans a row's leading columns as sc would and the rest into
// extra.
func rowWith(sc interface{ Scan(...any) error }, extra ...any) interface{ Scan(...any) error } {
	return scanFunc(func(dest ...any) error { return sc.Scan(append(dest, extra...)...) })
}

type scanFunc func(dest ...any) error

func (f scanFunc) Scan(dest ...any) error { return f(dest...) }

// RefreshedDevice is the device a refresh gave new tokens.
type RefreshedDevice struct {
	UserID, DeviceID string
}

// Refresh gives the device whose current or previous refresh token hashes
// to refreshHash a new access token and refresh token (refresh "" for
// none). A refresh with the current token keeps it as the previous one,
// until the new access token is used; one with the previous token keeps
// the previous as it is. uapi.ErrUnknownToken for no such device.
func (s *Storage) Refresh(ctx context.Context, refreshHash, accessHash, newRefreshHash string, expiresTS int64) (*RefreshedDevice, error) {
	var out RefreshedDevice
	err := s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		var session int64
		var current sql.NullString
		err := tx.QueryRow(ctx, `SELECT d.session_id, d.user_id, d.device_id, d.refresh_hash
			FROM userapi_devices d JOIN userapi_accounts a ON a.user_id = d.user_id
			WHERE (d.refresh_hash = $1 OR d.prev_refresh_hash = $1) AND NOT a.deactivated`, refreshHash).
			Scan(&session, &out.UserID, &out.DeviceID, &current)
		if errors.Is(err, sql.ErrNoRows) {
			return uapi.ErrUnknownToken
		}
		if err != nil {
			return fmt.Errorf("select device by refresh token: %w", err)
		}
		prev := "prev_refresh_hash"
		if current.Valid && current.String == refreshHash {
			prev = "refresh_hash"
		}
		newRefresh := sql.NullString{String: newRefreshHash, Valid: newRefreshHash != ""}
		if _, err := tx.Exec(ctx, `UPDATE userapi_devices SET prev_refresh_hash = `+prev+`,
			refresh_hash = $2, token_hash = $3, token_expires_ts = $4 WHERE session_id = $1`,
			session, newRefresh, accessHash, expiresTS); err != nil {
			return fmt.Errorf("refresh tokens of %s: %w", out.DeviceID, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &out, nil
}

// InsertLoginToken stores a login token's hash for userID until expiresTS,
// dropping those expired by now.
func (s *Storage) InsertLoginToken(ctx context.Context, hash, userID string, expiresTS, now int64) error {
	return s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM userapi_login_tokens WHERE expires_ts <= $1`, now); err != nil {
			return fmt.Errorf("drop expired login tokens: %w", err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO userapi_login_tokens (token_hash, user_id, expires_ts) VALUES ($1, $2, $3)`, hash, userID, expiresTS); err != nil {
			return fmt.Errorf("store login token: %w", err)
		}
		return nil
	})
}

// TakeLoginToken deletes the login token hashing to hash and returns its
// user, if it had not expired by now (uapi.ErrUnknownToken otherwise). Of
// two concurrent takes, one gets it.
func (s *Storage) TakeLoginToken(ctx context.Context, hash string, now int64) (string, error) {
	var userID string
	err := s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		return tx.QueryRow(ctx, `DELETE FROM userapi_login_tokens WHERE token_hash = $1 AND expires_ts > $2
			RETURNING user_id`, hash, now).Scan(&userID)
	})
	if errors.Is(err, sql.ErrNoRows) {
		return "", uapi.ErrUnknownToken
	}
	if err != nil {
		return "", fmt.Errorf("take login token: %w", err)
	}
	return userID, nil
}

// Devices lists a user's devices, ordered by device ID.
func (s *Storage) Devices(ctx context.Context, userID string) ([]uapi.Device, error) {
	rows, err := s.db.Query(ctx, `SELECT `+deviceColumns+`
		FROM userapi_devices d JOIN userapi_accounts a ON a.user_id = d.user_id
		WHERE d.user_id = $1 ORDER BY d.device_id`, userID)
	if err != nil {
		return nil, fmt.Errorf("select devices of %s: %w", userID, err)
	}
	defer rows.Close()
	devs := []uapi.Device{}
	for rows.Next() {
		d, err := scanDevice(rows)
		if err != nil {
			return nil, fmt.Errorf("scan device of %s: %w", userID, err)
		}
		devs = append(devs, *d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("select devices of %s: %w", userID, err)
	}
	return devs, nil
}

// Device returns one device (uapi.ErrNotFound if there is none).
func (s *Storage) Device(ctx context.Context, userID, deviceID string) (*uapi.Device, error) {
	d, err := scanDevice(s.db.QueryRow(ctx, `SELECT `+deviceColumns+`
		FROM userapi_devices d JOIN userapi_accounts a ON a.user_id = d.user_id
		WHERE d.user_id = $1 AND d.device_id = $2`, userID, deviceID))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, uapi.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("select device %s of %s: %w", deviceID, userID, err)
	}
	return d, nil
}

// SetDeviceName renames a device (uapi.ErrNotFound if there is none).
func (s *Storage) SetDeviceName(ctx context.Context, userID, deviceID, name string) error {
	res, err := s.db.Exec(ctx, `UPDATE userapi_devices SET display_name = $3 WHERE user_id = $1 AND device_id = $2`,
		userID, deviceID, name)
	if err != nil {
		return fmt.Errorf("rename device %s of %s: %w", deviceID, userID, err)
	}
	return mustAffect(res, deviceID)
}

// DeleteDevices deletes the named devices of a user, or all of them when
// deviceIDs is nil. Unknown IDs are ignored.
func (s *Storage) DeleteDevices(ctx context.Context, userID string, deviceIDs []string) error {
	// Pushers go with the device that set them (spec: a pusher is deleted
	// when its access token is logged out).
	return s.withPusherTx(ctx, func(tx *sqldb.Tx) error {
		if deviceIDs == nil {
			if _, err := tx.Exec(ctx, `DELETE FROM userapi_devices WHERE user_id = $1`, userID); err != nil {
				return fmt.Errorf("delete devices of %s: %w", userID, err)
			}
			return deleteOrphanPushers(ctx, tx, userID)
		}
		// One statement per device rather than an IN list: the lists are
		// short, and a fixed statement is prepared once.
		for _, id := range deviceIDs {
			if _, err := tx.Exec(ctx, `DELETE FROM userapi_devices WHERE user_id = $1 AND device_id = $2`, userID, id); err != nil {
				return fmt.Errorf("delete device %s of %s: %w", id, userID, err)
			}
		}
		return deleteOrphanPushers(ctx, tx, userID)
	})
}

// LastSeen is when and from where a device was last used.
type LastSeen struct {
	TS int64
	IP string // "" keeps the previous one
}

// UpdateLastSeen records the last use of devices, by session, in one
// transaction.
func (s *Storage) UpdateLastSeen(ctx context.Context, seen map[int64]LastSeen) error {
	return s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		for session, ls := range seen {
			if _, err := tx.Exec(ctx, `UPDATE userapi_devices
				SET last_seen_ts = $2, last_seen_ip = CASE WHEN $3 = '' THEN last_seen_ip ELSE $3 END
				WHERE session_id = $1`, session, ls.TS, ls.IP); err != nil {
				return fmt.Errorf("update last seen of session %d: %w", session, err)
			}
		}
		return nil
	})
}

// SetAccountData stores one account-data item at the next position of the
// account-data stream and returns that position. Positions are taken from
// a counter row, which PostgreSQL locks until commit and SQLite's single
// writer serialises, so they are handed out in commit order.
func (s *Storage) SetAccountData(ctx context.Context, userID, roomID, dataType string, content json.RawMessage) (int64, error) {
	var pos int64
	err := s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		if err := tx.QueryRow(ctx, `UPDATE userapi_stream_positions SET pos = pos + 1
			WHERE stream = 'account_data' RETURNING pos`).Scan(&pos); err != nil {
			return fmt.Errorf("next account data position: %w", err)
		}
		_, err := tx.Exec(ctx, `INSERT INTO userapi_account_data (user_id, room_id, data_type, content, pos)
			VALUES ($1, $2, $3, $4, $5)
			ON CONFLICT (user_id, room_id, data_type) DO UPDATE SET content = excluded.content, pos = excluded.pos`,
			userID, roomID, dataType, string(content), pos)
		if err != nil {
			return fmt.Errorf("upsert account data %s of %s: %w", dataType, userID, err)
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return pos, nil
}

// AccountData returns one item's content (uapi.ErrNotFound if unset).
func (s *Storage) AccountData(ctx context.Context, userID, roomID, dataType string) (json.RawMessage, error) {
	var content string
	err := s.db.QueryRow(ctx, `SELECT content FROM userapi_account_data
		WHERE user_id = $1 AND room_id = $2 AND data_type = $3`, userID, roomID, dataType).Scan(&content)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, uapi.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("select account data %s of %s: %w", dataType, userID, err)
	}
	return json.RawMessage(content), nil
}

// AccountDataRange returns the user's items whose last change is in
// (from, to], in position order. Each item is stored once, at its latest
// position, so an item changed in the range and again after to is not
// returned; it comes with the range that holds its latest change.
func (s *Storage) AccountDataRange(ctx context.Context, userID string, from, to int64) ([]uapi.AccountData, error) {
	rows, err := s.db.Query(ctx, `SELECT room_id, data_type, content, pos FROM userapi_account_data
		WHERE user_id = $1 AND pos > $2 AND pos <= $3 ORDER BY pos`, userID, from, to)
	if err != nil {
		return nil, fmt.Errorf("select account data of %s in (%d, %d]: %w", userID, from, to, err)
	}
	defer rows.Close()
	var out []uapi.AccountData
	for rows.Next() {
		var ad uapi.AccountData
		var content string
		if err := rows.Scan(&ad.RoomID, &ad.Type, &content, &ad.Pos); err != nil {
			return nil, fmt.Errorf("scan account data of %s: %w", userID, err)
		}
		ad.Content = json.RawMessage(content)
		out = append(out, ad)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("select account data of %s: %w", userID, err)
	}
	return out, nil
}

// AccountDataPos returns the last position handed out by SetAccountData
// and committed.
func (s *Storage) AccountDataPos(ctx context.Context) (int64, error) {
	var pos int64
	if err := s.db.QueryRow(ctx, `SELECT pos FROM userapi_stream_positions WHERE stream = 'account_data'`).Scan(&pos); err != nil {
		return 0, fmt.Errorf("select account data position: %w", err)
	}
	return pos, nil
}

// InsertOpenIDToken stores an OpenID token's hash for userID until
// expiresTS, and drops the tokens expired by now, so the table holds only
// live tokens.
func (s *Storage) InsertOpenIDToken(ctx context.Context, hash, userID string, expiresTS, now int64) error {
	return s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM userapi_openid_tokens WHERE expires_ts <= $1`, now); err != nil {
			return fmt.Errorf("drop expired openid tokens: %w", err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO userapi_openid_tokens (token_hash, user_id, expires_ts) VALUES ($1, $2, $3)`, hash, userID, expiresTS); err != nil {
			return fmt.Errorf("store openid token: %w", err)
		}
		return nil
	})
}

// OpenIDUser returns the user of the OpenID token hashing to hash, if it
// has not expired by now and the account is active (uapi.ErrUnknownToken
// otherwise).
func (s *Storage) OpenIDUser(ctx context.Context, hash string, now int64) (string, error) {
	var userID string
	err := s.db.QueryRow(ctx, `SELECT o.user_id FROM userapi_openid_tokens o JOIN userapi_accounts a ON a.user_id = o.user_id
		WHERE o.token_hash = $1 AND o.expires_ts > $2 AND NOT a.deactivated`, hash, now).Scan(&userID)
	if errors.Is(err, sql.ErrNoRows) {
		return "", uapi.ErrUnknownToken
	}
	if err != nil {
		return "", fmt.Errorf("select openid token: %w", err)
	}
	return userID, nil
}
