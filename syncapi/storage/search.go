package storage

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/tidwall/gjson"

	"myelin/internal/sqldb"
)

// SearchKeys maps the event types /search indexes to the content key of
// each one's text (spec: "Server Side Search", keys).
var SearchKeys = map[string]string{
	"m.room.message": "content.body",
	"m.room.name":    "content.name",
	"m.room.topic":   "content.topic",
}

// searchText is the text of ev the search index holds, "" for none: the
// body of a message, the name or topic of a room's state. A NUL or a
// broken surrogate, which another server's event may carry escaped in its
// JSON, is dropped: no TEXT column of PostgreSQL takes them, and one
// event must not stop the stream.
func searchText(ev *Event) string {
	key, ok := SearchKeys[ev.Type]
	if !ok || (ev.Type == "m.room.message") != (ev.StateKey == nil) || (ev.StateKey != nil && *ev.StateKey != "") {
		return ""
	}
	v := gjson.Get(ev.JSON, key)
	if v.Type != gjson.String {
		return ""
	}
	return strings.ReplaceAll(strings.ToValidUTF8(v.String(), ""), "\x00", "")
}

// indexForSearch adds the events just stored (their Pos set) to the search
// index, those with text, in as few statements as the batch's binary
// digits (64 = one of 64 rows; 7 = 4 + 2 + 1): few round trips, and few
// statement texts to prepare. Only the words are written, so the cost of
// a send does not grow with the room.
func indexForSearch(ctx context.Context, tx *sqldb.Tx, evs []*Event) error {
	var rows []any
	for _, ev := range evs {
		if text := searchText(ev); text != "" {
			rows = append(rows, ev.Pos, text)
		}
	}
	ft := tx.FullText("syncapi_search")
	for size := 64; len(rows) > 0; size /= 2 {
		for len(rows) >= 2*size {
			if _, err := tx.Exec(ctx, ft.Insert(size), rows[:2*size]...); err != nil {
				return fmt.Errorf("index %d events for search: %w", size, err)
			}
			rows = rows[2*size:]
		}
	}
	return nil
}

// SearchQuery is one page of a search of room events.
type SearchQuery struct {
	// Match is the term in the dialect's syntax (sqldb.FullTextQuery).
	Match string
	// Rooms are the rooms searched, Types the event types (of SearchKeys).
	Rooms, Types []string
	// MaxPos bounds the stream positions searched, so that the pages of
	// one search see the same events whatever arrives meanwhile.
	MaxPos int64
	// ByRank orders by relevance, then recency; else by recency alone.
	ByRank bool
	// After, when set, is the key of the last row of the previous page.
	After *SearchKey
	Limit int
}

// SearchKey is a row's place in the order of a search.
type SearchKey struct {
	Rank float64 `json:"r"`
	Pos  int64   `json:"p"`
}

// SearchHit is a row found, with its key.
type SearchHit struct {
	Event *Event
	Key   SearchKey
}

// searchFrom is the part of a search both the page and the count read:
// the rows matching, in the rooms and of the types asked, up to MaxPos.
func (s *Storage) searchFrom(q *SearchQuery) (string, []any, error) {
	rooms, err := json.Marshal(q.Rooms)
	if err != nil {
		return "", nil, err
	}
	types, err := json.Marshal(q.Types)
	if err != nil {
		return "", nil, err
	}
	ft := s.db.FullText("syncapi_search")
	where := ` FROM syncapi_search JOIN syncapi_events x ON x.pos = syncapi_search.rowid WHERE ` + ft.Match(1) +
		` AND x.room_id IN (` + s.db.JSONList(2) + `) AND x.event_type IN (` + s.db.JSONList(3) + `) AND x.pos <= $4`
	return where, []any{q.Match, string(rooms), string(types), q.MaxPos}, nil
}

// Search returns up to q.Limit rows matching q after q.After, in order.
func (s *Storage) Search(ctx context.Context, q *SearchQuery) ([]SearchHit, error) {
	from, args, err := s.searchFrom(q)
	if err != nil {
		return nil, err
	}
	ft := s.db.FullText("syncapi_search")
	order, after := ` ORDER BY m.pos DESC`, ``
	if q.ByRank {
		order = ` ORDER BY m.rank DESC, m.pos DESC`
	}
	if q.After != nil {
		args = append(args, q.After.Pos)
		after = ` WHERE m.pos < $5`
		if q.ByRank {
			args = append(args, q.After.Rank)
			after = ` WHERE (m.rank < $6 OR (m.rank = $6 AND m.pos < $5))`
		}
	}
	args = append(args, q.Limit)
	query := `SELECT ` + qualified("e", eventCols) + `, m.rank FROM (SELECT x.pos, ` + ft.Rank(1) + ` AS rank` + from + `) m
		JOIN syncapi_events e ON e.pos = m.pos` + after + order + fmt.Sprintf(` LIMIT $%d`, len(args))
	rows, err := s.db.Query(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("search: %w", err)
	}
	defer rows.Close()
	var out []SearchHit
	for rows.Next() {
		var h SearchHit
		e, err := scanEvent(scanWithRank{rows, &h.Key.Rank})
		if err != nil {
			return nil, err
		}
		h.Event, h.Key.Pos = e, e.Pos
		out = append(out, h)
	}
	return out, rows.Err()
}

// SearchCount counts the rows matching q, whatever the page.
func (s *Storage) SearchCount(ctx context.Context, q *SearchQuery) (int64, error) {
	from, args, err := s.searchFrom(q)
	if err != nil {
		return 0, err
	}
	var n int64
	if err := s.db.QueryRow(ctx, `SELECT COUNT(*)`+from, args...).Scan(&n); err != nil {
		return 0, fmt.Errorf("count search results: %w", err)
	}
	return n, nil
}

// scanWithRank scans an event row followed by its rank.
type scanWithRank struct {
	sc   interface{ Scan(...any) error }
	rank *float64
}

func (s scanWithRank) Scan(dest ...any) error { return s.sc.Scan(append(dest, s.rank)...) }

// qualified prefixes each column of a column list with a table alias.
func qualified(alias, cols string) string {
	parts := strings.Split(cols, ",")
	for i, p := range parts {
		parts[i] = alias + "." + strings.TrimSpace(p)
	}
	return strings.Join(parts, ", ")
}

// RoomsEverJoined returns the rooms userID has been joined to at some
// time: the rooms whose history it may search.
func (s *Storage) RoomsEverJoined(ctx context.Context, userID string) ([]string, error) {
	rows, err := s.db.Query(ctx, `SELECT DISTINCT room_id FROM syncapi_membership_log WHERE user_id = $1 AND membership = 'join'`, userID)
	if err != nil {
		return nil, fmt.Errorf("rooms joined by %s: %w", userID, err)
	}
	return sqldb.Column[string](rows)
}

// Dialect is the database's dialect (for sqldb.FullTextQuery).
func (s *Storage) Dialect() sqldb.Dialect { return s.db.Dialect }
