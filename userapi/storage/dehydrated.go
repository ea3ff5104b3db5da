package storage

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	uapi "myelin/userapi/api"
)

// DehydratedDevice returns the user's dehydrated device (uapi.ErrNotFound
// if there is none).
func (s *Storage) DehydratedDevice(ctx context.Context, userID string) (*uapi.DehydratedDevice, error) {
	var d uapi.DehydratedDevice
	var data string
	err := s.db.QueryRow(ctx, `SELECT device_id, device_data FROM userapi_dehydrated_devices WHERE user_id = $1`,
		userID).Scan(&d.DeviceID, &data)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, uapi.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("select dehydrated device of %s: %w", userID, err)
	}
	d.DeviceData = []byte(data)
	return &d, nil
}

// SetDehydratedDevice records deviceID as the user's dehydrated device.
func (s *Storage) SetDehydratedDevice(ctx context.Context, userID, deviceID, data string) error {
	if _, err := s.db.Exec(ctx, `INSERT INTO userapi_dehydrated_devices (user_id, device_id, device_data) VALUES ($1, $2, $3)
		ON CONFLICT (user_id) DO UPDATE SET device_id = excluded.device_id, device_data = excluded.device_data`,
		userID, deviceID, data); err != nil {
		return fmt.Errorf("store dehydrated device of %s: %w", userID, err)
	}
	return nil
}

// ForgetDehydratedDevice drops the record of the user's dehydrated device
// if it is deviceID.
func (s *Storage) ForgetDehydratedDevice(ctx context.Context, userID, deviceID string) error {
	if _, err := s.db.Exec(ctx, `DELETE FROM userapi_dehydrated_devices WHERE user_id = $1 AND device_id = $2`,
		userID, deviceID); err != nil {
		return fmt.Errorf("forget dehydrated device of %s: %w", userID, err)
	}
	return nil
}
