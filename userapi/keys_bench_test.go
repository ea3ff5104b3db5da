package userapi

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"

	"myelin/internal/sqldb/sqldbtest"
	uapi "myelin/userapi/api"
)

// BenchmarkQueryKeysLocal is /keys/query for 1,000 local users with a
// device each, as a client asks when it joins a large encrypted room.
func BenchmarkQueryKeysLocal(b *testing.B) {
	ctx := context.Background()
	u := newTestAPI(b, sqldbtest.URL(b, "sqlite"), nil)
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
	b.ResetTimer()
	for range b.N {
		resp, err := u.QueryKeys(ctx, uapi.QueryKeysRequest{DeviceKeys: want, Requester: "@user0:test.local"})
		if err != nil || len(resp.DeviceKeys) != 1000 {
			b.Fatal(len(resp.DeviceKeys), err)
		}
	}
}
