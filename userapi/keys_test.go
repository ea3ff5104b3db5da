package userapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"myelin/internal/sqldb/sqldbtest"
	uapi "myelin/userapi/api"
	"myelin/userapi/storage"
)

// TestRemoteDeviceListUpdates: m.device_list_update EDUs apply to a
// tracked remote user's list only in order (prev_id the last stream_id
// applied), only from the user's own server; older ones and replays are
// dropped; a gap marks the list stale, and it stays stale (no update is
// applied on top) until fetched again. Each change that counts moves the
// device-list stream.
func TestRemoteDeviceListUpdates(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		ctx := context.Background()
		u := newTestAPI(t, dbURL, nil)
		const alice = "@alice:remote.test"
		if _, err := u.store.ReplaceRemoteDeviceList(ctx, alice, 10, []storage.DeviceKeys{{UserID: alice, DeviceID: "A", KeyJSON: `{"k":"A"}`}}, nil); err != nil {
			t.Fatal(err)
		}
		upd := func(dev string, stream int64, prev []int64, deleted bool) uapi.DeviceListUpdate {
			return uapi.DeviceListUpdate{UserID: alice, DeviceID: dev, StreamID: stream, PrevID: prev, Deleted: deleted,
				Keys: json.RawMessage(`{"k":"` + dev + `"}`)}
		}
		for _, tc := range []struct {
			name      string
			origin    string
			update    uapi.DeviceListUpdate
			wantDevs  []string
			wantStale bool
			moves     bool // the device-list stream moves
		}{
			{"next update", "remote.test", upd("B", 11, []int64{10}, false), []string{"A", "B"}, false, true},
			{"replayed", "remote.test", upd("B", 11, []int64{10}, false), []string{"A", "B"}, false, false},
			{"older", "remote.test", upd("C", 5, nil, false), []string{"A", "B"}, false, false},
			{"deletion", "remote.test", upd("A", 12, []int64{11}, true), []string{"B"}, false, true},
			{"no prev_id", "remote.test", upd("C", 13, nil, false), []string{"B", "C"}, false, true},
			{"from another server", "evil.test", upd("D", 14, []int64{13}, false), []string{"B", "C"}, false, false},
			{"gap", "remote.test", upd("E", 20, []int64{15}, false), []string{"B", "C"}, true, true},
			{"after the gap", "remote.test", upd("F", 21, []int64{20}, false), []string{"B", "C"}, true, true},
		} {
			t.Run(tc.name, func(t *testing.T) {
				before, err := u.DeviceListsPos(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if err := u.DeviceListUpdate(ctx, tc.origin, tc.update); err != nil {
					t.Fatal(err)
				}
				_, stale, found, devs, err := u.store.RemoteDeviceList(ctx, alice)
				if err != nil || !found {
					t.Fatalf("list: found %v, %v", found, err)
				}
				var ids []string
				for _, d := range devs {
					ids = append(ids, d.DeviceID)
				}
				if fmt.Sprint(ids) != fmt.Sprint(tc.wantDevs) || stale != tc.wantStale {
					t.Fatalf("devices %v stale %v, want %v stale %v", ids, stale, tc.wantDevs, tc.wantStale)
				}
				after, err := u.DeviceListsPos(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if (after > before) != tc.moves {
					t.Fatalf("device-list stream from %d to %d, want moved %v", before, after, tc.moves)
				}
				if tc.moves {
					changed, all, err := u.DeviceListChanges(ctx, before, after)
					if err != nil || all || !slices.Equal(changed, []string{alice}) {
						t.Fatalf("changes: %v (all %v), %v", changed, all, err)
					}
				}
			})
		}
		// A user whose list is not tracked is fetched whole when needed:
		// its updates are dropped.
		if err := u.DeviceListUpdate(ctx, "other.test", uapi.DeviceListUpdate{UserID: "@bob:other.test", DeviceID: "X", StreamID: 1}); err != nil {
			t.Fatal(err)
		}
		if _, _, found, _, err := u.store.RemoteDeviceList(ctx, "@bob:other.test"); found || err != nil {
			t.Fatalf("an untracked user's update was stored: %v %v", found, err)
		}
	})
}

// TestPruneDeviceLists: a prune marks the stream's head; once a mark is
// older than the retention, the rows of remote users at or below it go and
// it becomes the floor, below which DeviceListChanges answers "all";
// local users' rows stay (their stream_id for other servers), and so does
// every change above the floor.
func TestPruneDeviceLists(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		ctx := context.Background()
		u := newTestAPI(t, dbURL, nil)
		local := mustCreate(t, u, "alice", "").UserID
		const old, recent = "@old:remote.test", "@recent:remote.test"
		move := func(userID string) int64 {
			t.Helper()
			var pos int64
			var err error
			if userID == local {
				var c storage.DeviceListChange
				c, err = u.store.DeviceAdded(ctx, local, "D")
				pos = c.Pos
			} else {
				pos, err = u.store.ReplaceRemoteDeviceList(ctx, userID, 1, nil, nil)
			}
			if err != nil {
				t.Fatal(err)
			}
			return pos
		}
		start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
		base, err := u.DeviceListsPos(ctx)
		if err != nil {
			t.Fatal(err)
		}
		move(old)
		localPos := move(local)
		// The first prune only marks: nothing is older than the retention.
		if err := u.PruneDeviceLists(ctx, start); err != nil {
			t.Fatal(err)
		}
		recentPos := move(recent)
		if err := u.PruneDeviceLists(ctx, start.Add(DeviceListRetention/2)); err != nil {
			t.Fatal(err)
		}
		if got, all, err := u.DeviceListChanges(ctx, base, recentPos); err != nil || all || len(got) != 3 {
			t.Fatalf("before the retention passed: %v (all %v), %v", got, all, err)
		}
		// A week after the first mark: its position is the floor.
		if err := u.PruneDeviceLists(ctx, start.Add(DeviceListRetention+time.Minute)); err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			name     string
			from, to int64
			want     []string
			all      bool
		}{
			{"token below the floor", base, recentPos, nil, true},
			{"token just below the floor", localPos - 1, recentPos, nil, true},
			{"token at the floor", localPos, recentPos, []string{recent}, false},
			{"empty range at the floor", localPos, localPos, nil, false},
		} {
			t.Run(tc.name, func(t *testing.T) {
				got, all, err := u.DeviceListChanges(ctx, tc.from, tc.to)
				if err != nil || all != tc.all || !slices.Equal(got, tc.want) {
					t.Fatalf("changes in (%d, %d]: %v (all %v), %v; want %v (all %v)", tc.from, tc.to, got, all, err, tc.want, tc.all)
				}
			})
		}
		for user, want := range map[string]int64{old: 0, local: localPos, recent: recentPos} {
			if got, err := u.store.DeviceListPos(ctx, user); err != nil || got != want {
				t.Errorf("row of %s: %d, %v; want %d", user, got, err, want)
			}
		}
	})
}

// TestLocalKeys: uploading the same device keys again changes nothing,
// new ones move the user's device list; one-time keys are claimed once
// each, then the fallback key, which stays but is no longer listed as
// unused until another is uploaded; deleting the device deletes
// its keys and moves the list.
func TestLocalKeys(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		ctx := context.Background()
		u := newTestAPI(t, dbURL, nil)
		a := mustCreate(t, u, "alice", "")
		dev, _, err := u.CreateDevice(ctx, uapi.CreateDeviceRequest{UserID: a.UserID, DeviceID: "D"})
		if err != nil {
			t.Fatal(err)
		}
		pos := func() int64 {
			p, err := u.store.DeviceListPos(ctx, a.UserID)
			if err != nil {
				t.Fatal(err)
			}
			return p
		}
		upload := func(keys string, otks, fallback map[string]json.RawMessage) map[string]int {
			t.Helper()
			var dk json.RawMessage
			if keys != "" {
				dk = json.RawMessage(keys)
			}
			counts, err := u.UploadKeys(ctx, uapi.UploadKeysRequest{UserID: a.UserID, DeviceID: dev.DeviceID,
				DeviceKeys: dk, OneTimeKeys: otks, FallbackKeys: fallback})
			if err != nil {
				t.Fatal(err)
			}
			return counts
		}
		upload(`{"v":1}`, nil, nil)
		p1 := pos()
		upload(`{"v":1}`, nil, nil)
		if pos() != p1 || p1 == 0 {
			t.Fatalf("same keys again moved the list: %d -> %d", p1, pos())
		}
		upload(`{"v":2}`, nil, nil)
		if pos() <= p1 {
			t.Fatalf("new keys did not move the list")
		}
		counts := upload("", map[string]json.RawMessage{"alg:1": json.RawMessage(`"k1"`), "alg:2": json.RawMessage(`"k2"`)},
			map[string]json.RawMessage{"alg:F": json.RawMessage(`"f"`)})
		if counts["alg"] != 2 {
			t.Fatalf("counts %v", counts)
		}
		kc := func() string {
			t.Helper()
			c, err := u.KeyCounts(ctx, a.UserID, dev.DeviceID)
			if err != nil {
				t.Fatal(err)
			}
			return fmt.Sprint(c.OneTime, c.UnusedFallback)
		}
		if got := kc(); got != "map[alg:2] [alg]" {
			t.Fatalf("key counts before claims: %s", got)
		}
		var got []string
		for range 4 {
			id, _, ok, err := u.store.ClaimKey(ctx, a.UserID, dev.DeviceID, "alg")
			if err != nil || !ok {
				t.Fatalf("claim: %v %v", ok, err)
			}
			got = append(got, id)
		}
		if fmt.Sprint(got) != fmt.Sprint([]string{"alg:1", "alg:2", "alg:F", "alg:F"}) {
			t.Fatalf("claimed %v", got)
		}
		if got := kc(); got != "map[] []" {
			t.Fatalf("key counts after the fallback key was claimed: %s", got)
		}
		upload("", nil, map[string]json.RawMessage{"alg:G": json.RawMessage(`"g"`)})
		if got := kc(); got != "map[] [alg]" {
			t.Fatalf("key counts after a new fallback key: %s", got)
		}
		if _, _, ok, err := u.store.ClaimKey(ctx, a.UserID, dev.DeviceID, "other"); ok || err != nil {
			t.Fatalf("claimed a key of an algorithm never uploaded: %v %v", ok, err)
		}
		p2 := pos()
		if err := u.DeleteDevices(ctx, a.UserID, []string{dev.DeviceID}); err != nil {
			t.Fatal(err)
		}
		ud, err := u.UserDevices(ctx, a.UserID)
		if err != nil || len(ud.Devices) != 0 || ud.StreamID <= p2 {
			t.Fatalf("after deleting the device: %+v, %v", ud, err)
		}
		if _, _, ok, _ := u.store.ClaimKey(ctx, a.UserID, dev.DeviceID, "alg"); ok {
			t.Fatalf("the deleted device's fallback key is still there")
		}
	})
}

// TestUploadKeysDeletedDevice: keys uploaded for a device that is deleted
// meanwhile (the request was authenticated before the deletion) are
// refused as from an unknown token and not stored, so a device logged in
// later under the same ID starts with no keys; whether the upload comes
// after the deletion or runs alongside it.
func TestUploadKeysDeletedDevice(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		ctx := context.Background()
		u := newTestAPI(t, dbURL, nil)
		a := mustCreate(t, u, "alice", "")
		upload := func(dev string, i int) error {
			_, err := u.UploadKeys(ctx, uapi.UploadKeysRequest{UserID: a.UserID, DeviceID: dev,
				DeviceKeys:  json.RawMessage(fmt.Sprintf(`{"user_id":%q,"device_id":%q,"keys":{"ed25519:%s":"k%d"}}`, a.UserID, dev, dev, i)),
				OneTimeKeys: map[string]json.RawMessage{fmt.Sprintf("alg:%d", i): json.RawMessage(`"otk"`)}})
			return err
		}
		// fresh logs in under dev again and checks it inherited nothing.
		fresh := func(t *testing.T, dev string) {
			t.Helper()
			if _, _, err := u.CreateDevice(ctx, uapi.CreateDeviceRequest{UserID: a.UserID, DeviceID: dev}); err != nil {
				t.Fatal(err)
			}
			devs, err := u.store.LocalDeviceKeys(ctx, a.UserID)
			if err != nil {
				t.Fatal(err)
			}
			for _, d := range devs {
				if d.DeviceID == dev && d.KeyJSON != "" {
					t.Fatalf("the new %s has the deleted one's keys: %s", dev, d.KeyJSON)
				}
			}
			counts, err := u.KeyCounts(ctx, a.UserID, dev)
			if err != nil || len(counts.OneTime) != 0 {
				t.Fatalf("the new %s has the deleted one's one-time keys: %v, %v", dev, counts.OneTime, err)
			}
		}
		t.Run("after the deletion", func(t *testing.T) {
			if _, _, err := u.CreateDevice(ctx, uapi.CreateDeviceRequest{UserID: a.UserID, DeviceID: "LATE"}); err != nil {
				t.Fatal(err)
			}
			if err := u.DeleteDevices(ctx, a.UserID, []string{"LATE"}); err != nil {
				t.Fatal(err)
			}
			if err := upload("LATE", 0); !errors.Is(err, uapi.ErrUnknownToken) {
				t.Fatalf("upload for a deleted device: %v, want ErrUnknownToken", err)
			}
			fresh(t, "LATE")
		})
		t.Run("alongside the deletion", func(t *testing.T) {
			for round := range 10 {
				dev := fmt.Sprintf("RACE%d", round)
				if _, _, err := u.CreateDevice(ctx, uapi.CreateDeviceRequest{UserID: a.UserID, DeviceID: dev}); err != nil {
					t.Fatal(err)
				}
				// Uploads run until one is refused, or until the deletion
				// has returned: the one after that must be refused.
				deleted, done := make(chan struct{}), make(chan error, 1)
				go func() {
					for i := 1; ; i++ {
						select {
						case <-deleted:
							if err := upload(dev, i); !errors.Is(err, uapi.ErrUnknownToken) {
								done <- fmt.Errorf("upload after the deletion: %v, want ErrUnknownToken", err)
								return
							}
							done <- nil
							return
						default:
						}
						if err := upload(dev, i); err != nil {
							if errors.Is(err, uapi.ErrUnknownToken) {
								err = nil
							}
							done <- err
							return
						}
					}
				}()
				err := u.DeleteDevices(ctx, a.UserID, []string{dev})
				close(deleted)
				if err != nil {
					t.Fatal(err)
				}
				if err := <-done; err != nil {
					t.Fatal(err)
				}
				fresh(t, dev)
			}
		})
	})
}
