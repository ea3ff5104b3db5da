package sqldb

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/lib/pq"
)

func TestClassify(t *testing.T) {
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	// unknown: a PostgreSQL COMMIT failing so may have stored (only
	// errors the server answered with, other than fatal ones, mean it
	// did not).
	tests := []struct {
		name                       string
		err                        error
		unavailable, full, unknown bool
	}{
		{name: "nil"},
		{name: "no rows", err: sql.ErrNoRows, unknown: true},
		{name: "unique violation", err: &pq.Error{Code: "23505"}},
		{name: "query canceled", err: &pq.Error{Code: "57014"}},
		{name: "disk full", err: &pq.Error{Code: "53100"}, unavailable: true, full: true},
		{name: "out of memory", err: &pq.Error{Code: "53200"}, unavailable: true},
		{name: "admin shutdown", err: &pq.Error{Code: "57P01", Severity: "FATAL"}, unavailable: true, unknown: true},
		{name: "starting up", err: &pq.Error{Code: "57P03", Severity: "FATAL"}, unavailable: true, unknown: true},
		{name: "connection failure", err: &pq.Error{Code: "08006"}, unavailable: true},
		{name: "bad conn", err: driver.ErrBadConn, unavailable: true, unknown: true},
		{name: "refused", err: refused, unavailable: true, unknown: true},
		{name: "reset, wrapped", err: fmt.Errorf("select x: %w", syscall.ECONNRESET), unavailable: true, unknown: true},
		{name: "eof", err: io.ErrUnexpectedEOF, unavailable: true, unknown: true},
		{name: "other", err: errors.New("boom"), unknown: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := IsUnavailable(tc.err); got != tc.unavailable {
				t.Errorf("IsUnavailable = %v, want %v", got, tc.unavailable)
			}
			if got := IsFull(tc.err); got != tc.full {
				t.Errorf("IsFull = %v, want %v", got, tc.full)
			}
			// Marked errors say so to the HTTP edge, and stay what they were.
			m := mark(tc.err)
			var un interface{ Unavailable() bool }
			if got := errors.As(m, &un) && un.Unavailable(); got != tc.unavailable {
				t.Errorf("marked error Unavailable() = %v, want %v", got, tc.unavailable)
			}
			if tc.err != nil && !errors.Is(m, tc.err) {
				t.Errorf("marked error %v no longer wraps %v", m, tc.err)
			}
			if tc.err != nil {
				if got := commitOutcomeUnknown(Postgres, tc.err); got != tc.unknown {
					t.Errorf("commitOutcomeUnknown(postgres) = %v, want %v", got, tc.unknown)
				}
				// SQLite is in this process: a failed COMMIT stored nothing.
				if commitOutcomeUnknown(SQLite, tc.err) {
					t.Error("commitOutcomeUnknown(sqlite) = true")
				}
			}
		})
	}
}

// TestSQLiteFull fills a real SQLite database (capped with max_page_count,
// which fails as a full disk does) and checks the error is classified.
func TestSQLiteFull(t *testing.T) {
	ctx := context.Background()
	db, err := sql.Open("sqlite", filepath.Join(t.TempDir(), "full.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1) // the pragma holds for one connection
	for _, q := range []string{`CREATE TABLE t (b BLOB)`, `PRAGMA max_page_count = 20`} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	var full error
	for i := 0; i < 100 && full == nil; i++ {
		_, full = db.ExecContext(ctx, `INSERT INTO t (b) VALUES (zeroblob(4000))`)
	}
	if full == nil {
		t.Fatal("100 inserts of 4 kB fit in 20 pages")
	}
	if !IsFull(full) || !IsUnavailable(full) {
		t.Fatalf("%v: IsFull %v, IsUnavailable %v; want both", full, IsFull(full), IsUnavailable(full))
	}
}
