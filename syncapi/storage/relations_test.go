package storage

import (
	"context"
	"fmt"
	"slices"
	"testing"

	"myelin/internal/sqldb"
	"myelin/internal/sqldb/sqldbtest"
)

func TestRelatesTo(t *testing.T) {
	tests := []struct {
		name, js        string
		relType, parent string
	}{
		{"thread", `{"content":{"m.relates_to":{"rel_type":"m.thread","event_id":"$root"}}}`, "m.thread", "$root"},
		{"reply only", `{"content":{"m.relates_to":{"m.in_reply_to":{"event_id":"$root"}}}}`, "", ""},
		{"rel_type not a string", `{"content":{"m.relates_to":{"rel_type":1,"event_id":"$root"}}}`, "", ""},
		{"parent not an event ID", `{"content":{"m.relates_to":{"rel_type":"m.thread","event_id":"root"}}}`, "", ""},
		{"empty rel_type", `{"content":{"m.relates_to":{"rel_type":"","event_id":"$root"}}}`, "", ""},
		{"no content", `{}`, "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rt, p := RelatesTo(tc.js)
			if rt != tc.relType || p != tc.parent {
				t.Fatalf("RelatesTo = %q %q, want %q %q", rt, p, tc.relType, tc.parent)
			}
		})
	}
}

// TestIndexOldRelations: the relations of events stored before the index
// existed are indexed at the next start, once; a redacted child is not.
func TestIndexOldRelations(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		ctx := context.Background()
		db, err := sqldb.Open(ctx, dbURL, sqldb.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		s, err := Open(ctx, db)
		if err != nil {
			t.Fatal(err)
		}
		child := func(id, body string) *Event {
			js := fmt.Sprintf(`{"type":"m.room.message","content":{"body":%q,"m.relates_to":{"rel_type":"m.thread","event_id":"$root"}}}`, body)
			rt, p := RelatesTo(js)
			return &Event{RoomID: "!r:x", EventID: id, Type: "m.room.message", Sender: "@a:x", HistVis: "shared", JSON: js, RelType: rt, RelatesTo: p}
		}
		for _, e := range []*Event{
			{RoomID: "!r:x", EventID: "$root", Type: "m.room.message", Sender: "@a:x", HistVis: "shared", JSON: `{"content":{"body":"root"}}`},
			child("$one", "one"), child("$two", "two"), child("$gone", "gone"),
		} {
			if _, err := s.Append(ctx, e, nil, nil); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.Redact(ctx, "$gone", `{"content":{"m.relates_to":{"rel_type":"m.thread","event_id":"$root"}}}`, `{}`); err != nil {
			t.Fatal(err)
		}
		children := func() []string {
			rels, err := s.Relations(ctx, RelationQuery{RoomID: "!r:x", Parents: []string{"$root"}, Unbounded: true, Limit: 10})
			if err != nil {
				t.Fatal(err)
			}
			var ids []string
			for _, r := range rels {
				ids = append(ids, r.EventID)
			}
			return ids
		}
		if got := children(); !slices.Equal(got, []string{"$one", "$two"}) {
			t.Fatalf("children as appended = %v", got)
		}
		// As a database from before the index: no rows, one pending.
		if _, err := db.Exec(ctx, `DELETE FROM syncapi_relations`); err != nil {
			t.Fatal(err)
		}
		if _, err := db.Exec(ctx, `INSERT INTO syncapi_relations_pending (pending) VALUES (1)`); err != nil {
			t.Fatal(err)
		}
		if s, err = Open(ctx, db); err != nil {
			t.Fatal(err)
		}
		if got := children(); !slices.Equal(got, []string{"$one", "$two"}) {
			t.Fatalf("children indexed at start = %v, want [$one $two]", got)
		}
		var pending int
		if err := db.QueryRow(ctx, `SELECT COUNT(*) FROM syncapi_relations_pending`).Scan(&pending); err != nil || pending != 0 {
			t.Fatalf("pending rows after indexing: %d %v", pending, err)
		}
	})
}
