// Package storage is the mediaapi's one storage implementation: a row of
// metadata per media item (local uploads, IDs reserved by /create, cached
// remote media) and per thumbnail. The bytes themselves are files named by
// their content hash, kept by the mediaapi; rows only name the hash.
package storage

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"

	"myelin/internal/sqldb"
)

//go:embed migrations/*.sql
var migrations embed.FS

// ErrNotFound is returned for unknown media and thumbnails.
var ErrNotFound = errors.New("media not found")

// ErrExists is returned when a media ID is already taken.
var ErrExists = errors.New("media ID already exists")

// Storage is the mediaapi database.
type Storage struct {
	db *sqldb.DB
}

// Open runs the mediaapi's migrations on db.
func Open(ctx context.Context, db *sqldb.DB) (*Storage, error) {
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return nil, err
	}
	if err := sqldb.Migrate(ctx, db, "mediaapi", sub); err != nil {
		return nil, err
	}
	return &Storage{db: db}, nil
}

// Media is one media item's metadata.
type Media struct {
	ServerName    string `json:"-"`
	MediaID       string `json:"media_id"`
	UserID        string `json:"user_id,omitempty"`
	ContentType   string `json:"media_type"`
	UploadName    string `json:"upload_name,omitempty"`
	Size          int64  `json:"media_length"`
	Hash          string `json:"-"`
	CreatedTS     int64  `json:"created_ts"`
	PendingUntil  int64  `json:"-"`
	QuarantinedBy string `json:"quarantined_by,omitempty"`
}

// Pending reports whether the item is an ID made by /create whose content
// has not come yet.
func (m *Media) Pending() bool { return m.PendingUntil != 0 }

const mediaCols = `server_name, media_id, user_id, content_type, upload_name, size, content_hash, created_ts, pending_until, quarantined_by`

func scanMedia(sc interface{ Scan(...any) error }) (*Media, error) {
	m := &Media{}
	err := sc.Scan(&m.ServerName, &m.MediaID, &m.UserID, &m.ContentType, &m.UploadName, &m.Size, &m.Hash, &m.CreatedTS, &m.PendingUntil, &m.QuarantinedBy)
	return m, err
}

// InsertMedia stores the metadata of content now on disk (an upload, or
// a remote item fetched); ErrExists when the ID is taken.
func (s *Storage) InsertMedia(ctx context.Context, m *Media) error {
	_, err := s.db.Exec(ctx, `INSERT INTO mediaapi_media (`+mediaCols+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`,
		m.ServerName, m.MediaID, m.UserID, m.ContentType, m.UploadName, m.Size, m.Hash, m.CreatedTS, m.PendingUntil, m.QuarantinedBy)
	if sqldb.IsUniqueViolation(err) {
		return ErrExists
	}
	if err != nil {
		return fmt.Errorf("insert media %s/%s: %w", m.ServerName, m.MediaID, err)
	}
	return nil
}

// Media returns one item's metadata, ErrNotFound if there is none.
func (s *Storage) Media(ctx context.Context, serverName, mediaID string) (*Media, error) {
	m, err := scanMedia(s.db.QueryRow(ctx, `SELECT `+mediaCols+` FROM mediaapi_media WHERE server_name = $1 AND media_id = $2`, serverName, mediaID))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("load media %s/%s: %w", serverName, mediaID, err)
	}
	return m, nil
}

// UploadState says why content could not be put on a reserved ID.
type UploadState int

const (
	// UploadOK: the content was recorded.
	UploadOK UploadState = iota
	// UploadUnknown: no such ID, or it expired.
	UploadUnknown
	// UploadNotOwner: another user reserved the ID.
	UploadNotOwner
	// UploadDone: the ID already has its content.
	UploadDone
)

// CompletePending puts content on an ID reserved by /create, if userID
// reserved it, it has not expired at now and has no content yet.
func (s *Storage) CompletePending(ctx context.Context, m *Media, now int64) (UploadState, error) {
	state := UploadOK
	err := s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		cur, err := scanMedia(tx.QueryRow(ctx, `SELECT `+mediaCols+` FROM mediaapi_media WHERE server_name = $1 AND media_id = $2`, m.ServerName, m.MediaID))
		switch {
		case errors.Is(err, sql.ErrNoRows):
			state = UploadUnknown
			return nil
		case err != nil:
			return err
		case !cur.Pending():
			state = UploadDone
			return nil
		case cur.UserID != m.UserID:
			state = UploadNotOwner
			return nil
		case cur.PendingUntil <= now:
			state = UploadUnknown
			return nil
		}
		_, err = tx.Exec(ctx, `UPDATE mediaapi_media SET content_type = $3, upload_name = $4, size = $5, content_hash = $6, created_ts = $7, pending_until = 0
			WHERE server_name = $1 AND media_id = $2`, m.ServerName, m.MediaID, m.ContentType, m.UploadName, m.Size, m.Hash, now)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("complete upload of %s/%s: %w", m.ServerName, m.MediaID, err)
	}
	return state, nil
}

// PendingCount is how many reserved IDs userID holds unexpired at now.
func (s *Storage) PendingCount(ctx context.Context, userID string, now int64) (int, error) {
	var n int
	err := s.db.QueryRow(ctx, `SELECT COUNT(*) FROM mediaapi_media WHERE user_id = $1 AND pending_until > $2`, userID, now).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("count pending uploads of %s: %w", userID, err)
	}
	return n, nil
}

// DeleteExpiredPending forgets the reserved IDs that expired before now.
func (s *Storage) DeleteExpiredPending(ctx context.Context, now int64) error {
	if _, err := s.db.Exec(ctx, `DELETE FROM mediaapi_media WHERE pending_until <> 0 AND pending_until <= $1`, now); err != nil {
		return fmt.Errorf("delete expired media IDs: %w", err)
	}
	return nil
}

// UserUsage is the bytes of content userID uploaded.
func (s *Storage) UserUsage(ctx context.Context, userID string) (int64, error) {
	var n int64
	err := s.db.QueryRow(ctx, `SELECT COALESCE(SUM(size), 0) FROM mediaapi_media WHERE user_id = $1`, userID).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("media usage of %s: %w", userID, err)
	}
	return n, nil
}

// Thumbnail is one stored thumbnail.
type Thumbnail struct {
	ServerName, MediaID string
	Width, Height       int
	Method              string
	ContentType         string
	Size                int64
	Hash                string
	CreatedTS           int64
}

// Thumbnail returns a stored thumbnail, ErrNotFound if it was not made.
func (s *Storage) Thumbnail(ctx context.Context, serverName, mediaID string, width, height int, method string) (*Thumbnail, error) {
	t := &Thumbnail{ServerName: serverName, MediaID: mediaID, Width: width, Height: height, Method: method}
	err := s.db.QueryRow(ctx, `SELECT content_type, size, content_hash, created_ts FROM mediaapi_thumbnails
		WHERE server_name = $1 AND media_id = $2 AND width = $3 AND height = $4 AND method = $5`,
		serverName, mediaID, width, height, method).Scan(&t.ContentType, &t.Size, &t.Hash, &t.CreatedTS)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("load thumbnail of %s/%s: %w", serverName, mediaID, err)
	}
	return t, nil
}

// InsertThumbnail records a thumbnail now on disk; a second one of the
// same size and method is ignored.
func (s *Storage) InsertThumbnail(ctx context.Context, t *Thumbnail) error {
	_, err := s.db.Exec(ctx, `INSERT INTO mediaapi_thumbnails (server_name, media_id, width, height, method, content_type, size, content_hash, created_ts)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING`,
		t.ServerName, t.MediaID, t.Width, t.Height, t.Method, t.ContentType, t.Size, t.Hash, t.CreatedTS)
	if err != nil {
		return fmt.Errorf("insert thumbnail of %s/%s: %w", t.ServerName, t.MediaID, err)
	}
	return nil
}

// HashInUse reports whether any media or thumbnail row names hash.
func (s *Storage) HashInUse(ctx context.Context, hash string) (bool, error) {
	var n int
	err := s.db.QueryRow(ctx, `SELECT (SELECT COUNT(*) FROM mediaapi_media WHERE content_hash = $1) + (SELECT COUNT(*) FROM mediaapi_thumbnails WHERE content_hash = $1)`, hash).Scan(&n)
	if err != nil {
		return false, fmt.Errorf("look up content %s: %w", hash, err)
	}
	return n > 0, nil
}

// DeleteMedia deletes items and their thumbnails; it returns the content
// hashes they named, which may now be unused.
func (s *Storage) DeleteMedia(ctx context.Context, serverName string, mediaIDs []string) (deleted []string, hashes []string, err error) {
	err = s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		deleted, hashes = nil, nil
		for _, id := range mediaIDs {
			var h string
			err := tx.QueryRow(ctx, `SELECT content_hash FROM mediaapi_media WHERE server_name = $1 AND media_id = $2`, serverName, id).Scan(&h)
			if errors.Is(err, sql.ErrNoRows) {
				continue
			}
			if err != nil {
				return err
			}
			if h != "" {
				hashes = append(hashes, h)
			}
			rows, err := tx.Query(ctx, `SELECT content_hash FROM mediaapi_thumbnails WHERE server_name = $1 AND media_id = $2`, serverName, id)
			if err != nil {
				return err
			}
			thumbs, err := sqldb.Column[string](rows)
			if err != nil {
				return err
			}
			hashes = append(hashes, thumbs...)
			if _, err := tx.Exec(ctx, `DELETE FROM mediaapi_thumbnails WHERE server_name = $1 AND media_id = $2`, serverName, id); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `DELETE FROM mediaapi_media WHERE server_name = $1 AND media_id = $2`, serverName, id); err != nil {
				return err
			}
			deleted = append(deleted, id)
		}
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("delete media of %s: %w", serverName, err)
	}
	return deleted, hashes, nil
}

// UserMedia lists userID's uploads, newest first, from offset on.
func (s *Storage) UserMedia(ctx context.Context, userID string, offset, limit int) ([]*Media, int, error) {
	var total int
	if err := s.db.QueryRow(ctx, `SELECT COUNT(*) FROM mediaapi_media WHERE user_id = $1`, userID).Scan(&total); err != nil {
		return nil, 0, fmt.Errorf("count media of %s: %w", userID, err)
	}
	rows, err := s.db.Query(ctx, `SELECT `+mediaCols+` FROM mediaapi_media WHERE user_id = $1 ORDER BY created_ts DESC, media_id LIMIT $2 OFFSET $3`, userID, limit, offset)
	if err != nil {
		return nil, 0, fmt.Errorf("list media of %s: %w", userID, err)
	}
	out, err := collect(rows)
	if err != nil {
		return nil, 0, fmt.Errorf("list media of %s: %w", userID, err)
	}
	return out, total, nil
}

// MediaBefore lists the IDs of serverName's items created before ts
// (milliseconds) and larger than minSize bytes.
func (s *Storage) MediaBefore(ctx context.Context, serverName string, ts, minSize int64) ([]string, error) {
	rows, err := s.db.Query(ctx, `SELECT media_id FROM mediaapi_media WHERE server_name = $1 AND created_ts < $2 AND size > $3 AND pending_until = 0`, serverName, ts, minSize)
	if err != nil {
		return nil, fmt.Errorf("list media of %s before %d: %w", serverName, ts, err)
	}
	return sqldb.Column[string](rows)
}

// Quarantine marks an item quarantined by admin (empty: served again);
// ErrNotFound when there is no such item.
func (s *Storage) Quarantine(ctx context.Context, serverName, mediaID, admin string) error {
	if admin == "" {
		// A row without content (remote media quarantined before it was
		// ever fetched, by QuarantineRoom) goes: the media is fetched
		// again when asked for.
		res, err := s.db.Exec(ctx, `DELETE FROM mediaapi_media WHERE server_name = $1 AND media_id = $2 AND content_hash = '' AND pending_until = 0`, serverName, mediaID)
		if err != nil {
			return fmt.Errorf("unquarantine %s/%s: %w", serverName, mediaID, err)
		}
		if n, _ := res.RowsAffected(); n > 0 {
			return nil
		}
	}
	res, err := s.db.Exec(ctx, `UPDATE mediaapi_media SET quarantined_by = $3 WHERE server_name = $1 AND media_id = $2`, serverName, mediaID, admin)
	if err != nil {
		return fmt.Errorf("quarantine %s/%s: %w", serverName, mediaID, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return ErrNotFound
	}
	return nil
}

func collect(rows *sql.Rows) ([]*Media, error) {
	defer rows.Close()
	var out []*Media
	for rows.Next() {
		m, err := scanMedia(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, rows.Err()
}

// Preview returns the cached preview of url in bucket made at or after
// since, ErrNotFound if there is none.
func (s *Storage) Preview(ctx context.Context, url string, bucket, since int64) (string, error) {
	var p string
	err := s.db.QueryRow(ctx, `SELECT preview FROM mediaapi_url_previews WHERE url = $1 AND bucket = $2 AND created_ts >= $3`, url, bucket, since).Scan(&p)
	if errors.Is(err, sql.ErrNoRows) {
		return "", ErrNotFound
	}
	if err != nil {
		return "", fmt.Errorf("load preview of %s: %w", url, err)
	}
	return p, nil
}

// StorePreview caches the preview of url in bucket, replacing an older one.
func (s *Storage) StorePreview(ctx context.Context, url string, bucket int64, preview string, createdTS int64) error {
	_, err := s.db.Exec(ctx, `INSERT INTO mediaapi_url_previews (url, bucket, preview, created_ts) VALUES ($1, $2, $3, $4)
		ON CONFLICT (url, bucket) DO UPDATE SET preview = excluded.preview, created_ts = excluded.created_ts`, url, bucket, preview, createdTS)
	if err != nil {
		return fmt.Errorf("store preview of %s: %w", url, err)
	}
	return nil
}

// DeletePreviewsBefore forgets the previews made before ts.
func (s *Storage) DeletePreviewsBefore(ctx context.Context, ts int64) error {
	if _, err := s.db.Exec(ctx, `DELETE FROM mediaapi_url_previews WHERE created_ts < $1`, ts); err != nil {
		return fmt.Errorf("delete old previews: %w", err)
	}
	return nil
}

// insertQuarantined makes the row, without content, of remote media
// quarantined before it was fetched.
const insertQuarantined = `INSERT INTO mediaapi_media (server_name, media_id, created_ts, quarantined_by) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING`

// QuarantineUncached quarantines remote media not cached here: a row
// without content, so that it is never fetched. It reports whether the
// row was made (false: the item has a row already).
func (s *Storage) QuarantineUncached(ctx context.Context, serverName, mediaID, admin string, now int64) (bool, error) {
	res, err := s.db.Exec(ctx, insertQuarantined,
		serverName, mediaID, now, admin)
	if err != nil {
		return false, fmt.Errorf("quarantine %s/%s: %w", serverName, mediaID, err)
	}
	n, _ := res.RowsAffected()
	return n > 0, nil
}

// RoomMedia is one item of media an event of a room refers to.
type RoomMedia struct {
	RoomID, ServerName, MediaID string
}

// RecordRoomMedia records that rooms' events refer to media; what is
// recorded already is left as it is.
func (s *Storage) RecordRoomMedia(ctx context.Context, refs []RoomMedia) error {
	err := s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		for _, r := range refs {
			if _, err := tx.Exec(ctx, `INSERT INTO mediaapi_room_media (room_id, server_name, media_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING`,
				r.RoomID, r.ServerName, r.MediaID); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("record media of rooms: %w", err)
	}
	return nil
}

// MediaOfRoom lists the media roomID's events refer to.
func (s *Storage) MediaOfRoom(ctx context.Context, roomID string) ([]RoomMedia, error) {
	rows, err := s.db.Query(ctx, `SELECT server_name, media_id FROM mediaapi_room_media WHERE room_id = $1 ORDER BY server_name, media_id`, roomID)
	if err != nil {
		return nil, fmt.Errorf("list media of %s: %w", roomID, err)
	}
	defer rows.Close()
	var out []RoomMedia
	for rows.Next() {
		r := RoomMedia{RoomID: roomID}
		if err := rows.Scan(&r.ServerName, &r.MediaID); err != nil {
			return nil, fmt.Errorf("list media of %s: %w", roomID, err)
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// QuarantineRoom quarantines, by admin, every item roomID's events refer
// to that is not quarantined yet, and returns how many it quarantined.
// Remote media not cached here gets a row of its own, without content, so
// that it is never fetched; local media that does not exist is skipped.
func (s *Storage) QuarantineRoom(ctx context.Context, roomID, localServer, admin string, now int64) (int, error) {
	n := 0
	err := s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		n = 0
		rows, err := tx.Query(ctx, `SELECT server_name, media_id FROM mediaapi_room_media WHERE room_id = $1`, roomID)
		if err != nil {
			return err
		}
		var refs []RoomMedia
		for rows.Next() {
			var r RoomMedia
			if err := rows.Scan(&r.ServerName, &r.MediaID); err != nil {
				rows.Close()
				return err
			}
			refs = append(refs, r)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for _, r := range refs {
			res, err := tx.Exec(ctx, `UPDATE mediaapi_media SET quarantined_by = $3 WHERE server_name = $1 AND media_id = $2 AND quarantined_by = ''`,
				r.ServerName, r.MediaID, admin)
			if err != nil {
				return err
			}
			if k, _ := res.RowsAffected(); k > 0 {
				n++
				continue
			}
			if r.ServerName == localServer {
				continue
			}
			res, err = tx.Exec(ctx, insertQuarantined,
				r.ServerName, r.MediaID, now, admin)
			if err != nil {
				return err
			}
			if k, _ := res.RowsAffected(); k > 0 {
				n++
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("quarantine media of %s: %w", roomID, err)
	}
	return n, nil
}
