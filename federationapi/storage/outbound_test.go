package storage

import (
	"context"
	"slices"
	"strings"
	"testing"

	"myelin/internal/sqldb"
	"myelin/internal/sqldb/sqldbtest"
)

// TestQueuedEventUsesIndex: recording an event looks up whether it is
// queued already by the partial index on event_id, not by a scan of the
// whole queue (SQLite's plan; PostgreSQL's planner follows the same rule
// for its generic plans).
func TestQueuedEventUsesIndex(t *testing.T) {
	ctx := context.Background()
	db, err := sqldb.Open(ctx, sqldbtest.URL(t, "sqlite"), sqldb.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := Open(ctx, db); err != nil {
		t.Fatal(err)
	}
	rows, err := db.Query(ctx, "EXPLAIN QUERY PLAN "+queuedEventSQL, "$e")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var plan []string
	for rows.Next() {
		var id, parent, unused int
		var detail string
		if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
			t.Fatal(err)
		}
		plan = append(plan, detail)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(plan, "; "); !strings.Contains(got, "INDEX federationapi_queue_json_event") {
		t.Errorf("plan %q does not use the event_id index", got)
	}
}

// TestRecordEvents: events recorded together are applied in order (a join
// earlier in the batch is a destination of a later event), and one
// recorded again (a redelivery, in the same batch or a later one) is
// queued for nobody.
func TestRecordEvents(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		ctx := context.Background()
		db, err := sqldb.Open(ctx, dbURL, sqldb.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		s, err := Open(ctx, db)
		if err != nil {
			t.Fatal(err)
		}
		const room, self = "!r:a.test", "a.test"
		join := func(id, server string) RoomEvent {
			return RoomEvent{RoomID: room, EventID: id, JSON: `{}`, Self: self, Joins: []Join{{EventID: id, Server: server}}}
		}
		msg := func(id string) RoomEvent {
			return RoomEvent{RoomID: room, EventID: id, JSON: `{}`, Self: self, Send: true}
		}
		for _, step := range []struct {
			name string
			evs  []RoomEvent
			want [][]string
		}{
			{"joins then a message", []RoomEvent{join("$jb", "b.test"), msg("$m1"), join("$jc", "c.test"), msg("$m2")},
				[][]string{nil, {"b.test"}, nil, {"b.test", "c.test"}}},
			{"a redelivery within the batch", []RoomEvent{msg("$m3"), msg("$m3")}, [][]string{{"b.test", "c.test"}, nil}},
			{"a redelivery later", []RoomEvent{msg("$m1"), msg("$m4")}, [][]string{nil, {"b.test", "c.test"}}},
		} {
			got, err := s.RecordEvents(ctx, step.evs)
			if err != nil {
				t.Fatalf("%s: %v", step.name, err)
			}
			if len(got) != len(step.want) {
				t.Fatalf("%s: %d results, want %d", step.name, len(got), len(step.want))
			}
			for i := range got {
				if !slices.Equal(got[i], step.want[i]) {
					t.Errorf("%s: event %d queued for %v, want %v", step.name, i, got[i], step.want[i])
				}
			}
		}
	})
}
