package storage

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sort"

	"myelin/internal/sqldb"
	uapi "myelin/userapi/api"
)

// OneTimeKey is an uploaded one-time or fallback key; KeyID is
// "<algorithm>:<id>" and JSON the key (an object or a string) as uploaded.
type OneTimeKey struct {
	KeyID     string
	Algorithm string
	JSON      string
	Fallback  bool
}

// DeviceKeys is one device of a user with its keys (KeyJSON is empty for a
// device that uploaded none).
type DeviceKeys struct {
	UserID      string
	DeviceID    string
	DisplayName string
	KeyJSON     string
}

// ErrNoDevice is UploadKeys' answer for a device that does not exist (it
// was deleted while its keys were being uploaded).
var ErrNoDevice = errors.New("no such device")

// UploadKeys stores a device's keys: its device keys unless deviceKeys is
// empty, and its one-time and fallback keys. A one-time key ID already
// stored keeps its first key (the spec forbids changing one); a fallback
// key replaces the device's fallback key of its algorithm. When the device
// keys changed, the user's device list moves to the next position of the
// device-list stream, which UploadKeys returns (nil when they did not).
func (s *Storage) UploadKeys(ctx context.Context, userID, deviceID, deviceKeys string, keys []OneTimeKey) (*DeviceListChange, error) {
	var change *DeviceListChange
	err := s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		change = nil
		// The device must still exist, and keep existing until this
		// commits: a request authenticated just before its device was
		// deleted would otherwise store keys after the deletion removed
		// them, and a device later logged in under the same ID would
		// inherit them. The no-op update locks the device's row on
		// PostgreSQL (a deletion waits for this upload, then deletes its
		// keys, or has committed and the row is gone); SQLite's one writer
		// orders the two anyway.
		res, err := tx.Exec(ctx, `UPDATE userapi_devices SET device_id = device_id WHERE user_id = $1 AND device_id = $2`,
			userID, deviceID)
		if err != nil {
			return fmt.Errorf("lock device %s %s: %w", userID, deviceID, err)
		}
		if n, err := res.RowsAffected(); err != nil {
			return fmt.Errorf("lock device %s %s: %w", userID, deviceID, err)
		} else if n == 0 {
			return ErrNoDevice
		}
		if deviceKeys != "" {
			var old string
			err := tx.QueryRow(ctx, `SELECT key_json FROM userapi_device_keys WHERE user_id = $1 AND device_id = $2`,
				userID, deviceID).Scan(&old)
			if err != nil && !errors.Is(err, sql.ErrNoRows) {
				return fmt.Errorf("select device keys of %s %s: %w", userID, deviceID, err)
			}
			if old != deviceKeys {
				if _, err := tx.Exec(ctx, `INSERT INTO userapi_device_keys (user_id, device_id, key_json) VALUES ($1, $2, $3)
					ON CONFLICT (user_id, device_id) DO UPDATE SET key_json = excluded.key_json`,
					userID, deviceID, deviceKeys); err != nil {
					return fmt.Errorf("upsert device keys of %s %s: %w", userID, deviceID, err)
				}
				c, err := bumpDeviceList(ctx, tx, userID)
				if err != nil {
					return err
				}
				c.DeviceID = deviceID
				change = &c
			}
		}
		for _, k := range keys {
			if k.Fallback {
				if _, err := tx.Exec(ctx, `DELETE FROM userapi_one_time_keys
					WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 AND fallback`,
					userID, deviceID, k.Algorithm); err != nil {
					return fmt.Errorf("delete fallback keys of %s %s: %w", userID, deviceID, err)
				}
			}
			if _, err := tx.Exec(ctx, `INSERT INTO userapi_one_time_keys
				(user_id, device_id, key_id, algorithm, key_json, fallback) VALUES ($1, $2, $3, $4, $5, $6)
				ON CONFLICT (user_id, device_id, fallback, key_id) DO NOTHING`,
				userID, deviceID, k.KeyID, k.Algorithm, k.JSON, k.Fallback); err != nil {
				return fmt.Errorf("insert one-time key of %s %s: %w", userID, deviceID, err)
			}
		}
		return nil
	})
	return change, err
}

// bumpDeviceList moves userID's device list to the next position of the
// device-list stream. The counter row is locked until commit (PostgreSQL)
// or written by the one writer (SQLite), so positions commit in order.
func bumpDeviceList(ctx context.Context, tx *sqldb.Tx, userID string) (DeviceListChange, error) {
	c := DeviceListChange{UserID: userID}
	err := tx.QueryRow(ctx, `SELECT pos FROM userapi_device_list_changes WHERE user_id = $1`, userID).Scan(&c.Prev)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return c, fmt.Errorf("select device list position of %s: %w", userID, err)
	}
	var pos int64
	if err := tx.QueryRow(ctx, `UPDATE userapi_stream_positions SET pos = pos + 1
		WHERE stream = 'device_lists' RETURNING pos`).Scan(&pos); err != nil {
		return c, fmt.Errorf("next device list position: %w", err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO userapi_device_list_changes (user_id, pos) VALUES ($1, $2)
		ON CONFLICT (user_id) DO UPDATE SET pos = excluded.pos`, userID, pos); err != nil {
		return c, fmt.Errorf("record device list change of %s: %w", userID, err)
	}
	c.Pos = pos
	return c, nil
}

// DeviceListChange is one move of a user's device list: from position
// Prev (0: none before) to Pos, for device DeviceID.
type DeviceListChange struct {
	UserID   string
	DeviceID string
	Prev     int64
	Pos      int64
}

// KeyCounts counts a device's unclaimed one-time keys by algorithm and
// lists the algorithms of its fallback keys not claimed yet.
func (s *Storage) KeyCounts(ctx context.Context, userID, deviceID string) (*uapi.KeyCounts, error) {
	rows, err := s.db.Query(ctx, `SELECT algorithm, fallback, used, COUNT(*) FROM userapi_one_time_keys
		WHERE user_id = $1 AND device_id = $2 GROUP BY algorithm, fallback, used`, userID, deviceID)
	if err != nil {
		return nil, fmt.Errorf("count one-time keys of %s %s: %w", userID, deviceID, err)
	}
	defer rows.Close()
	out := &uapi.KeyCounts{OneTime: map[string]int{}, UnusedFallback: []string{}}
	for rows.Next() {
		var alg string
		var fallback, used bool
		var n int
		if err := rows.Scan(&alg, &fallback, &used, &n); err != nil {
			return nil, fmt.Errorf("scan one-time key count: %w", err)
		}
		switch {
		case !fallback:
			out.OneTime[alg] = n
		case !used:
			out.UnusedFallback = append(out.UnusedFallback, alg)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("count one-time keys of %s %s: %w", userID, deviceID, err)
	}
	sort.Strings(out.UnusedFallback)
	return out, nil
}

// LocalDeviceKeys lists the devices of a local user with their keys.
func (s *Storage) LocalDeviceKeys(ctx context.Context, userID string) ([]DeviceKeys, error) {
	all, err := s.LocalDeviceKeysOf(ctx, []string{userID})
	return all[userID], err
}

// LocalDeviceKeysOf lists the devices of local users with their keys, by
// user, a few hundred users a query (a client joining a large encrypted room asks for
// all its members).
func (s *Storage) LocalDeviceKeysOf(ctx context.Context, userIDs []string) (map[string][]DeviceKeys, error) {
	out := make(map[string][]DeviceKeys, len(userIDs))
	err := sqldb.InChunks(1, userIDs, func(in string, args []any) error {
		rows, err := s.db.Query(ctx, `SELECT d.user_id, d.device_id, d.display_name, COALESCE(k.key_json, '')
			FROM userapi_devices d LEFT JOIN userapi_device_keys k ON k.user_id = d.user_id AND k.device_id = d.device_id
			WHERE d.user_id IN (`+in+`) ORDER BY d.user_id, d.device_id`, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var d DeviceKeys
			if err := rows.Scan(&d.UserID, &d.DeviceID, &d.DisplayName, &d.KeyJSON); err != nil {
				return err
			}
			out[d.UserID] = append(out[d.UserID], d)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("select device keys of %d users: %w", len(userIDs), err)
	}
	return out, nil
}

// CrossSigningKeysOf returns users' cross-signing keys by user and type.
func (s *Storage) CrossSigningKeysOf(ctx context.Context, userIDs []string) (map[string]map[string]string, error) {
	out := map[string]map[string]string{}
	err := sqldb.InChunks(1, userIDs, func(in string, args []any) error {
		rows, err := s.db.Query(ctx, `SELECT user_id, key_type, key_json FROM userapi_cross_signing_keys
			WHERE user_id IN (`+in+`)`, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var u, typ, k string
			if err := rows.Scan(&u, &typ, &k); err != nil {
				return err
			}
			if out[u] == nil {
				out[u] = map[string]string{}
			}
			out[u][typ] = k
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("select cross-signing keys of %d users: %w", len(userIDs), err)
	}
	return out, nil
}

func scanDeviceKeys(rows *sql.Rows, userID string) ([]DeviceKeys, error) {
	defer rows.Close()
	var out []DeviceKeys
	for rows.Next() {
		d := DeviceKeys{UserID: userID}
		if err := rows.Scan(&d.DeviceID, &d.DisplayName, &d.KeyJSON); err != nil {
			return nil, fmt.Errorf("scan device keys of %s: %w", userID, err)
		}
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("select device keys of %s: %w", userID, err)
	}
	return out, nil
}

// ClaimKey takes one of a local device's one-time keys of algorithm,
// deleting it, or else its fallback key of that algorithm, which stays.
// ok is false when the device has neither.
func (s *Storage) ClaimKey(ctx context.Context, userID, deviceID, algorithm string) (keyID, keyJSON string, ok bool, err error) {
	err = s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		ok = false
		// One-time keys first: a fallback key is the last resort.
		var fallback bool
		err := tx.QueryRow(ctx, `SELECT key_id, key_json, fallback FROM userapi_one_time_keys
			WHERE user_id = $1 AND device_id = $2 AND algorithm = $3
			ORDER BY fallback, key_id LIMIT 1`, userID, deviceID, algorithm).Scan(&keyID, &keyJSON, &fallback)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("select one-time key of %s %s: %w", userID, deviceID, err)
		}
		ok = true
		q := `DELETE FROM userapi_one_time_keys WHERE user_id = $1 AND device_id = $2 AND key_id = $3 AND NOT fallback`
		if fallback {
			q = `UPDATE userapi_one_time_keys SET used = TRUE WHERE user_id = $1 AND device_id = $2 AND key_id = $3 AND fallback`
		}
		if _, err := tx.Exec(ctx, q, userID, deviceID, keyID); err != nil {
			return fmt.Errorf("take claimed key of %s %s: %w", userID, deviceID, err)
		}
		return nil
	})
	return keyID, keyJSON, ok, err
}

// DeleteDeviceKeys deletes the keys of deleted devices of a local user
// and moves the user's device list on once for each, in the
// DeviceListChanges returned.
func (s *Storage) DeleteDeviceKeys(ctx context.Context, userID string, deviceIDs []string) ([]DeviceListChange, error) {
	var changes []DeviceListChange
	err := s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		changes = nil
		for _, d := range deviceIDs {
			if _, err := tx.Exec(ctx, `DELETE FROM userapi_one_time_keys WHERE user_id = $1 AND device_id = $2`, userID, d); err != nil {
				return fmt.Errorf("delete one-time keys of %s %s: %w", userID, d, err)
			}
			if _, err := tx.Exec(ctx, `DELETE FROM userapi_device_keys WHERE user_id = $1 AND device_id = $2`, userID, d); err != nil {
				return fmt.Errorf("delete device keys of %s %s: %w", userID, d, err)
			}
			c, err := bumpDeviceList(ctx, tx, userID)
			if err != nil {
				return err
			}
			c.DeviceID = d
			changes = append(changes, c)
		}
		return nil
	})
	return changes, err
}

// DeviceAdded moves a local user's device list on for a new device.
func (s *Storage) DeviceAdded(ctx context.Context, userID, deviceID string) (DeviceListChange, error) {
	var c DeviceListChange
	err := s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		var err error
		c, err = bumpDeviceList(ctx, tx, userID)
		c.DeviceID = deviceID
		return err
	})
	return c, err
}

// DeviceRenamed moves a local user's device list on for a renamed device
// (its name is part of what others see of it); it returns the change and
// the device's keys ("" when it has none).
func (s *Storage) DeviceRenamed(ctx context.Context, userID, deviceID string) (*DeviceListChange, string, error) {
	var change *DeviceListChange
	var keys string
	err := s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		change = nil
		keys = ""
		err := tx.QueryRow(ctx, `SELECT key_json FROM userapi_device_keys WHERE user_id = $1 AND device_id = $2`,
			userID, deviceID).Scan(&keys)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("select device keys of %s %s: %w", userID, deviceID, err)
		}
		c, err := bumpDeviceList(ctx, tx, userID)
		if err != nil {
			return err
		}
		c.DeviceID = deviceID
		change = &c
		return nil
	})
	return change, keys, err
}

// DeviceListPos is the position of userID's last device list change (0:
// none).
func (s *Storage) DeviceListPos(ctx context.Context, userID string) (int64, error) {
	var pos int64
	err := s.db.QueryRow(ctx, `SELECT pos FROM userapi_device_list_changes WHERE user_id = $1`, userID).Scan(&pos)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("select device list position of %s: %w", userID, err)
	}
	return pos, nil
}

// DeviceListsPos is the head of the device-list stream.
func (s *Storage) DeviceListsPos(ctx context.Context) (int64, error) {
	var pos int64
	if err := s.db.QueryRow(ctx, `SELECT pos FROM userapi_stream_positions WHERE stream = 'device_lists'`).Scan(&pos); err != nil {
		return 0, fmt.Errorf("select device list position: %w", err)
	}
	return pos, nil
}

// DeviceListChanges lists the users whose device lists last changed in
// (from, to]. all is true when from is below the stream's floor (rows that
// old were pruned): every user may have changed, and users is nil.
func (s *Storage) DeviceListChanges(ctx context.Context, from, to int64) (users []string, all bool, err error) {
	rows, err := s.db.Query(ctx, `SELECT user_id FROM userapi_device_list_changes
		WHERE pos > $1 AND pos <= $2 ORDER BY pos`, from, to)
	if err != nil {
		return nil, false, fmt.Errorf("select device list changes in (%d, %d]: %w", from, to, err)
	}
	defer rows.Close()
	for rows.Next() {
		var u string
		if err := rows.Scan(&u); err != nil {
			return nil, false, fmt.Errorf("scan device list change: %w", err)
		}
		users = append(users, u)
	}
	if err := rows.Err(); err != nil {
		return nil, false, fmt.Errorf("select device list changes in (%d, %d]: %w", from, to, err)
	}
	// The floor is read after the rows: a prune between the two then
	// answers all rather than a list missing what it deleted.
	var floor int64
	if err := s.db.QueryRow(ctx, `SELECT pos FROM userapi_stream_positions WHERE stream = 'device_lists_floor'`).Scan(&floor); err != nil {
		return nil, false, fmt.Errorf("select device list floor: %w", err)
	}
	if from < floor {
		return nil, true, nil
	}
	return users, false, nil
}

// PruneDeviceListChanges records the device-list stream's head at now (a
// mark, in milliseconds) and, taking the newest mark at or before before
// as the new floor, deletes the rows of remote users (those not of
// serverName) at or below it, and the marks older than it. It returns the
// floor. Rows of local users are kept: their position is the stream_id and
// prev_id other servers know them by.
func (s *Storage) PruneDeviceListChanges(ctx context.Context, serverName string, now, before int64) (int64, error) {
	var floor int64
	err := s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO userapi_device_list_marks (pos, ts)
			SELECT pos, $1 FROM userapi_stream_positions WHERE stream = 'device_lists'`, now); err != nil {
			return fmt.Errorf("mark device list position: %w", err)
		}
		var mark, markTS sql.NullInt64
		if err := tx.QueryRow(ctx, `SELECT pos, ts FROM userapi_device_list_marks WHERE ts <= $1
			ORDER BY ts DESC, pos DESC LIMIT 1`, before).Scan(&mark, &markTS); err != nil && !errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("select device list mark: %w", err)
		}
		if err := tx.QueryRow(ctx, `SELECT pos FROM userapi_stream_positions WHERE stream = 'device_lists_floor'`).Scan(&floor); err != nil {
			return fmt.Errorf("select device list floor: %w", err)
		}
		if !mark.Valid || mark.Int64 <= floor {
			return nil
		}
		floor = mark.Int64
		// The floor moves first, in the same transaction, so no reader
		// sees the rows gone with the old floor.
		if _, err := tx.Exec(ctx, `UPDATE userapi_stream_positions SET pos = $1 WHERE stream = 'device_lists_floor'`, floor); err != nil {
			return fmt.Errorf("move device list floor: %w", err)
		}
		if _, err := tx.Exec(ctx, `DELETE FROM userapi_device_list_changes WHERE pos <= $1 AND user_id NOT LIKE $2`,
			floor, "%:"+serverName); err != nil {
			return fmt.Errorf("prune device list changes: %w", err)
		}
		if _, err := tx.Exec(ctx, `DELETE FROM userapi_device_list_marks WHERE ts < $1`, markTS.Int64); err != nil {
			return fmt.Errorf("prune device list marks: %w", err)
		}
		return nil
	})
	return floor, err
}

// SharesRoomWithLocal reports whether userID is joined to a room a local
// user is joined to.
func (s *Storage) SharesRoomWithLocal(ctx context.Context, userID string) (bool, error) {
	var one int
	err := s.db.QueryRow(ctx, `SELECT 1 FROM userapi_room_members a
		JOIN userapi_room_members b ON b.room_id = a.room_id
		WHERE a.user_id = $1 AND a.membership = 'join' AND b.is_local AND b.membership = 'join' LIMIT 1`, userID).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("select shared rooms of %s: %w", userID, err)
	}
	return true, nil
}

// SharingLocalOf returns which of userIDs are joined to a room a local
// user is joined to, a few hundred users a query.
func (s *Storage) SharingLocalOf(ctx context.Context, userIDs []string) (map[string]bool, error) {
	out := make(map[string]bool, len(userIDs))
	err := sqldb.InChunks(1, userIDs, func(in string, args []any) error {
		rows, err := s.db.Query(ctx, `SELECT DISTINCT a.user_id FROM userapi_room_members a
			WHERE a.user_id IN (`+in+`) AND a.membership = 'join' AND EXISTS (SELECT 1 FROM userapi_room_members b
			WHERE b.room_id = a.room_id AND b.is_local = TRUE AND b.membership = 'join')`, args...)
		if err != nil {
			return err
		}
		users, err := sqldb.Column[string](rows)
		for _, u := range users {
			out[u] = true
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("which of %d users share a room with a local user: %w", len(userIDs), err)
	}
	return out, nil
}

// RemoteList is a cached device list of a remote user.
type RemoteList struct {
	Stale bool
	Devs  []DeviceKeys
}

// RemoteDeviceListsOf returns the cached device lists of those of
// userIDs who are tracked, two queries a few hundred users.
func (s *Storage) RemoteDeviceListsOf(ctx context.Context, userIDs []string) (map[string]*RemoteList, error) {
	out := make(map[string]*RemoteList, len(userIDs))
	err := sqldb.InChunks(1, userIDs, func(in string, args []any) error {
		rows, err := s.db.Query(ctx, `SELECT user_id, stale FROM userapi_remote_device_lists WHERE user_id IN (`+in+`)`, args...)
		if err != nil {
			return err
		}
		for rows.Next() {
			var u string
			var stale bool
			if err := rows.Scan(&u, &stale); err != nil {
				rows.Close()
				return err
			}
			out[u] = &RemoteList{Stale: stale}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		rows, err = s.db.Query(ctx, `SELECT user_id, device_id, display_name, key_json FROM userapi_remote_devices
			WHERE user_id IN (`+in+`) ORDER BY user_id, device_id`, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var d DeviceKeys
			if err := rows.Scan(&d.UserID, &d.DeviceID, &d.DisplayName, &d.KeyJSON); err != nil {
				return err
			}
			// A device row without its list row (written in one
			// transaction with it) is not expected; it is skipped.
			if l := out[d.UserID]; l != nil {
				l.Devs = append(l.Devs, d)
			}
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("select device lists of %d users: %w", len(userIDs), err)
	}
	return out, nil
}

// RemoteMembersSharing lists the remote users joined to a room userID is
// joined to: their servers are the ones to tell of userID's changes.
func (s *Storage) RemoteMembersSharing(ctx context.Context, userID string) ([]string, error) {
	rows, err := s.db.Query(ctx, `SELECT DISTINCT b.user_id FROM userapi_room_members a
		JOIN userapi_room_members b ON b.room_id = a.room_id
		WHERE a.user_id = $1 AND a.membership = 'join' AND NOT b.is_local AND b.membership = 'join'`, userID)
	if err != nil {
		return nil, fmt.Errorf("select remote members sharing a room with %s: %w", userID, err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var u string
		if err := rows.Scan(&u); err != nil {
			return nil, fmt.Errorf("scan remote member: %w", err)
		}
		out = append(out, u)
	}
	return out, rows.Err()
}

// RemoteDeviceList is the cached device list of a remote user: found is
// false when the user is not tracked.
func (s *Storage) RemoteDeviceList(ctx context.Context, userID string) (streamID int64, stale, found bool, devs []DeviceKeys, err error) {
	err = s.db.QueryRow(ctx, `SELECT stream_id, stale FROM userapi_remote_device_lists WHERE user_id = $1`, userID).
		Scan(&streamID, &stale)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, false, false, nil, nil
	}
	if err != nil {
		return 0, false, false, nil, fmt.Errorf("select device list of %s: %w", userID, err)
	}
	rows, err := s.db.Query(ctx, `SELECT device_id, display_name, key_json FROM userapi_remote_devices
		WHERE user_id = $1 ORDER BY device_id`, userID)
	if err != nil {
		return 0, false, false, nil, fmt.Errorf("select devices of %s: %w", userID, err)
	}
	devs, err = scanDeviceKeys(rows, userID)
	return streamID, stale, true, devs, err
}

// ReplaceRemoteDeviceList stores a remote user's whole device list and
// cross-signing keys by type, as /user/devices answered them, and marks
// the list fresh. It returns the device-list
// position the change took.
func (s *Storage) ReplaceRemoteDeviceList(ctx context.Context, userID string, streamID int64, devs []DeviceKeys, cross map[string]string) (int64, error) {
	pos, err := s.StoreRemoteDeviceLists(ctx, []RemoteListWrite{{UserID: userID, StreamID: streamID, Devs: devs, Cross: cross}})
	if err != nil {
		return 0, err
	}
	return pos[0], nil
}

// RemoteListWrite is one fetched device list to store: its devices and
// cross-signing keys by type, as /user/devices answered them. Stale
// leaves the list marked stale: an update came while it was being
// fetched, so the answer may predate it and another fetch follows.
type RemoteListWrite struct {
	UserID   string
	StreamID int64
	Devs     []DeviceKeys
	Cross    map[string]string
	Stale    bool
}

// StoreRemoteDeviceLists stores fetched device lists in one transaction
// (the lists of a room's members are often fetched together) and returns
// the device-list position each change took, in order.
func (s *Storage) StoreRemoteDeviceLists(ctx context.Context, lists []RemoteListWrite) ([]int64, error) {
	var pos []int64
	err := s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		pos = pos[:0]
		for _, l := range lists {
			p, err := storeRemoteList(ctx, tx, l)
			if err != nil {
				return err
			}
			pos = append(pos, p)
		}
		return nil
	})
	return pos, err
}

func storeRemoteList(ctx context.Context, tx *sqldb.Tx, l RemoteListWrite) (int64, error) {
	userID := l.UserID
	for typ, k := range l.Cross {
		if _, err := tx.Exec(ctx, `INSERT INTO userapi_cross_signing_keys (user_id, key_type, key_json) VALUES ($1, $2, $3)
			ON CONFLICT (user_id, key_type) DO UPDATE SET key_json = excluded.key_json`, userID, typ, k); err != nil {
			return 0, fmt.Errorf("store %s key of %s: %w", typ, userID, err)
		}
	}
	if _, err := tx.Exec(ctx, `DELETE FROM userapi_remote_devices WHERE user_id = $1`, userID); err != nil {
		return 0, fmt.Errorf("delete devices of %s: %w", userID, err)
	}
	for _, d := range l.Devs {
		if _, err := tx.Exec(ctx, `INSERT INTO userapi_remote_devices (user_id, device_id, display_name, key_json)
			VALUES ($1, $2, $3, $4) ON CONFLICT (user_id, device_id) DO NOTHING`,
			userID, d.DeviceID, d.DisplayName, d.KeyJSON); err != nil {
			return 0, fmt.Errorf("insert device of %s: %w", userID, err)
		}
	}
	if _, err := tx.Exec(ctx, `INSERT INTO userapi_remote_device_lists (user_id, stream_id, stale) VALUES ($1, $2, $3)
		ON CONFLICT (user_id) DO UPDATE SET stream_id = excluded.stream_id, stale = excluded.stale`, userID, l.StreamID, l.Stale); err != nil {
		return 0, fmt.Errorf("upsert device list of %s: %w", userID, err)
	}
	c, err := bumpDeviceList(ctx, tx, userID)
	return c.Pos, err
}

// MarkDeviceListStale marks a remote user's cached device list stale: it
// is fetched again before it is used.
func (s *Storage) MarkDeviceListStale(ctx context.Context, userID string) error {
	if _, err := s.db.Exec(ctx, `UPDATE userapi_remote_device_lists SET stale = TRUE WHERE user_id = $1`, userID); err != nil {
		return fmt.Errorf("mark device list of %s stale: %w", userID, err)
	}
	return nil
}

// MarkDeviceListWanted records that a remote user's device list is to be
// fetched: a list not tracked yet is tracked from now on, stale and
// empty, so that a restart finds it among StaleListsSharing and fetches
// it. A tracked list is marked stale.
func (s *Storage) MarkDeviceListWanted(ctx context.Context, userID string) error {
	if _, err := s.db.Exec(ctx, `INSERT INTO userapi_remote_device_lists (user_id, stream_id, stale) VALUES ($1, 0, TRUE)
		ON CONFLICT (user_id) DO UPDATE SET stale = TRUE`, userID); err != nil {
		return fmt.Errorf("mark device list of %s wanted: %w", userID, err)
	}
	return nil
}

// StaleListsSharing lists the remote users whose cached device lists are
// stale and who share a room with a local user: the lists to fetch again.
func (s *Storage) StaleListsSharing(ctx context.Context) ([]string, error) {
	rows, err := s.db.Query(ctx, `SELECT d.user_id FROM userapi_remote_device_lists d
		WHERE d.stale AND EXISTS (SELECT 1 FROM userapi_room_members a
			JOIN userapi_room_members b ON b.room_id = a.room_id
			WHERE a.user_id = d.user_id AND a.membership = 'join' AND b.is_local AND b.membership = 'join')`)
	if err != nil {
		return nil, fmt.Errorf("select stale device lists: %w", err)
	}
	users, err := sqldb.Column[string](rows)
	if err != nil {
		return nil, fmt.Errorf("select stale device lists: %w", err)
	}
	return users, nil
}

// DeviceUpdate is one m.device_list_update of a remote user.
type DeviceUpdate struct {
	UserID      string
	DeviceID    string
	DisplayName string
	StreamID    int64
	PrevIDs     []int64
	Deleted     bool
	KeyJSON     string
}

// Update outcomes of ApplyRemoteDeviceUpdate.
const (
	UpdateIgnored    = iota // not newer than what is stored
	UpdateApplied           // stored
	UpdateGap               // a previous update was missed: the list is now stale
	UpdateNotTracked        // the user's list is not cached
)

// ApplyRemoteDeviceUpdate applies an update to a tracked remote user's
// device list when it follows the last one stored (its prev_id names that
// stream_id, or it has none); when it does not, the list is marked stale
// for a resync. Either way the user's device list moves on (pos), so
// clients ask for the keys again.
func (s *Storage) ApplyRemoteDeviceUpdate(ctx context.Context, u DeviceUpdate) (outcome int, pos int64, err error) {
	err = s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		outcome, pos = UpdateIgnored, 0
		var last int64
		var stale bool
		err := tx.QueryRow(ctx, `SELECT stream_id, stale FROM userapi_remote_device_lists WHERE user_id = $1`, u.UserID).
			Scan(&last, &stale)
		if errors.Is(err, sql.ErrNoRows) {
			outcome = UpdateNotTracked // fetched whole when needed
			return nil
		}
		if err != nil {
			return fmt.Errorf("select device list of %s: %w", u.UserID, err)
		}
		if u.StreamID <= last {
			return nil
		}
		follows := !stale
		for _, p := range u.PrevIDs {
			if p != last {
				follows = false
			}
		}
		if !follows {
			if _, err := tx.Exec(ctx, `UPDATE userapi_remote_device_lists SET stale = TRUE WHERE user_id = $1`, u.UserID); err != nil {
				return fmt.Errorf("mark device list of %s stale: %w", u.UserID, err)
			}
			outcome = UpdateGap
		} else {
			if u.Deleted {
				_, err = tx.Exec(ctx, `DELETE FROM userapi_remote_devices WHERE user_id = $1 AND device_id = $2`, u.UserID, u.DeviceID)
			} else {
				_, err = tx.Exec(ctx, `INSERT INTO userapi_remote_devices (user_id, device_id, display_name, key_json)
					VALUES ($1, $2, $3, $4) ON CONFLICT (user_id, device_id)
					DO UPDATE SET display_name = excluded.display_name, key_json = excluded.key_json`,
					u.UserID, u.DeviceID, u.DisplayName, u.KeyJSON)
			}
			if err != nil {
				return fmt.Errorf("apply device update of %s %s: %w", u.UserID, u.DeviceID, err)
			}
			if _, err := tx.Exec(ctx, `UPDATE userapi_remote_device_lists SET stream_id = $2 WHERE user_id = $1`,
				u.UserID, u.StreamID); err != nil {
				return fmt.Errorf("update device list of %s: %w", u.UserID, err)
			}
			outcome = UpdateApplied
		}
		c, err := bumpDeviceList(ctx, tx, u.UserID)
		pos = c.Pos
		return err
	})
	return outcome, pos, err
}

// StoreCrossSigningKeys stores a user's cross-signing keys by type
// (master, self_signing, user_signing), replacing those of the same type,
// and, when bump, moves the user's device list on (others re-read the
// user's keys); the change is zero otherwise.
func (s *Storage) StoreCrossSigningKeys(ctx context.Context, userID string, keys map[string]string, bump bool) (DeviceListChange, error) {
	var c DeviceListChange
	err := s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		for typ, k := range keys {
			if _, err := tx.Exec(ctx, `INSERT INTO userapi_cross_signing_keys (user_id, key_type, key_json) VALUES ($1, $2, $3)
				ON CONFLICT (user_id, key_type) DO UPDATE SET key_json = excluded.key_json`, userID, typ, k); err != nil {
				return fmt.Errorf("store %s key of %s: %w", typ, userID, err)
			}
		}
		if !bump {
			return nil
		}
		var err error
		c, err = bumpDeviceList(ctx, tx, userID)
		return err
	})
	return c, err
}

// CrossSigningKeys returns a user's cross-signing keys by type.
func (s *Storage) CrossSigningKeys(ctx context.Context, userID string) (map[string]string, error) {
	all, err := s.CrossSigningKeysOf(ctx, []string{userID})
	if err != nil {
		return nil, err
	}
	if all[userID] == nil {
		return map[string]string{}, nil
	}
	return all[userID], nil
}

// IsTracked reports whether a remote user's device list is cached.
func (s *Storage) IsTracked(ctx context.Context, userID string) (bool, error) {
	var one int
	err := s.db.QueryRow(ctx, `SELECT 1 FROM userapi_remote_device_lists WHERE user_id = $1`, userID).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("select device list of %s: %w", userID, err)
	}
	return true, nil
}

// UserSignature is a signature a local user made of another user's master
// key with its user-signing key.
type UserSignature struct {
	Signer, Target, TargetKeyID, SignerKeyID, Signature string
}

// StoreUserSignature stores sig, replacing one by the same key of the same
// target, and moves the target's device list on, so the signer's clients
// re-read the target's keys.
func (s *Storage) StoreUserSignature(ctx context.Context, sig UserSignature) (DeviceListChange, error) {
	var c DeviceListChange
	err := s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO userapi_key_signatures
			(signer_user_id, target_user_id, target_key_id, signer_key_id, signature) VALUES ($1, $2, $3, $4, $5)
			ON CONFLICT (signer_user_id, target_user_id, target_key_id, signer_key_id) DO UPDATE SET signature = excluded.signature`,
			sig.Signer, sig.Target, sig.TargetKeyID, sig.SignerKeyID, sig.Signature); err != nil {
			return fmt.Errorf("store signature of %s by %s: %w", sig.Target, sig.Signer, err)
		}
		var err error
		c, err = bumpDeviceList(ctx, tx, sig.Target)
		return err
	})
	return c, err
}

// UserSignatures lists the signatures signer made of other users' keys.
func (s *Storage) UserSignatures(ctx context.Context, signer string) ([]UserSignature, error) {
	rows, err := s.db.Query(ctx, `SELECT target_user_id, target_key_id, signer_key_id, signature
		FROM userapi_key_signatures WHERE signer_user_id = $1`, signer)
	if err != nil {
		return nil, fmt.Errorf("select signatures by %s: %w", signer, err)
	}
	defer rows.Close()
	var out []UserSignature
	for rows.Next() {
		sig := UserSignature{Signer: signer}
		if err := rows.Scan(&sig.Target, &sig.TargetKeyID, &sig.SignerKeyID, &sig.Signature); err != nil {
			return nil, fmt.Errorf("scan signature by %s: %w", signer, err)
		}
		out = append(out, sig)
	}
	return out, rows.Err()
}

// UnsharedTracked lists the remote users among candidates (all the
// remote members of roomID when candidates is nil) whose device lists are
// cached and fresh but who share no room with a local user any more.
func (s *Storage) UnsharedTracked(ctx context.Context, roomID string, candidates []string) ([]string, error) {
	if candidates == nil {
		rows, err := s.db.Query(ctx, `SELECT m.user_id FROM userapi_room_members m
			JOIN userapi_remote_device_lists d ON d.user_id = m.user_id
			WHERE m.room_id = $1 AND NOT m.is_local AND NOT d.stale`, roomID)
		if err != nil {
			return nil, fmt.Errorf("select tracked members of %s: %w", roomID, err)
		}
		defer rows.Close()
		for rows.Next() {
			var u string
			if err := rows.Scan(&u); err != nil {
				return nil, fmt.Errorf("scan tracked member of %s: %w", roomID, err)
			}
			candidates = append(candidates, u)
		}
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	var out []string
	for _, u := range candidates {
		shares, err := s.SharesRoomWithLocal(ctx, u)
		if err != nil {
			return nil, err
		}
		if !shares {
			out = append(out, u)
		}
	}
	return out, nil
}
