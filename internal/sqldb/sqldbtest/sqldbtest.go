// Package sqldbtest gives tests a fresh database of each dialect.
//
// PostgreSQL comes from MYELIN_TEST_POSTGRES_URL, a DSN of a server on which
// the user may create databases; each call gets a new database, dropped when
// the test ends. Without it the PostgreSQL half fails, unless
// MYELIN_TEST_SQLITE_ONLY=1 says to skip it (the README's test command starts
// a throwaway PostgreSQL and sets the URL).
package sqldbtest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"testing"

	_ "github.com/lib/pq" // the postgres driver, for admin connections

	"myelin/internal/sqldb"
)

// Dialects lists the database names tests run on.
var Dialects = []string{"sqlite", "postgres"}

// URL returns a fresh, empty database URL for the named dialect.
func URL(t testing.TB, dialect string) string {
	t.Helper()
	switch dialect {
	case "sqlite":
		return filepath.Join(t.TempDir(), "test.db")
	case "postgres":
		return postgresURL(t)
	}
	t.Fatalf("unknown dialect %q", dialect)
	return ""
}

// Open opens the database at dbURL with default options, closed when the
// test ends.
func Open(t testing.TB, dbURL string) *sqldb.DB {
	t.Helper()
	db, err := sqldb.Open(context.Background(), dbURL, sqldb.Options{})
	if err != nil {
		t.Fatalf("open %s: %v", dbURL, err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// Each runs f as a subtest once per dialect, with a fresh database URL.
func Each(t *testing.T, f func(t *testing.T, dbURL string)) {
	for _, d := range Dialects {
		t.Run(d, func(t *testing.T) {
			f(t, URL(t, d))
		})
	}
}

func postgresURL(t testing.TB) string {
	t.Helper()
	base := os.Getenv("MYELIN_TEST_POSTGRES_URL")
	if base == "" {
		if os.Getenv("MYELIN_TEST_SQLITE_ONLY") == "1" {
			t.Skip("MYELIN_TEST_SQLITE_ONLY=1: skipping PostgreSQL")
		}
		t.Fatal("MYELIN_TEST_POSTGRES_URL is not set (run the README's test command, or set MYELIN_TEST_SQLITE_ONLY=1)")
	}
	admin, err := sql.Open("postgres", base)
	if err != nil {
		t.Fatalf("open postgres: %v", err)
	}
	defer admin.Close()
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "myelin_test_" + hex.EncodeToString(b[:])
	if _, err := admin.Exec("CREATE DATABASE " + name); err != nil {
		t.Fatalf("create test database: %v", err)
	}
	t.Cleanup(func() {
		a, err := sql.Open("postgres", base)
		if err != nil {
			return
		}
		defer a.Close()
		_, _ = a.ExecContext(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
	})
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("parse MYELIN_TEST_POSTGRES_URL: %v", err)
	}
	u.Path = "/" + name
	return fmt.Sprint(u)
}
