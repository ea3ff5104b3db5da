package storage

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"myelin/internal/sqldb"
	uapi "myelin/userapi/api"
)

const regTokenColumns = `token, uses_allowed, pending, completed, expiry_time`

// validToken is the SQL condition of a usable token at $1 (now).
const validToken = `(uses_allowed IS NULL OR pending + completed < uses_allowed)
	AND (expiry_time IS NULL OR expiry_time > $1)`

func scanRegToken(sc interface{ Scan(...any) error }) (*uapi.RegistrationToken, error) {
	var t uapi.RegistrationToken
	var uses, expiry sql.NullInt64
	if err := sc.Scan(&t.Token, &uses, &t.Pending, &t.Completed, &expiry); err != nil {
		return nil, err
	}
	if uses.Valid {
		t.UsesAllowed = &uses.Int64
	}
	if expiry.Valid {
		t.ExpiryTime = &expiry.Int64
	}
	return &t, nil
}

func nullInt(p *int64) sql.NullInt64 {
	if p == nil {
		return sql.NullInt64{}
	}
	return sql.NullInt64{Int64: *p, Valid: true}
}

// InsertRegistrationToken stores a new token (uapi.ErrTokenExists if
// taken).
func (s *Storage) InsertRegistrationToken(ctx context.Context, t uapi.RegistrationToken) error {
	_, err := s.db.Exec(ctx, `INSERT INTO userapi_registration_tokens (token, uses_allowed, expiry_time)
		VALUES ($1, $2, $3)`, t.Token, nullInt(t.UsesAllowed), nullInt(t.ExpiryTime))
	if sqldb.IsUniqueViolation(err) {
		return uapi.ErrTokenExists
	}
	if err != nil {
		return fmt.Errorf("insert registration token: %w", err)
	}
	return nil
}

// RegistrationTokens lists the tokens, ordered by token; with valid set,
// only the tokens whose validity at now is *valid.
func (s *Storage) RegistrationTokens(ctx context.Context, valid *bool, now int64) ([]uapi.RegistrationToken, error) {
	q := `SELECT ` + regTokenColumns + ` FROM userapi_registration_tokens`
	args := []any{}
	if valid != nil {
		cond := validToken
		if !*valid {
			cond = `NOT (` + validToken + `)`
		}
		q += ` WHERE ` + cond
		args = append(args, now)
	}
	rows, err := s.db.Query(ctx, q+` ORDER BY token`, args...)
	if err != nil {
		return nil, fmt.Errorf("select registration tokens: %w", err)
	}
	defer rows.Close()
	out := []uapi.RegistrationToken{}
	for rows.Next() {
		t, err := scanRegToken(rows)
		if err != nil {
			return nil, fmt.Errorf("scan registration token: %w", err)
		}
		out = append(out, *t)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("select registration tokens: %w", err)
	}
	return out, nil
}

// RegistrationToken returns one token (uapi.ErrNotFound).
func (s *Storage) RegistrationToken(ctx context.Context, token string) (*uapi.RegistrationToken, error) {
	t, err := scanRegToken(s.db.QueryRow(ctx, `SELECT `+regTokenColumns+`
		FROM userapi_registration_tokens WHERE token = $1`, token))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, uapi.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("select registration token: %w", err)
	}
	return t, nil
}

// UpdateRegistrationToken sets the fields u names and returns the token
// (uapi.ErrNotFound).
func (s *Storage) UpdateRegistrationToken(ctx context.Context, token string, u uapi.RegistrationTokenUpdate) (*uapi.RegistrationToken, error) {
	// CASE keeps a field the update leaves out: one statement for every
	// combination.
	res, err := s.db.Exec(ctx, `UPDATE userapi_registration_tokens SET
		uses_allowed = CASE WHEN $2 THEN $3 ELSE uses_allowed END,
		expiry_time = CASE WHEN $4 THEN $5 ELSE expiry_time END
		WHERE token = $1`, token, u.SetUsesAllowed, nullInt(u.UsesAllowed), u.SetExpiryTime, nullInt(u.ExpiryTime))
	if err != nil {
		return nil, fmt.Errorf("update registration token: %w", err)
	}
	if err := mustAffect(res, "registration token"); err != nil {
		return nil, err
	}
	return s.RegistrationToken(ctx, token)
}

// DeleteRegistrationToken deletes a token (uapi.ErrNotFound).
func (s *Storage) DeleteRegistrationToken(ctx context.Context, token string) error {
	res, err := s.db.Exec(ctx, `DELETE FROM userapi_registration_tokens WHERE token = $1`, token)
	if err != nil {
		return fmt.Errorf("delete registration token: %w", err)
	}
	return mustAffect(res, "registration token")
}

// RegistrationTokenValid reports whether token is usable at now.
func (s *Storage) RegistrationTokenValid(ctx context.Context, token string, now int64) (bool, error) {
	var n int64
	err := s.db.QueryRow(ctx, `SELECT COUNT(*) FROM userapi_registration_tokens WHERE token = $2 AND `+validToken,
		now, token).Scan(&n)
	if err != nil {
		return false, fmt.Errorf("check registration token: %w", err)
	}
	return n > 0, nil
}

// UseRegistrationToken adds a pending use to token if it is usable at now,
// in one statement, so two registrations cannot both take its last use.
func (s *Storage) UseRegistrationToken(ctx context.Context, token string, now int64) (bool, error) {
	res, err := s.db.Exec(ctx, `UPDATE userapi_registration_tokens SET pending = pending + 1
		WHERE token = $2 AND `+validToken, now, token)
	if err != nil {
		return false, fmt.Errorf("use registration token: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("use registration token: %w", err)
	}
	return n > 0, nil
}

// CompleteRegistrationToken moves one pending use of token to completed.
func (s *Storage) CompleteRegistrationToken(ctx context.Context, token string) error {
	if _, err := s.db.Exec(ctx, `UPDATE userapi_registration_tokens
		SET pending = CASE WHEN pending > 0 THEN pending - 1 ELSE 0 END, completed = completed + 1
		WHERE token = $1`, token); err != nil {
		return fmt.Errorf("complete registration token: %w", err)
	}
	return nil
}

// ReleaseRegistrationToken gives back one pending use of token.
func (s *Storage) ReleaseRegistrationToken(ctx context.Context, token string) error {
	if _, err := s.db.Exec(ctx, `UPDATE userapi_registration_tokens
		SET pending = CASE WHEN pending > 0 THEN pending - 1 ELSE 0 END WHERE token = $1`, token); err != nil {
		return fmt.Errorf("release registration token: %w", err)
	}
	return nil
}
