package userapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"myelin/internal/poll"
	"myelin/internal/sqldb/sqldbtest"
	uapi "myelin/userapi/api"
	"myelin/userapi/storage"
)

// devicesServer stands in for another server's /user/devices: each
// request waits until the test releases it (or fails it), so the test
// sees what the userapi does while a fetch is under way.
type devicesServer struct {
	mu       sync.Mutex
	requests int
	answers  chan error // nil: answer the current list
	streamID int64
	devices  []uapi.UserDevice
}

func (d *devicesServer) QueryKeys(context.Context, string, map[string][]string) (*uapi.QueryKeysResponse, error) {
	return nil, errors.New("not served")
}

func (d *devicesServer) ClaimKeys(context.Context, string, map[string]map[string]string) (*uapi.ClaimKeysResponse, error) {
	return nil, errors.New("not served")
}

func (d *devicesServer) UserDevices(ctx context.Context, server, userID string) (*uapi.UserDevices, error) {
	d.mu.Lock()
	d.requests++
	d.mu.Unlock()
	select {
	case err := <-d.answers:
		if err != nil {
			return nil, err
		}
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return &uapi.UserDevices{UserID: userID, StreamID: d.streamID, Devices: append([]uapi.UserDevice(nil), d.devices...)}, nil
}

func (d *devicesServer) count() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.requests
}

func (d *devicesServer) set(streamID int64, devs ...string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.streamID = streamID
	d.devices = nil
	for _, id := range devs {
		d.devices = append(d.devices, uapi.UserDevice{DeviceID: id, Keys: json.RawMessage(`{"device_id":"` + id + `"}`)})
	}
}

// TestDeviceListResync: an update that shows a gap, or names a user not
// tracked yet, is applied without waiting for the origin's answer to
// /user/devices (the origin may answer only after it has ours); the list
// is fetched in the background, once for several updates, again when an
// update came during the fetch, retried after a failure; a /keys/query
// waits for it; and a restart fetches the lists left stale.
func TestDeviceListResync(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		u := newTestAPI(t, dbURL, nil)
		remote := &devicesServer{answers: make(chan error)}
		u.SetRemoteKeys(remote)
		u.resyncs.retryIn = func(int) time.Duration { return 10 * time.Millisecond }
		if err := u.resyncs.start(ctx); err != nil {
			t.Fatal(err)
		}
		defer func() { cancel(); u.resyncs.stop() }()

		const alice = "@alice:remote.test"
		share := func(userID string) {
			t.Helper()
			err := u.store.ApplyMembers(ctx, "!room:test.local", nil, []storage.Member{
				{UserID: "@bob:test.local", Membership: "join", EventID: "$bob", IsLocal: true},
				{UserID: userID, Membership: "join", EventID: "$" + userID},
			})
			if err != nil {
				t.Fatal(err)
			}
		}
		share(alice)
		devicesOf := func(userID string) (string, bool) {
			t.Helper()
			_, stale, found, devs, err := u.store.RemoteDeviceList(ctx, userID)
			if err != nil || !found {
				t.Fatalf("list of %s: found %v, %v", userID, found, err)
			}
			var ids []string
			for _, d := range devs {
				ids = append(ids, d.DeviceID)
			}
			return fmt.Sprint(ids), stale
		}
		update := func(dev string, stream int64, prev ...int64) {
			t.Helper()
			done := make(chan error, 1)
			go func() {
				done <- u.DeviceListUpdate(ctx, "remote.test", uapi.DeviceListUpdate{UserID: alice, DeviceID: dev, StreamID: stream, PrevID: prev})
			}()
			select {
			case err := <-done:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the update waited for the fetch of the list")
			}
		}
		answer := func(err error) {
			t.Helper()
			select {
			case remote.answers <- err:
			case <-time.After(5 * time.Second):
				t.Fatal("no fetch of the list")
			}
		}

		// Untracked: the update returns at once, the list is wanted
		// (stale, so a restart would fetch it), then fetched.
		remote.set(1, "A")
		update("A", 1)
		if devs, stale := devicesOf(alice); devs != "[]" || !stale {
			t.Fatalf("before the answer: %s stale %v", devs, stale)
		}
		answer(nil)
		poll.Until(t, 5*time.Second, func() error {
			if devs, stale := devicesOf(alice); devs != "[A]" || stale {
				return fmt.Errorf("devices %s stale %v", devs, stale)
			}
			return nil
		})

		// A gap, and two more updates while the fetch hangs: the answer
		// may predate them, so the list stays stale and is fetched once
		// more (not once per update).
		before := remote.count()
		remote.set(3, "A", "B")
		update("B", 3, 2)
		poll.Until(t, 5*time.Second, func() error {
			if remote.count() != before+1 {
				return fmt.Errorf("%d fetches", remote.count()-before)
			}
			return nil
		})
		update("C", 5, 4)
		update("D", 7, 6)
		remote.set(7, "A", "B", "C", "D")
		answer(nil)
		answer(nil)
		poll.Until(t, 5*time.Second, func() error {
			if devs, stale := devicesOf(alice); devs != "[A B C D]" || stale {
				return fmt.Errorf("devices %s stale %v", devs, stale)
			}
			return nil
		})
		if n := remote.count() - before; n != 2 {
			t.Fatalf("%d fetches for three updates, want 2", n)
		}

		// A failed fetch is retried; a /keys/query waits for it.
		remote.set(9, "E")
		update("E", 9, 8)
		answer(errors.New("server down"))
		got := make(chan *uapi.QueryKeysResponse, 1)
		go func() {
			resp, err := u.QueryKeys(ctx, uapi.QueryKeysRequest{DeviceKeys: map[string][]string{alice: nil}, Timeout: 5 * time.Second})
			if err != nil {
				t.Error(err)
			}
			got <- resp
		}()
		answer(nil)
		select {
		case resp := <-got:
			if _, ok := resp.DeviceKeys[alice]["E"]; !ok || len(resp.DeviceKeys[alice]) != 1 {
				t.Fatalf("query after the retry: %v", resp.DeviceKeys)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the query did not return")
		}

		// An update of a user not tracked who did not seem to share a
		// room is decided on by the resyncer (after the view of
		// membership caught up): tracked and fetched if it does, else
		// dropped.
		const dave, erin = "@dave:remote.test", "@erin:remote.test"
		share(dave)
		before = remote.count()
		u.resyncs.kickUnsure(erin)
		u.resyncs.kickUnsure(dave)
		remote.set(4, "G")
		answer(nil)
		poll.Until(t, 5*time.Second, func() error {
			if devs, stale := devicesOf(dave); devs != "[G]" || stale {
				return fmt.Errorf("dave's devices %s stale %v", devs, stale)
			}
			return nil
		})
		if n := remote.count() - before; n != 1 {
			t.Fatalf("%d fetches, want dave's alone", n)
		}
		if tracked, err := u.store.IsTracked(ctx, erin); tracked || err != nil {
			t.Fatalf("erin, who shares no room, is tracked: %v %v", tracked, err)
		}

		// A list left stale by a previous run is fetched at start.
		const carol = "@carol:remote.test"
		share(carol)
		if err := u.store.MarkDeviceListWanted(ctx, carol); err != nil {
			t.Fatal(err)
		}
		u2 := newTestAPI(t, dbURL, nil)
		u2.SetRemoteKeys(remote)
		ctx2, cancel2 := context.WithCancel(ctx)
		defer func() { cancel2(); u2.resyncs.stop() }()
		remote.set(1, "F")
		if err := u2.resyncs.start(ctx2); err != nil {
			t.Fatal(err)
		}
		answer(nil)
		poll.Until(t, 5*time.Second, func() error {
			if devs, stale := devicesOf(carol); devs != "[F]" || stale {
				return fmt.Errorf("carol's devices %s stale %v", devs, stale)
			}
			return nil
		})
	})
}
