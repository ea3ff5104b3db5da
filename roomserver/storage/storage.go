// Package storage is the roomserver's one storage implementation: events
// numbered by NID, state tuples, state snapshots made of shared blocks,
// rooms with their current state and forward extremities, memberships,
// transactions and aliases. Immutable rows (events, blocks, snapshots,
// tuples) are cached in memory; caches are filled only after a commit.
package storage

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"strconv"
	"strings"
	"time"

	gmsl "github.com/matrix-org/gomatrixserverlib"

	"myelin/internal/cache"
	"myelin/internal/sqldb"
)

//go:embed migrations/*.sql
var migrations embed.FS

// ErrNotFound is returned for unknown rooms, events and aliases.
var ErrNotFound = errors.New("not found")

// Storage is the roomserver database.
type Storage struct {
	db *sqldb.DB

	blocks    *cache.LRU[int64, []Entry]
	snapshots *cache.LRU[int64, *Snapshot]
	events    *cache.LRU[int64, *Event]
	eventNIDs *cache.LRU[string, int64]
	tuples    *cache.LRU[gmsl.StateKeyTuple, int64]
	tupleByID *cache.LRU[int64, gmsl.StateKeyTuple]
}

// DefaultCacheBytes is what the caches of events and room state hold at
// most in all unless told otherwise.
const DefaultCacheBytes = 8 << 20

// Open runs the roomserver migrations on db. Its caches of events and room
// state hold about cacheBytes in all (0: DefaultCacheBytes).
func Open(ctx context.Context, db *sqldb.DB, cacheBytes int64) (*Storage, error) {
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return nil, err
	}
	if err := sqldb.Migrate(ctx, db, "roomserver", sub); err != nil {
		return nil, err
	}
	if cacheBytes <= 0 {
		cacheBytes = DefaultCacheBytes
	}
	// Sized by bytes, not by count: a room's joins each write a new state
	// block and supersede one, and a count-sized cache kept thousands of
	// superseded blocks of a big room, which LRU order now lets go first.
	// Events get half; blocks, the current state of every room, most of
	// the rest.
	return &Storage{
		db:        db,
		blocks:    cache.NewSized[int64, []Entry](int(cacheBytes*3/8), blockCost),
		snapshots: cache.NewSized[int64, *Snapshot](int(cacheBytes/8), snapshotCost),
		events:    cache.NewSized[int64, *Event](int(cacheBytes/2), eventCost),
		eventNIDs: cache.New[string, int64](50000),
		tuples:    cache.New[gmsl.StateKeyTuple, int64](100000),
		tupleByID: cache.New[int64, gmsl.StateKeyTuple](100000),
	}, nil
}

// What a cached value costs, roughly in bytes: its arrays, plus the cache
// entry and headers around them. A parsed event keeps its JSON and, about
// as large again, the fields parsed from it.
func blockCost(es []Entry) int      { return 16*cap(es) + 96 }
func snapshotCost(sn *Snapshot) int { return 8*cap(sn.Blocks) + 128 }
func eventCost(ev *Event) int {
	if ev.PDU == nil {
		return 256
	}
	return 2*len(ev.PDU.JSON()) + 512
}

// Room is a room's row: its current state snapshot and forward extremities.
type Room struct {
	NID      int64
	ID       string
	Version  gmsl.RoomVersion
	Snapshot int64
	Latest   []int64
	MaxDepth int64
}

// Clone returns a copy safe to modify.
func (r *Room) Clone() *Room {
	c := *r
	c.Latest = append([]int64(nil), r.Latest...)
	return &c
}

// Event is a stored event. PDU has any redaction applied; it is shared
// between readers and must not be mutated.
type Event struct {
	NID         int64
	RoomNID     int64
	ID          string
	Tuple       int64 // 0 for non-state events
	StateBefore int64 // snapshot NID, 0 if unknown (outlier)
	Rejected    bool
	Outlier     bool
	RedactedBy  string
	PDU         gmsl.PDU
}

func joinNIDs(ns []int64) string {
	s := make([]string, len(ns))
	for i, n := range ns {
		s[i] = strconv.FormatInt(n, 10)
	}
	return strings.Join(s, ",")
}

func splitNIDs(s string) ([]int64, error) {
	if s == "" {
		return nil, nil
	}
	parts := strings.Split(s, ",")
	out := make([]int64, len(parts))
	for i, p := range parts {
		n, err := strconv.ParseInt(p, 10, 64)
		if err != nil {
			return nil, errCorrupt
		}
		out[i] = n
	}
	return out, nil
}

// querier is what reads need: the database, or a transaction.
type querier interface {
	QueryRow(ctx context.Context, q string, args ...any) *sqldb.Row
	Query(ctx context.Context, q string, args ...any) (*sql.Rows, error)
}

// Room loads a room by ID (ErrNotFound if unknown).
func (s *Storage) Room(ctx context.Context, roomID string) (*Room, error) {
	return s.room(ctx, s.db, roomID)
}

func (s *Storage) room(ctx context.Context, q querier, roomID string) (*Room, error) {
	r := &Room{ID: roomID}
	var latest, ver string
	err := q.QueryRow(ctx, `SELECT room_nid, room_version, state_snapshot_nid, latest_event_nids, max_depth
		FROM roomserver_rooms WHERE room_id = $1`, roomID).Scan(&r.NID, &ver, &r.Snapshot, &latest, &r.MaxDepth)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("load room %s: %w", roomID, err)
	}
	r.Version = gmsl.RoomVersion(ver)
	if r.Latest, err = splitNIDs(latest); err != nil {
		return nil, fmt.Errorf("room %s extremities: %w", roomID, err)
	}
	return r, nil
}

// RoomIDByNID returns the ID of a room.
func (s *Storage) RoomIDByNID(ctx context.Context, nid int64) (string, error) {
	var id string
	err := s.db.QueryRow(ctx, `SELECT room_id FROM roomserver_rooms WHERE room_nid = $1`, nid).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return "", ErrNotFound
	}
	return id, err
}

// Snapshot loads a snapshot; NID 0 is the empty state.
func (s *Storage) Snapshot(ctx context.Context, nid int64) (*Snapshot, error) {
	return s.snapshot(ctx, s.db, nid)
}

func (s *Storage) snapshot(ctx context.Context, q querier, nid int64) (*Snapshot, error) {
	if nid == 0 {
		return &Snapshot{Blocks: []int64{0}}, nil
	}
	if sn, ok := s.snapshots.Get(nid); ok {
		return sn, nil
	}
	var raw []byte
	sn := &Snapshot{NID: nid}
	err := q.QueryRow(ctx, `SELECT block_nids, entry_count FROM roomserver_state_snapshots WHERE snapshot_nid = $1`, nid).Scan(&raw, &sn.Count)
	if err != nil {
		return nil, fmt.Errorf("load snapshot %d: %w", nid, err)
	}
	if sn.Blocks, err = decodeNIDs(raw); err != nil {
		return nil, fmt.Errorf("snapshot %d: %w", nid, err)
	}
	s.snapshots.Put(nid, sn)
	return sn, nil
}

func (s *Storage) block(ctx context.Context, q querier, nid int64) ([]Entry, error) {
	if nid == 0 {
		return nil, nil
	}
	if es, ok := s.blocks.Get(nid); ok {
		return es, nil
	}
	var raw []byte
	if err := q.QueryRow(ctx, `SELECT entries FROM roomserver_state_blocks WHERE block_nid = $1`, nid).Scan(&raw); err != nil {
		return nil, fmt.Errorf("load state block %d: %w", nid, err)
	}
	es, err := decodeEntries(raw)
	if err != nil {
		return nil, fmt.Errorf("state block %d: %w", nid, err)
	}
	s.blocks.Put(nid, es)
	return es, nil
}

// StateEntries returns every entry of a snapshot.
func (s *Storage) StateEntries(ctx context.Context, snapshotNID int64) ([]Entry, error) {
	sn, err := s.Snapshot(ctx, snapshotNID)
	if err != nil {
		return nil, err
	}
	return s.snapshotEntries(ctx, s.db, sn)
}

func (s *Storage) snapshotEntries(ctx context.Context, q querier, sn *Snapshot) ([]Entry, error) {
	out := make([]Entry, 0, sn.Count)
	for _, b := range sn.Blocks {
		es, err := s.block(ctx, q, b)
		if err != nil {
			return nil, err
		}
		out = append(out, es...)
	}
	return out, nil
}

// StateLookup returns the event NIDs of the given tuples in a snapshot;
// tuples not in the state are left out.
func (s *Storage) StateLookup(ctx context.Context, snapshotNID int64, tuples []int64) (map[int64]int64, error) {
	sn, err := s.Snapshot(ctx, snapshotNID)
	if err != nil {
		return nil, err
	}
	return s.lookup(ctx, s.db, sn, tuples)
}

func (s *Storage) lookup(ctx context.Context, q querier, sn *Snapshot, tuples []int64) (map[int64]int64, error) {
	out := make(map[int64]int64, len(tuples))
	for _, t := range tuples {
		if t == 0 {
			continue
		}
		es, err := s.block(ctx, q, sn.Blocks[bucketOf(t, len(sn.Blocks))])
		if err != nil {
			return nil, err
		}
		if ev, ok := findEntry(es, t); ok {
			out[t] = ev
		}
	}
	return out, nil
}

// TupleNIDs returns the NIDs of known tuples; unknown tuples are left out
// (no state can hold them).
func (s *Storage) TupleNIDs(ctx context.Context, tuples []gmsl.StateKeyTuple) (map[gmsl.StateKeyTuple]int64, error) {
	return s.tupleNIDs(ctx, s.db, tuples)
}

func (s *Storage) tupleNIDs(ctx context.Context, q querier, tuples []gmsl.StateKeyTuple) (map[gmsl.StateKeyTuple]int64, error) {
	out := make(map[gmsl.StateKeyTuple]int64, len(tuples))
	for _, t := range tuples {
		if nid, ok := s.tuples.Get(t); ok {
			out[t] = nid
			continue
		}
		var nid int64
		err := q.QueryRow(ctx, `SELECT tuple_nid FROM roomserver_state_keys WHERE event_type = $1 AND state_key = $2`, t.EventType, t.StateKey).Scan(&nid)
		if errors.Is(err, sql.ErrNoRows) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("look up state key %v: %w", t, err)
		}
		s.tuples.Put(t, nid)
		s.tupleByID.Put(nid, t)
		out[t] = nid
	}
	return out, nil
}

// TupleNIDsOfType lists the tuple NIDs of every state key known for
// eventType, in any room.
func (s *Storage) TupleNIDsOfType(ctx context.Context, eventType string) ([]int64, error) {
	rows, err := s.db.Query(ctx, `SELECT tuple_nid FROM roomserver_state_keys WHERE event_type = $1`, eventType)
	if err != nil {
		return nil, fmt.Errorf("state keys of %s: %w", eventType, err)
	}
	return sqldb.Column[int64](rows)
}

// Tuples returns the (type, state key) of tuple NIDs.
func (s *Storage) Tuples(ctx context.Context, nids []int64) (map[int64]gmsl.StateKeyTuple, error) {
	out := make(map[int64]gmsl.StateKeyTuple, len(nids))
	for _, nid := range nids {
		if t, ok := s.tupleByID.Get(nid); ok {
			out[nid] = t
			continue
		}
		var t gmsl.StateKeyTuple
		if err := s.db.QueryRow(ctx, `SELECT event_type, state_key FROM roomserver_state_keys WHERE tuple_nid = $1`, nid).Scan(&t.EventType, &t.StateKey); err != nil {
			return nil, fmt.Errorf("load state key %d: %w", nid, err)
		}
		s.tupleByID.Put(nid, t)
		s.tuples.Put(t, nid)
		out[nid] = t
	}
	return out, nil
}

const eventColumns = `event_nid, room_nid, event_id, tuple_nid, state_before_nid, rejected, outlier, redacted_by, event_json`

// rawEvent is an events row before its JSON is parsed.
type rawEvent struct {
	ev   *Event
	json string
}

func scanEvent(sc interface{ Scan(...any) error }) (rawEvent, error) {
	ev := &Event{}
	var rejected, outlier int
	var js string
	if err := sc.Scan(&ev.NID, &ev.RoomNID, &ev.ID, &ev.Tuple, &ev.StateBefore, &rejected, &outlier, &ev.RedactedBy, &js); err != nil {
		return rawEvent{}, err
	}
	ev.Rejected, ev.Outlier = rejected != 0, outlier != 0
	return rawEvent{ev, js}, nil
}

func (ev *Event) parse(v gmsl.RoomVersion, js []byte) error {
	verImpl, err := gmsl.GetRoomVersion(v)
	if err != nil {
		return err
	}
	if ev.RedactedBy != "" {
		if js, err = verImpl.RedactEventJSON(js); err != nil {
			return fmt.Errorf("redact %s: %w", ev.ID, err)
		}
	}
	ev.PDU, err = verImpl.NewEventFromTrustedJSONWithEventID(ev.ID, js, ev.RedactedBy != "")
	if err != nil {
		return fmt.Errorf("parse stored event %s: %w", ev.ID, err)
	}
	return nil
}

// roomVersionByNID resolves room NIDs to versions for parsing events.
func (s *Storage) roomVersionByNID(ctx context.Context, q querier) func(int64) (gmsl.RoomVersion, error) {
	memo := map[int64]gmsl.RoomVersion{}
	return func(nid int64) (gmsl.RoomVersion, error) {
		if v, ok := memo[nid]; ok {
			return v, nil
		}
		var v string
		if err := q.QueryRow(ctx, `SELECT room_version FROM roomserver_rooms WHERE room_nid = $1`, nid).Scan(&v); err != nil {
			return "", fmt.Errorf("room version of %d: %w", nid, err)
		}
		memo[nid] = gmsl.RoomVersion(v)
		return memo[nid], nil
	}
}

// EventsByNID loads events by NID, in the order asked; unknown NIDs are an error.
func (s *Storage) EventsByNID(ctx context.Context, nids []int64) ([]*Event, error) {
	return s.eventsByNID(ctx, s.db, nids)
}

func (s *Storage) eventsByNID(ctx context.Context, q querier, nids []int64) ([]*Event, error) {
	out := make([]*Event, len(nids))
	var missing []int64
	for i, nid := range nids {
		if ev, ok := s.events.Get(nid); ok {
			out[i] = ev
		} else {
			missing = append(missing, nid)
		}
	}
	if len(missing) == 0 {
		return out, nil
	}
	// Rows are read to the end before parsing: parsing needs the room
	// version, another query, and PostgreSQL cannot interleave queries on
	// one transaction's connection.
	var raws []rawEvent
	err := sqldb.InChunks(1, missing, func(in string, args []any) error {
		rows, err := q.Query(ctx, `SELECT `+eventColumns+` FROM roomserver_events WHERE event_nid IN (`+in+`)`, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			r, err := scanEvent(rows)
			if err != nil {
				return err
			}
			raws = append(raws, r)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("load events: %w", err)
	}
	ver := s.roomVersionByNID(ctx, q)
	loaded := make(map[int64]*Event, len(raws))
	for _, r := range raws {
		v, err := ver(r.ev.RoomNID)
		if err != nil {
			return nil, err
		}
		if err := r.ev.parse(v, []byte(r.json)); err != nil {
			return nil, err
		}
		loaded[r.ev.NID] = r.ev
	}
	for i, nid := range nids {
		if out[i] != nil {
			continue
		}
		ev, ok := loaded[nid]
		if !ok {
			return nil, fmt.Errorf("event NID %d: %w", nid, ErrNotFound)
		}
		if q == querier(s.db) {
			s.events.Put(nid, ev)
			s.eventNIDs.Put(ev.ID, nid)
		}
		out[i] = ev
	}
	return out, nil
}

// EventNIDs maps event IDs to NIDs; unknown IDs are left out.
func (s *Storage) EventNIDs(ctx context.Context, ids []string) (map[string]int64, error) {
	return s.eventNIDsOf(ctx, s.db, ids)
}

func (s *Storage) eventNIDsOf(ctx context.Context, q querier, ids []string) (map[string]int64, error) {
	out := make(map[string]int64, len(ids))
	var missing []string
	for _, id := range ids {
		if nid, ok := s.eventNIDs.Get(id); ok {
			out[id] = nid
		} else {
			missing = append(missing, id)
		}
	}
	err := sqldb.InChunks(1, missing, func(in string, args []any) error {
		rows, err := q.Query(ctx, `SELECT event_id, event_nid FROM roomserver_events WHERE event_id IN (`+in+`)`, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var id string
			var nid int64
			if err := rows.Scan(&id, &nid); err != nil {
				return err
			}
			out[id] = nid
			if q == querier(s.db) {
				s.eventNIDs.Put(id, nid)
			}
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("look up event IDs: %w", err)
	}
	return out, nil
}

// EventsByID loads the known events among ids, in no particular order.
func (s *Storage) EventsByID(ctx context.Context, ids []string) ([]*Event, error) {
	nids, err := s.EventNIDs(ctx, ids)
	if err != nil {
		return nil, err
	}
	list := make([]int64, 0, len(nids))
	for _, id := range ids {
		if n, ok := nids[id]; ok {
			list = append(list, n)
		}
	}
	return s.EventsByNID(ctx, list)
}

// Membership returns the current membership of userID in a room.
func (s *Storage) Membership(ctx context.Context, roomNID int64, userID string) (membership string, eventNID int64, err error) {
	err = s.db.QueryRow(ctx, `SELECT membership, event_nid FROM roomserver_memberships WHERE room_nid = $1 AND user_id = $2`, roomNID, userID).Scan(&membership, &eventNID)
	if errors.Is(err, sql.ErrNoRows) {
		return "leave", 0, nil
	}
	return membership, eventNID, err
}

// UserRooms lists the room IDs where userID has one of the memberships.
func (s *Storage) UserRooms(ctx context.Context, userID string, memberships []string) ([]string, error) {
	args := []any{userID}
	q := `SELECT r.room_id FROM roomserver_memberships m JOIN roomserver_rooms r ON r.room_nid = m.room_nid WHERE m.user_id = $1`
	if len(memberships) > 0 {
		for _, m := range memberships {
			args = append(args, m)
		}
		q += ` AND m.membership IN (` + sqldb.InList(2, len(memberships)) + `)`
	}
	rows, err := s.db.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("rooms of %s: %w", userID, err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		out = append(out, id)
	}
	return out, rows.Err()
}

// TxnEvent returns the event ID a transaction made, "" if none.
func (s *Storage) TxnEvent(ctx context.Context, sessionID int64, txnID string) (string, error) {
	var id string
	err := s.db.QueryRow(ctx, `SELECT event_id FROM roomserver_txns WHERE session_id = $1 AND txn_id = $2`, sessionID, txnID).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	return id, err
}

// InputResponse returns the stored response to an input request, "" if the
// request was not processed.
func (s *Storage) InputResponse(ctx context.Context, requestID string) (string, error) {
	var resp string
	err := s.db.QueryRow(ctx, `SELECT response FROM roomserver_input_log WHERE request_id = $1`, requestID).Scan(&resp)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	return resp, err
}

// PruneInputLog forgets processed input requests older than age; their
// messages can no longer be redelivered by then.
func (s *Storage) PruneInputLog(ctx context.Context, age time.Duration) error {
	_, err := s.db.Exec(ctx, `DELETE FROM roomserver_input_log WHERE created_ts < $1`, time.Now().Add(-age).UnixMilli())
	return err
}

// Alias operations.

// SetAlias maps alias to roomID; sqldb unique violation means it exists.
func (s *Storage) SetAlias(ctx context.Context, alias, roomID, creator string) error {
	_, err := s.db.Exec(ctx, `INSERT INTO roomserver_aliases (alias, room_id, creator) VALUES ($1, $2, $3)`, alias, roomID, creator)
	return err
}

// Alias returns the room and creator of alias.
func (s *Storage) Alias(ctx context.Context, alias string) (roomID, creator string, err error) {
	err = s.db.QueryRow(ctx, `SELECT room_id, creator FROM roomserver_aliases WHERE alias = $1`, alias).Scan(&roomID, &creator)
	if errors.Is(err, sql.ErrNoRows) {
		return "", "", ErrNotFound
	}
	return roomID, creator, err
}

// RemoveAlias deletes alias.
func (s *Storage) RemoveAlias(ctx context.Context, alias string) error {
	res, err := s.db.Exec(ctx, `DELETE FROM roomserver_aliases WHERE alias = $1`, alias)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return ErrNotFound
	}
	return nil
}

// RoomAliases lists the aliases of roomID.
func (s *Storage) RoomAliases(ctx context.Context, roomID string) ([]string, error) {
	rows, err := s.db.Query(ctx, `SELECT alias FROM roomserver_aliases WHERE room_id = $1 ORDER BY alias`, roomID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var a string
		if err := rows.Scan(&a); err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, rows.Err()
}

// SetPublished adds roomID to the public room directory or removes it.
func (s *Storage) SetPublished(ctx context.Context, roomID string, published bool) error {
	if published {
		_, err := s.db.Exec(ctx, `INSERT INTO roomserver_published (room_id) VALUES ($1) ON CONFLICT DO NOTHING`, roomID)
		return err
	}
	_, err := s.db.Exec(ctx, `DELETE FROM roomserver_published WHERE room_id = $1`, roomID)
	return err
}

// IsPublished reports whether roomID is in the public room directory.
func (s *Storage) IsPublished(ctx context.Context, roomID string) (bool, error) {
	var n int
	err := s.db.QueryRow(ctx, `SELECT COUNT(*) FROM roomserver_published WHERE room_id = $1`, roomID).Scan(&n)
	return n > 0, err
}

// PublishedRooms lists the published rooms with their joined member counts.
func (s *Storage) PublishedRooms(ctx context.Context) (map[string]int, error) {
	rows, err := s.db.Query(ctx, `SELECT p.room_id, (SELECT COUNT(*) FROM roomserver_memberships m
		JOIN roomserver_rooms r ON r.room_nid = m.room_nid WHERE r.room_id = p.room_id AND m.membership = 'join')
		FROM roomserver_published p`)
	if err != nil {
		return nil, fmt.Errorf("published rooms: %w", err)
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var id string
		var n int
		if err := rows.Scan(&id, &n); err != nil {
			return nil, err
		}
		out[id] = n
	}
	return out, rows.Err()
}

// EventNearTime returns the event of roomNID whose origin_server_ts is the
// nearest to ts at or after it (or at or before it, backward), among the
// events in the room's timeline (not rejected, not outliers); ErrNotFound
// when there is none. Equal timestamps go by storage order.
func (s *Storage) EventNearTime(ctx context.Context, roomNID, ts int64, backward bool) (eventID string, originTS int64, err error) {
	q := `SELECT event_id, origin_server_ts FROM roomserver_events
		WHERE room_nid = $1 AND origin_server_ts >= $2 AND rejected = 0 AND outlier = 0
		ORDER BY origin_server_ts, event_nid LIMIT 1`
	if backward {
		q = `SELECT event_id, origin_server_ts FROM roomserver_events
		WHERE room_nid = $1 AND origin_server_ts <= $2 AND rejected = 0 AND outlier = 0
		ORDER BY origin_server_ts DESC, event_nid DESC LIMIT 1`
	}
	err = s.db.QueryRow(ctx, q, roomNID, ts).Scan(&eventID, &originTS)
	if errors.Is(err, sql.ErrNoRows) {
		return "", 0, ErrNotFound
	}
	if err != nil {
		return "", 0, fmt.Errorf("event of room %d near %d: %w", roomNID, ts, err)
	}
	return eventID, originTS, nil
}

// JoinedCount is the number of users joined to a room.
func (s *Storage) JoinedCount(ctx context.Context, roomNID int64) (int, error) {
	var n int
	err := s.db.QueryRow(ctx, `SELECT COUNT(*) FROM roomserver_memberships WHERE room_nid = $1 AND membership = 'join'`, roomNID).Scan(&n)
	return n, err
}

// SharedRoomNIDs returns the rooms userID is joined to.
func (s *Storage) SharedRoomNIDs(ctx context.Context, userID string) ([]int64, error) {
	rows, err := s.db.Query(ctx, `SELECT room_nid FROM roomserver_memberships WHERE user_id = $1 AND membership = 'join'`, userID)
	if err != nil {
		return nil, err
	}
	return sqldb.Column[int64](rows)
}

// AllRooms lists every room's NID and current state snapshot.
func (s *Storage) AllRooms(ctx context.Context) (map[int64]int64, error) {
	rows, err := s.db.Query(ctx, `SELECT room_nid, state_snapshot_nid FROM roomserver_rooms`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[int64]int64{}
	for rows.Next() {
		var n, snap int64
		if err := rows.Scan(&n, &snap); err != nil {
			return nil, err
		}
		out[n] = snap
	}
	return out, rows.Err()
}

// JoinedMemberEvents returns the event NIDs of the current join events of
// the rooms given.
func (s *Storage) JoinedMemberEvents(ctx context.Context, roomNIDs []int64) ([]int64, error) {
	var out []int64
	err := sqldb.InChunks(1, roomNIDs, func(in string, args []any) error {
		rows, err := s.db.Query(ctx, `SELECT event_nid FROM roomserver_memberships WHERE membership = 'join' AND room_nid IN (`+in+`)`, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var n int64
			if err := rows.Scan(&n); err != nil {
				return err
			}
			out = append(out, n)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("joined member events: %w", err)
	}
	return out, nil
}

// ServerJoined reports whether a user of server is joined to the room.
func (s *Storage) ServerJoined(ctx context.Context, roomNID int64, server string) (bool, error) {
	// LIKE narrows the scan to the server's users; the exact test is in
	// Go, as SQLite's LIKE ignores ASCII case.
	esc := strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`).Replace(server)
	rows, err := s.db.Query(ctx, `SELECT user_id FROM roomserver_memberships WHERE room_nid = $1 AND membership = 'join' AND user_id LIKE $2 ESCAPE '\'`, roomNID, "%:"+esc)
	if err != nil {
		return false, fmt.Errorf("joined users of %s: %w", server, err)
	}
	defer rows.Close()
	for rows.Next() {
		var userID string
		if err := rows.Scan(&userID); err != nil {
			return false, err
		}
		if _, domain, ok := strings.Cut(userID, ":"); ok && domain == server {
			return true, nil
		}
	}
	return false, rows.Err()
}

// EarliestEvents returns up to limit of the events of a room with the
// lowest depth among those stored with their state (not outliers): where
// the room's timeline here starts.
func (s *Storage) EarliestEvents(ctx context.Context, roomNID int64, limit int) ([]*Event, error) {
	rows, err := s.db.Query(ctx, `SELECT event_nid FROM roomserver_events WHERE room_nid = $1 AND outlier = 0
		ORDER BY depth ASC, event_nid ASC LIMIT $2`, roomNID, limit)
	if err != nil {
		return nil, fmt.Errorf("earliest events of room %d: %w", roomNID, err)
	}
	var nids []int64
	for rows.Next() {
		var n int64
		if err := rows.Scan(&n); err != nil {
			rows.Close()
			return nil, err
		}
		nids = append(nids, n)
	}
	err = rows.Err()
	rows.Close()
	if err != nil {
		return nil, err
	}
	return s.EventsByNID(ctx, nids)
}
