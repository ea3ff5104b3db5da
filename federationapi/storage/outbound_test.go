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
		db := sqldbtest.Open(t, dbURL)
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

// TestSentAndFollow: the transaction taken while one is in flight follows
// it, in queue order, and survives a restart: the store hands out the one
// in flight again, then the one taken ahead, each under its ID and with
// its entries; marking the first sent makes the second current. A
// transaction in flight that is not the store's current one gets nothing
// taken ahead, and catching up forgets both.
func TestSentAndFollow(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		ctx := context.Background()
		db := sqldbtest.Open(t, dbURL)
		s, err := Open(ctx, db)
		if err != nil {
			t.Fatal(err)
		}
		const dest = "remote.test"
		var all []string
		for i := range 7 {
			id := "$e" + string(rune('a'+i))
			all = append(all, `{"id":"`+id+`"}`)
			if _, err := s.RecordEvent(ctx, RoomEvent{RoomID: "!r:here", EventID: id, JSON: all[i], Send: true, Self: "here",
				Joins: []Join{{EventID: "$j", Server: dest}}}); err != nil {
				t.Fatal(err)
			}
		}
		n := 0
		newID := func() string { n++; return "t" + string(rune('0'+n)) }
		take := func(got *Transaction, err error) *Transaction {
			t.Helper()
			if err != nil {
				t.Fatal(err)
			}
			return got
		}
		want := func(got *Transaction, id string, pdus []string) {
			t.Helper()
			if got == nil || got.ID != id || !slices.Equal(got.PDUs, pdus) {
				t.Fatalf("transaction %+v, want %s with %v", got, id, pdus)
			}
		}
		first := take(s.NextTransaction(ctx, dest, 3, 0, newID))
		want(first, "t1", all[0:3])
		if got := take(s.SentAndFollow(ctx, dest, "", "elsewhere", 3, 0, newID)); got != nil {
			t.Fatalf("took %+v ahead of a transaction not in flight", got)
		}
		second := take(s.SentAndFollow(ctx, dest, "", "t1", 3, 0, newID))
		want(second, "t2", all[3:6])
		// Asked again (a retry of the write): the same one.
		want(take(s.SentAndFollow(ctx, dest, "", "t1", 3, 0, newID)), "t2", all[3:6])
		// A restart: t1, not yet marked sent, comes first.
		want(take(s.NextTransaction(ctx, dest, 3, 0, newID)), "t1", all[0:3])
		// t1 acknowledged while t2 is in flight: marked, and t3 taken.
		want(take(s.SentAndFollow(ctx, dest, "t1", "t2", 3, 0, newID)), "t3", all[6:7])
		want(take(s.NextTransaction(ctx, dest, 3, 0, newID)), "t2", all[3:6])
		want(take(s.SentAndNext(ctx, dest, "t2", 3, 0, newID)), "t3", all[6:7])
		if p, _, err := s.QueueLength(ctx, dest); err != nil || p != 1 {
			t.Fatalf("queue holds %d PDUs (%v), want 1", p, err)
		}
		// Catching up forgets the transactions taken; their entries go
		// back to the queue.
		if err := s.CatchUp(ctx, dest, false); err != nil {
			t.Fatal(err)
		}
		want(take(s.NextTransaction(ctx, dest, 3, 0, newID)), "t4", all[6:7])
		if got := take(s.SentAndNext(ctx, dest, "t4", 3, 0, newID)); got != nil {
			t.Fatalf("transaction %+v after the last", got)
		}
		d, err := s.Destination(ctx, dest)
		if err != nil || d.Failures != 0 {
			t.Fatalf("destination %+v (%v)", d, err)
		}
	})
}
