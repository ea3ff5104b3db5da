package storage

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	rsapi "myelin/roomserver/api"
)

const delayedCols = `delay_id, user_id, room_id, event_type, state_key, content, delay_ms, running_since, created_ts`

func scanDelayed(sc interface{ Scan(...any) error }) (*rsapi.DelayedEvent, error) {
	d := &rsapi.DelayedEvent{}
	var sk sql.NullString
	var content string
	if err := sc.Scan(&d.DelayID, &d.Sender, &d.RoomID, &d.Type, &sk, &content, &d.Delay, &d.RunningSince, &d.Created); err != nil {
		return nil, err
	}
	if sk.Valid {
		d.StateKey = &sk.String
	}
	d.Content = []byte(content)
	return d, nil
}

func collectDelayed(rows *sql.Rows, err error) ([]rsapi.DelayedEvent, error) {
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []rsapi.DelayedEvent{}
	for rows.Next() {
		d, err := scanDelayed(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, *d)
	}
	return out, rows.Err()
}

// AddDelayedEvent stores a delayed event.
func (s *Storage) AddDelayedEvent(ctx context.Context, d rsapi.DelayedEvent) error {
	_, err := s.db.Exec(ctx, `INSERT INTO roomserver_delayed_events (`+delayedCols+`, send_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`,
		d.DelayID, d.Sender, d.RoomID, d.Type, d.StateKey, string(d.Content), d.Delay, d.RunningSince, d.Created, d.RunningSince+d.Delay)
	if err != nil {
		return fmt.Errorf("store delayed event of %s: %w", d.Sender, err)
	}
	return nil
}

// DelayedEvents lists a user's delayed events, those due first.
func (s *Storage) DelayedEvents(ctx context.Context, userID string) ([]rsapi.DelayedEvent, error) {
	return collectDelayed(s.db.Query(ctx, `SELECT `+delayedCols+` FROM roomserver_delayed_events WHERE user_id = $1 ORDER BY send_at, delay_id`, userID))
}

// DelayedEvent returns one of a user's delayed events (ErrNotFound).
func (s *Storage) DelayedEvent(ctx context.Context, userID, delayID string) (*rsapi.DelayedEvent, error) {
	d, err := scanDelayed(s.db.QueryRow(ctx, `SELECT `+delayedCols+` FROM roomserver_delayed_events WHERE delay_id = $1 AND user_id = $2`, delayID, userID))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	return d, err
}

// RestartDelayedEvent makes a user's delayed event wait its whole delay
// again from now (ErrNotFound).
func (s *Storage) RestartDelayedEvent(ctx context.Context, userID, delayID string, now int64) error {
	res, err := s.db.Exec(ctx, `UPDATE roomserver_delayed_events SET running_since = $1, send_at = $1 + delay_ms
		WHERE delay_id = $2 AND user_id = $3`, now, delayID, userID)
	if err != nil {
		return fmt.Errorf("restart delayed event %s: %w", delayID, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return ErrNotFound
	}
	return nil
}

// TakeDelayedEvent deletes a delayed event, reporting whether it was
// there: whoever takes it (the timer, a send or a cancel) is the only one.
func (s *Storage) TakeDelayedEvent(ctx context.Context, delayID string) (bool, error) {
	res, err := s.db.Exec(ctx, `DELETE FROM roomserver_delayed_events WHERE delay_id = $1`, delayID)
	if err != nil {
		return false, fmt.Errorf("take delayed event %s: %w", delayID, err)
	}
	n, _ := res.RowsAffected()
	return n > 0, nil
}

// DueDelayedEvents returns up to limit delayed events due at now, and the
// time the next one not yet due is (0: none).
func (s *Storage) DueDelayedEvents(ctx context.Context, now int64, limit int) ([]rsapi.DelayedEvent, int64, error) {
	due, err := collectDelayed(s.db.Query(ctx, `SELECT `+delayedCols+` FROM roomserver_delayed_events WHERE send_at <= $1 ORDER BY send_at LIMIT $2`, now, limit))
	if err != nil {
		return nil, 0, fmt.Errorf("due delayed events: %w", err)
	}
	var next sql.NullInt64
	if err := s.db.QueryRow(ctx, `SELECT MIN(send_at) FROM roomserver_delayed_events WHERE send_at > $1`, now).Scan(&next); err != nil {
		return nil, 0, fmt.Errorf("next delayed event: %w", err)
	}
	return due, next.Int64, nil
}
