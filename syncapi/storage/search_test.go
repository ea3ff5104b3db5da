package storage

import (
	"context"
	"fmt"
	"io/fs"
	"slices"
	"testing"

	"myelin/internal/sqldb"
	"myelin/internal/sqldb/sqldbtest"
)

// TestSearchIndexBackfill: the migration that makes the search index
// indexes the events stored before it, those with text under their key
// only, and not redacted ones; the append path indexes new ones.
func TestSearchIndexBackfill(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		ctx := context.Background()
		db := sqldbtest.Open(t, dbURL)
		s, err := Open(ctx, db)
		if err != nil {
			t.Fatal(err)
		}
		empty := ""
		var batch []Appended
		for i, tc := range []struct {
			typ      string
			stateKey *string
			content  string
		}{
			{"m.room.message", nil, `{"body":"kestrel one"}`},
			{"m.room.message", nil, `{"body":5}`},                  // not text
			{"m.room.message", &empty, `{"body":"kestrel state"}`}, // a state event of a message type
			{"m.room.name", &empty, `{"name":"kestrel name"}`},
			{"m.room.topic", &empty, `{"topic":"kestrel topic"}`},
			{"m.room.message", nil, `{"body":"kestrel redacted"}`},
			{"m.room.member", &empty, `{"displayname":"kestrel","membership":"join"}`},
			{"m.room.message", nil, `{"body":"nul \u0000 kestrel"}`},
		} {
			id := fmt.Sprintf("$e%d", i)
			batch = append(batch, Appended{Event: &Event{RoomID: "!r:x", EventID: id, Type: tc.typ, StateKey: tc.stateKey, Sender: "@a:x", Depth: int64(i), HistVis: "shared",
				JSON: fmt.Sprintf(`{"type":%q,"event_id":%q,"content":%s}`, tc.typ, id, tc.content)}})
		}
		if _, err := s.AppendBatch(ctx, batch); err != nil {
			t.Fatal(err)
		}
		if err := s.Redact(ctx, "$e5", `{"type":"m.room.message","content":{}}`, `{}`); err != nil {
			t.Fatal(err)
		}
		match, _ := sqldb.FullTextQuery(db.Dialect, "kestrel")
		found := func() []string {
			t.Helper()
			hits, err := s.Search(ctx, &SearchQuery{Match: match, Rooms: []string{"!r:x"}, Types: []string{"m.room.message", "m.room.name", "m.room.topic"}, MaxPos: 1 << 40, Limit: 100})
			if err != nil {
				t.Fatal(err)
			}
			var ids []string
			for _, h := range hits {
				ids = append(ids, h.Event.EventID)
			}
			slices.Sort(ids)
			return ids
		}
		want := []string{"$e0", "$e3", "$e4", "$e7"}
		if got := found(); !slices.Equal(got, want) {
			t.Fatalf("appended: found %v, want %v", got, want)
		}
		// As if the index were new: drop it and migrate again.
		if _, err := db.Exec(ctx, `DROP TABLE syncapi_search`); err != nil {
			t.Fatal(err)
		}
		if _, err := db.Exec(ctx, `DELETE FROM schema_migrations WHERE component = 'syncapi' AND version = 10`); err != nil {
			t.Fatal(err)
		}
		sub, _ := fs.Sub(migrations, "migrations")
		if err := sqldb.Migrate(ctx, db, "syncapi", sub); err != nil {
			t.Fatal(err)
		}
		// The NUL event stays out on PostgreSQL (JSONB refuses it).
		if db.Dialect == sqldb.Postgres {
			want = want[:3]
		}
		if got := found(); !slices.Equal(got, want) {
			t.Fatalf("backfilled: found %v, want %v", got, want)
		}
	})
}
