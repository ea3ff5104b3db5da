package setup_test

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"myelin/internal/poll"
	"myelin/internal/sqldb/sqldbtest"
	"myelin/internal/testserver"
)

// newClient registers localpart on srv with mautrix, the library Matrix
// apps are built on, and returns its client.
func newClient(t *testing.T, base, localpart string) *mautrix.Client {
	t.Helper()
	cli, err := mautrix.NewClient(base, "", "")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := cli.RegisterDummy(context.Background(), &mautrix.ReqRegister[any]{Username: localpart, Password: "password-" + localpart})
	if err != nil {
		t.Fatalf("register %s: %v", localpart, err)
	}
	cli.UserID, cli.AccessToken, cli.DeviceID = resp.UserID, resp.AccessToken, resp.DeviceID
	return cli
}

// collector follows one client's /sync and records the bodies of the
// messages in a room, in the order they arrive.
type collector struct {
	cli    *mautrix.Client
	room   id.RoomID
	filter string

	mu     sync.Mutex
	since  string
	bodies []string
	seen   map[id.EventID]bool
}

func newCollector(t *testing.T, cli *mautrix.Client, room id.RoomID) *collector {
	t.Helper()
	ctx := context.Background()
	// The limit is above the messages a test sends, so that a sync that
	// falls behind on a loaded machine is not limited (a limited timeline
	// is right then, but would hide events from the count).
	f, err := cli.CreateFilter(ctx, &mautrix.Filter{Room: &mautrix.RoomFilter{Timeline: &mautrix.FilterPart{Limit: 500}}})
	if err != nil {
		t.Fatalf("create filter: %v", err)
	}
	resp, err := cli.SyncRequest(ctx, 0, "", f.FilterID, false, event.PresenceOnline)
	if err != nil {
		t.Fatalf("initial sync: %v", err)
	}
	return &collector{cli: cli, room: room, filter: f.FilterID, since: resp.NextBatch, seen: map[id.EventID]bool{}}
}

// syncOnce runs one incremental long-poll and records what it brings.
func (c *collector) syncOnce(ctx context.Context, timeout int) error {
	c.mu.Lock()
	since := c.since
	c.mu.Unlock()
	resp, err := c.cli.SyncRequest(ctx, timeout, since, c.filter, false, event.PresenceOnline)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if jr, ok := resp.Rooms.Join[c.room]; ok {
		if jr.Timeline.Limited {
			return fmt.Errorf("timeline limited: events were skipped")
		}
		for _, ev := range jr.Timeline.Events {
			if ev.Type != event.EventMessage {
				continue
			}
			if c.seen[ev.ID] {
				return fmt.Errorf("event %s delivered twice", ev.ID)
			}
			c.seen[ev.ID] = true
			body, _ := ev.Content.Raw["body"].(string)
			c.bodies = append(c.bodies, body)
		}
	}
	c.since = resp.NextBatch
	return nil
}

func (c *collector) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.bodies)
}

func wantBodies(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("message %d", i)
	}
	return out
}

func checkInOrder(t *testing.T, who string, got []string, n int) {
	t.Helper()
	want := wantBodies(n)
	if len(got) != n {
		t.Fatalf("%s saw %d messages, want %d", who, len(got), n)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("%s: message %d is %q, want %q", who, i, got[i], want[i])
		}
	}
}

// history pages back through the room with /messages and returns the
// message bodies oldest first.
func history(t *testing.T, cli *mautrix.Client, room id.RoomID) []string {
	t.Helper()
	var bodies []string
	from := ""
	for page := 0; page < 100; page++ {
		resp, err := cli.Messages(context.Background(), room, from, "", mautrix.DirectionBackward, nil, 37)
		if err != nil {
			t.Fatalf("messages: %v", err)
		}
		for _, ev := range resp.Chunk {
			if ev.Type == event.EventMessage {
				body, _ := ev.Content.Raw["body"].(string)
				bodies = append([]string{body}, bodies...)
			}
		}
		if resp.End == "" {
			return bodies
		}
		from = resp.End
	}
	t.Fatal("pagination did not end")
	return nil
}

// TestChatEndToEnd is the foundation's acceptance test: two users on a real
// server, driven by mautrix, chat through a room, see every message in
// order through incremental /sync, and find history, state and sync tokens
// intact after the server restarts on the same data.
func TestChatEndToEnd(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		ctx := context.Background()
		cfg := testserver.Config(t.TempDir(), dbURL)
		srv := testserver.Start(t, cfg)

		alice := newClient(t, srv.URL, "alice")
		bob := newClient(t, srv.URL, "bob")
		created, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "End to end", Topic: "testing"})
		if err != nil {
			t.Fatalf("create room: %v", err)
		}
		room := created.RoomID
		if _, err := alice.InviteUser(ctx, room, &mautrix.ReqInviteUser{UserID: bob.UserID}); err != nil {
			t.Fatalf("invite: %v", err)
		}
		// Bob sees the invite through /sync before joining.
		invited := false
		for i := 0; i < 20 && !invited; i++ {
			resp, err := bob.SyncRequest(ctx, 1000, "", "", false, event.PresenceOnline)
			if err != nil {
				t.Fatal(err)
			}
			_, invited = resp.Rooms.Invite[room]
		}
		if !invited {
			t.Fatal("bob never saw the invite")
		}
		if _, err := bob.JoinRoomByID(ctx, room); err != nil {
			t.Fatalf("join: %v", err)
		}

		const n = 200
		collectors := []*collector{newCollector(t, alice, room), newCollector(t, bob, room)}
		syncCtx, stopSync := context.WithCancel(ctx)
		var wg sync.WaitGroup
		errs := make(chan error, 2)
		for _, c := range collectors {
			wg.Add(1)
			go func(c *collector) {
				defer wg.Done()
				for syncCtx.Err() == nil && c.count() < n {
					if err := c.syncOnce(syncCtx, 5000); err != nil && syncCtx.Err() == nil {
						errs <- err
						return
					}
				}
			}(c)
		}
		for i := 0; i < n; i++ {
			sender := alice
			if i%2 == 1 {
				sender = bob
			}
			if _, err := sender.SendText(ctx, room, fmt.Sprintf("message %d", i)); err != nil {
				t.Fatalf("send %d: %v", i, err)
			}
		}
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case err := <-errs:
			stopSync()
			t.Fatal(err)
		case <-time.After(60 * time.Second):
			stopSync()
			t.Fatalf("timed out: alice saw %d, bob saw %d", collectors[0].count(), collectors[1].count())
		}
		stopSync()
		select {
		case err := <-errs:
			t.Fatal(err)
		default:
		}
		checkInOrder(t, "alice", collectors[0].bodies, n)
		checkInOrder(t, "bob", collectors[1].bodies, n)
		checkInOrder(t, "history before restart", history(t, bob, room), n)

		// Restart on the same data.
		srv.Stop()
		srv = testserver.Start(t, cfg)
		for _, cli := range []*mautrix.Client{alice, bob} {
			cli.HomeserverURL = mustParse(t, srv.URL)
		}
		checkInOrder(t, "history after restart", history(t, alice, room), n)
		var name struct {
			Name string `json:"name"`
		}
		if err := bob.StateEvent(ctx, room, event.StateRoomName, "", &name); err != nil || name.Name != "End to end" {
			t.Fatalf("room name after restart: %q, %v", name.Name, err)
		}
		members, err := alice.JoinedMembers(ctx, room)
		if err != nil || len(members.Joined) != 2 {
			t.Fatalf("joined members after restart: %v, %v", members, err)
		}
		// The sync tokens from before the restart still work: nothing new
		// since them, and the next message arrives exactly once.
		for _, c := range collectors {
			before := c.count()
			if err := c.syncOnce(ctx, 0); err != nil {
				t.Fatal(err)
			}
			if c.count() != before {
				t.Fatalf("old token replayed %d messages", c.count()-before)
			}
		}
		if _, err := alice.SendText(ctx, room, fmt.Sprintf("message %d", n)); err != nil {
			t.Fatal(err)
		}
		for _, c := range collectors {
			for i := 0; i < 10 && c.count() < n+1; i++ {
				if err := c.syncOnce(ctx, 5000); err != nil {
					t.Fatal(err)
				}
			}
			checkInOrder(t, "after restart", c.bodies, n+1)
		}
	})
}

func mustParse(t *testing.T, raw string) *url.URL {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// TestTxnRetryAfterRestart: a client that retries a send after the server
// restarted gets the original event, and the event exists once.
func TestTxnRetryAfterRestart(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		cfg := testserver.Config(t.TempDir(), dbURL)
		srv := testserver.Start(t, cfg)
		c := srv.Register(t, "carol")
		room := c.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{}).MustOK(t).String("room_id")
		path := "/_matrix/client/v3/rooms/" + room + "/send/m.room.message/txn-1"
		first := c.Do(t, "PUT", path, map[string]any{"msgtype": "m.text", "body": "once"}).MustOK(t).String("event_id")
		srv.Stop()
		srv = testserver.Start(t, cfg)
		c.Base = srv.URL
		again := c.Do(t, "PUT", path, map[string]any{"msgtype": "m.text", "body": "once"}).MustOK(t).String("event_id")
		if again != first {
			t.Fatalf("retry made %s, want the original %s", again, first)
		}
		msgs := c.Do(t, "GET", "/_matrix/client/v3/rooms/"+room+"/messages?dir=b&limit=50", nil).MustOK(t)
		count := strings.Count(string(msgs.Raw), `"body":"once"`)
		if count != 1 {
			t.Fatalf("the message is in the room %d times: %s", count, msgs.Raw)
		}
	})
}

// TestLongPollWakesThousand: 1,000 clients wait on /sync; one message
// wakes every one of them, from memory.
func TestLongPollWakesThousand(t *testing.T) {
	if testing.Short() {
		t.Skip("slow")
	}
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		const clients = 1000
		srv := testserver.Start(t, testserver.Config(t.TempDir(), dbURL))
		owner := srv.Register(t, "owner")
		room := owner.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{"preset": "public_chat"}).MustOK(t).String("room_id")
		users := make([]*testserver.Client, clients)
		for i := range users {
			users[i] = srv.Register(t, fmt.Sprintf("waiter%d", i))
			users[i].HTTP = &http.Client{Timeout: 2 * time.Minute}
			users[i].Do(t, "POST", "/_matrix/client/v3/rooms/"+room+"/join", map[string]any{}).MustOK(t)
		}
		since := users[0].Do(t, "GET", "/_matrix/client/v3/sync?timeout=0", nil).MustOK(t).String("next_batch")

		type result struct {
			i    int
			resp *testserver.Response
		}
		results := make(chan result, clients)
		for i, u := range users {
			go func(i int, u *testserver.Client) {
				// set_presence=offline: each client coming online would
				// otherwise wake the others with its presence first.
				results <- result{i, u.Do(t, "GET", "/_matrix/client/v3/sync?timeout=60000&set_presence=offline&since="+since, nil)}
			}(i, u)
		}
		poll.Until(t, 60*time.Second, func() error {
			if n := srv.SyncWaiters(); n < clients {
				return fmt.Errorf("only %d of %d requests are waiting", n, clients)
			}
			return nil
		})
		eventID := owner.Do(t, "PUT", "/_matrix/client/v3/rooms/"+room+"/send/m.room.message/wake", map[string]any{"msgtype": "m.text", "body": "wake up"}).MustOK(t).String("event_id")
		for n := 0; n < clients; n++ {
			select {
			case r := <-results:
				if r.resp.Status != 200 || !strings.Contains(string(r.resp.Raw), eventID) {
					t.Fatalf("client %d: %d, event missing: %.300s", r.i, r.resp.Status, r.resp.Raw)
				}
			case <-time.After(30 * time.Second):
				t.Fatalf("%d of %d clients were not woken", clients-n, clients)
			}
		}
	})
}
