package storage

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	gmsl "github.com/matrix-org/gomatrixserverlib"

	"myelin/internal/sqldb"
)

// Writer is one write transaction. It sees its own uncommitted rows; the
// shared caches learn them only once the transaction commits.
type Writer struct {
	s  *Storage
	tx *sqldb.Tx

	blocks    map[int64][]Entry
	snapshots map[int64]*Snapshot
	events    map[int64]*Event
	eventIDs  map[string]int64
	tuples    map[gmsl.StateKeyTuple]int64
	redacted  []int64
	// rooms are the rooms read or written in this transaction, as they
	// stand in it; absent the event IDs looked up and not stored. A run
	// of a transaction's 50 PDUs read its room twice an event and
	// looked each event up twice.
	rooms  map[string]*Room
	absent map[string]bool
}

// Write runs f in one transaction.
func (s *Storage) Write(ctx context.Context, f func(w *Writer) error) error {
	w := &Writer{
		s:         s,
		blocks:    map[int64][]Entry{},
		snapshots: map[int64]*Snapshot{},
		events:    map[int64]*Event{},
		eventIDs:  map[string]int64{},
		tuples:    map[gmsl.StateKeyTuple]int64{},
		rooms:     map[string]*Room{},
		absent:    map[string]bool{},
	}
	err := s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		w.tx = tx
		return f(w)
	})
	if err != nil {
		return err
	}
	for nid, es := range w.blocks {
		s.blocks.Put(nid, es)
	}
	for nid, sn := range w.snapshots {
		s.snapshots.Put(nid, sn)
	}
	for _, nid := range w.redacted {
		s.events.Remove(nid)
	}
	for nid, ev := range w.events {
		s.events.Put(nid, ev)
	}
	for id, nid := range w.eventIDs {
		s.eventNIDs.Put(id, nid)
	}
	for t, nid := range w.tuples {
		s.tuples.Put(t, nid)
		s.tupleByID.Put(nid, t)
	}
	return nil
}

// Room loads a room inside the transaction.
func (w *Writer) Room(ctx context.Context, roomID string) (*Room, error) {
	if r, ok := w.rooms[roomID]; ok {
		return r.Clone(), nil
	}
	r, err := w.s.room(ctx, w.tx, roomID)
	if err != nil {
		return nil, err
	}
	w.rooms[roomID] = r.Clone()
	return r, nil
}

// CreateRoom adds a room with no state.
func (w *Writer) CreateRoom(ctx context.Context, roomID string, version gmsl.RoomVersion) (*Room, error) {
	r := &Room{ID: roomID, Version: version}
	err := w.tx.QueryRow(ctx, `INSERT INTO roomserver_rooms (room_id, room_version) VALUES ($1, $2) RETURNING room_nid`, roomID, string(version)).Scan(&r.NID)
	if err != nil {
		return nil, fmt.Errorf("create room %s: %w", roomID, err)
	}
	w.rooms[roomID] = r.Clone()
	return r, nil
}

// UpdateRoom stores a room's current state, extremities and depth.
func (w *Writer) UpdateRoom(ctx context.Context, r *Room) error {
	_, err := w.tx.Exec(ctx, `UPDATE roomserver_rooms SET state_snapshot_nid = $1, latest_event_nids = $2, max_depth = $3 WHERE room_nid = $4`,
		r.Snapshot, joinNIDs(r.Latest), r.MaxDepth, r.NID)
	if err != nil {
		return fmt.Errorf("update room %s: %w", r.ID, err)
	}
	w.rooms[r.ID] = r.Clone()
	return nil
}

// Tuple returns the NID of a tuple, numbering it if new.
func (w *Writer) Tuple(ctx context.Context, t gmsl.StateKeyTuple) (int64, error) {
	if nid, ok := w.tuples[t]; ok {
		return nid, nil
	}
	if nid, ok := w.s.tuples.Get(t); ok {
		return nid, nil
	}
	var nid int64
	err := w.tx.QueryRow(ctx, `SELECT tuple_nid FROM roomserver_state_keys WHERE event_type = $1 AND state_key = $2`, t.EventType, t.StateKey).Scan(&nid)
	if err != nil {
		err = w.tx.QueryRow(ctx, `INSERT INTO roomserver_state_keys (event_type, state_key) VALUES ($1, $2) RETURNING tuple_nid`, t.EventType, t.StateKey).Scan(&nid)
		if err != nil {
			return 0, fmt.Errorf("number state key %v: %w", t, err)
		}
	}
	w.tuples[t] = nid
	return nid, nil
}

// TupleNIDs is Storage.TupleNIDs seeing this transaction's new tuples.
func (w *Writer) TupleNIDs(ctx context.Context, tuples []gmsl.StateKeyTuple) (map[gmsl.StateKeyTuple]int64, error) {
	out := make(map[gmsl.StateKeyTuple]int64, len(tuples))
	var rest []gmsl.StateKeyTuple
	for _, t := range tuples {
		if nid, ok := w.tuples[t]; ok {
			out[t] = nid
		} else {
			rest = append(rest, t)
		}
	}
	found, err := w.s.tupleNIDs(ctx, w.tx, rest)
	for t, nid := range found {
		out[t] = nid
	}
	return out, err
}

// Snapshot loads a snapshot, including ones made in this transaction.
func (w *Writer) Snapshot(ctx context.Context, nid int64) (*Snapshot, error) {
	if sn, ok := w.snapshots[nid]; ok {
		return sn, nil
	}
	return w.s.snapshot(ctx, w.tx, nid)
}

func (w *Writer) block(ctx context.Context, nid int64) ([]Entry, error) {
	if es, ok := w.blocks[nid]; ok {
		return es, nil
	}
	return w.s.block(ctx, w.tx, nid)
}

// StateLookup is Storage.StateLookup inside the transaction.
func (w *Writer) StateLookup(ctx context.Context, snapshotNID int64, tuples []int64) (map[int64]int64, error) {
	sn, err := w.Snapshot(ctx, snapshotNID)
	if err != nil {
		return nil, err
	}
	out := make(map[int64]int64, len(tuples))
	for _, t := range tuples {
		if t == 0 {
			continue
		}
		es, err := w.block(ctx, sn.Blocks[bucketOf(t, len(sn.Blocks))])
		if err != nil {
			return nil, err
		}
		if ev, ok := findEntry(es, t); ok {
			out[t] = ev
		}
	}
	return out, nil
}

// StateEntries returns all entries of a snapshot inside the transaction.
func (w *Writer) StateEntries(ctx context.Context, snapshotNID int64) ([]Entry, error) {
	sn, err := w.Snapshot(ctx, snapshotNID)
	if err != nil {
		return nil, err
	}
	out := make([]Entry, 0, sn.Count)
	for _, b := range sn.Blocks {
		es, err := w.block(ctx, b)
		if err != nil {
			return nil, err
		}
		out = append(out, es...)
	}
	return out, nil
}

func (w *Writer) insertBlock(ctx context.Context, es []Entry) (int64, error) {
	if len(es) == 0 {
		return 0, nil
	}
	var nid int64
	if err := w.tx.QueryRow(ctx, `INSERT INTO roomserver_state_blocks (entries) VALUES ($1) RETURNING block_nid`, encodeEntries(es)).Scan(&nid); err != nil {
		return 0, fmt.Errorf("store state block: %w", err)
	}
	w.blocks[nid] = es
	return nid, nil
}

// NewSnapshot stores the state base with changes applied (Event 0 removes
// a tuple) and returns its NID; base itself when nothing changes. Only the
// blocks the changes fall in are written, unless the state has outgrown its
// block count, in which case every block is rewritten into twice as many.
func (w *Writer) NewSnapshot(ctx context.Context, roomNID, baseNID int64, changes []Entry) (int64, error) {
	base, err := w.Snapshot(ctx, baseNID)
	if err != nil {
		return 0, err
	}
	if len(changes) == 0 {
		return baseNID, nil
	}
	changes = sortEntries(append([]Entry(nil), changes...))
	n := len(base.Blocks)
	blocks := append([]int64(nil), base.Blocks...)
	byBucket := map[int][]Entry{}
	for _, c := range changes {
		b := bucketOf(c.Tuple, n)
		byBucket[b] = append(byBucket[b], c)
	}
	count := base.Count
	changed := false
	for b, chs := range byBucket {
		old, err := w.block(ctx, blocks[b])
		if err != nil {
			return 0, err
		}
		merged, diff := mergeEntries(old, chs)
		if !diff {
			continue
		}
		changed = true
		count += int64(len(merged) - len(old))
		if blocks[b], err = w.insertBlock(ctx, merged); err != nil {
			return 0, err
		}
	}
	if !changed {
		return baseNID, nil
	}
	if count > int64(n*targetPerBlock) {
		if blocks, err = w.regrow(ctx, blocks, count); err != nil {
			return 0, err
		}
	}
	sn := &Snapshot{Blocks: blocks, Count: count}
	if err := w.tx.QueryRow(ctx, `INSERT INTO roomserver_state_snapshots (room_nid, block_nids, entry_count) VALUES ($1, $2, $3) RETURNING snapshot_nid`,
		roomNID, encodeNIDs(blocks), count).Scan(&sn.NID); err != nil {
		return 0, fmt.Errorf("store snapshot: %w", err)
	}
	w.snapshots[sn.NID] = sn
	return sn.NID, nil
}

// NewSnapshotFromEntries stores a whole state (e.g. the result of state
// resolution) as a new snapshot.
func (w *Writer) NewSnapshotFromEntries(ctx context.Context, roomNID int64, entries []Entry) (int64, error) {
	return w.NewSnapshot(ctx, roomNID, 0, entries)
}

func (w *Writer) regrow(ctx context.Context, blocks []int64, count int64) ([]int64, error) {
	var all []Entry
	for _, b := range blocks {
		es, err := w.block(ctx, b)
		if err != nil {
			return nil, err
		}
		all = append(all, es...)
	}
	n := len(blocks)
	for count > int64(n*targetPerBlock) {
		n *= 2
	}
	// Each bucket sized exactly: the blocks stay cached as they are.
	sizes := make([]int, n)
	for _, e := range all {
		sizes[bucketOf(e.Tuple, n)]++
	}
	buckets := make([][]Entry, n)
	for i, k := range sizes {
		buckets[i] = make([]Entry, 0, k)
	}
	for _, e := range all {
		b := bucketOf(e.Tuple, n)
		buckets[b] = append(buckets[b], e)
	}
	out := make([]int64, n)
	for i, es := range buckets {
		var err error
		if out[i], err = w.insertBlock(ctx, sortEntries(es)); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// StoreEvent inserts ev (its NID is set) or, when an event with its ID is
// already stored, returns that one's NID and false.
func (w *Writer) StoreEvent(ctx context.Context, ev *Event, depth int64) (bool, error) {
	if nid, ok := w.eventIDs[ev.ID]; ok {
		ev.NID = nid
		return false, nil
	}
	if !w.absent[ev.ID] {
		existing, err := w.s.eventNIDsOf(ctx, w.tx, []string{ev.ID})
		if err != nil {
			return false, err
		}
		if nid, ok := existing[ev.ID]; ok {
			ev.NID = nid
			return false, nil
		}
	}
	err := w.tx.QueryRow(ctx, `INSERT INTO roomserver_events
		(room_nid, event_id, event_type, tuple_nid, sender, depth, state_before_nid, rejected, outlier, received_ts, event_json, origin_server_ts)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING event_nid`,
		ev.RoomNID, ev.ID, ev.PDU.Type(), ev.Tuple, string(ev.PDU.SenderID()), depth, ev.StateBefore,
		boolInt(ev.Rejected), boolInt(ev.Outlier), time.Now().UnixMilli(), string(ev.PDU.JSON()), int64(ev.PDU.OriginServerTS())).Scan(&ev.NID)
	if err != nil {
		return false, fmt.Errorf("store event %s: %w", ev.ID, err)
	}
	w.events[ev.NID] = ev
	w.eventIDs[ev.ID] = ev.NID
	delete(w.absent, ev.ID)
	return true, nil
}

// SetStateBefore records the state before an event stored as an outlier
// once it is known.
func (w *Writer) SetStateBefore(ctx context.Context, ev *Event) error {
	_, err := w.tx.Exec(ctx, `UPDATE roomserver_events SET state_before_nid = $1, outlier = 0, rejected = $2 WHERE event_nid = $3`,
		ev.StateBefore, boolInt(ev.Rejected), ev.NID)
	if err == nil {
		w.redacted = append(w.redacted, ev.NID) // drop the cached outlier copy
	}
	return err
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// EventsByNID is Storage.EventsByNID seeing this transaction's events.
func (w *Writer) EventsByNID(ctx context.Context, nids []int64) ([]*Event, error) {
	out := make([]*Event, len(nids))
	var rest []int64
	var idx []int
	for i, nid := range nids {
		if ev, ok := w.events[nid]; ok {
			out[i] = ev
		} else {
			rest = append(rest, nid)
			idx = append(idx, i)
		}
	}
	if len(rest) > 0 {
		evs, err := w.s.eventsByNID(ctx, w.tx, rest)
		if err != nil {
			return nil, err
		}
		for j, ev := range evs {
			out[idx[j]] = ev
		}
	}
	return out, nil
}

// EventNIDs is Storage.EventNIDs seeing this transaction's events.
func (w *Writer) EventNIDs(ctx context.Context, ids []string) (map[string]int64, error) {
	out := make(map[string]int64, len(ids))
	var rest []string
	for _, id := range ids {
		if nid, ok := w.eventIDs[id]; ok {
			out[id] = nid
		} else if !w.absent[id] {
			rest = append(rest, id)
		}
	}
	if len(rest) == 0 {
		return out, nil
	}
	found, err := w.s.eventNIDsOf(ctx, w.tx, rest)
	if err != nil {
		return nil, err
	}
	for _, id := range rest {
		if nid, ok := found[id]; ok {
			out[id] = nid
		} else {
			w.absent[id] = true
		}
	}
	return out, nil
}

// SetMembership records userID's current membership of a room.
func (w *Writer) SetMembership(ctx context.Context, roomNID int64, userID, membership string, eventNID int64) error {
	_, err := w.tx.Exec(ctx, `INSERT INTO roomserver_memberships (room_nid, user_id, membership, event_nid) VALUES ($1, $2, $3, $4)
		ON CONFLICT (room_nid, user_id) DO UPDATE SET membership = excluded.membership, event_nid = excluded.event_nid`,
		roomNID, userID, membership, eventNID)
	if err != nil {
		return fmt.Errorf("set membership of %s: %w", userID, err)
	}
	return nil
}

// TxnEvent is Storage.TxnEvent inside the transaction.
func (w *Writer) TxnEvent(ctx context.Context, sessionID int64, txnID string) (string, error) {
	var id string
	err := w.tx.QueryRow(ctx, `SELECT event_id FROM roomserver_txns WHERE session_id = $1 AND txn_id = $2`, sessionID, txnID).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	return id, err
}

// SetTxn records the event a client transaction made.
func (w *Writer) SetTxn(ctx context.Context, sessionID int64, txnID, eventID string) error {
	_, err := w.tx.Exec(ctx, `INSERT INTO roomserver_txns (session_id, txn_id, event_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING`, sessionID, txnID, eventID)
	return err
}

// LogInput records the response to a processed input request.
func (w *Writer) LogInput(ctx context.Context, requestID, response string) error {
	_, err := w.tx.Exec(ctx, `INSERT INTO roomserver_input_log (request_id, response, created_ts) VALUES ($1, $2, $3)`, requestID, response, time.Now().UnixMilli())
	if sqldb.IsUniqueViolation(err) {
		return errors.New("input request processed twice")
	}
	return err
}

// Redact marks an event redacted by redactionID.
func (w *Writer) Redact(ctx context.Context, eventNID int64, redactionID string) error {
	if _, err := w.tx.Exec(ctx, `UPDATE roomserver_events SET redacted_by = $1 WHERE event_nid = $2`, redactionID, eventNID); err != nil {
		return fmt.Errorf("redact event %d: %w", eventNID, err)
	}
	delete(w.events, eventNID)
	w.redacted = append(w.redacted, eventNID)
	return nil
}

// RoomVersionOf returns the version of the room with NID nid.
func (w *Writer) RoomVersionOf(ctx context.Context, nid int64) (gmsl.RoomVersion, error) {
	return w.s.roomVersionByNID(ctx, w.tx)(nid)
}

// InputLoggedAll is InputLogged of each of requestIDs, in one statement
// (a few for many): the results found, by request ID.
func (w *Writer) InputLoggedAll(ctx context.Context, requestIDs []string) (map[string]string, error) {
	out := map[string]string{}
	err := sqldb.InChunks(1, requestIDs, func(in string, args []any) error {
		rows, err := w.tx.Query(ctx, `SELECT request_id, response FROM roomserver_input_log WHERE request_id IN (`+in+`)`, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var id, resp string
			if err := rows.Scan(&id, &resp); err != nil {
				return err
			}
			out[id] = resp
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("look up logged input: %w", err)
	}
	return out, nil
}

// InputLogged returns the logged result of a processed input request, "" if
// it was not processed.
func (w *Writer) InputLogged(ctx context.Context, requestID string) (string, error) {
	var resp string
	err := w.tx.QueryRow(ctx, `SELECT response FROM roomserver_input_log WHERE request_id = $1`, requestID).Scan(&resp)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	return resp, err
}
