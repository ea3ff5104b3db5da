// Package storage is federationapi's one storage implementation: the keys
// of other servers.
package storage

import (
	"context"
	"embed"
	"fmt"
	"io/fs"

	"myelin/internal/sqldb"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Storage is the federationapi database.
type Storage struct {
	db *sqldb.DB
}

// Open runs federationapi's migrations on db.
func Open(ctx context.Context, db *sqldb.DB) (*Storage, error) {
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return nil, err
	}
	if err := sqldb.Migrate(ctx, db, "federationapi", sub); err != nil {
		return nil, err
	}
	return &Storage{db: db}, nil
}

// KeyResponse is a stored key response and how long it is valid.
type KeyResponse struct {
	KeyID        string
	Response     string
	ValidUntilTS int64
}

// StoreKey records response as the answer for server's keyID, unless an
// answer valid for longer is already stored: a server that later serves a
// different or shorter-lived key does not erase what was seen before.
func (s *Storage) StoreKey(ctx context.Context, server, keyID, response string, validUntil, now int64) error {
	_, err := s.db.Exec(ctx, `INSERT INTO federationapi_server_keys (server_name, key_id, response, valid_until_ts, fetched_ts)
		VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (server_name, key_id) DO UPDATE SET response = excluded.response,
			valid_until_ts = excluded.valid_until_ts, fetched_ts = excluded.fetched_ts
		WHERE excluded.valid_until_ts >= federationapi_server_keys.valid_until_ts`,
		server, keyID, response, validUntil, now)
	if err != nil {
		return fmt.Errorf("store key %s of %s: %w", keyID, server, err)
	}
	return nil
}

// Keys returns the stored responses for server's keys (all of them when
// keyIDs is empty).
func (s *Storage) Keys(ctx context.Context, server string, keyIDs []string) ([]KeyResponse, error) {
	q := `SELECT key_id, response, valid_until_ts FROM federationapi_server_keys WHERE server_name = $1`
	args := []any{server}
	if len(keyIDs) > 0 {
		q += ` AND key_id IN (` + sqldb.InList(2, len(keyIDs)) + `)`
		for _, k := range keyIDs {
			args = append(args, k)
		}
	}
	rows, err := s.db.Query(ctx, q+` ORDER BY key_id`, args...)
	if err != nil {
		return nil, fmt.Errorf("keys of %s: %w", server, err)
	}
	defer rows.Close()
	var out []KeyResponse
	for rows.Next() {
		var k KeyResponse
		if err := rows.Scan(&k.KeyID, &k.Response, &k.ValidUntilTS); err != nil {
			return nil, err
		}
		out = append(out, k)
	}
	return out, rows.Err()
}
