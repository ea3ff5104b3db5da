package storage

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"myelin/internal/sqldb"
)

// ToDevice is a send-to-device message for one device.
type ToDevice struct {
	Pos      int64
	UserID   string
	DeviceID string
	// SessionID is the session of the device it was stored for (0: any).
	SessionID int64
	Sender    string
	// MessageID is unique per sender: a copy is not stored again.
	MessageID string
	Type      string
	Content   string
}

// PutToDevice stores messages in one transaction, each at the next
// to-device position, and returns the last position taken (0 when every
// message was stored already).
func (s *Storage) PutToDevice(ctx context.Context, msgs []ToDevice) (int64, error) {
	var last int64
	err := s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		last = 0
		for _, m := range msgs {
			err := tx.QueryRow(ctx, `INSERT INTO syncapi_to_device (user_id, device_id, session_id, sender, message_id, event_type, content)
				VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (user_id, device_id, sender, message_id) DO NOTHING RETURNING pos`,
				m.UserID, m.DeviceID, m.SessionID, m.Sender, m.MessageID, m.Type, m.Content).Scan(&last)
			if err != nil && !errors.Is(err, sql.ErrNoRows) {
				return fmt.Errorf("insert to-device message for %s %s: %w", m.UserID, m.DeviceID, err)
			}
		}
		return nil
	})
	return last, err
}

// ToDeviceFor returns at most limit messages of a device, the one of
// session sessionID (0: whichever has the ID), with positions in
// (from, to], oldest first. Messages stored for an earlier device of the
// same ID are left out.
func (s *Storage) ToDeviceFor(ctx context.Context, userID, deviceID string, sessionID, from, to int64, limit int) ([]ToDevice, error) {
	rows, err := s.db.Query(ctx, `SELECT pos, sender, event_type, content FROM syncapi_to_device
		WHERE user_id = $1 AND device_id = $2 AND (session_id = 0 OR session_id = $3 OR $3 = 0)
		AND pos > $4 AND pos <= $5 ORDER BY pos LIMIT $6`,
		userID, deviceID, sessionID, from, to, limit)
	if err != nil {
		return nil, fmt.Errorf("select to-device messages of %s %s: %w", userID, deviceID, err)
	}
	defer rows.Close()
	var out []ToDevice
	for rows.Next() {
		m := ToDevice{UserID: userID, DeviceID: deviceID, SessionID: sessionID}
		if err := rows.Scan(&m.Pos, &m.Sender, &m.Type, &m.Content); err != nil {
			return nil, fmt.Errorf("scan to-device message: %w", err)
		}
		out = append(out, m)
	}
	return out, rows.Err()
}

// DeleteToDevice deletes a device's messages up to position upTo, which
// the device acknowledged by syncing from there.
func (s *Storage) DeleteToDevice(ctx context.Context, userID, deviceID string, upTo int64) error {
	if _, err := s.db.Exec(ctx, `DELETE FROM syncapi_to_device WHERE user_id = $1 AND device_id = $2 AND pos <= $3`,
		userID, deviceID, upTo); err != nil {
		return fmt.Errorf("delete to-device messages of %s %s: %w", userID, deviceID, err)
	}
	return nil
}

// MaxToDevicePos is the latest to-device position given out. Messages are
// deleted once acknowledged, so the table may hold none: the position is
// the counter's, which survives restarts, not the highest row's.
func (s *Storage) MaxToDevicePos(ctx context.Context) (int64, error) {
	q := `SELECT seq FROM sqlite_sequence WHERE name = 'syncapi_to_device'`
	if s.db.Dialect == sqldb.Postgres {
		q = `SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM syncapi_to_device_pos_seq`
	}
	var p int64
	err := s.db.QueryRow(ctx, q).Scan(&p)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil // SQLite: nothing ever stored
	}
	if err != nil {
		return 0, fmt.Errorf("to-device position: %w", err)
	}
	return p, nil
}

// ToDeviceDevices lists the devices of userID that have messages waiting,
// with the sessions they were stored for.
func (s *Storage) ToDeviceDevices(ctx context.Context, userID string) (map[string][]int64, error) {
	rows, err := s.db.Query(ctx, `SELECT DISTINCT device_id, session_id FROM syncapi_to_device WHERE user_id = $1`, userID)
	if err != nil {
		return nil, fmt.Errorf("devices with to-device messages of %s: %w", userID, err)
	}
	defer rows.Close()
	out := map[string][]int64{}
	for rows.Next() {
		var d string
		var sess int64
		if err := rows.Scan(&d, &sess); err != nil {
			return nil, fmt.Errorf("scan device: %w", err)
		}
		out[d] = append(out[d], sess)
	}
	return out, rows.Err()
}

// DeleteDeviceToDevice deletes the messages waiting for a device of
// userID that is gone: all of them when keep is negative (no device has
// the ID), else those stored for another session than keep (an earlier
// device of the ID) but not those of no session.
func (s *Storage) DeleteDeviceToDevice(ctx context.Context, userID, deviceID string, keep int64) error {
	q, args := `DELETE FROM syncapi_to_device WHERE user_id = $1 AND device_id = $2`, []any{userID, deviceID}
	if keep >= 0 {
		q, args = q+` AND session_id <> 0 AND session_id <> $3`, append(args, keep)
	}
	if _, err := s.db.Exec(ctx, q, args...); err != nil {
		return fmt.Errorf("delete to-device messages of gone device %s %s: %w", userID, deviceID, err)
	}
	return nil
}
