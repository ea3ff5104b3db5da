package storage

import (
	"context"
	"fmt"
)

// ThreepidBinding is a third-party identifier a user bound on an identity
// server through this server.
type ThreepidBinding struct {
	Medium, Address, IDServer string
}

// AddThreepidBinding records that userID bound b.
func (s *Storage) AddThreepidBinding(ctx context.Context, userID string, b ThreepidBinding) error {
	if _, err := s.db.Exec(ctx, `INSERT INTO userapi_threepid_bindings (user_id, medium, address, id_server)
		VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING`, userID, b.Medium, b.Address, b.IDServer); err != nil {
		return fmt.Errorf("record 3PID binding of %s: %w", userID, err)
	}
	return nil
}

// RemoveThreepidBinding forgets that userID bound b.
func (s *Storage) RemoveThreepidBinding(ctx context.Context, userID string, b ThreepidBinding) error {
	if _, err := s.db.Exec(ctx, `DELETE FROM userapi_threepid_bindings
		WHERE user_id = $1 AND medium = $2 AND address = $3 AND id_server = $4`, userID, b.Medium, b.Address, b.IDServer); err != nil {
		return fmt.Errorf("forget 3PID binding of %s: %w", userID, err)
	}
	return nil
}

// ThreepidBindings lists userID's bindings, of medium and address when
// both are given.
func (s *Storage) ThreepidBindings(ctx context.Context, userID, medium, address string) ([]ThreepidBinding, error) {
	rows, err := s.db.Query(ctx, `SELECT medium, address, id_server FROM userapi_threepid_bindings
		WHERE user_id = $1 AND ($2 = '' OR (medium = $2 AND address = $3)) ORDER BY medium, address, id_server`,
		userID, medium, address)
	if err != nil {
		return nil, fmt.Errorf("3PID bindings of %s: %w", userID, err)
	}
	defer rows.Close()
	var out []ThreepidBinding
	for rows.Next() {
		var b ThreepidBinding
		if err := rows.Scan(&b.Medium, &b.Address, &b.IDServer); err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return out, rows.Err()
}
