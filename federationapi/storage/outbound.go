package storage

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"myelin/internal/sqldb"
)

// Kinds of queued entries.
const (
	KindPDU = "pdu"
	KindEDU = "edu"
)

// RoomEvent is what an accepted event changes in the outbound tables.
type RoomEvent struct {
	RoomID  string
	EventID string
	JSON    string
	// Joins are the join events the event made current, each with the
	// server of its member; Removed the state event IDs no longer current.
	Joins   []Join
	Removed []string
	// Send says the event originates here and goes to every server in the
	// room (after the event), but Self, plus Extra.
	Send  bool
	Self  string
	Extra []string
	// Skip, when set, leaves out the destinations it is true of (servers
	// the operator's policy denies).
	Skip func(server string) bool
}

// Join is a join event in a room's current state.
type Join struct {
	EventID string
	Server  string
}

// RecordEvent applies ev's membership changes to the room's joined hosts
// and, when ev is to be sent, queues it for the servers in the room after
// it. It returns the destinations it was queued for; none when ev was
// queued before (a redelivered output event).
func (s *Storage) RecordEvent(ctx context.Context, ev RoomEvent) (dests []string, err error) {
	all, err := s.RecordEvents(ctx, []RoomEvent{ev})
	if err != nil {
		return nil, err
	}
	return all[0], nil
}

// RecordEvents is RecordEvent for several events, in order, in one write
// transaction: a busy room's events each took a transaction of their own.
// dests[i] are the destinations evs[i] was queued for.
func (s *Storage) RecordEvents(ctx context.Context, evs []RoomEvent) (dests [][]string, err error) {
	err = s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		dests = make([][]string, len(evs))
		for i, ev := range evs {
			d, err := recordEvent(ctx, tx, ev)
			if err != nil {
				return fmt.Errorf("record event %s: %w", ev.EventID, err)
			}
			dests[i] = d
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return dests, nil
}

func recordEvent(ctx context.Context, tx *sqldb.Tx, ev RoomEvent) ([]string, error) {
	for _, id := range ev.Removed {
		if _, err := tx.Exec(ctx, `DELETE FROM federationapi_joined_hosts WHERE event_id = $1 AND event_id <> ''`, id); err != nil {
			return nil, fmt.Errorf("remove joined host: %w", err)
		}
	}
	for _, j := range ev.Joins {
		if _, err := tx.Exec(ctx, `INSERT INTO federationapi_joined_hosts (room_id, event_id, server_name) VALUES ($1, $2, $3)
			ON CONFLICT (room_id, event_id) DO NOTHING`, ev.RoomID, j.EventID, j.Server); err != nil {
			return nil, fmt.Errorf("add joined host: %w", err)
		}
	}
	if !ev.Send {
		return nil, nil
	}
	var dests []string
	var nid int64
	err := tx.QueryRow(ctx, queuedEventSQL, ev.EventID).Scan(&nid)
	if err == nil {
		return nil, nil // queued already
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("look up queued event: %w", err)
	}
	hosts, err := joinedHosts(ctx, tx.Query, ev.RoomID)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{ev.Self: true}
	for _, h := range append(hosts, ev.Extra...) {
		if !seen[h] {
			seen[h] = true
			if ev.Skip == nil || !ev.Skip(h) {
				dests = append(dests, h)
			}
		}
	}
	if len(dests) == 0 {
		return dests, nil
	}
	if err := tx.QueryRow(ctx, `INSERT INTO federationapi_queue_json (kind, event_id, room_id, json) VALUES ($1, $2, $3, $4) RETURNING json_nid`,
		KindPDU, ev.EventID, ev.RoomID, ev.JSON).Scan(&nid); err != nil {
		return nil, fmt.Errorf("store queued event: %w", err)
	}
	var dropped []int64
	for _, d := range dests {
		// A dead server gets only the latest event of each room: it
		// fetches the rest with /get_missing_events when it is back,
		// and its queue stays one entry per room however long it is
		// away. The lookup comes first so that a live server's
		// queue is not scanned for every event.
		var dead bool
		err := tx.QueryRow(ctx, `SELECT blacklisted FROM federationapi_destinations WHERE server_name = $1`, d).Scan(&dead)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return nil, fmt.Errorf("look up destination %s: %w", d, err)
		}
		if dead {
			nids, err := deleteReturning(ctx, tx, `DELETE FROM federationapi_queue WHERE destination = $1 AND room_id = $2 AND kind = $3
				RETURNING json_nid`, d, ev.RoomID, KindPDU)
			if err != nil {
				return nil, fmt.Errorf("compact queue of %s: %w", d, err)
			}
			dropped = append(dropped, nids...)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO federationapi_queue (destination, json_nid, kind, room_id) VALUES ($1, $2, $3, $4)`,
			d, nid, KindPDU, ev.RoomID); err != nil {
			return nil, fmt.Errorf("queue event for %s: %w", d, err)
		}
	}
	return dests, collectJSON(ctx, tx, dropped)
}

// queuedEventSQL finds a queued PDU. The index on event_id leaves EDUs
// (no event ID) out, and a planner uses such a partial index only for a
// WHERE that implies its condition: without the second test each event
// recorded scanned the whole queue (a third of a busy sender's CPU).
const queuedEventSQL = `SELECT json_nid FROM federationapi_queue_json WHERE event_id = $1 AND event_id <> ''`

// QueueEDU queues an EDU for destinations, except those given up on (an
// EDU is ephemeral: one that waited for a dead server is stale). It
// returns the destinations it was queued for.
func (s *Storage) QueueEDU(ctx context.Context, json string, destinations []string) (queued []string, err error) {
	err = s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		queued = nil
		var nid int64
		for _, d := range destinations {
			var dead bool
			err := tx.QueryRow(ctx, `SELECT blacklisted FROM federationapi_destinations WHERE server_name = $1`, d).Scan(&dead)
			if err != nil && !errors.Is(err, sql.ErrNoRows) {
				return fmt.Errorf("destination %s: %w", d, err)
			}
			if dead {
				continue
			}
			if nid == 0 {
				if err := tx.QueryRow(ctx, `INSERT INTO federationapi_queue_json (kind, event_id, room_id, json) VALUES ($1, '', '', $2) RETURNING json_nid`,
					KindEDU, json).Scan(&nid); err != nil {
					return fmt.Errorf("store EDU: %w", err)
				}
			}
			if _, err := tx.Exec(ctx, `INSERT INTO federationapi_queue (destination, json_nid, kind, room_id) VALUES ($1, $2, $3, '')`,
				d, nid, KindEDU); err != nil {
				return fmt.Errorf("queue EDU for %s: %w", d, err)
			}
			queued = append(queued, d)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("queue EDU: %w", err)
	}
	return queued, nil
}

// JoinedHosts lists the servers with a joined member in roomID.
func (s *Storage) JoinedHosts(ctx context.Context, roomID string) ([]string, error) {
	return joinedHosts(ctx, s.db.Query, roomID)
}

func joinedHosts(ctx context.Context, query func(context.Context, string, ...any) (*sql.Rows, error), roomID string) ([]string, error) {
	rows, err := query(ctx, `SELECT DISTINCT server_name FROM federationapi_joined_hosts WHERE room_id = $1 ORDER BY server_name`, roomID)
	if err != nil {
		return nil, fmt.Errorf("joined hosts of %s: %w", roomID, err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var h string
		if err := rows.Scan(&h); err != nil {
			return nil, err
		}
		out = append(out, h)
	}
	return out, rows.Err()
}

// Transaction is the next transaction for a destination: its ID and the
// JSON of its PDUs and EDUs, in queue order.
type Transaction struct {
	ID   string
	PDUs []string
	EDUs []string
}

// NextTransaction returns the transaction to send to dest: the one sent
// before and not yet acknowledged, with its ID and entries unchanged (the
// remote dedups by ID), then the one taken to follow it (SentAndFollow),
// else the oldest maxPDUs PDUs and maxEDUs EDUs under a new ID from newID.
// It returns nil when the queue is empty.
func (s *Storage) NextTransaction(ctx context.Context, dest string, maxPDUs, maxEDUs int, newID func() string) (txn *Transaction, err error) {
	return s.SentAndNext(ctx, dest, "", maxPDUs, maxEDUs, newID)
}

// SentAndNext is TransactionSent of sent (unless "") and NextTransaction in
// one write: between two transactions to a destination, the queue takes
// one write transaction, not two.
func (s *Storage) SentAndNext(ctx context.Context, dest, sent string, maxPDUs, maxEDUs int, newID func() string) (txn *Transaction, err error) {
	err = s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		txn = nil
		cur, next, _, err := sentThenTxns(ctx, tx, dest, sent)
		if err != nil {
			return err
		}
		for i, id := range []string{cur, next} {
			if id == "" {
				continue
			}
			t, err := loadTxn(ctx, tx, dest, id)
			if err != nil {
				return err
			}
			if len(t.PDUs)+len(t.EDUs) == 0 {
				continue
			}
			if i == 1 {
				// The current one is gone (its entries dropped): the
				// one taken to follow it is current now.
				if _, err := tx.Exec(ctx, `UPDATE federationapi_destinations SET txn_id = $2, next_txn_id = '' WHERE server_name = $1`, dest, id); err != nil {
					return fmt.Errorf("record transaction: %w", err)
				}
			}
			txn = t
			return nil
		}
		txn, err = takeTxn(ctx, tx, dest, newID(), maxPDUs, maxEDUs, `INSERT INTO federationapi_destinations (server_name, txn_id) VALUES ($1, $2)
			ON CONFLICT (server_name) DO UPDATE SET txn_id = excluded.txn_id, next_txn_id = ''`)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("next transaction for %s: %w", dest, err)
	}
	return txn, nil
}

// SentAndFollow is, while transaction inFlight is on the wire to dest,
// TransactionSent of sent (unless "": the one acknowledged before it) and
// the taking of the transaction to send after inFlight, in one write: the
// spec allows one transaction in flight per destination, and the queue's
// write then overlaps the round trip instead of lying between two. The
// transaction taken is recorded as following inFlight, so a restart sends
// inFlight again, then it, each under its ID. It returns nil when nothing
// is queued, or when inFlight is not the destination's current
// transaction (nothing is then taken ahead).
func (s *Storage) SentAndFollow(ctx context.Context, dest, sent, inFlight string, maxPDUs, maxEDUs int, newID func() string) (txn *Transaction, err error) {
	err = s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		txn = nil
		cur, next, found, err := sentThenTxns(ctx, tx, dest, sent)
		if err != nil || !found || cur != inFlight {
			return err
		}
		if next != "" {
			t, err := loadTxn(ctx, tx, dest, next)
			if err != nil || len(t.PDUs)+len(t.EDUs) > 0 {
				txn = t
				return err
			}
		}
		txn, err = takeTxn(ctx, tx, dest, newID(), maxPDUs, maxEDUs, `UPDATE federationapi_destinations SET next_txn_id = $2 WHERE server_name = $1`)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("transaction to follow %s for %s: %w", inFlight, dest, err)
	}
	return txn, nil
}

// sentThenTxns marks transaction sent (unless "") sent, then reads dest's
// current transaction and the one taken to follow it ("" for none);
// found is false when dest has no row.
func sentThenTxns(ctx context.Context, tx *sqldb.Tx, dest, sent string) (cur, next string, found bool, err error) {
	if sent != "" {
		if err := markSent(ctx, tx, dest, sent); err != nil {
			return "", "", false, fmt.Errorf("transaction %s sent: %w", sent, err)
		}
	}
	err = tx.QueryRow(ctx, `SELECT txn_id, next_txn_id FROM federationapi_destinations WHERE server_name = $1`, dest).Scan(&cur, &next)
	if errors.Is(err, sql.ErrNoRows) {
		return "", "", false, nil
	}
	if err != nil {
		return "", "", false, fmt.Errorf("destination: %w", err)
	}
	return cur, next, true, nil
}

// takeTxn puts the oldest entries of dest's queue into a new transaction
// id (fillTxn), records it with record (a statement of $1 dest and $2
// id), and returns it; nil when the queue is empty.
func takeTxn(ctx context.Context, tx *sqldb.Tx, dest, id string, maxPDUs, maxEDUs int, record string) (*Transaction, error) {
	if n, err := fillTxn(ctx, tx, dest, id, maxPDUs, maxEDUs); err != nil || n == 0 {
		return nil, err
	}
	if _, err := tx.Exec(ctx, record, dest, id); err != nil {
		return nil, fmt.Errorf("record transaction: %w", err)
	}
	return loadTxn(ctx, tx, dest, id)
}

// fillTxn puts the oldest maxPDUs PDUs and maxEDUs EDUs of dest's queue
// that are in no transaction yet into transaction id, and counts them.
func fillTxn(ctx context.Context, tx *sqldb.Tx, dest, id string, maxPDUs, maxEDUs int) (int, error) {
	n := 0
	for _, k := range []struct {
		kind string
		max  int
	}{{KindPDU, maxPDUs}, {KindEDU, maxEDUs}} {
		res, err := tx.Exec(ctx, `UPDATE federationapi_queue SET txn_id = $1 WHERE seq IN (
			SELECT seq FROM federationapi_queue WHERE destination = $2 AND kind = $3 AND txn_id = '' ORDER BY seq LIMIT $4)`,
			id, dest, k.kind, k.max)
		if err != nil {
			return 0, fmt.Errorf("fill transaction: %w", err)
		}
		c, _ := res.RowsAffected()
		n += int(c)
	}
	return n, nil
}

func loadTxn(ctx context.Context, tx *sqldb.Tx, dest, id string) (*Transaction, error) {
	rows, err := tx.Query(ctx, `SELECT q.kind, j.json FROM federationapi_queue q JOIN federationapi_queue_json j ON j.json_nid = q.json_nid
		WHERE q.destination = $1 AND q.txn_id = $2 ORDER BY q.seq`, dest, id)
	if err != nil {
		return nil, fmt.Errorf("load transaction %s: %w", id, err)
	}
	defer rows.Close()
	t := &Transaction{ID: id}
	for rows.Next() {
		var kind, js string
		if err := rows.Scan(&kind, &js); err != nil {
			return nil, err
		}
		if kind == KindPDU {
			t.PDUs = append(t.PDUs, js)
		} else {
			t.EDUs = append(t.EDUs, js)
		}
	}
	return t, rows.Err()
}

// TransactionSent removes what transaction id held from dest's queue and
// records dest as reachable; the transaction taken to follow id, if any,
// becomes the one to send.
func (s *Storage) TransactionSent(ctx context.Context, dest, id string) error {
	err := s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		return markSent(ctx, tx, dest, id)
	})
	if err != nil {
		return fmt.Errorf("transaction %s sent to %s: %w", id, dest, err)
	}
	return nil
}

// markSent is TransactionSent inside tx.
func markSent(ctx context.Context, tx *sqldb.Tx, dest, id string) error {
	sent, err := deleteReturning(ctx, tx, `DELETE FROM federationapi_queue WHERE destination = $1 AND txn_id = $2 RETURNING json_nid`, dest, id)
	if err != nil {
		return err
	}
	// Reachable: the failure state goes, and the transaction taken to
	// follow this one becomes the current one; a row with neither
	// goes.
	if _, err := tx.Exec(ctx, `UPDATE federationapi_destinations SET
			txn_id = CASE WHEN txn_id = $2 THEN next_txn_id ELSE txn_id END,
			next_txn_id = CASE WHEN txn_id = $2 THEN '' ELSE next_txn_id END,
			failures = 0, failing_since = 0, retry_at = 0, blacklisted = FALSE
		WHERE server_name = $1`, dest, id); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `DELETE FROM federationapi_destinations WHERE server_name = $1 AND txn_id = '' AND next_txn_id = ''`, dest); err != nil {
		return err
	}
	return collectJSON(ctx, tx, sent)
}

// unusedJSON selects queued JSON that no queue entry refers to.
const unusedJSON = `NOT EXISTS (SELECT 1 FROM federationapi_queue q WHERE q.json_nid = federationapi_queue_json.json_nid)`

// collectJSON deletes the JSON among nids that no queue refers to any
// more.
func collectJSON(ctx context.Context, tx *sqldb.Tx, nids []int64) error {
	seen := map[int64]bool{}
	for _, nid := range nids {
		if seen[nid] {
			continue
		}
		seen[nid] = true
		if _, err := tx.Exec(ctx, `DELETE FROM federationapi_queue_json WHERE json_nid = $1 AND `+unusedJSON, nid); err != nil {
			return fmt.Errorf("collect queued JSON: %w", err)
		}
	}
	return nil
}

// collectAllJSON deletes all JSON that no queue refers to any more: a
// whole-table pass, for the rare compaction of a dead server's queue.
func collectAllJSON(ctx context.Context, tx *sqldb.Tx) error {
	if _, err := tx.Exec(ctx, `DELETE FROM federationapi_queue_json WHERE `+unusedJSON); err != nil {
		return fmt.Errorf("collect queued JSON: %w", err)
	}
	return nil
}

// deleteReturning runs a DELETE ... RETURNING json_nid and returns the
// JSON the deleted entries referred to.
func deleteReturning(ctx context.Context, tx *sqldb.Tx, q string, args ...any) ([]int64, error) {
	rows, err := tx.Query(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []int64{}
	for rows.Next() {
		var nid int64
		if err := rows.Scan(&nid); err != nil {
			return nil, err
		}
		out = append(out, nid)
	}
	return out, rows.Err()
}

// Destination is what is known of a server this server failed to reach.
type Destination struct {
	Name         string
	Failures     int
	FailingSince int64 // ms
	RetryAt      int64 // ms
	Blacklisted  bool
}

// Destination returns dest's state; a zero state (but the name) when it
// is not failing.
func (s *Storage) Destination(ctx context.Context, dest string) (Destination, error) {
	d := Destination{Name: dest}
	err := s.db.QueryRow(ctx, `SELECT failures, failing_since, retry_at, blacklisted FROM federationapi_destinations WHERE server_name = $1`, dest).
		Scan(&d.Failures, &d.FailingSince, &d.RetryAt, &d.Blacklisted)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return d, fmt.Errorf("destination %s: %w", dest, err)
	}
	return d, nil
}

// SetDestination records d's failure state, keeping its transaction.
func (s *Storage) SetDestination(ctx context.Context, d Destination) error {
	_, err := s.db.Exec(ctx, `INSERT INTO federationapi_destinations (server_name, failures, failing_since, retry_at, blacklisted)
		VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (server_name) DO UPDATE SET failures = excluded.failures, failing_since = excluded.failing_since,
			retry_at = excluded.retry_at, blacklisted = excluded.blacklisted`,
		d.Name, d.Failures, d.FailingSince, d.RetryAt, d.Blacklisted)
	if err != nil {
		return fmt.Errorf("set destination %s: %w", d.Name, err)
	}
	return nil
}

// CatchUp shrinks dest's queue to what a server back from a long outage
// needs: the latest queued PDU of each room (it fetches the events before
// it with /get_missing_events) and, unless dropEDUs, the EDUs. The
// transaction under way is abandoned: its entries go back to the queue.
func (s *Storage) CatchUp(ctx context.Context, dest string, dropEDUs bool) error {
	err := s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		if _, err := tx.Exec(ctx, `UPDATE federationapi_queue SET txn_id = '' WHERE destination = $1`, dest); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE federationapi_destinations SET txn_id = '', next_txn_id = '' WHERE server_name = $1`, dest); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM federationapi_queue WHERE destination = $1 AND kind = $2 AND seq NOT IN
			(SELECT MAX(seq) FROM federationapi_queue WHERE destination = $1 AND kind = $2 GROUP BY room_id)`, dest, KindPDU); err != nil {
			return err
		}
		if dropEDUs {
			if _, err := tx.Exec(ctx, `DELETE FROM federationapi_queue WHERE destination = $1 AND kind = $2`, dest, KindEDU); err != nil {
				return err
			}
		}
		return collectAllJSON(ctx, tx)
	})
	if err != nil {
		return fmt.Errorf("catch up %s: %w", dest, err)
	}
	return nil
}

// QueuedDestinations lists the destinations with something queued.
func (s *Storage) QueuedDestinations(ctx context.Context) ([]string, error) {
	return s.strings(ctx, `SELECT DISTINCT destination FROM federationapi_queue ORDER BY destination`)
}

// FailingDestinations lists the destinations being retried or given up on.
func (s *Storage) FailingDestinations(ctx context.Context) ([]string, error) {
	return s.strings(ctx, `SELECT server_name FROM federationapi_destinations WHERE failures > 0 OR blacklisted ORDER BY server_name`)
}

// QueueLength counts dest's queued PDUs and EDUs.
func (s *Storage) QueueLength(ctx context.Context, dest string) (pdus, edus int, err error) {
	err = s.db.QueryRow(ctx, `SELECT COALESCE(SUM(CASE WHEN kind = $2 THEN 1 ELSE 0 END), 0), COALESCE(SUM(CASE WHEN kind = $3 THEN 1 ELSE 0 END), 0)
		FROM federationapi_queue WHERE destination = $1`, dest, KindPDU, KindEDU).Scan(&pdus, &edus)
	if err != nil {
		return 0, 0, fmt.Errorf("queue length of %s: %w", dest, err)
	}
	return pdus, edus, nil
}

func (s *Storage) strings(ctx context.Context, q string) ([]string, error) {
	rows, err := s.db.Query(ctx, q)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var v string
		if err := rows.Scan(&v); err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}
