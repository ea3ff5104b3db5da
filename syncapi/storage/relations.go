package storage

import (
	"cmp"
	"context"
	"database/sql"
	"fmt"
	"math"
	"slices"

	"github.com/tidwall/gjson"

	"myelin/internal/sqldb"
)

// Relation is one row of the relations index: a child event and the
// parent its m.relates_to names.
type Relation struct {
	EventID   string
	RoomID    string
	RelatesTo string
	RelType   string
	EventType string
	Sender    string
	Depth     int64
	Pos       int64
}

// RelatesTo reads the rel_type and parent of an event's m.relates_to:
// both must be strings, the parent an event ID, else the event has no
// relation to index (spec: relationships that do not match the schema are
// ignored). Replies (m.in_reply_to without rel_type) are not relations.
func RelatesTo(eventJSON string) (relType, parent string) {
	r := gjson.GetMany(eventJSON, `content.m\.relates_to.rel_type`, `content.m\.relates_to.event_id`)
	if r[0].Type != gjson.String || r[1].Type != gjson.String {
		return "", ""
	}
	relType, parent = r[0].String(), r[1].String()
	if relType == "" || len(relType) > 255 || len(parent) < 2 || len(parent) > 255 || parent[0] != '$' {
		return "", ""
	}
	return relType, parent
}

// indexOldRelations indexes the relations of the events stored before
// the relations index existed, once (migration 0005 leaves a pending
// row), a batch of events at a time in position order.
func (s *Storage) indexOldRelations(ctx context.Context) error {
	var pending int
	if err := s.db.QueryRow(ctx, `SELECT COUNT(*) FROM syncapi_relations_pending`).Scan(&pending); err != nil || pending == 0 {
		return err
	}
	after := int64(math.MinInt64)
	for {
		evs, err := collectEvents(s.db.Query(ctx, `SELECT `+eventCols+` FROM syncapi_events
			WHERE pos > $1 AND event_json LIKE '%m.relates_to%' ORDER BY pos LIMIT 500`, after))
		if err != nil {
			return fmt.Errorf("read events to index: %w", err)
		}
		if len(evs) == 0 {
			break
		}
		err = s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
			for _, e := range evs {
				if e.RedactedBecause != "" {
					continue // a redacted child has no relation
				}
				e.RelType, e.RelatesTo = RelatesTo(e.JSON)
				if err := insertRelation(ctx, tx, e); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		after = evs[len(evs)-1].Pos
	}
	_, err := s.db.Exec(ctx, `DELETE FROM syncapi_relations_pending`)
	return err
}

// insertRelation indexes ev's relation, if it has one, inside tx.
func insertRelation(ctx context.Context, tx *sqldb.Tx, ev *Event) error {
	if ev.RelatesTo == "" || ev.RelType == "" {
		return nil
	}
	_, err := tx.Exec(ctx, `INSERT INTO syncapi_relations (event_id, room_id, relates_to, rel_type, event_type, sender, depth, pos)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (event_id) DO NOTHING`,
		ev.EventID, ev.RoomID, ev.RelatesTo, ev.RelType, ev.Type, ev.Sender, ev.Depth, ev.Pos)
	if err != nil {
		return fmt.Errorf("index relation of %s: %w", ev.EventID, err)
	}
	return nil
}

const relationCols = `event_id, room_id, relates_to, rel_type, event_type, sender, depth, pos`

func collectRelations(rows *sql.Rows, err error) ([]Relation, error) {
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Relation
	for rows.Next() {
		var r Relation
		if err := rows.Scan(&r.EventID, &r.RoomID, &r.RelatesTo, &r.RelType, &r.EventType, &r.Sender, &r.Depth, &r.Pos); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// RelationQuery selects children of a room's events for /relations.
type RelationQuery struct {
	RoomID  string
	Parents []string
	// RelType and EventType filter the children when set.
	RelType, EventType string
	// From is the topological point paging starts at: backwards, the
	// children before (Depth, Pos); forwards, those from it on. Ignored
	// when Unbounded.
	Depth, Pos int64
	Backwards  bool
	Unbounded  bool
	// Limit bounds the rows returned.
	Limit int
}

// Relations returns the children the query selects, in the order of
// paging (topological: depth, then stream position).
func (s *Storage) Relations(ctx context.Context, q RelationQuery) ([]Relation, error) {
	// Only the conditions the query needs, numbered from $2; the
	// parents' IN list follows them.
	where := `room_id = $1`
	args := []any{q.RoomID}
	arg := func(v any) string {
		args = append(args, v)
		return fmt.Sprintf("$%d", len(args))
	}
	if q.RelType != "" {
		where += ` AND rel_type = ` + arg(q.RelType)
	}
	if q.EventType != "" {
		where += ` AND event_type = ` + arg(q.EventType)
	}
	order := `ORDER BY depth ASC, pos ASC`
	if q.Backwards {
		order = `ORDER BY depth DESC, pos DESC`
	}
	if !q.Unbounded {
		d, p1, p2 := arg(q.Depth), arg(q.Depth), arg(q.Pos)
		if q.Backwards {
			where += ` AND (depth < ` + d + ` OR (depth = ` + p1 + ` AND pos < ` + p2 + `))`
		} else {
			where += ` AND (depth > ` + d + ` OR (depth = ` + p1 + ` AND pos >= ` + p2 + `))`
		}
	}
	var out []Relation
	err := sqldb.InChunks(len(args)+1, q.Parents, func(in string, inArgs []any) error {
		rows, err := collectRelations(s.db.Query(ctx, `SELECT `+relationCols+` FROM syncapi_relations
			WHERE `+where+` AND relates_to IN (`+in+`) `+order+fmt.Sprintf(` LIMIT %d`, q.Limit),
			append(slices.Clone(args), inArgs...)...))
		out = append(out, rows...)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("relations in %s: %w", q.RoomID, err)
	}
	return out, nil
}

// Aggregation is what bundled aggregations need of the children of a
// page of events: every edit and reference, and a summary of each thread.
// Each child is of the room named by its RoomID, which the caller
// compares with its parent's (a child of another room is no relation).
type Aggregation struct {
	// Edits and References are the m.replace and m.reference children.
	// Edits also holds the edits of each thread's latest child.
	Edits, References []Relation
	Threads           []ThreadSummary
}

// ThreadSummary is the m.thread children of one root in one room.
type ThreadSummary struct {
	Root, RoomID string
	Count        int
	// Latest is the ID of the thread's latest child (by stream position).
	Latest string
	// Participated is whether the asking user sent a child.
	Participated bool
}

// Aggregate reads the children of parents (of any rooms) that bundled
// aggregations show, in one query whatever the number of parents (up
// to 512; more take a query per 512): the edits and references, and the
// thread summaries with each thread's latest child and the edits of that
// child (in Edits too, under its own ID).
func (s *Storage) Aggregate(ctx context.Context, parents []string, userID string) (*Aggregation, error) {
	agg := &Aggregation{}
	err := sqldb.InChunks(1, parents, func(in string, args []any) error {
		// The edits and references; then t: each thread's size, latest
		// position and whether the user wrote in it; l: its latest child,
		// found by joining the maximum back; then the edits of those
		// latest children, which their summaries show. The IN list's
		// placeholders are used twice.
		q := `WITH t AS (
				SELECT relates_to, room_id, COUNT(*) AS n, MAX(pos) AS latest,
					SUM(CASE WHEN sender = $` + fmt.Sprint(len(args)+1) + ` THEN 1 ELSE 0 END) AS mine
				FROM syncapi_relations WHERE relates_to IN (` + in + `) AND rel_type = 'm.thread' GROUP BY relates_to, room_id
			), l AS (
				SELECT t.relates_to, t.room_id, t.n, t.mine, r.event_id, r.sender, r.event_type, r.pos
				FROM t JOIN syncapi_relations r ON r.relates_to = t.relates_to AND r.rel_type = 'm.thread' AND r.pos = t.latest
			)
			SELECT relates_to, room_id, rel_type, event_id, sender, event_type, pos, 0, 0 FROM syncapi_relations
				WHERE relates_to IN (` + in + `) AND rel_type IN ('m.replace', 'm.reference')
			UNION ALL SELECT relates_to, room_id, 'm.thread', event_id, sender, event_type, pos, n, mine FROM l
			UNION ALL SELECT x.relates_to, x.room_id, x.rel_type, x.event_id, x.sender, x.event_type, x.pos, 0, 0
				FROM syncapi_relations x JOIN l ON x.relates_to = l.event_id
				WHERE x.rel_type = 'm.replace'`
		rows, err := s.db.Query(ctx, q, append(args, userID)...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var r Relation
			var n, mine int64
			if err := rows.Scan(&r.RelatesTo, &r.RoomID, &r.RelType, &r.EventID, &r.Sender, &r.EventType, &r.Pos, &n, &mine); err != nil {
				return err
			}
			switch r.RelType {
			case "m.replace":
				agg.Edits = append(agg.Edits, r)
			case "m.reference":
				agg.References = append(agg.References, r)
			case "m.thread":
				agg.Threads = append(agg.Threads, ThreadSummary{Root: r.RelatesTo, RoomID: r.RoomID, Count: int(n), Latest: r.EventID, Participated: mine > 0})
			}
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("aggregate relations: %w", err)
	}
	// References are listed in the order they came.
	byPos := func(a, b Relation) int { return cmp.Compare(a.Pos, b.Pos) }
	slices.SortFunc(agg.Edits, byPos)
	slices.SortFunc(agg.References, byPos)
	return agg, nil
}

// ThreadRoot is a thread of /threads: its root and the position of its
// latest child.
type ThreadRoot struct {
	EventID string
	Latest  int64
}

// Threads returns up to limit thread roots of a room whose latest child
// is before position before, latest activity first; with participant
// set, only the threads it started or sent a child to.
func (s *Storage) Threads(ctx context.Context, roomID, participant string, before int64, limit int) ([]ThreadRoot, error) {
	rows, err := s.db.Query(ctx, `SELECT r.relates_to, MAX(r.pos) AS latest
		FROM syncapi_relations r JOIN syncapi_events e ON e.event_id = r.relates_to
		WHERE r.room_id = $1 AND r.rel_type = 'm.thread' AND e.room_id = $2
		GROUP BY r.relates_to, e.sender
		HAVING MAX(r.pos) < $3 AND ($4 = '' OR e.sender = $5 OR SUM(CASE WHEN r.sender = $6 THEN 1 ELSE 0 END) > 0)
		ORDER BY latest DESC LIMIT $7`, roomID, roomID, before, participant, participant, participant, limit)
	if err != nil {
		return nil, fmt.Errorf("threads of %s: %w", roomID, err)
	}
	defer rows.Close()
	var out []ThreadRoot
	for rows.Next() {
		var t ThreadRoot
		if err := rows.Scan(&t.EventID, &t.Latest); err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, rows.Err()
}
