package storage

import (
	"context"
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
