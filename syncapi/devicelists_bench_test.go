package syncapi

import (
	"context"
	"fmt"
	"io"
	"testing"

	"github.com/sirupsen/logrus"

	"myelin/internal/sqldb"
	"myelin/internal/sqldb/sqldbtest"
	"myelin/setup/config"
	"myelin/syncapi/storage"
	"myelin/userapi"
	uapi "myelin/userapi/api"
)

// BenchmarkDeviceListChanges is the device_lists part of an incremental
// /sync (and /keys/changes) for a user in a room of 10,000 members, with
// the real userapi's device-list stream, its rows written directly: one
// member's keys changed; 1,000 members' keys changed; the user just
// joined the room (all 10,000 are new to it); and a token older than the
// pruned stream keeps (all 10,000 again). It reports the statements one
// computation runs.
func BenchmarkDeviceListChanges(b *testing.B) {
	const members = 10_000
	for _, dialect := range sqldbtest.Dialects {
		b.Run(dialect, func(b *testing.B) {
			ctx := context.Background()
			db, err := sqldb.Open(ctx, sqldbtest.URL(b, dialect), sqldb.Options{})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { db.Close() })
			cfg := config.Defaults()
			cfg.ServerName = "test.local"
			log := logrus.New()
			log.SetOutput(io.Discard)
			users, err := userapi.New(ctx, db, nil, cfg, logrus.NewEntry(log))
			if err != nil {
				b.Fatal(err)
			}
			store, err := storage.Open(ctx, db)
			if err != nil {
				b.Fatal(err)
			}
			s := &SyncAPI{store: store, users: users}
			const room, me = "!big:test.local", "@m0:test.local"
			// Members m0..m9999 joined at positions 1..10000 (m0, the
			// syncing user, last); m0..m999 changed keys at device-list
			// positions 1..1000.
			err = db.WithTx(ctx, func(tx *sqldb.Tx) error {
				for i := range members {
					u, pos := fmt.Sprintf("@m%d:test.local", i), int64(members-i)
					if _, err := tx.Exec(ctx, `INSERT INTO syncapi_current_state
						(room_id, event_type, state_key, event_id, membership, sender, pos, event_json)
						VALUES ($1, 'm.room.member', $2, $3, 'join', $2, $4, '{}')`, room, u, fmt.Sprintf("$j%d", i), pos); err != nil {
						return err
					}
					if _, err := tx.Exec(ctx, `INSERT INTO syncapi_membership_log (room_id, user_id, membership, pos)
						VALUES ($1, $2, 'join', $3)`, room, u, pos); err != nil {
						return err
					}
					if i < 1000 {
						if _, err := tx.Exec(ctx, `INSERT INTO userapi_device_list_changes (user_id, pos) VALUES ($1, $2)`, u, i+1); err != nil {
							return err
						}
					}
				}
				_, err := tx.Exec(ctx, `UPDATE userapi_stream_positions SET pos = 1000 WHERE stream = 'device_lists'`)
				return err
			})
			if err != nil {
				b.Fatal(err)
			}
			if dialect == "postgres" {
				// As autovacuum would once the rows are in: without
				// statistics the planner takes the tables for empty.
				if _, err := db.Exec(ctx, `ANALYZE`); err != nil {
					b.Fatal(err)
				}
			}
			tok := func(pdu, dl int64) Token {
				var t Token
				t[pduStream], t[deviceListStream] = pdu, dl
				return t
			}
			for _, tc := range []struct {
				name      string
				since, to Token
				floor     int64
				want      int
			}{
				{"one changed", tok(members, 999), tok(members, 1000), 0, 1},
				{"1000 changed", tok(members, 0), tok(members, 1000), 0, 1000},
				{"joined the room", tok(members-1, 1000), tok(members, 1000), 0, members - 1}, // all but itself
				{"token below the floor", tok(members, 10), tok(members, 1000), 500, members},
			} {
				b.Run(tc.name, func(b *testing.B) {
					if _, err := db.Exec(ctx, `UPDATE userapi_stream_positions SET pos = $1 WHERE stream = 'device_lists_floor'`, tc.floor); err != nil {
						b.Fatal(err)
					}
					b.ReportAllocs()
					b.ResetTimer()
					start := db.Queries()
					for range b.N {
						since := tc.since
						req := &syncRequest{dev: &uapi.Device{UserID: me}, since: &since, to: tc.to, b: &buildState{}}
						dl, err := s.deviceListChanges(ctx, req)
						if err != nil {
							b.Fatal(err)
						}
						if len(dl.Changed) != tc.want {
							b.Fatalf("%d changed, want %d", len(dl.Changed), tc.want)
						}
					}
					b.ReportMetric(float64(db.Queries()-start)/float64(b.N), "queries/op")
				})
			}
		})
	}
}
