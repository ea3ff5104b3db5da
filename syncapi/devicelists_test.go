package syncapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"testing"
	"time"

	"myelin/internal/poll"
	"myelin/internal/sqldb/sqldbtest"
	"myelin/internal/testserver"
)

type deviceLists struct {
	Changed []string `json:"changed"`
	Left    []string `json:"left"`
}

// TestDeviceLists: an incremental /sync lists in device_lists.changed the
// users sharing a room whose keys changed and those who newly joined one
// of the user's rooms or were invited to one, and in left those with whom the user shares no
// room any more, whoever left; users sharing no room are not listed.
func TestDeviceLists(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		srv := testserver.Start(t, testserver.Config(t.TempDir(), dbURL))
		alice, bob, carol, dan := srv.Register(t, "alice"), srv.Register(t, "bob"), srv.Register(t, "carol"), srv.Register(t, "dan")
		id := func(c *testserver.Client) (string, string) {
			r := c.Do(t, "GET", v3+"/account/whoami", nil).MustOK(t)
			return r.String("user_id"), r.String("device_id")
		}
		carolID, carolDev := id(carol)
		danID, danDev := id(dan)
		room := alice.Do(t, "POST", v3+"/createRoom", map[string]any{"preset": "public_chat"}).MustOK(t).String("room_id")
		join := func(t *testing.T, c *testserver.Client) {
			c.Do(t, "POST", v3+"/rooms/"+url.PathEscape(room)+"/join", map[string]any{}).MustOK(t)
		}
		leave := func(t *testing.T, c *testserver.Client) {
			c.Do(t, "POST", v3+"/rooms/"+url.PathEscape(room)+"/leave", map[string]any{}).MustOK(t)
		}
		upload := func(t *testing.T, c *testserver.Client, userID, dev, key string) {
			c.Do(t, "POST", v3+"/keys/upload", map[string]any{"device_keys": map[string]any{
				"user_id": userID, "device_id": dev, "algorithms": []string{"a"}, "keys": map[string]string{"k:" + dev: key},
			}}).MustOK(t)
		}
		join(t, bob)
		// expect syncs alice from since until her device lists match.
		since := syncFrom(t, alice, "", 0).String("next_batch")
		expect := func(t *testing.T, step func(), changed, left []string) {
			t.Helper()
			step()
			poll.Until(t, 10*time.Second, func() error {
				r := syncFrom(t, alice, since, 0)
				var body struct {
					DeviceLists deviceLists `json:"device_lists"`
				}
				_ = json.Unmarshal(r.Raw, &body)
				slices.Sort(body.DeviceLists.Changed)
				if fmt.Sprint(body.DeviceLists.Changed) != fmt.Sprint(changed) || fmt.Sprint(body.DeviceLists.Left) != fmt.Sprint(left) {
					return fmt.Errorf("device lists %+v, want changed %v left %v", body.DeviceLists, changed, left)
				}
				// An empty list is left out, so that a client waiting
				// for a change never reads "none" in an answer that came
				// for something else.
				dl, _ := r.Body["device_lists"].(map[string]any)
				for key, want := range map[string][]string{"changed": changed, "left": left} {
					if _, ok := dl[key]; ok != (len(want) > 0) {
						t.Fatalf("device_lists %v: %q given %v, want %v", dl, key, ok, len(want) > 0)
					}
				}
				since = r.String("next_batch")
				return nil
			})
		}
		bobID, _ := id(bob)
		first := since
		t.Run("a user joins", func(t *testing.T) {
			expect(t, func() { join(t, carol) }, []string{carolID}, nil)
		})
		t.Run("keys of a user sharing a room", func(t *testing.T) {
			expect(t, func() { upload(t, carol, carolID, carolDev, "1") }, []string{carolID}, nil)
		})
		// dan shares no room with alice: his keys are none of her business;
		// carol's change comes after, to show dan's was left out.
		t.Run("keys of a user sharing no room", func(t *testing.T) {
			expect(t, func() { upload(t, dan, danID, danDev, "1"); upload(t, carol, carolID, carolDev, "2") }, []string{carolID}, nil)
		})
		t.Run("a user leaves", func(t *testing.T) {
			expect(t, func() { leave(t, carol) }, nil, []string{carolID})
		})
		// /keys/changes answers the same for a range of tokens.
		t.Run("keys changes", func(t *testing.T) {
			r := alice.Do(t, "GET", v3+"/keys/changes?from="+url.QueryEscape(first)+"&to="+url.QueryEscape(since), nil).MustOK(t)
			var dl deviceLists
			_ = json.Unmarshal(r.Raw, &dl)
			if fmt.Sprint(dl.Changed) != "[]" || fmt.Sprint(dl.Left) != fmt.Sprint([]string{carolID}) {
				t.Fatalf("keys changes over the whole range: %s", r.Raw)
			}
			for _, q := range []string{"from=x&to=" + url.QueryEscape(since), "from=" + url.QueryEscape(first), ""} {
				if r := alice.Do(t, "GET", v3+"/keys/changes?"+q, nil); r.Status != 400 || r.String("errcode") != "M_INVALID_PARAM" {
					t.Errorf("keys changes ?%s: %d %s", q, r.Status, r.Raw)
				}
			}
		})
		// An invited user's devices matter before it joins (clients
		// encrypt for invited members): it counts as one who joined.
		t.Run("a user is invited", func(t *testing.T) {
			expect(t, func() {
				alice.Do(t, "POST", v3+"/rooms/"+url.PathEscape(room)+"/invite", map[string]string{"user_id": danID}).MustOK(t)
			}, []string{danID}, nil)
		})
		// One who left and is invited back counts as new too.
		t.Run("a user who left is invited back", func(t *testing.T) {
			expect(t, func() {
				alice.Do(t, "POST", v3+"/rooms/"+url.PathEscape(room)+"/invite", map[string]string{"user_id": carolID}).MustOK(t)
			}, []string{carolID}, nil)
		})
		t.Run("a user leaves and is invited back between two syncs", func(t *testing.T) {
			expect(t, func() { join(t, carol) }, []string{carolID}, nil)
			expect(t, func() {
				leave(t, carol)
				alice.Do(t, "POST", v3+"/rooms/"+url.PathEscape(room)+"/invite", map[string]string{"user_id": carolID}).MustOK(t)
			}, []string{carolID}, nil)
		})
		// Once the userapi pruned the stream past a token, that token gets
		// every user sharing a room (bob, whose keys never changed,
		// included), and a token at the head gets the usual nothing.
		t.Run("a token older than the stream keeps", func(t *testing.T) {
			users, ok := srv.Users().(interface {
				PruneDeviceLists(context.Context, time.Time) error
			})
			if !ok {
				t.Fatal("the userapi cannot prune its device-list stream")
			}
			now := time.Now()
			for _, at := range []time.Time{now, now.Add(8 * 24 * time.Hour)} {
				if err := users.PruneDeviceLists(context.Background(), at); err != nil {
					t.Fatal(err)
				}
			}
			changes := func(from string) deviceLists {
				r := alice.Do(t, "GET", v3+"/keys/changes?from="+url.QueryEscape(from)+"&to="+url.QueryEscape(since), nil).MustOK(t)
				var dl deviceLists
				_ = json.Unmarshal(r.Raw, &dl)
				slices.Sort(dl.Changed)
				return dl
			}
			aliceID, _ := id(alice)
			if dl := changes(first); !slices.Contains(dl.Changed, aliceID) || !slices.Contains(dl.Changed, bobID) {
				t.Errorf("changes since a pruned token: %+v, want everyone sharing a room", dl)
			}
			if dl := changes(since); len(dl.Changed)+len(dl.Left) != 0 {
				t.Errorf("changes since the head: %+v, want none", dl)
			}
		})
		t.Run("the user itself leaves", func(t *testing.T) {
			expect(t, func() { leave(t, alice) }, nil, []string{bobID})
		})
	})
}
