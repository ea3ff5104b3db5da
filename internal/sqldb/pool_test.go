package sqldb_test

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"myelin/internal/sqldb"
)

func TestSQLiteReaders(t *testing.T) {
	for _, tc := range []struct {
		name           string
		maxOpen, cores int
		want           int
	}{
		{"two cores cap the default 16", 16, 2, 4},
		{"many cores: max_open_conns wins", 16, 32, 16},
		{"max_open_conns below the cap", 3, 8, 3},
		{"one core", 16, 1, 2},
		{"zero cores read as one", 16, 0, 2},
		{"never below one", 0, 4, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := sqldb.SQLiteReaders(tc.maxOpen, tc.cores); got != tc.want {
				t.Errorf("SQLiteReaders(%d, %d) = %d, want %d", tc.maxOpen, tc.cores, got, tc.want)
			}
		})
	}
}

// TestSQLiteReaderPool holds every reader of a SQLite database busy and
// checks one more read waits for a connection: the pool is the cap, not
// max_open_conns, whose readers would each keep a page cache.
func TestSQLiteReaderPool(t *testing.T) {
	ctx := context.Background()
	db, err := sqldb.Open(ctx, filepath.Join(t.TempDir(), "pool.db"), sqldb.Options{MaxOpenConns: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	readers := sqldb.SQLiteReaders(64, runtime.GOMAXPROCS(0))
	var held []*sql.Rows
	defer func() {
		for _, r := range held {
			r.Close()
		}
	}()
	for i := 0; i < readers; i++ {
		// Open rows keep their connection until closed.
		rows, err := db.Query(ctx, `SELECT 1 UNION ALL SELECT 2`)
		if err != nil {
			t.Fatalf("reader %d: %v", i, err)
		}
		held = append(held, rows)
	}
	var cache int
	if err := held[0].Close(); err != nil {
		t.Fatal(err)
	}
	held = held[1:]
	if err := db.QueryRow(ctx, `PRAGMA cache_size`).Scan(&cache); err != nil {
		t.Fatalf("a freed reader: %v", err)
	}
	if cache != -500 {
		t.Errorf("reader cache_size = %d, want -500 (KiB)", cache)
	}
	rows, err := db.Query(ctx, `SELECT 1`)
	if err != nil {
		t.Fatalf("the freed reader again: %v", err)
	}
	held = append(held, rows)
	wait, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	var one int
	err = db.QueryRow(wait, `SELECT 1`).Scan(&one)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a read past %d busy readers: want it to wait for a connection, got %v", readers, err)
	}
	var wcache int
	err = db.WithTx(ctx, func(tx *sqldb.Tx) error {
		return tx.QueryRow(ctx, `PRAGMA cache_size`).Scan(&wcache)
	})
	if err != nil {
		t.Fatalf("the writer is not a reader and is free: %v", err)
	}
	if wcache != -4000 {
		t.Errorf("writer cache_size = %d, want -4000 (KiB)", wcache)
	}
}

// TestSQLiteOneWriter checks SQLite's writes all go through one connection
// (a temporary table, which only its connection sees, stays visible), also
// when transactions meet statements not prepared before, which they
// prepare on their own connection rather than wait for the pool's.
func TestSQLiteOneWriter(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	db, err := sqldb.Open(ctx, filepath.Join(t.TempDir(), "writer.db"), sqldb.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(ctx, `CREATE TEMP TABLE mine (n INTEGER)`); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		// Each round has a statement no round ran before, used twice.
		fresh := `INSERT INTO mine (n) VALUES ($1) -- ` + string(rune('a'+i))
		err := db.WithTx(ctx, func(tx *sqldb.Tx) error {
			for j := 0; j < 2; j++ {
				if _, err := tx.Exec(ctx, fresh, i); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		// The same statement outside a transaction, now from the pool.
		if _, err := db.Exec(ctx, fresh, -i); err != nil {
			t.Fatalf("round %d again: %v", i, err)
		}
	}
	var n int
	err = db.WithTx(ctx, func(tx *sqldb.Tx) error {
		return tx.QueryRow(ctx, `SELECT COUNT(*) FROM mine`).Scan(&n)
	})
	if err != nil || n != 60 {
		t.Fatalf("rows in the writer's temporary table: %d, %v; want 60 (one connection)", n, err)
	}
	// A failed transaction's fresh statements are no trouble either.
	err = db.WithTx(ctx, func(tx *sqldb.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO mine (n) VALUES (100)`); err != nil {
			return err
		}
		return errors.New("give up")
	})
	if err == nil || err.Error() != "give up" {
		t.Fatalf("failed transaction: %v", err)
	}
	if _, err := db.Exec(ctx, `INSERT INTO mine (n) VALUES (100)`); err != nil {
		t.Fatal(err)
	}
}
