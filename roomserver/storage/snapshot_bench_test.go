package storage

import (
	"context"
	"fmt"
	"testing"

	"myelin/internal/sqldb"
	"myelin/internal/sqldb/sqldbtest"
)

// BenchmarkNewSnapshot measures one state change (a member joining) on top
// of rooms of growing size: with state blocks the cost should stay flat,
// where a copy of the state per event would grow with the room.
func BenchmarkNewSnapshot(b *testing.B) {
	for _, size := range []int{100, 1000, 10000} {
		b.Run(fmt.Sprint(size), func(b *testing.B) {
			ctx := context.Background()
			db, err := sqldb.Open(ctx, sqldbtest.URL(b, "sqlite"), sqldb.Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			s, err := Open(ctx, db, 0)
			if err != nil {
				b.Fatal(err)
			}
			var base int64
			err = s.Write(ctx, func(w *Writer) error {
				entries := make([]Entry, size)
				for i := range entries {
					entries[i] = Entry{Tuple: int64(i + 1), Event: int64(i + 1)}
				}
				base, err = w.NewSnapshotFromEntries(ctx, 1, entries)
				return err
			})
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				err := s.Write(ctx, func(w *Writer) error {
					var err error
					base, err = w.NewSnapshot(ctx, 1, base, []Entry{{Tuple: int64(size + 1 + i), Event: int64(size + 1 + i)}})
					return err
				})
				if err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
