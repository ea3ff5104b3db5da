package userapi

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"

	"myelin/internal/sqldb"
	"myelin/internal/sqldb/sqldbtest"
	"myelin/setup/config"
	uapi "myelin/userapi/api"
	"myelin/userapi/storage"
)

// benchAPI is newTestAPI with the database handle kept, to count the
// statements an operation runs.
func benchAPI(b *testing.B, dialect string) (*UserAPI, *sqldb.DB) {
	b.Helper()
	ctx := context.Background()
	db, err := sqldb.Open(ctx, sqldbtest.URL(b, dialect), sqldb.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { db.Close() })
	cfg := config.Defaults()
	cfg.ServerName = "test.local"
	cfg.Registration.BcryptCost = 4
	u, err := New(ctx, db, nil, cfg, quietLog())
	if err != nil {
		b.Fatal(err)
	}
	return u, db
}

// runQueryKeys runs /keys/query for want b.N times and reports the
// statements one call runs.
func runQueryKeys(b *testing.B, u *UserAPI, db *sqldb.DB, want map[string][]string) {
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	start := db.Queries()
	for range b.N {
		resp, err := u.QueryKeys(ctx, uapi.QueryKeysRequest{DeviceKeys: want, Requester: "@user0:test.local"})
		if err != nil || len(resp.DeviceKeys) != len(want) {
			b.Fatal(len(resp.DeviceKeys), err)
		}
	}
	b.ReportMetric(float64(db.Queries()-start)/float64(b.N), "queries/op")
}

// BenchmarkQueryKeysLocal is /keys/query for 1,000 local users with a
// device each, as a client asks when it joins a large encrypted room.
func BenchmarkQueryKeysLocal(b *testing.B) {
	for _, dialect := range sqldbtest.Dialects {
		b.Run(dialect, func(b *testing.B) {
			ctx := context.Background()
			u, db := benchAPI(b, dialect)
			want := map[string][]string{}
			for i := range 1000 {
				a := mustCreate(b, u, fmt.Sprintf("user%d", i), "")
				dev, _ := mustLogin(b, u, a.UserID, "DEV")
				keys := fmt.Sprintf(`{"user_id":%q,"device_id":"DEV","algorithms":["a"],"keys":{"ed25519:DEV":"k%d"}}`, a.UserID, i)
				if _, err := u.UploadKeys(ctx, uapi.UploadKeysRequest{UserID: a.UserID, DeviceID: dev.DeviceID, DeviceKeys: json.RawMessage(keys)}); err != nil {
					b.Fatal(err)
				}
				want[a.UserID] = nil
			}
			runQueryKeys(b, u, db, want)
		})
	}
}

// BenchmarkQueryKeysRemote is /keys/query for 1,000 users of another
// server whose device lists are cached (they share a room with a local
// user): answered from the cache, no request to their server.
func BenchmarkQueryKeysRemote(b *testing.B) {
	for _, dialect := range sqldbtest.Dialects {
		b.Run(dialect, func(b *testing.B) {
			ctx := context.Background()
			u, db := benchAPI(b, dialect)
			local := mustCreate(b, u, "user0", "").UserID
			member := func(userID string, isLocal bool) {
				if _, err := db.Exec(ctx, `INSERT INTO userapi_room_members (room_id, user_id, membership, display_name, event_id, is_local)
					VALUES ('!big:remote.test', $1, 'join', '', $2, $3)`, userID, "$"+userID, isLocal); err != nil {
					b.Fatal(err)
				}
			}
			member(local, true)
			want := map[string][]string{}
			for i := range 1000 {
				id := fmt.Sprintf("@user%d:remote.test", i)
				member(id, false)
				keys := fmt.Sprintf(`{"user_id":%q,"device_id":"DEV","algorithms":["a"],"keys":{"ed25519:DEV":"k%d"}}`, id, i)
				if _, err := u.store.ReplaceRemoteDeviceList(ctx, id, 1, []storage.DeviceKeys{{UserID: id, DeviceID: "DEV", KeyJSON: keys}}, nil); err != nil {
					b.Fatal(err)
				}
				want[id] = nil
			}
			runQueryKeys(b, u, db, want)
		})
	}
}
