package storage

import (
	"context"
	"fmt"
)

// Peek is a device's peek into a room, begun at stream position Pos.
type Peek struct {
	UserID, DeviceID, RoomID string
	Pos                      int64
}

// AddPeek records a peek; a peek into a room the device peeks into
// already begins again at pos.
func (s *Storage) AddPeek(ctx context.Context, p Peek) error {
	_, err := s.db.Exec(ctx, `INSERT INTO syncapi_peeks (user_id, device_id, room_id, pos) VALUES ($1, $2, $3, $4)
		ON CONFLICT (user_id, device_id, room_id) DO UPDATE SET pos = excluded.pos`, p.UserID, p.DeviceID, p.RoomID, p.Pos)
	if err != nil {
		return fmt.Errorf("add peek of %s into %s: %w", p.UserID, p.RoomID, err)
	}
	return nil
}

// DeletePeek ends a device's peek into a room.
func (s *Storage) DeletePeek(ctx context.Context, userID, deviceID, roomID string) error {
	_, err := s.db.Exec(ctx, `DELETE FROM syncapi_peeks WHERE user_id = $1 AND device_id = $2 AND room_id = $3`, userID, deviceID, roomID)
	if err != nil {
		return fmt.Errorf("delete peek of %s into %s: %w", userID, roomID, err)
	}
	return nil
}

// Peeks returns every peek, for the notifier to start with.
func (s *Storage) Peeks(ctx context.Context) ([]Peek, error) {
	rows, err := s.db.Query(ctx, `SELECT user_id, device_id, room_id, pos FROM syncapi_peeks`)
	if err != nil {
		return nil, fmt.Errorf("load peeks: %w", err)
	}
	defer rows.Close()
	var out []Peek
	for rows.Next() {
		var p Peek
		if err := rows.Scan(&p.UserID, &p.DeviceID, &p.RoomID, &p.Pos); err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, rows.Err()
}
