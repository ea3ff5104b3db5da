// Package roomservertest runs a real roomserver for the tests of the
// roomserver and of the packages beside it: an embedded NATS server, a
// fresh database of the dialect asked for, and a signing key.
package roomservertest

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/sirupsen/logrus"

	"myelin/internal/bus"
	"myelin/internal/signing"
	"myelin/internal/sqldb"
	"myelin/internal/sqldb/sqldbtest"
	"myelin/roomserver"
)

// Start runs a roomserver for serverName until the test or benchmark
// ends, and returns it with its database.
func Start(tb testing.TB, dialect, serverName string, opts ...roomserver.Option) (*roomserver.Roomserver, *sqldb.DB) {
	tb.Helper()
	ctx := context.Background()
	dir := tb.TempDir()
	bs, err := bus.Open(ctx, bus.Options{StoreDir: filepath.Join(dir, "nats"), Name: "roomservertest"})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(bs.Close)
	db, err := sqldb.Open(ctx, sqldbtest.URL(tb, dialect), sqldb.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { db.Close() })
	key, err := signing.LoadOrGenerate(filepath.Join(dir, "key"), serverName)
	if err != nil {
		tb.Fatal(err)
	}
	log := logrus.New()
	log.SetLevel(logrus.ErrorLevel)
	rs, err := roomserver.New(ctx, db, bs, key, log.WithField("component", "roomserver"), opts...)
	if err != nil {
		tb.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	if err := rs.Start(rctx); err != nil {
		cancel()
		tb.Fatal(err)
	}
	tb.Cleanup(func() { cancel(); rs.Wait() })
	return rs, db
}
