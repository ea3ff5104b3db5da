package storage

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"myelin/internal/sqldb"
	uapi "myelin/userapi/api"
)

// Pushers, notifications and the room membership push rules need.

const pusherColumns = `pushkey, kind, app_id, app_display_name, device_display_name, profile_tag, lang, data, pushkey_ts`

// Pushers lists a user's pushers, oldest first. Every notification asks
// for its user's, so they are cached; every write to the pushers table
// goes through withPusherTx or pushersChanged, which empty the cache.
func (s *Storage) Pushers(ctx context.Context, userID string) ([]uapi.Pusher, error) {
	if ps, ok := s.pushers.get(userID); ok {
		return slices.Clone(ps), nil
	}
	gen := s.pushers.generation()
	ps, err := s.selectPushers(ctx, userID)
	if err != nil {
		return nil, err
	}
	s.pushers.put(gen, userID, ps)
	return slices.Clone(ps), nil
}

func (s *Storage) selectPushers(ctx context.Context, userID string) ([]uapi.Pusher, error) {
	rows, err := s.db.Query(ctx, `SELECT `+pusherColumns+` FROM userapi_pushers WHERE user_id = $1 ORDER BY pusher_id`, userID)
	if err != nil {
		return nil, fmt.Errorf("select pushers of %s: %w", userID, err)
	}
	defer rows.Close()
	out := []uapi.Pusher{}
	for rows.Next() {
		var p uapi.Pusher
		var data string
		if err := rows.Scan(&p.PushKey, &p.Kind, &p.AppID, &p.AppDisplayName, &p.DeviceDisplayName, &p.ProfileTag, &p.Lang, &data, &p.PushKeyTS); err != nil {
			return nil, fmt.Errorf("scan pusher of %s: %w", userID, err)
		}
		p.Data = json.RawMessage(data)
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("select pushers of %s: %w", userID, err)
	}
	return out, nil
}

// maxCachedPushers bounds the pushers cache (users, most with none);
// past it the cache starts over.
const maxCachedPushers = 10000

// pusherCache keeps users' pushers. A write empties it and moves its
// generation on after committing; a reader stores what it read only if
// the generation has not moved since before it read, so a read that
// raced a write never leaves the old pushers behind.
type pusherCache struct {
	mu    sync.Mutex
	gen   uint64
	users map[string][]uapi.Pusher
}

func newPusherCache() *pusherCache { return &pusherCache{users: map[string][]uapi.Pusher{}} }

func (c *pusherCache) get(userID string) ([]uapi.Pusher, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ps, ok := c.users[userID]
	return ps, ok
}

func (c *pusherCache) generation() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}

func (c *pusherCache) put(gen uint64, userID string, ps []uapi.Pusher) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen != c.gen {
		return
	}
	if len(c.users) >= maxCachedPushers {
		clear(c.users)
	}
	c.users[userID] = ps
}

// changed forgets every user's pushers: one write may touch several users'
// (a pushkey moving to another user deletes the others').
func (c *pusherCache) changed() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	clear(c.users)
}

// withPusherTx is WithTx for a transaction that may change pushers: the
// cache is emptied after it ends, committed or not.
func (s *Storage) withPusherTx(ctx context.Context, f func(tx *sqldb.Tx) error) error {
	defer s.pushers.changed()
	return s.db.WithTx(ctx, f)
}

// UpsertPusher creates or updates the user's pusher of (p.AppID,
// p.PushKey); unless appendOthers, other users' pushers of that app ID and
// pushkey are deleted.
func (s *Storage) UpsertPusher(ctx context.Context, userID string, sessionID int64, p uapi.Pusher, appendOthers bool) error {
	return s.withPusherTx(ctx, func(tx *sqldb.Tx) error {
		if !appendOthers {
			if _, err := tx.Exec(ctx, `DELETE FROM userapi_pushers WHERE app_id = $1 AND pushkey = $2 AND user_id <> $3`,
				p.AppID, p.PushKey, userID); err != nil {
				return fmt.Errorf("delete other users' pushers of %s: %w", p.AppID, err)
			}
		}
		_, err := tx.Exec(ctx, `INSERT INTO userapi_pushers
			(user_id, session_id, `+pusherColumns+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
			ON CONFLICT (app_id, pushkey, user_id) DO UPDATE SET session_id = excluded.session_id,
				kind = excluded.kind, app_display_name = excluded.app_display_name,
				device_display_name = excluded.device_display_name, profile_tag = excluded.profile_tag,
				lang = excluded.lang, data = excluded.data, pushkey_ts = excluded.pushkey_ts`,
			userID, sessionID, p.PushKey, p.Kind, p.AppID, p.AppDisplayName, p.DeviceDisplayName, p.ProfileTag, p.Lang, string(p.Data), p.PushKeyTS)
		if err != nil {
			return fmt.Errorf("upsert pusher %s of %s: %w", p.AppID, userID, err)
		}
		return nil
	})
}

// DeletePusher deletes the user's pusher of appID and pushkey, if any.
func (s *Storage) DeletePusher(ctx context.Context, userID, appID, pushkey string) error {
	defer s.pushers.changed()
	if _, err := s.db.Exec(ctx, `DELETE FROM userapi_pushers WHERE app_id = $1 AND pushkey = $2 AND user_id = $3`,
		appID, pushkey, userID); err != nil {
		return fmt.Errorf("delete pusher %s of %s: %w", appID, userID, err)
	}
	return nil
}

// deleteOrphanPushers deletes the user's pushers whose device is gone; it
// runs in the transactions that delete devices.
func deleteOrphanPushers(ctx context.Context, tx *sqldb.Tx, userID string) error {
	if _, err := tx.Exec(ctx, `DELETE FROM userapi_pushers WHERE user_id = $1
		AND session_id NOT IN (SELECT session_id FROM userapi_devices WHERE user_id = $1)`, userID); err != nil {
		return fmt.Errorf("delete pushers of deleted devices of %s: %w", userID, err)
	}
	return nil
}

// NewNotification is an event that notified a user.
type NewNotification struct {
	UserID, RoomID, EventID, ThreadID string
	Depth, TS                         int64
	Actions                           json.RawMessage
	Highlight                         bool
}

// InsertNotification records a notification; inserted is false when it
// was there already (a redelivered event).
func (s *Storage) InsertNotification(ctx context.Context, n NewNotification) (inserted bool, err error) {
	ins, err := s.InsertNotifications(ctx, []NewNotification{n})
	if err != nil {
		return false, err
	}
	return ins[0], nil
}

// InsertNotifications records notifications in one transaction, for one
// or more events and the members each notifies. An event's notifications
// are stored once: a later call with an event stored before (a redelivered
// batch) stores none of its rows, and inserted[i] is false for them, as
// for a repeat of (user, event) within ns.
func (s *Storage) InsertNotifications(ctx context.Context, ns []NewNotification) (inserted []bool, err error) {
	err = s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		inserted = make([]bool, len(ns))
		// The events new to the table: a redelivery's are not.
		var events []any
		seen := map[string]bool{}
		for _, n := range ns {
			if !seen[n.EventID] {
				seen[n.EventID] = true
				events = append(events, n.EventID, n.TS)
			}
		}
		fresh := make(map[string]bool, len(seen))
		err := insertChunks(ctx, tx, notifiedEventsSQL, 2, events, func(rows *sql.Rows) error {
			var id string
			if err := rows.Scan(&id); err != nil {
				return err
			}
			fresh[id] = true
			return nil
		})
		if err != nil {
			return fmt.Errorf("mark %d events notified: %w", len(seen), err)
		}
		type key struct{ user, event string }
		stored := make(map[key]bool, len(ns))
		args := make([]any, 0, len(ns)*notificationColumns)
		for i, n := range ns {
			k := key{n.UserID, n.EventID}
			if !fresh[n.EventID] || stored[k] {
				continue
			}
			stored[k], inserted[i] = true, true
			args = append(args, n.UserID, n.RoomID, n.EventID, n.ThreadID, n.Depth, n.TS, string(n.Actions), n.Highlight)
		}
		var ids []int64
		err = insertChunks(ctx, tx, notificationsSQL, notificationColumns, args, func(rows *sql.Rows) error {
			var id int64
			if err := rows.Scan(&id); err != nil {
				return err
			}
			ids = append(ids, id)
			return nil
		})
		if err != nil {
			return fmt.Errorf("insert %d notifications: %w", len(args)/notificationColumns, err)
		}
		// The counters of the new rows, summed per (user, room) and per
		// thread in SQL: two statements however many events and members.
		return sqldb.InChunks(1, ids, func(in string, args []any) error {
			if _, err := tx.Exec(ctx, `INSERT INTO userapi_unread_counts (user_id, room_id, notifications, highlights)
				SELECT user_id, room_id, COUNT(*), SUM(CASE WHEN highlight THEN 1 ELSE 0 END)
				FROM userapi_notifications WHERE notification_id IN (`+in+`) GROUP BY user_id, room_id
				ON CONFLICT (user_id, room_id) DO UPDATE SET
				notifications = userapi_unread_counts.notifications + excluded.notifications,
				highlights = userapi_unread_counts.highlights + excluded.highlights`, args...); err != nil {
				return fmt.Errorf("count %d notifications: %w", len(ids), err)
			}
			if _, err := tx.Exec(ctx, `INSERT INTO userapi_unread_thread_counts (user_id, room_id, thread_id, notifications, highlights)
				SELECT user_id, room_id, thread_id, COUNT(*), SUM(CASE WHEN highlight THEN 1 ELSE 0 END)
				FROM userapi_notifications WHERE notification_id IN (`+in+`) AND thread_id <> '' GROUP BY user_id, room_id, thread_id
				ON CONFLICT (user_id, room_id, thread_id) DO UPDATE SET
				notifications = userapi_unread_thread_counts.notifications + excluded.notifications,
				highlights = userapi_unread_thread_counts.highlights + excluded.highlights`, args...); err != nil {
				return fmt.Errorf("count %d notifications by thread: %w", len(ids), err)
			}
			return nil
		})
	})
	return inserted, err
}

// insertChunks runs a multi-row INSERT ... RETURNING (sqlFor: by dialect,
// then by row count) over args, cols values a row, handing each returned
// row to scan. Rows go in chunks of the largest size and then of the
// powers of two that make up the rest, so that a few prepared statements
// serve any number of rows (none is padded: a padding row would be
// inserted).
func insertChunks(ctx context.Context, tx *sqldb.Tx, sqlFor map[sqldb.Dialect]map[int]string, cols int, args []any, scan func(*sql.Rows) error) error {
	most := maxInsertRows
	if tx.Dialect() == sqldb.SQLite {
		// The SQLite driver looks each parameter's name up in a list of
		// them all: a statement's binding costs the square of its size.
		most = sqliteInsertRows
	}
	for rest := args; len(rest) > 0; {
		n := min(len(rest)/cols, most)
		for n&(n-1) != 0 {
			n &= n - 1 // the largest power of two in it
		}
		chunk := rest[:n*cols]
		rest = rest[len(chunk):]
		rows, err := tx.Query(ctx, sqlFor[tx.Dialect()][n], chunk...)
		if err != nil {
			return err
		}
		for rows.Next() {
			if err := scan(rows); err != nil {
				rows.Close()
				return err
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
	}
	return nil
}

// The most rows of one multi-row INSERT (powers of two), on PostgreSQL and
// on SQLite.
const (
	maxInsertRows    = 128
	sqliteInsertRows = 16
)

const notificationColumns = 8

// notificationsSQL and notifiedEventsSQL are the multi-row INSERTs, by
// dialect and by row count (the powers of two up to maxInsertRows).
var (
	notificationsSQL = insertSQLs(func(sqldb.Dialect) (string, string) {
		return `INSERT INTO userapi_notifications
		(user_id, room_id, event_id, thread_id, depth, ts, actions, highlight) VALUES `, ` RETURNING notification_id`
	}, notificationColumns)
	notifiedEventsSQL = insertSQLs(func(d sqldb.Dialect) (string, string) {
		// SQLite journals the pages a statement changes when the statement
		// may fail halfway, which DO NOTHING leaves possible and OR IGNORE
		// does not.
		if d == sqldb.SQLite {
			return `INSERT OR IGNORE INTO userapi_notified_events (event_id, ts) VALUES `, ` RETURNING event_id`
		}
		return `INSERT INTO userapi_notified_events (event_id, ts) VALUES `, ` ON CONFLICT (event_id) DO NOTHING RETURNING event_id`
	}, 2)
)

func insertSQLs(parts func(sqldb.Dialect) (head, tail string), cols int) map[sqldb.Dialect]map[int]string {
	m := map[sqldb.Dialect]map[int]string{}
	for _, d := range []sqldb.Dialect{sqldb.SQLite, sqldb.Postgres} {
		m[d] = map[int]string{}
		head, tail := parts(d)
		for n := 1; n <= maxInsertRows; n *= 2 {
			var b strings.Builder
			b.WriteString(head)
			for r := 0; r < n; r++ {
				if r > 0 {
					b.WriteString(", ")
				}
				b.WriteByte('(')
				b.WriteString(sqldb.InList(r*cols+1, cols))
				b.WriteByte(')')
			}
			b.WriteString(tail)
			m[d][n] = b.String()
		}
	}
	return m
}

// recount sets the unread counts of userID in roomID from the unread
// notifications themselves, after some of them were read or pruned.
func recount(ctx context.Context, tx *sqldb.Tx, userID, roomID string) error {
	if _, err := tx.Exec(ctx, `UPDATE userapi_unread_counts SET
		notifications = (SELECT COUNT(*) FROM userapi_notifications
			WHERE user_id = $1 AND room_id = $2 AND NOT is_read),
		highlights = (SELECT COUNT(*) FROM userapi_notifications
			WHERE user_id = $1 AND room_id = $2 AND NOT is_read AND highlight)
		WHERE user_id = $1 AND room_id = $2`, userID, roomID); err != nil {
		return fmt.Errorf("recount notifications of %s in %s: %w", userID, roomID, err)
	}
	if _, err := tx.Exec(ctx, `DELETE FROM userapi_unread_counts
		WHERE user_id = $1 AND room_id = $2 AND notifications = 0`, userID, roomID); err != nil {
		return fmt.Errorf("recount notifications of %s in %s: %w", userID, roomID, err)
	}
	if _, err := tx.Exec(ctx, `DELETE FROM userapi_unread_thread_counts WHERE user_id = $1 AND room_id = $2`, userID, roomID); err != nil {
		return fmt.Errorf("recount notifications of %s in %s by thread: %w", userID, roomID, err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO userapi_unread_thread_counts (user_id, room_id, thread_id, notifications, highlights)
		SELECT user_id, room_id, thread_id, COUNT(*), SUM(CASE WHEN highlight THEN 1 ELSE 0 END)
		FROM userapi_notifications WHERE user_id = $1 AND room_id = $2 AND NOT is_read AND thread_id <> ''
		GROUP BY user_id, room_id, thread_id`, userID, roomID); err != nil {
		return fmt.Errorf("recount notifications of %s in %s by thread: %w", userID, roomID, err)
	}
	return nil
}

// Notification is a stored notification.
type Notification struct {
	ID                int64
	RoomID, EventID   string
	TS                int64
	Actions           json.RawMessage
	Highlight, IsRead bool
}

// Notifications returns up to limit of the user's notifications with an
// ID below before (0: from the newest), newest first.
func (s *Storage) Notifications(ctx context.Context, userID string, before int64, limit int, onlyHighlight bool) ([]Notification, error) {
	if before <= 0 {
		before = 1<<63 - 1
	}
	rows, err := s.db.Query(ctx, `SELECT notification_id, room_id, event_id, ts, actions, highlight, is_read
		FROM userapi_notifications WHERE user_id = $1 AND notification_id < $2 AND (highlight OR NOT $3)
		ORDER BY notification_id DESC LIMIT $4`, userID, before, onlyHighlight, limit)
	if err != nil {
		return nil, fmt.Errorf("select notifications of %s: %w", userID, err)
	}
	defer rows.Close()
	var out []Notification
	for rows.Next() {
		var n Notification
		var actions string
		if err := rows.Scan(&n.ID, &n.RoomID, &n.EventID, &n.TS, &actions, &n.Highlight, &n.IsRead); err != nil {
			return nil, fmt.Errorf("scan notification of %s: %w", userID, err)
		}
		n.Actions = json.RawMessage(actions)
		out = append(out, n)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("select notifications of %s: %w", userID, err)
	}
	return out, nil
}

// NotificationCounts counts the user's unread notifications in a room.
func (s *Storage) NotificationCounts(ctx context.Context, userID, roomID string) (uapi.NotificationCounts, error) {
	var c uapi.NotificationCounts
	err := s.db.QueryRow(ctx, `SELECT notifications, highlights FROM userapi_unread_counts
		WHERE user_id = $1 AND room_id = $2`, userID, roomID).
		Scan(&c.Notifications, &c.Highlights)
	if errors.Is(err, sql.ErrNoRows) {
		return c, nil
	}
	if err != nil {
		return c, fmt.Errorf("count notifications of %s in %s: %w", userID, roomID, err)
	}
	return c, nil
}

// ThreadNotificationCounts counts the user's unread notifications in each
// thread of a room that has some, by thread root.
func (s *Storage) ThreadNotificationCounts(ctx context.Context, userID, roomID string) (map[string]uapi.NotificationCounts, error) {
	rows, err := s.db.Query(ctx, `SELECT thread_id, notifications, highlights FROM userapi_unread_thread_counts
		WHERE user_id = $1 AND room_id = $2 AND notifications > 0`, userID, roomID)
	if err != nil {
		return nil, fmt.Errorf("count notifications of %s in the threads of %s: %w", userID, roomID, err)
	}
	defer rows.Close()
	out := map[string]uapi.NotificationCounts{}
	for rows.Next() {
		var thread string
		var c uapi.NotificationCounts
		if err := rows.Scan(&thread, &c.Notifications, &c.Highlights); err != nil {
			return nil, fmt.Errorf("count notifications of %s in the threads of %s: %w", userID, roomID, err)
		}
		out[thread] = c
	}
	return out, rows.Err()
}

// UnreadRooms counts the rooms where the user has unread notifications:
// the badge a push gateway shows.
func (s *Storage) UnreadRooms(ctx context.Context, userID string) (int64, error) {
	var n int64
	err := s.db.QueryRow(ctx, `SELECT COUNT(*) FROM userapi_unread_counts
		WHERE user_id = $1 AND notifications > 0`, userID).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("count rooms with notifications of %s: %w", userID, err)
	}
	return n, nil
}

// Thread selectors of MarkRead.
const (
	AllThreads = "*" // an unthreaded receipt (thread IDs are event IDs, "$...")
	MainThread = ""  // the main timeline
)

// MarkRead marks the user's unread notifications in a room up to depth
// read, in thread (a thread root, MainThread or AllThreads), and returns
// how many it marked.
func (s *Storage) MarkRead(ctx context.Context, userID, roomID, thread string, depth int64) (n int64, err error) {
	err = s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		res, err := tx.Exec(ctx, `UPDATE userapi_notifications SET is_read = TRUE
			WHERE user_id = $1 AND room_id = $2 AND NOT is_read AND depth <= $3 AND ($4 OR thread_id = $5)`,
			userID, roomID, depth, thread == AllThreads, thread)
		if err != nil {
			return err
		}
		if n, err = res.RowsAffected(); err != nil || n == 0 {
			return err
		}
		return recount(ctx, tx, userID, roomID)
	})
	if err != nil {
		return 0, fmt.Errorf("mark notifications of %s in %s read: %w", userID, roomID, err)
	}
	return n, nil
}

// PruneNotifications deletes read notifications older than readBefore and
// unread ones older than unreadBefore.
func (s *Storage) PruneNotifications(ctx context.Context, readBefore, unreadBefore int64) error {
	err := s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		type pair struct{ user, room string }
		var pairs []pair
		rows, err := tx.Query(ctx, `SELECT DISTINCT user_id, room_id FROM userapi_notifications
			WHERE ts < $1 AND NOT is_read`, unreadBefore)
		if err != nil {
			return err
		}
		for rows.Next() {
			var p pair
			if err := rows.Scan(&p.user, &p.room); err != nil {
				rows.Close()
				return err
			}
			pairs = append(pairs, p)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM userapi_notifications WHERE ts < $1 AND (is_read OR ts < $2)`,
			readBefore, unreadBefore); err != nil {
			return err
		}
		// An event is redelivered within minutes, never after the longest
		// a notification is kept.
		if _, err := tx.Exec(ctx, `DELETE FROM userapi_notified_events WHERE ts < $1`, min(readBefore, unreadBefore)); err != nil {
			return err
		}
		for _, p := range pairs {
			if err := recount(ctx, tx, p.user, p.room); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("prune notifications: %w", err)
	}
	return nil
}

// Member is a user's membership of a room, as the userapi tracks it.
type Member struct {
	UserID, Membership, DisplayName, EventID string
	IsLocal                                  bool
}

// ApplyMembers applies a state delta to the membership of a room: the
// member events in removed leave current state, those in added enter it.
func (s *Storage) ApplyMembers(ctx context.Context, roomID string, removed []string, added []Member) error {
	if len(removed) == 0 && len(added) == 0 {
		return nil
	}
	return s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		for _, id := range removed {
			if _, err := tx.Exec(ctx, `DELETE FROM userapi_room_members WHERE room_id = $1 AND event_id = $2`, roomID, id); err != nil {
				return fmt.Errorf("remove member event %s of %s: %w", id, roomID, err)
			}
		}
		for _, m := range added {
			_, err := tx.Exec(ctx, `INSERT INTO userapi_room_members
				(room_id, user_id, membership, display_name, event_id, is_local) VALUES ($1, $2, $3, $4, $5, $6)
				ON CONFLICT (room_id, user_id) DO UPDATE SET membership = excluded.membership,
					display_name = excluded.display_name, event_id = excluded.event_id`,
				roomID, m.UserID, m.Membership, m.DisplayName, m.EventID, m.IsLocal)
			if err != nil {
				return fmt.Errorf("set member %s of %s: %w", m.UserID, roomID, err)
			}
		}
		return nil
	})
}

// LocalJoined lists the local users joined to a room.
func (s *Storage) LocalJoined(ctx context.Context, roomID string) ([]Member, error) {
	rows, err := s.db.Query(ctx, `SELECT user_id, display_name, event_id FROM userapi_room_members
		WHERE room_id = $1 AND is_local AND membership = 'join' ORDER BY user_id`, roomID)
	if err != nil {
		return nil, fmt.Errorf("select local members of %s: %w", roomID, err)
	}
	defer rows.Close()
	var out []Member
	for rows.Next() {
		m := Member{Membership: "join", IsLocal: true}
		if err := rows.Scan(&m.UserID, &m.DisplayName, &m.EventID); err != nil {
			return nil, fmt.Errorf("scan member of %s: %w", roomID, err)
		}
		out = append(out, m)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("select local members of %s: %w", roomID, err)
	}
	return out, nil
}

// JoinedCount counts the joined members of a room, local or not.
func (s *Storage) JoinedCount(ctx context.Context, roomID string) (int, error) {
	var n int
	if err := s.db.QueryRow(ctx, `SELECT COUNT(*) FROM userapi_room_members WHERE room_id = $1 AND membership = 'join'`, roomID).Scan(&n); err != nil {
		return 0, fmt.Errorf("count members of %s: %w", roomID, err)
	}
	return n, nil
}

// MemberDisplayName returns a member's display name in a room ("" if
// unknown).
func (s *Storage) MemberDisplayName(ctx context.Context, roomID, userID string) (string, error) {
	var name string
	err := s.db.QueryRow(ctx, `SELECT display_name FROM userapi_room_members WHERE room_id = $1 AND user_id = $2`, roomID, userID).Scan(&name)
	if err != nil && !isNoRows(err) {
		return "", fmt.Errorf("select display name of %s in %s: %w", userID, roomID, err)
	}
	return name, nil
}

func isNoRows(err error) bool { return errors.Is(err, sql.ErrNoRows) }
