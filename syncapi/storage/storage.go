// Package storage is syncapi's one storage implementation: the sync stream
// of events, each room's current state, every membership change, filters,
// forgotten rooms, receipts and presence. Only syncapi's consumers write
// events, receipts and presence, one at a time each, so stream positions
// become visible in order.
package storage

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"strings"

	"github.com/tidwall/gjson"

	"myelin/internal/sqldb"
)

//go:embed migrations/*.sql
var migrations embed.FS

// ErrNotFound is returned for unknown events and filters.
var ErrNotFound = errors.New("not found")

// Storage is the syncapi database.
type Storage struct {
	db *sqldb.DB
}

// Open runs syncapi's migrations on db.
func Open(ctx context.Context, db *sqldb.DB) (*Storage, error) {
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return nil, err
	}
	if err := sqldb.Migrate(ctx, db, "syncapi", sub); err != nil {
		return nil, err
	}
	st := &Storage{db: db}
	if err := st.indexOldRelations(ctx); err != nil {
		return nil, fmt.Errorf("index the relations of stored events: %w", err)
	}
	return st, nil
}

// Event is one row of the sync stream.
type Event struct {
	Pos             int64
	RoomID          string
	EventID         string
	Type            string
	Sender          string
	StateKey        *string
	Depth           int64
	HistVis         string
	SessionID       int64
	TxnID           string
	PrevEventID     string
	PrevContent     string
	PrevSender      string
	InviteState     string
	RedactedBecause string
	JSON            string
	// RelType and RelatesTo are the event's m.relates_to, indexed when
	// it is appended (not columns of the stream).
	RelType, RelatesTo string
}

// StateEvent is a current-state row.
type StateEvent struct {
	RoomID     string
	Type       string
	StateKey   string
	EventID    string
	Membership string
	Sender     string
	Pos        int64
	JSON       string
}

// MembershipChange is one entry of a user's membership log.
type MembershipChange struct {
	RoomID     string
	UserID     string
	Membership string
	Pos        int64
}

const eventCols = `pos, room_id, event_id, event_type, sender, state_key, depth, history_visibility, session_id, txn_id,
	prev_event_id, prev_content, prev_sender, invite_state, redacted_because, event_json`

func scanEvent(sc interface{ Scan(...any) error }) (*Event, error) {
	e := &Event{}
	var sk sql.NullString
	if err := sc.Scan(&e.Pos, &e.RoomID, &e.EventID, &e.Type, &e.Sender, &sk, &e.Depth, &e.HistVis, &e.SessionID, &e.TxnID,
		&e.PrevEventID, &e.PrevContent, &e.PrevSender, &e.InviteState, &e.RedactedBecause, &e.JSON); err != nil {
		return nil, err
	}
	if sk.Valid {
		e.StateKey = &sk.String
	}
	return e, nil
}

func collectEvents(rows *sql.Rows, err error) ([]*Event, error) {
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*Event
	for rows.Next() {
		e, err := scanEvent(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

// NewState is a state event an output made current.
type NewState struct {
	EventID    string
	Type       string
	StateKey   string
	Sender     string
	Membership string
	JSON       string
}

// Append stores ev at the next stream position and applies the state
// change that came with it. An event already stored is left alone
// (redelivery) and reported with inserted false.
func (s *Storage) Append(ctx context.Context, ev *Event, adds []NewState, removes []string) (inserted bool, err error) {
	ins, err := s.AppendBatch(ctx, []Appended{{Event: ev, Adds: adds, Removes: removes}})
	if err != nil {
		return false, err
	}
	return ins[0], nil
}

// Appended is one event of AppendBatch with its state delta.
type Appended struct {
	Event   *Event
	Adds    []NewState
	Removes []string
}

// AppendBatch is Append for several events, in order, in one write
// transaction: a run of events costs one commit, not one each.
// inserted[i] is false for an event stored before.
func (s *Storage) AppendBatch(ctx context.Context, batch []Appended) (inserted []bool, err error) {
	err = s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		inserted = make([]bool, len(batch))
		var added []*Event
		for i, a := range batch {
			ok, err := appendTx(ctx, tx, a.Event, a.Adds, a.Removes)
			if err != nil {
				return err
			}
			inserted[i] = ok
			if ok {
				added = append(added, a.Event)
			}
		}
		return indexForSearch(ctx, tx, added)
	})
	return inserted, err
}

// appendTx is Append inside tx.
func appendTx(ctx context.Context, tx *sqldb.Tx, ev *Event, adds []NewState, removes []string) (bool, error) {
	if stored, err := storedPos(ctx, tx, ev); err != nil || stored {
		return false, err
	}
	if ev.StateKey != nil {
		var prevJSON string
		err := tx.QueryRow(ctx, `SELECT event_id, sender, event_json FROM syncapi_current_state WHERE room_id = $1 AND event_type = $2 AND state_key = $3`,
			ev.RoomID, ev.Type, *ev.StateKey).Scan(&ev.PrevEventID, &ev.PrevSender, &prevJSON)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return false, err
		}
		if prevJSON != "" {
			ev.PrevContent = contentOf(prevJSON)
		}
	}
	var sk any
	if ev.StateKey != nil {
		sk = *ev.StateKey
	}
	err := tx.QueryRow(ctx, `INSERT INTO syncapi_events (room_id, event_id, event_type, sender, state_key, depth, history_visibility,
			session_id, txn_id, prev_event_id, prev_content, prev_sender, invite_state, event_json)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) RETURNING pos`,
		ev.RoomID, ev.EventID, ev.Type, ev.Sender, sk, ev.Depth, ev.HistVis, ev.SessionID, ev.TxnID,
		ev.PrevEventID, ev.PrevContent, ev.PrevSender, ev.InviteState, ev.JSON).Scan(&ev.Pos)
	if err != nil {
		return false, fmt.Errorf("append event %s: %w", ev.EventID, err)
	}
	if err := insertRelation(ctx, tx, ev); err != nil {
		return false, err
	}
	if err := sqldb.InChunks(2, removes, func(in string, args []any) error {
		_, err := tx.Exec(ctx, `DELETE FROM syncapi_current_state WHERE room_id = $1 AND event_id IN (`+in+`)`, append([]any{ev.RoomID}, args...)...)
		return err
	}); err != nil {
		return false, fmt.Errorf("remove state: %w", err)
	}
	for _, a := range adds {
		if _, err := tx.Exec(ctx, `INSERT INTO syncapi_current_state (room_id, event_type, state_key, event_id, membership, sender, pos, event_json)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
				ON CONFLICT (room_id, event_type, state_key) DO UPDATE SET event_id = excluded.event_id,
					membership = excluded.membership, sender = excluded.sender, pos = excluded.pos, event_json = excluded.event_json`,
			ev.RoomID, a.Type, a.StateKey, a.EventID, a.Membership, a.Sender, ev.Pos, a.JSON); err != nil {
			return false, fmt.Errorf("set state: %w", err)
		}
		if a.Type == "m.room.member" {
			if _, err := tx.Exec(ctx, `INSERT INTO syncapi_membership_log (room_id, user_id, membership, pos) VALUES ($1, $2, $3, $4)`,
				ev.RoomID, a.StateKey, a.Membership, ev.Pos); err != nil {
				return false, fmt.Errorf("log membership: %w", err)
			}
			if a.Membership == "join" || a.Membership == "invite" {
				if _, err := tx.Exec(ctx, `DELETE FROM syncapi_forgotten WHERE user_id = $1 AND room_id = $2`, a.StateKey, ev.RoomID); err != nil {
					return false, err
				}
			}
		}
	}
	return true, nil
}

// storedPos sets ev.Pos to the position of the event already stored
// with its ID, if any (a redelivery), and reports whether there was one.
func storedPos(ctx context.Context, tx *sqldb.Tx, ev *Event) (bool, error) {
	err := tx.QueryRow(ctx, `SELECT pos FROM syncapi_events WHERE event_id = $1`, ev.EventID).Scan(&ev.Pos)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	return err == nil, err
}

// AppendHistorical stores a backfilled event, older than the room's
// timeline here, at the next negative stream position (as Synapse numbers
// backfilled events): below every position a /sync token can hold, so no
// sync reports it as new, while /messages orders it by depth with the
// rest. It changes no current state and no membership. An event already
// stored is left alone and reported with inserted false.
func (s *Storage) AppendHistorical(ctx context.Context, ev *Event) (inserted bool, err error) {
	err = s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		if stored, err := storedPos(ctx, tx, ev); err != nil || stored {
			return err
		}
		// Only syncapi's one consumer of room events appends, so the
		// lowest position cannot move under this transaction.
		var lowest sql.NullInt64
		if err := tx.QueryRow(ctx, `SELECT MIN(pos) FROM syncapi_events`).Scan(&lowest); err != nil {
			return fmt.Errorf("lowest stream position: %w", err)
		}
		ev.Pos = min(lowest.Int64, 0) - 1
		var sk any
		if ev.StateKey != nil {
			sk = *ev.StateKey
		}
		_, err = tx.Exec(ctx, `INSERT INTO syncapi_events (pos, room_id, event_id, event_type, sender, state_key, depth, history_visibility, event_json)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
			ev.Pos, ev.RoomID, ev.EventID, ev.Type, ev.Sender, sk, ev.Depth, ev.HistVis, ev.JSON)
		if err != nil {
			return fmt.Errorf("append historical event %s: %w", ev.EventID, err)
		}
		if err := insertRelation(ctx, tx, ev); err != nil {
			return err
		}
		if err := indexForSearch(ctx, tx, []*Event{ev}); err != nil {
			return err
		}
		inserted = true
		return nil
	})
	return inserted, err
}

// contentOf extracts the content object of event JSON, "" if unreadable.
func contentOf(eventJSON string) string {
	return gjson.Get(eventJSON, "content").Raw
}

// Redact replaces a stored event's JSON with its redacted form, drops its
// relation (redacting a child breaks it; spec: "Aggregations of child
// events") and takes it out of the search index.
func (s *Storage) Redact(ctx context.Context, eventID, redactedJSON, because string) error {
	return s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		if _, err := tx.Exec(ctx, `UPDATE syncapi_events SET event_json = $1, redacted_because = $2 WHERE event_id = $3`, redactedJSON, because, eventID); err != nil {
			return fmt.Errorf("redact %s: %w", eventID, err)
		}
		if _, err := tx.Exec(ctx, `DELETE FROM syncapi_relations WHERE event_id = $1`, eventID); err != nil {
			return fmt.Errorf("drop relation of redacted %s: %w", eventID, err)
		}
		if _, err := tx.Exec(ctx, `DELETE FROM syncapi_search WHERE rowid IN (SELECT pos FROM syncapi_events WHERE event_id = $1)`, eventID); err != nil {
			return fmt.Errorf("unindex %s: %w", eventID, err)
		}
		_, err := tx.Exec(ctx, `UPDATE syncapi_current_state SET event_json = $1 WHERE event_id = $2`, redactedJSON, eventID)
		return err
	})
}

// MaxPos is the latest stream position.
func (s *Storage) MaxPos(ctx context.Context) (int64, error) {
	var p sql.NullInt64
	err := s.db.QueryRow(ctx, `SELECT MAX(pos) FROM syncapi_events`).Scan(&p)
	return p.Int64, err
}

// Event loads one event by ID.
func (s *Storage) Event(ctx context.Context, eventID string) (*Event, error) {
	e, err := scanEvent(s.db.QueryRow(ctx, `SELECT `+eventCols+` FROM syncapi_events WHERE event_id = $1`, eventID))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	return e, err
}

// EventsByID loads the known events among ids.
func (s *Storage) EventsByID(ctx context.Context, ids []string) ([]*Event, error) {
	var out []*Event
	err := sqldb.InChunks(1, ids, func(in string, args []any) error {
		evs, err := collectEvents(s.db.Query(ctx, `SELECT `+eventCols+` FROM syncapi_events WHERE event_id IN (`+in+`)`, args...))
		out = append(out, evs...)
		return err
	})
	return out, err
}

// Timeline returns up to limit of the latest events of a room with
// positions in (from, to], oldest first, and whether older ones in the
// range were left out.
func (s *Storage) Timeline(ctx context.Context, roomID string, from, to int64, limit int) ([]*Event, bool, error) {
	evs, err := collectEvents(s.db.Query(ctx, `SELECT `+eventCols+` FROM syncapi_events
		WHERE room_id = $1 AND pos > $2 AND pos <= $3 ORDER BY pos DESC LIMIT $4`, roomID, from, to, limit+1))
	if err != nil {
		return nil, false, fmt.Errorf("timeline of %s: %w", roomID, err)
	}
	limited := len(evs) > limit
	if limited {
		evs = evs[:limit]
	}
	reverse(evs)
	return evs, limited, nil
}

func reverse(evs []*Event) {
	for i, j := 0, len(evs)-1; i < j; i, j = i+1, j-1 {
		evs[i], evs[j] = evs[j], evs[i]
	}
}

// StateEventsBetween returns the state events of a room with positions in
// (from, to), oldest first.
func (s *Storage) StateEventsBetween(ctx context.Context, roomID string, from, to int64) ([]*Event, error) {
	return collectEvents(s.db.Query(ctx, `SELECT `+eventCols+` FROM syncapi_events
		WHERE room_id = $1 AND pos > $2 AND pos < $3 AND state_key IS NOT NULL ORDER BY pos`, roomID, from, to))
}

// Messages pages through a room in topological order (depth, pos) from the
// point just before event (depth, pos): backwards, the events before it;
// forwards, the events from it on. At most limit events, in the order of
// paging; maxPos bounds the stream position.
func (s *Storage) Messages(ctx context.Context, roomID string, depth, pos int64, backwards bool, maxPos int64, limit int) ([]*Event, error) {
	if backwards {
		return collectEvents(s.db.Query(ctx, `SELECT `+eventCols+` FROM syncapi_events
			WHERE room_id = $1 AND (depth < $2 OR (depth = $2 AND pos < $3)) AND pos <= $4
			ORDER BY depth DESC, pos DESC LIMIT $5`, roomID, depth, pos, maxPos, limit))
	}
	return collectEvents(s.db.Query(ctx, `SELECT `+eventCols+` FROM syncapi_events
		WHERE room_id = $1 AND (depth > $2 OR (depth = $2 AND pos >= $3)) AND pos <= $4
		ORDER BY depth ASC, pos ASC LIMIT $5`, roomID, depth, pos, maxPos, limit))
}

// TopoPosition returns the topological position just after the latest event
// of a room at or before stream position pos.
func (s *Storage) TopoPosition(ctx context.Context, roomID string, pos int64) (depth, p int64, err error) {
	err = s.db.QueryRow(ctx, `SELECT depth, pos FROM syncapi_events WHERE room_id = $1 AND pos <= $2 ORDER BY depth DESC, pos DESC LIMIT 1`, roomID, pos).Scan(&depth, &p)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, 0, nil
	}
	return depth, p, err
}

// RoomsWithEvents returns the rooms among roomIDs with events in (from, to].
func (s *Storage) RoomsWithEvents(ctx context.Context, from, to int64) (map[string]bool, error) {
	rows, err := s.db.Query(ctx, `SELECT DISTINCT room_id FROM syncapi_events WHERE pos > $1 AND pos <= $2`, from, to)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]bool{}
	for rows.Next() {
		var r string
		if err := rows.Scan(&r); err != nil {
			return nil, err
		}
		out[r] = true
	}
	return out, rows.Err()
}

func collectState(rows *sql.Rows, err error) ([]*StateEvent, error) {
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*StateEvent
	for rows.Next() {
		e := &StateEvent{}
		if err := rows.Scan(&e.RoomID, &e.Type, &e.StateKey, &e.EventID, &e.Membership, &e.Sender, &e.Pos, &e.JSON); err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

const stateCols = `room_id, event_type, state_key, event_id, membership, sender, pos, event_json`

// CurrentState returns a room's current state; types restricts it when set.
func (s *Storage) CurrentState(ctx context.Context, roomID string, types ...string) ([]*StateEvent, error) {
	if len(types) == 0 {
		return collectState(s.db.Query(ctx, `SELECT `+stateCols+` FROM syncapi_current_state WHERE room_id = $1 ORDER BY event_type, state_key`, roomID))
	}
	args := []any{roomID}
	for _, t := range types {
		args = append(args, t)
	}
	return collectState(s.db.Query(ctx, `SELECT `+stateCols+` FROM syncapi_current_state WHERE room_id = $1 AND event_type IN (`+sqldb.InList(2, len(types))+`) ORDER BY event_type, state_key`, args...))
}

// StateEvent returns one current state event (ErrNotFound).
func (s *Storage) StateEvent(ctx context.Context, roomID, evType, stateKey string) (*StateEvent, error) {
	out, err := collectState(s.db.Query(ctx, `SELECT `+stateCols+` FROM syncapi_current_state WHERE room_id = $1 AND event_type = $2 AND state_key = $3`, roomID, evType, stateKey))
	if err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, ErrNotFound
	}
	return out[0], nil
}

// UserMembershipsAt is UserMemberships with, for the rooms userID is
// joined to, the stream position of its current join.
func (s *Storage) UserMembershipsAt(ctx context.Context, userID string) (map[string]string, map[string]int64, error) {
	rows, err := s.db.Query(ctx, `SELECT room_id, membership, pos FROM syncapi_current_state WHERE state_key = $1 AND event_type = 'm.room.member'`, userID)
	if err != nil {
		return nil, nil, fmt.Errorf("memberships of %s: %w", userID, err)
	}
	defer rows.Close()
	memberships, joinedAt := map[string]string{}, map[string]int64{}
	for rows.Next() {
		var r, m string
		var p int64
		if err := rows.Scan(&r, &m, &p); err != nil {
			return nil, nil, err
		}
		memberships[r] = m
		if m == "join" {
			joinedAt[r] = p
		}
	}
	return memberships, joinedAt, rows.Err()
}

// UserMemberships returns the current membership of userID in every room
// it has one in.
func (s *Storage) UserMemberships(ctx context.Context, userID string) (map[string]string, error) {
	rows, err := s.db.Query(ctx, `SELECT room_id, membership FROM syncapi_current_state WHERE state_key = $1 AND event_type = 'm.room.member'`, userID)
	if err != nil {
		return nil, fmt.Errorf("memberships of %s: %w", userID, err)
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var r, m string
		if err := rows.Scan(&r, &m); err != nil {
			return nil, err
		}
		out[r] = m
	}
	return out, rows.Err()
}

// JoinedUsers returns every (room, user) pair with membership join whose
// user ID ends with suffix (":server" for local users).
func (s *Storage) JoinedUsers(ctx context.Context, suffix string) (map[string][]string, error) {
	rows, err := s.db.Query(ctx, `SELECT room_id, state_key FROM syncapi_current_state WHERE event_type = 'm.room.member' AND membership = 'join'`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string][]string{}
	for rows.Next() {
		var r, u string
		if err := rows.Scan(&r, &u); err != nil {
			return nil, err
		}
		if strings.HasSuffix(u, suffix) {
			out[r] = append(out[r], u)
		}
	}
	return out, rows.Err()
}

// MembershipChanges returns userID's membership changes with positions in
// (from, to], oldest first.
func (s *Storage) MembershipChanges(ctx context.Context, userID string, from, to int64) ([]MembershipChange, error) {
	rows, err := s.db.Query(ctx, `SELECT room_id, user_id, membership, pos FROM syncapi_membership_log WHERE user_id = $1 AND pos > $2 AND pos <= $3 ORDER BY pos`, userID, from, to)
	return collectMemberships(rows, err)
}

// MembershipLog returns every membership change of userID in roomID, oldest first.
func (s *Storage) MembershipLog(ctx context.Context, roomID, userID string) ([]MembershipChange, error) {
	rows, err := s.db.Query(ctx, `SELECT room_id, user_id, membership, pos FROM syncapi_membership_log WHERE room_id = $1 AND user_id = $2 ORDER BY pos`, roomID, userID)
	return collectMemberships(rows, err)
}

func collectMemberships(rows *sql.Rows, err error) ([]MembershipChange, error) {
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []MembershipChange
	for rows.Next() {
		var m MembershipChange
		if err := rows.Scan(&m.RoomID, &m.UserID, &m.Membership, &m.Pos); err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, rows.Err()
}

// InsertFilter stores a filter and returns its ID.
func (s *Storage) InsertFilter(ctx context.Context, userID, filter string) (int64, error) {
	var id int64
	err := s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		return tx.QueryRow(ctx, `INSERT INTO syncapi_filters (user_id, filter) VALUES ($1, $2) RETURNING filter_id`, userID, filter).Scan(&id)
	})
	return id, err
}

// Filter loads a user's filter (ErrNotFound).
func (s *Storage) Filter(ctx context.Context, userID string, id int64) (string, error) {
	var f string
	err := s.db.QueryRow(ctx, `SELECT filter FROM syncapi_filters WHERE user_id = $1 AND filter_id = $2`, userID, id).Scan(&f)
	if errors.Is(err, sql.ErrNoRows) {
		return "", ErrNotFound
	}
	return f, err
}

// Forget hides a left room from the user's syncs until it rejoins.
func (s *Storage) Forget(ctx context.Context, userID, roomID string) error {
	_, err := s.db.Exec(ctx, `INSERT INTO syncapi_forgotten (user_id, room_id) VALUES ($1, $2) ON CONFLICT DO NOTHING`, userID, roomID)
	return err
}

// Forgotten returns the rooms userID forgot.
func (s *Storage) Forgotten(ctx context.Context, userID string) (map[string]bool, error) {
	rows, err := s.db.Query(ctx, `SELECT room_id FROM syncapi_forgotten WHERE user_id = $1`, userID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]bool{}
	for rows.Next() {
		var r string
		if err := rows.Scan(&r); err != nil {
			return nil, err
		}
		out[r] = true
	}
	return out, rows.Err()
}

// MemberSummary counts a room's joined and invited members and picks up to
// five of them other than userID (ordered by user ID) to name it after.
func (s *Storage) MemberSummary(ctx context.Context, roomID, userID string) (joined, invited int, heroes []string, err error) {
	rows, err := s.db.Query(ctx, `SELECT membership, COUNT(*) FROM syncapi_current_state
		WHERE room_id = $1 AND event_type = 'm.room.member' GROUP BY membership`, roomID)
	if err != nil {
		return 0, 0, nil, fmt.Errorf("count members of %s: %w", roomID, err)
	}
	for rows.Next() {
		var m string
		var n int
		if err := rows.Scan(&m, &n); err != nil {
			rows.Close()
			return 0, 0, nil, err
		}
		switch m {
		case "join":
			joined = n
		case "invite":
			invited = n
		}
	}
	err = rows.Err()
	rows.Close()
	if err != nil {
		return 0, 0, nil, err
	}
	rows, err = s.db.Query(ctx, `SELECT state_key FROM syncapi_current_state
		WHERE room_id = $1 AND event_type = 'm.room.member' AND membership IN ('join', 'invite') AND state_key <> $2
		ORDER BY state_key LIMIT 5`, roomID, userID)
	if err != nil {
		return 0, 0, nil, fmt.Errorf("heroes of %s: %w", roomID, err)
	}
	defer rows.Close()
	for rows.Next() {
		var h string
		if err := rows.Scan(&h); err != nil {
			return 0, 0, nil, err
		}
		heroes = append(heroes, h)
	}
	return joined, invited, heroes, rows.Err()
}

// CurrentStateWithoutMembers is a room's current state less its member
// events, for lazy-loading clients that get only the members they need.
func (s *Storage) CurrentStateWithoutMembers(ctx context.Context, roomID string) ([]*StateEvent, error) {
	return collectState(s.db.Query(ctx, `SELECT `+stateCols+` FROM syncapi_current_state
		WHERE room_id = $1 AND event_type <> 'm.room.member' ORDER BY event_type, state_key`, roomID))
}

// MemberEvents returns the current member events of the given users in a room.
func (s *Storage) MemberEvents(ctx context.Context, roomID string, userIDs []string) ([]*StateEvent, error) {
	var out []*StateEvent
	err := sqldb.InChunks(2, userIDs, func(in string, args []any) error {
		evs, err := collectState(s.db.Query(ctx, `SELECT `+stateCols+` FROM syncapi_current_state
			WHERE room_id = $1 AND event_type = 'm.room.member' AND state_key IN (`+in+`)`, append([]any{roomID}, args...)...))
		out = append(out, evs...)
		return err
	})
	return out, err
}
