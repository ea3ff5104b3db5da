package storage

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"

	"myelin/internal/sqldb"
)

// Receipt is a user's latest receipt of one type (and thread) in a room.
type Receipt struct {
	Pos      int64
	RoomID   string
	Type     string
	UserID   string
	ThreadID string
	EventID  string
	TS       int64
}

// PutReceipt makes r the latest receipt of its user, type and thread in
// its room, at the next receipts stream position (set in r.Pos). Receipts
// only move forward: a receipt for the event already read, or for an event
// earlier in the sync stream than it, is dropped, and PutReceipt reports
// false. That also makes a redelivered message a no-op.
func (s *Storage) PutReceipt(ctx context.Context, r *Receipt) (stored bool, err error) {
	err = s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		var oldEvent string
		var oldPos int64
		err := tx.QueryRow(ctx, `SELECT r.event_id, COALESCE(e.pos, 0) FROM syncapi_receipts r
			LEFT JOIN syncapi_events e ON e.event_id = r.event_id
			WHERE r.room_id = $1 AND r.receipt_type = $2 AND r.user_id = $3 AND r.thread_id = $4`,
			r.RoomID, r.Type, r.UserID, r.ThreadID).Scan(&oldEvent, &oldPos)
		switch {
		case errors.Is(err, sql.ErrNoRows):
		case err != nil:
			return fmt.Errorf("load receipt: %w", err)
		case oldEvent == r.EventID:
			return nil
		case oldPos > 0:
			var newPos int64
			err := tx.QueryRow(ctx, `SELECT pos FROM syncapi_events WHERE event_id = $1`, r.EventID).Scan(&newPos)
			if err != nil && !errors.Is(err, sql.ErrNoRows) {
				return fmt.Errorf("load receipt event: %w", err)
			}
			if newPos > 0 && newPos < oldPos {
				return nil
			}
		}
		if _, err := tx.Exec(ctx, `DELETE FROM syncapi_receipts WHERE room_id = $1 AND receipt_type = $2 AND user_id = $3 AND thread_id = $4`,
			r.RoomID, r.Type, r.UserID, r.ThreadID); err != nil {
			return fmt.Errorf("replace receipt: %w", err)
		}
		if err := tx.QueryRow(ctx, `INSERT INTO syncapi_receipts (room_id, receipt_type, user_id, thread_id, event_id, ts)
			VALUES ($1, $2, $3, $4, $5, $6) RETURNING pos`,
			r.RoomID, r.Type, r.UserID, r.ThreadID, r.EventID, r.TS).Scan(&r.Pos); err != nil {
			return fmt.Errorf("insert receipt: %w", err)
		}
		stored = true
		return nil
	})
	return stored, err
}

// ReceiptsFor returns the receipts with positions in (from, to] in the
// rooms userID is joined to, oldest first. Receipts of type private are
// only userID's own.
func (s *Storage) ReceiptsFor(ctx context.Context, userID, private string, from, to int64) ([]Receipt, error) {
	rows, err := s.db.Query(ctx, `SELECT r.pos, r.room_id, r.receipt_type, r.user_id, r.thread_id, r.event_id, r.ts
		FROM syncapi_receipts r
		JOIN syncapi_current_state m ON m.room_id = r.room_id AND m.event_type = 'm.room.member' AND m.state_key = $1 AND m.membership = 'join'
		WHERE r.pos > $2 AND r.pos <= $3 AND (r.receipt_type <> $4 OR r.user_id = $1)
		ORDER BY r.pos`, userID, from, to, private)
	if err != nil {
		return nil, fmt.Errorf("receipts for %s: %w", userID, err)
	}
	defer rows.Close()
	var out []Receipt
	for rows.Next() {
		var r Receipt
		if err := rows.Scan(&r.Pos, &r.RoomID, &r.Type, &r.UserID, &r.ThreadID, &r.EventID, &r.TS); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// MaxReceiptPos is the head of the receipts stream.
func (s *Storage) MaxReceiptPos(ctx context.Context) (int64, error) {
	var p sql.NullInt64
	err := s.db.QueryRow(ctx, `SELECT MAX(pos) FROM syncapi_receipts`).Scan(&p)
	return p.Int64, err
}

// Presence is a user's presence as last changed.
type Presence struct {
	Pos             int64
	UserID          string
	Presence        string
	StatusMsg       *string
	LastActiveTS    int64
	CurrentlyActive bool
}

const presenceCols = `pos, user_id, presence, status_msg, last_active_ts, currently_active`

func collectPresence(rows *sql.Rows, err error) ([]*Presence, error) {
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*Presence
	for rows.Next() {
		p := &Presence{}
		var msg sql.NullString
		if err := rows.Scan(&p.Pos, &p.UserID, &p.Presence, &msg, &p.LastActiveTS, &p.CurrentlyActive); err != nil {
			return nil, err
		}
		if msg.Valid {
			p.StatusMsg = &msg.String
		}
		out = append(out, p)
	}
	return out, rows.Err()
}

// Presence returns a user's presence (ErrNotFound if never set).
func (s *Storage) Presence(ctx context.Context, userID string) (*Presence, error) {
	out, err := collectPresence(s.db.Query(ctx, `SELECT `+presenceCols+` FROM syncapi_presence WHERE user_id = $1`, userID))
	if err != nil {
		return nil, fmt.Errorf("presence of %s: %w", userID, err)
	}
	if len(out) == 0 {
		return nil, ErrNotFound
	}
	return out[0], nil
}

// PutPresence stores p as its user's presence at the next presence stream
// position (set in p.Pos).
func (s *Storage) PutPresence(ctx context.Context, p *Presence) error {
	return s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM syncapi_presence WHERE user_id = $1`, p.UserID); err != nil {
			return fmt.Errorf("replace presence of %s: %w", p.UserID, err)
		}
		var msg any
		if p.StatusMsg != nil {
			msg = *p.StatusMsg
		}
		if err := tx.QueryRow(ctx, `INSERT INTO syncapi_presence (user_id, presence, status_msg, last_active_ts, currently_active)
			VALUES ($1, $2, $3, $4, $5) RETURNING pos`,
			p.UserID, p.Presence, msg, p.LastActiveTS, p.CurrentlyActive).Scan(&p.Pos); err != nil {
			return fmt.Errorf("store presence of %s: %w", p.UserID, err)
		}
		return nil
	})
}

// PresenceFor returns the presence changes with positions in (from, to]
// of userID and of the users joined to a room it is joined to.
func (s *Storage) PresenceFor(ctx context.Context, userID string, from, to int64) ([]*Presence, error) {
	// A short range (an incremental sync) is read row by row, each checked
	// for a shared room; a long one (an initial sync) through the list of
	// everyone sharing a room with the user.
	shared := `p.user_id IN (
			SELECT b.state_key FROM syncapi_current_state a
			JOIN syncapi_current_state b ON b.room_id = a.room_id AND b.event_type = 'm.room.member' AND b.membership = 'join'
			WHERE a.event_type = 'm.room.member' AND a.state_key = $1 AND a.membership = 'join')`
	if to-from <= presenceRangeByRow {
		shared = `EXISTS (
			SELECT 1 FROM syncapi_current_state a
			JOIN syncapi_current_state b ON b.room_id = a.room_id AND b.event_type = 'm.room.member' AND b.membership = 'join' AND b.state_key = p.user_id
			WHERE a.event_type = 'm.room.member' AND a.state_key = $1 AND a.membership = 'join')`
	}
	out, err := collectPresence(s.db.Query(ctx, `SELECT `+presenceCols+` FROM syncapi_presence p
		WHERE p.pos > $2 AND p.pos <= $3 AND (p.user_id = $1 OR `+shared+`)
		ORDER BY p.pos`, userID, from, to))
	if err != nil {
		return nil, fmt.Errorf("presence for %s: %w", userID, err)
	}
	return out, nil
}

// presenceRangeByRow is the longest presence range PresenceFor reads row
// by row.
const presenceRangeByRow = 2000

// PresenceOf returns the known presence of the given users.
func (s *Storage) PresenceOf(ctx context.Context, userIDs []string) ([]*Presence, error) {
	var out []*Presence
	err := sqldb.InChunks(1, userIDs, func(in string, args []any) error {
		ps, err := collectPresence(s.db.Query(ctx, `SELECT `+presenceCols+` FROM syncapi_presence WHERE user_id IN (`+in+`)`, args...))
		out = append(out, ps...)
		return err
	})
	return out, err
}

// MaxPresencePos is the head of the presence stream.
func (s *Storage) MaxPresencePos(ctx context.Context) (int64, error) {
	var p sql.NullInt64
	err := s.db.QueryRow(ctx, `SELECT MAX(pos) FROM syncapi_presence`).Scan(&p)
	return p.Int64, err
}

// PresentUsers returns the users whose IDs end with suffix (":server" for
// local users) and who are not offline.
func (s *Storage) PresentUsers(ctx context.Context, suffix string) ([]string, error) {
	rows, err := s.db.Query(ctx, `SELECT user_id FROM syncapi_presence WHERE presence <> 'offline'`)
	if err != nil {
		return nil, fmt.Errorf("users present: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var u string
		if err := rows.Scan(&u); err != nil {
			return nil, err
		}
		if strings.HasSuffix(u, suffix) {
			out = append(out, u)
		}
	}
	return out, rows.Err()
}

// SharesRoom reports whether users a and b are both joined to some room.
func (s *Storage) SharesRoom(ctx context.Context, a, b string) (bool, error) {
	return s.inRoomOf(ctx, a, b, "join")
}

// SharesRoomInvited reports whether b is invited to a room a is joined to.
func (s *Storage) SharesRoomInvited(ctx context.Context, a, b string) (bool, error) {
	return s.inRoomOf(ctx, a, b, "invite")
}

// inRoomOf reports whether b has membership in a room a is joined to.
func (s *Storage) inRoomOf(ctx context.Context, a, b, membership string) (bool, error) {
	var one int
	err := s.db.QueryRow(ctx, `SELECT 1 FROM syncapi_current_state x
		JOIN syncapi_current_state y ON y.room_id = x.room_id AND y.event_type = 'm.room.member' AND y.state_key = $2 AND y.membership = $3
		WHERE x.event_type = 'm.room.member' AND x.state_key = $1 AND x.membership = 'join' LIMIT 1`, a, b, membership).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("is %s %s in a room of %s: %w", b, membership, a, err)
	}
	return true, nil
}

// SharingUsers returns which of candidates are joined to a room userID is
// joined to, a few hundred per query (a user who joins a room of 10,000
// needs them all checked).
func (s *Storage) SharingUsers(ctx context.Context, userID string, candidates []string) (map[string]bool, error) {
	out := map[string]bool{}
	err := sqldb.InChunks(2, candidates, func(in string, args []any) error {
		rows, err := s.db.Query(ctx, `SELECT DISTINCT y.state_key FROM syncapi_current_state x
			JOIN syncapi_current_state y ON y.room_id = x.room_id AND y.event_type = 'm.room.member' AND y.membership = 'join'
			WHERE x.event_type = 'm.room.member' AND x.state_key = $1 AND x.membership = 'join'
			AND y.state_key IN (`+in+`)`, append([]any{userID}, args...)...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var u string
			if err := rows.Scan(&u); err != nil {
				return err
			}
			out[u] = true
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("who shares a room with %s: %w", userID, err)
	}
	return out, nil
}

// UsersSharing lists the users joined to a room userID is joined to,
// userID included when it is joined to any.
func (s *Storage) UsersSharing(ctx context.Context, userID string) ([]string, error) {
	rows, err := s.db.Query(ctx, `SELECT DISTINCT y.state_key FROM syncapi_current_state x
		JOIN syncapi_current_state y ON y.room_id = x.room_id AND y.event_type = 'm.room.member' AND y.membership = 'join'
		WHERE x.event_type = 'm.room.member' AND x.state_key = $1 AND x.membership = 'join'`, userID)
	if err != nil {
		return nil, fmt.Errorf("who shares a room with %s: %w", userID, err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var u string
		if err := rows.Scan(&u); err != nil {
			return nil, fmt.Errorf("scan a user sharing a room with %s: %w", userID, err)
		}
		out = append(out, u)
	}
	return out, rows.Err()
}

// MembersChanged returns the users who joined, with positions in
// (from, to], a room userID is now joined to and were not joined to it
// just before, those newly invited to one (neither invited nor joined
// just before), and those who left (or were kicked or banned from) one.
// One query serves presence and device lists alike.
func (s *Storage) MembersChanged(ctx context.Context, userID string, from, to int64) (joined, invited, left []string, err error) {
	// The previous membership is looked up only for joins and invites.
	const prev = `COALESCE((SELECT p.membership FROM syncapi_membership_log p
			WHERE p.room_id = l.room_id AND p.user_id = l.user_id AND p.pos < l.pos ORDER BY p.pos DESC LIMIT 1), '')`
	rows, err := s.db.Query(ctx, `SELECT DISTINCT l.user_id, l.membership FROM syncapi_membership_log l
		JOIN syncapi_current_state m ON m.room_id = l.room_id AND m.event_type = 'm.room.member' AND m.state_key = $1 AND m.membership = 'join'
		WHERE l.pos > $2 AND l.pos <= $3 AND (l.membership IN ('leave', 'ban')
		OR l.membership = 'join' AND `+prev+` <> 'join'
		OR l.membership = 'invite' AND `+prev+` NOT IN ('invite', 'join'))`,
		userID, from, to)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("members who joined or left rooms of %s: %w", userID, err)
	}
	defer rows.Close()
	for rows.Next() {
		var u, m string
		if err := rows.Scan(&u, &m); err != nil {
			return nil, nil, nil, err
		}
		switch m {
		case "join":
			joined = append(joined, u)
		case "invite":
			invited = append(invited, u)
		default:
			left = append(left, u)
		}
	}
	return joined, invited, left, rows.Err()
}

// JoinedMembers lists the users joined to roomID now.
func (s *Storage) JoinedMembers(ctx context.Context, roomID string) ([]string, error) {
	rows, err := s.db.Query(ctx, `SELECT state_key FROM syncapi_current_state
		WHERE room_id = $1 AND event_type = 'm.room.member' AND membership = 'join'`, roomID)
	if err != nil {
		return nil, fmt.Errorf("joined members of %s: %w", roomID, err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var u string
		if err := rows.Scan(&u); err != nil {
			return nil, err
		}
		out = append(out, u)
	}
	return out, rows.Err()
}
