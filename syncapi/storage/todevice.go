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
	Sender   string
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
			err := tx.QueryRow(ctx, `INSERT INTO syncapi_to_device (user_id, device_id, sender, message_id, event_type, content)
				VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (user_id, device_id, sender, message_id) DO NOTHING RETURNING pos`,
				m.UserID, m.DeviceID, m.Sender, m.MessageID, m.Type, m.Content).Scan(&last)
			if err != nil && !errors.Is(err, sql.ErrNoRows) {
				return fmt.Errorf("insert to-device message for %s %s: %w", m.UserID, m.DeviceID, err)
			}
		}
		return nil
	})
	return last, err
}

// ToDeviceFor returns at most limit messages of a device with positions
// in (from, to], oldest first.
func (s *Storage) ToDeviceFor(ctx context.Context, userID, deviceID string, from, to int64, limit int) ([]ToDevice, error) {
	rows, err := s.db.Query(ctx, `SELECT pos, sender, event_type, content FROM syncapi_to_device
		WHERE user_id = $1 AND device_id = $2 AND pos > $3 AND pos <= $4 ORDER BY pos LIMIT $5`,
		userID, deviceID, from, to, limit)
	if err != nil {
		return nil, fmt.Errorf("select to-device messages of %s %s: %w", userID, deviceID, err)
	}
	defer rows.Close()
	var out []ToDevice
	for rows.Next() {
		m := ToDevice{UserID: userID, DeviceID: deviceID}
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

// MaxToDevicePos is the latest to-device position stored.
func (s *Storage) MaxToDevicePos(ctx context.Context) (int64, error) {
	var p sql.NullInt64
	err := s.db.QueryRow(ctx, `SELECT MAX(pos) FROM syncapi_to_device`).Scan(&p)
	return p.Int64, err
}
