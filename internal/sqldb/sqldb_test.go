package sqldb_test

import (
	"context"
	"testing"
	"testing/fstest"

	"myelin/internal/sqldb"
	"myelin/internal/sqldb/sqldbtest"
)

func TestMigrateAndQuery(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, url string) {
		ctx := context.Background()
		db, err := sqldb.Open(ctx, url, sqldb.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		fsys := fstest.MapFS{
			"0001_init.sql": {Data: []byte(`CREATE TABLE things (id {{serial}}, name TEXT NOT NULL UNIQUE, data {{blob}});
CREATE INDEX things_name ON things (name);`)},
			"0002_more.sql": {Data: []byte(`ALTER TABLE things ADD COLUMN n BIGINT NOT NULL DEFAULT 0;`)},
		}
		for i := 0; i < 2; i++ { // twice: the second run applies nothing
			if err := sqldb.Migrate(ctx, db, "test", fsys); err != nil {
				t.Fatalf("migrate run %d: %v", i, err)
			}
		}
		var id int64
		err = db.WithTx(ctx, func(tx *sqldb.Tx) error {
			return tx.QueryRow(ctx, `INSERT INTO things (name, data, n) VALUES ($1, $2, $3) RETURNING id`, "a", []byte{1, 2}, 7).Scan(&id)
		})
		if err != nil || id != 1 {
			t.Fatalf("insert returning: id=%d err=%v", id, err)
		}
		_, err = db.Exec(ctx, `INSERT INTO things (name, n) VALUES ($1, $2)`, "a", 1)
		if !sqldb.IsUniqueViolation(err) {
			t.Fatalf("duplicate insert: want unique violation, got %v", err)
		}
		// Out-of-order and repeated parameters bind by index in both dialects.
		var n int64
		var name string
		if err := db.QueryRow(ctx, `SELECT n, name FROM things WHERE n = $2 AND name = $1 AND n = $2`, "a", 7).Scan(&n, &name); err != nil {
			t.Fatalf("select: %v", err)
		}
		if n != 7 || name != "a" {
			t.Fatalf("got %d %q", n, name)
		}
	})
}
