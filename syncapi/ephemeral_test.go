package syncapi_test

import (
	"fmt"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"myelin/internal/poll"
	"myelin/internal/sqldb/sqldbtest"
	"myelin/internal/testserver"
	"myelin/setup/config"
	"myelin/syncapi"
)

const v3 = "/_matrix/client/v3"

// room is a room alice made and bob joined, on a fresh server.
type room struct {
	srv        *testserver.Server
	id         string
	alice, bob *testserver.Client
}

func newRoom(t *testing.T, srv *testserver.Server) *room {
	t.Helper()
	r := &room{srv: srv, alice: srv.Register(t, "alice"), bob: srv.Register(t, "bob")}
	r.id = r.alice.Do(t, "POST", v3+"/createRoom", map[string]any{"preset": "public_chat"}).MustOK(t).String("room_id")
	r.bob.Do(t, "POST", v3+"/rooms/"+url.PathEscape(r.id)+"/join", map[string]any{}).MustOK(t)
	return r
}

func (r *room) path(format string, args ...any) string {
	return v3 + "/rooms/" + url.PathEscape(r.id) + fmt.Sprintf(format, args...)
}

var txn atomic.Int64

// send posts a message as c and returns its event ID.
func (r *room) send(t *testing.T, c *testserver.Client, body string) string {
	t.Helper()
	return c.Do(t, "PUT", r.path("/send/m.room.message/t%d", txn.Add(1)), map[string]any{"msgtype": "m.text", "body": body}).MustOK(t).String("event_id")
}

// syncFrom syncs c from since ("" for an initial sync) without touching
// its presence, waiting up to timeoutMS for something new.
func syncFrom(t *testing.T, c *testserver.Client, since string, timeoutMS int) *testserver.Response {
	t.Helper()
	q := url.Values{"set_presence": {"offline"}, "timeout": {fmt.Sprint(timeoutMS)}}
	if since != "" {
		q.Set("since", since)
	}
	return c.Do(t, "GET", v3+"/sync?"+q.Encode(), nil).MustOK(t)
}

// ephemeral returns the ephemeral events of type typ of a joined room.
func ephemeral(r *testserver.Response, roomID, typ string) []map[string]any {
	rooms, _ := r.Body["rooms"].(map[string]any)
	join, _ := rooms["join"].(map[string]any)
	jr, _ := join[roomID].(map[string]any)
	eph, _ := jr["ephemeral"].(map[string]any)
	evs, _ := eph["events"].([]any)
	var out []map[string]any
	for _, e := range evs {
		if m, ok := e.(map[string]any); ok && m["type"] == typ {
			out = append(out, m)
		}
	}
	return out
}

// typingUsers returns the user_ids of the one m.typing event of a room in
// a sync response, and whether there was one.
func typingUsers(t *testing.T, r *testserver.Response, roomID string) ([]any, bool) {
	t.Helper()
	evs := ephemeral(r, roomID, "m.typing")
	switch len(evs) {
	case 0:
		return nil, false
	case 1:
	default:
		t.Fatalf("%d m.typing events in one room: %s", len(evs), r.Raw)
	}
	if _, ok := evs[0]["room_id"]; ok {
		t.Errorf("m.typing in /sync has a room_id: %v", evs[0])
	}
	content, _ := evs[0]["content"].(map[string]any)
	users, ok := content["user_ids"].([]any)
	if !ok {
		t.Fatalf("m.typing without a user_ids list: %v", evs[0])
	}
	return users, true
}

// longPoll starts a /sync long-poll of c and returns its response channel
// once the server reports it waiting.
func longPoll(t *testing.T, srv *testserver.Server, c *testserver.Client, since string) <-chan *testserver.Response {
	t.Helper()
	before := srv.SyncWaiters()
	ch := make(chan *testserver.Response, 1)
	go func() {
		q := url.Values{"set_presence": {"offline"}, "timeout": {"20000"}, "since": {since}}
		ch <- c.Do(t, "GET", v3+"/sync?"+q.Encode(), nil)
	}()
	poll.True(t, 10*time.Second, "the long-poll to wait", func() bool { return srv.SyncWaiters() > before })
	return ch
}

func receive(t *testing.T, ch <-chan *testserver.Response, within time.Duration) *testserver.Response {
	t.Helper()
	select {
	case r := <-ch:
		return r.MustOK(t)
	case <-time.After(within):
		t.Fatalf("no /sync response within %v", within)
		return nil
	}
}

// TestTyping: a member's typing wakes another member's waiting /sync at
// once, stopping and expiry are announced, and only joined users may type,
// as themselves.
func TestTyping(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		srv := testserver.Start(t, testserver.Config(t.TempDir(), dbURL))
		r := newRoom(t, srv)
		since := syncFrom(t, r.bob, "", 0).String("next_batch")

		// Starting to type wakes bob's long-poll.
		waiting := longPoll(t, srv, r.bob, since)
		start := time.Now()
		r.alice.Do(t, "PUT", r.path("/typing/%s", "@alice:localhost"), map[string]any{"typing": true, "timeout": 30000}).MustOK(t)
		resp := receive(t, waiting, 5*time.Second)
		if users, _ := typingUsers(t, resp, r.id); fmt.Sprint(users) != "[@alice:localhost]" {
			t.Fatalf("bob sees %v typing, want alice: %s", users, resp.Raw)
		}
		t.Logf("typing reached the waiting /sync in %v", time.Since(start))
		since = resp.String("next_batch")

		// Saying so again changes nothing that a client could see.
		r.alice.Do(t, "PUT", r.path("/typing/%s", "@alice:localhost"), map[string]any{"typing": true, "timeout": 30000}).MustOK(t)
		if users, ok := typingUsers(t, syncFrom(t, r.bob, since, 0), r.id); ok {
			t.Fatalf("a repeated typing notification was sent again: %v", users)
		}

		// An initial sync has who is typing now.
		if users, _ := typingUsers(t, syncFrom(t, r.bob, "", 0), r.id); fmt.Sprint(users) != "[@alice:localhost]" {
			t.Fatalf("initial sync: %v typing, want alice", users)
		}

		// Stopping empties the list.
		waiting = longPoll(t, srv, r.bob, since)
		r.alice.Do(t, "PUT", r.path("/typing/%s", "@alice:localhost"), map[string]any{"typing": false}).MustOK(t)
		resp = receive(t, waiting, 5*time.Second)
		if users, ok := typingUsers(t, resp, r.id); !ok || len(users) != 0 {
			t.Fatalf("after stopping: %v (sent: %v), want an empty list", users, ok)
		}
		since = resp.String("next_batch")
		// So does an initial sync, for a room anyone ever typed in: a
		// client that started syncing after the stop must not keep the
		// typing it saw before (sytest: "Typing can be explicitly stopped").
		if users, ok := typingUsers(t, syncFrom(t, r.bob, "", 0), r.id); !ok || len(users) != 0 {
			t.Fatalf("initial sync after stopping: %v (sent: %v), want an empty list", users, ok)
		}

		// A notification ends by itself when its timeout passes.
		r.bob.Do(t, "PUT", r.path("/typing/%s", "@bob:localhost"), map[string]any{"typing": true, "timeout": 300}).MustOK(t)
		resp = syncFrom(t, r.alice, "", 0)
		if users, _ := typingUsers(t, resp, r.id); fmt.Sprint(users) != "[@bob:localhost]" {
			t.Fatalf("alice sees %v typing, want bob", users)
		}
		waiting = longPoll(t, srv, r.alice, resp.String("next_batch"))
		resp = receive(t, waiting, 5*time.Second)
		if users, ok := typingUsers(t, resp, r.id); !ok || len(users) != 0 {
			t.Fatalf("after the timeout: %v (sent: %v), want an empty list", users, ok)
		}

		// Only oneself, and only in a room one is joined to.
		carol := srv.Register(t, "carol")
		for _, c := range []struct {
			name   string
			who    *testserver.Client
			user   string
			body   any
			status int
			code   string
		}{
			{"as another user", r.alice, "@bob:localhost", map[string]any{"typing": true}, 403, "M_FORBIDDEN"},
			{"not joined", carol, "@carol:localhost", map[string]any{"typing": true}, 403, "M_FORBIDDEN"},
			{"no typing field", r.alice, "@alice:localhost", map[string]any{"timeout": 100}, 400, "M_BAD_JSON"},
			{"typing not a boolean", r.alice, "@alice:localhost", map[string]any{"typing": "yes"}, 400, "M_BAD_JSON"},
		} {
			t.Run(c.name, func(t *testing.T) {
				resp := c.who.Do(t, "PUT", r.path("/typing/%s", c.user), c.body)
				if resp.Status != c.status || resp.String("errcode") != c.code {
					t.Fatalf("got %d %s, want %d %s", resp.Status, resp.Raw, c.status, c.code)
				}
			})
		}
	})
}

// receiptUsers returns, for an event and a receipt type, the users with a
// receipt there in the room's m.receipt event of a sync response.
func receiptUsers(resp *testserver.Response, roomID, eventID, typ string) map[string]any {
	out := map[string]any{}
	for _, ev := range ephemeral(resp, roomID, "m.receipt") {
		content, _ := ev["content"].(map[string]any)
		byType, _ := content[eventID].(map[string]any)
		users, _ := byType[typ].(map[string]any)
		for u, v := range users {
			out[u] = v
		}
	}
	return out
}

// TestReceipts: receipts reach the room's members through /sync (private
// ones only their owner), only move forward, and survive a restart; sync
// tokens from before the restart, and from before receipts existed, still
// work.
func TestReceipts(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		cfg := testserver.Config(t.TempDir(), dbURL)
		srv := testserver.Start(t, cfg)
		r := newRoom(t, srv)
		first := r.send(t, r.alice, "first")
		second := r.send(t, r.alice, "second")
		bobSince := syncFrom(t, r.bob, "", 0).String("next_batch")

		waiting := longPoll(t, srv, r.bob, bobSince)
		r.alice.Do(t, "POST", r.path("/receipt/m.read/%s", url.PathEscape(second)), map[string]any{}).MustOK(t)
		resp := receive(t, waiting, 5*time.Second)
		if _, ok := receiptUsers(resp, r.id, second, "m.read")["@alice:localhost"]; !ok {
			t.Fatalf("bob's /sync lacks alice's receipt: %s", resp.Raw)
		}
		receipt, _ := receiptUsers(resp, r.id, second, "m.read")["@alice:localhost"].(map[string]any)
		if _, ok := receipt["ts"].(float64); !ok {
			t.Fatalf("receipt without a ts: %v", receipt)
		}
		bobSince = resp.String("next_batch")

		// A private receipt is its owner's alone, and does not wake others.
		r.alice.Do(t, "POST", r.path("/receipt/m.read.private/%s", url.PathEscape(second)), map[string]any{}).MustOK(t)
		if got := receiptUsers(syncFrom(t, r.alice, "", 0), r.id, second, "m.read.private"); got["@alice:localhost"] == nil {
			t.Fatalf("alice does not see her own private receipt")
		}
		for _, since := range []string{"", bobSince} {
			if got := receiptUsers(syncFrom(t, r.bob, since, 0), r.id, second, "m.read.private"); len(got) != 0 {
				t.Fatalf("bob sees private receipts (since %q): %v", since, got)
			}
		}

		// Receipts only move forward.
		r.alice.Do(t, "POST", r.path("/receipt/m.read/%s", url.PathEscape(first)), map[string]any{}).MustOK(t)
		if got := receiptUsers(syncFrom(t, r.bob, "", 0), r.id, first, "m.read"); len(got) != 0 {
			t.Fatalf("the receipt moved back to the first message: %v", got)
		}
		// Threaded receipts are kept apart from unthreaded ones.
		r.bob.Do(t, "POST", r.path("/receipt/m.read/%s", url.PathEscape(first)), map[string]any{"thread_id": "main"}).MustOK(t)

		for _, c := range []struct {
			name, typ string
			body      any
			status    int
			code      string
		}{
			{"unknown type", "not.m.read", map[string]any{}, 400, "M_INVALID_PARAM"},
			{"empty thread", "m.read", map[string]any{"thread_id": ""}, 400, "M_INVALID_PARAM"},
			{"thread not a string", "m.read", map[string]any{"thread_id": 5}, 400, "M_BAD_JSON"},
			{"thread not an event", "m.read", map[string]any{"thread_id": "thread"}, 400, "M_INVALID_PARAM"},
			{"thread on the read marker", "m.fully_read", map[string]any{"thread_id": "main"}, 400, "M_INVALID_PARAM"},
			{"not JSON", "m.read", "{", 400, "M_NOT_JSON"},
		} {
			t.Run(c.name, func(t *testing.T) {
				resp := r.alice.Do(t, "POST", r.path("/receipt/%s/%s", c.typ, url.PathEscape(second)), c.body)
				if resp.Status != c.status || resp.String("errcode") != c.code {
					t.Fatalf("got %d %s, want %d %s", resp.Status, resp.Raw, c.status, c.code)
				}
			})
		}
		carol := srv.Register(t, "carol")
		if resp := carol.Do(t, "POST", r.path("/receipt/m.read/%s", url.PathEscape(second)), map[string]any{}); resp.Status != 403 {
			t.Fatalf("a receipt from outside the room: %d %s", resp.Status, resp.Raw)
		}

		before := syncFrom(t, r.bob, "", 0)
		beforeTok, err := syncapi.ParseToken(before.String("next_batch"))
		if err != nil {
			t.Fatal(err)
		}

		srv.Stop()
		srv = testserver.Start(t, cfg)
		r.alice.Base, r.bob.Base = srv.URL, srv.URL

		after := syncFrom(t, r.bob, "", 0)
		if got := receiptUsers(after, r.id, second, "m.read"); got["@alice:localhost"] == nil {
			t.Fatalf("alice's receipt did not survive the restart: %s", after.Raw)
		}
		if got := receiptUsers(after, r.id, first, "m.read"); got["@bob:localhost"] == nil {
			t.Fatalf("bob's threaded receipt did not survive the restart: %s", after.Raw)
		}
		afterTok, err := syncapi.ParseToken(after.String("next_batch"))
		if err != nil {
			t.Fatal(err)
		}
		if afterTok.Max(beforeTok) != afterTok {
			t.Fatalf("a position went back across the restart: %v, then %v", beforeTok, afterTok)
		}
		// Nothing changed since the token from before the restart.
		if evs := ephemeral(syncFrom(t, r.bob, before.String("next_batch"), 0), r.id, "m.receipt"); len(evs) != 0 {
			t.Fatalf("receipts sent again since a token from before the restart: %v", evs)
		}
		// A token from before receipts existed (two fields) still parses;
		// all receipts are new to it.
		old := strings.Join(strings.SplitN(before.String("next_batch"), "_", 3)[:2], "_")
		if got := receiptUsers(syncFrom(t, r.bob, old, 0), r.id, second, "m.read"); got["@alice:localhost"] == nil {
			t.Fatalf("a sync from an old-format token lacks the receipt")
		}
	})
}

// roomAccountData returns the content of a room account data event of a
// sync response.
func roomAccountData(resp *testserver.Response, roomID, typ string) map[string]any {
	rooms, _ := resp.Body["rooms"].(map[string]any)
	join, _ := rooms["join"].(map[string]any)
	jr, _ := join[roomID].(map[string]any)
	ad, _ := jr["account_data"].(map[string]any)
	evs, _ := ad["events"].([]any)
	for _, e := range evs {
		if m, _ := e.(map[string]any); m["type"] == typ {
			c, _ := m["content"].(map[string]any)
			return c
		}
	}
	return nil
}

// TestReadMarkers: the read marker is room account data; read_markers
// also moves the receipts; the marker only moves forward and must point
// into the room.
func TestReadMarkers(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		srv := testserver.Start(t, testserver.Config(t.TempDir(), dbURL))
		r := newRoom(t, srv)
		first := r.send(t, r.bob, "first")
		second := r.send(t, r.bob, "second")

		r.alice.Do(t, "POST", r.path("/read_markers"), map[string]any{"m.fully_read": second, "m.read": second, "m.read.private": first}).MustOK(t)
		resp := syncFrom(t, r.alice, "", 0)
		if c := roomAccountData(resp, r.id, "m.fully_read"); c["event_id"] != second {
			t.Fatalf("read marker %v, want %s", c, second)
		}
		if receiptUsers(resp, r.id, second, "m.read")["@alice:localhost"] == nil || receiptUsers(resp, r.id, first, "m.read.private")["@alice:localhost"] == nil {
			t.Fatalf("read_markers did not set the receipts: %s", resp.Raw)
		}
		since := resp.String("next_batch")

		// Back to an earlier event: the marker stays.
		r.alice.Do(t, "POST", r.path("/receipt/m.fully_read/%s", url.PathEscape(first)), map[string]any{}).MustOK(t)
		if c := roomAccountData(syncFrom(t, r.alice, "", 0), r.id, "m.fully_read"); c["event_id"] != second {
			t.Fatalf("read marker moved back to %v", c)
		}
		// Forward, through the receipt endpoint: an incremental sync has it.
		third := r.send(t, r.bob, "third")
		r.alice.Do(t, "POST", r.path("/receipt/m.fully_read/%s", url.PathEscape(third)), map[string]any{}).MustOK(t)
		if c := roomAccountData(syncFrom(t, r.alice, since, 0), r.id, "m.fully_read"); c["event_id"] != third {
			t.Fatalf("incremental sync: read marker %v, want %s", c, third)
		}

		other := r.bob.Do(t, "POST", v3+"/createRoom", map[string]any{}).MustOK(t).String("room_id")
		elsewhere := r.bob.Do(t, "PUT", v3+"/rooms/"+url.PathEscape(other)+"/send/m.room.message/x", map[string]any{"msgtype": "m.text", "body": "x"}).MustOK(t).String("event_id")
		for _, id := range []string{"$" + strings.Repeat("U", 43), elsewhere} {
			if resp := r.alice.Do(t, "POST", r.path("/read_markers"), map[string]any{"m.fully_read": id}); resp.Status != 404 {
				t.Errorf("read marker at %s: %d %s, want 404", id, resp.Status, resp.Raw)
			}
		}
		if resp := r.alice.Do(t, "POST", r.path("/read_markers"), map[string]any{"m.fully_read": "$unknown"}); resp.Status != 400 || resp.String("errcode") != "M_INVALID_PARAM" {
			t.Errorf("read marker at a malformed event ID: %d %s, want 400 M_INVALID_PARAM", resp.Status, resp.Raw)
		}
		if resp := r.alice.Do(t, "POST", r.path("/read_markers"), map[string]any{"m.fully_read": 5}); resp.Status != 400 {
			t.Errorf("read marker not a string: %d %s, want 400", resp.Status, resp.Raw)
		}
	})
}

// presenceOf returns the content of the m.presence event of user in a
// sync response, nil if there is none.
func presenceOf(t *testing.T, resp *testserver.Response, user string) map[string]any {
	t.Helper()
	pres, _ := resp.Body["presence"].(map[string]any)
	evs, _ := pres["events"].([]any)
	var found map[string]any
	for _, e := range evs {
		m, _ := e.(map[string]any)
		if m["type"] == "m.presence" && m["sender"] == user {
			if found != nil {
				t.Fatalf("two presence events of %s: %s", user, resp.Raw)
			}
			found, _ = m["content"].(map[string]any)
		}
	}
	return found
}

// TestPresence: presence set through PUT and through /sync's
// set_presence, seen by users who share a room (whose waiting /sync it
// wakes), and by no one else.
func TestPresence(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		srv := testserver.Start(t, testserver.Config(t.TempDir(), dbURL))
		r := newRoom(t, srv)
		carol := srv.Register(t, "carol")
		status := func(c *testserver.Client, user string) *testserver.Response {
			return c.Do(t, "GET", v3+"/presence/"+url.PathEscape(user)+"/status", nil)
		}

		if got := status(r.alice, "@alice:localhost").MustOK(t).String("presence"); got != "offline" {
			t.Fatalf("a new user is %q, want offline", got)
		}
		r.alice.Do(t, "PUT", v3+"/presence/@alice:localhost/status", map[string]any{"presence": "online", "status_msg": "here"}).MustOK(t)
		got := status(r.bob, "@alice:localhost").MustOK(t)
		if got.String("presence") != "online" || got.String("status_msg") != "here" || got.Body["currently_active"] != true {
			t.Fatalf("bob sees alice as %s", got.Raw)
		}
		if _, ok := got.Body["last_active_ago"].(float64); !ok {
			t.Fatalf("no last_active_ago: %s", got.Raw)
		}
		if resp := status(carol, "@alice:localhost"); resp.Status != 403 {
			t.Fatalf("carol, who shares no room with alice, got %d %s", resp.Status, resp.Raw)
		}

		// An initial sync has the presence of the users one shares a room
		// with.
		resp := syncFrom(t, r.bob, "", 0)
		if p := presenceOf(t, resp, "@alice:localhost"); p["presence"] != "online" || p["status_msg"] != "here" {
			t.Fatalf("bob's initial sync: alice's presence %v", p)
		}
		if p := presenceOf(t, syncFrom(t, carol, "", 0), "@alice:localhost"); p != nil {
			t.Fatalf("carol sees alice's presence: %v", p)
		}

		// A change wakes bob's waiting /sync; the status message stays.
		waiting := longPoll(t, srv, r.bob, resp.String("next_batch"))
		r.alice.Do(t, "GET", v3+"/sync?timeout=0&set_presence=unavailable", nil).MustOK(t)
		resp = receive(t, waiting, 5*time.Second)
		if p := presenceOf(t, resp, "@alice:localhost"); p["presence"] != "unavailable" || p["status_msg"] != "here" {
			t.Fatalf("bob's incremental sync: alice's presence %v", p)
		}
		// Syncing in the same state again is no presence change.
		since := resp.String("next_batch")
		r.alice.Do(t, "GET", v3+"/sync?timeout=0&set_presence=unavailable", nil).MustOK(t)
		if p := presenceOf(t, syncFrom(t, r.bob, since, 0), "@alice:localhost"); p != nil {
			t.Fatalf("a repeated state was sent again: %v", p)
		}

		// set_presence=offline leaves presence alone; the default is online.
		syncFrom(t, carol, "", 0)
		if got := status(carol, "@carol:localhost").MustOK(t).String("presence"); got != "offline" {
			t.Fatalf("carol synced with set_presence=offline and is %q", got)
		}
		resp = carol.Do(t, "GET", v3+"/sync", nil).MustOK(t)
		if p := presenceOf(t, resp, "@carol:localhost"); p["presence"] != "online" {
			t.Fatalf("carol's own presence after a plain /sync: %v", p)
		}

		// A presence filter applies.
		resp = r.bob.Do(t, "GET", v3+"/sync?set_presence=offline&filter="+url.QueryEscape(`{"presence":{"types":[]}}`), nil).MustOK(t)
		if p := presenceOf(t, resp, "@alice:localhost"); p != nil {
			t.Fatalf("presence despite a filter without types: %v", p)
		}
		resp = r.bob.Do(t, "GET", v3+"/sync?set_presence=offline&filter="+url.QueryEscape(`{"presence":{"not_senders":["@alice:localhost"]}}`), nil).MustOK(t)
		if p := presenceOf(t, resp, "@alice:localhost"); p != nil {
			t.Fatalf("presence of a sender the filter leaves out: %v", p)
		}

		for _, c := range []struct {
			name   string
			method string
			user   string
			body   any
			status int
		}{
			{"set another user's", "PUT", "@bob:localhost", map[string]any{"presence": "online"}, 403},
			{"unknown state", "PUT", "@alice:localhost", map[string]any{"presence": "busy"}, 400},
			{"no state", "PUT", "@alice:localhost", map[string]any{}, 400},
		} {
			t.Run(c.name, func(t *testing.T) {
				if resp := r.alice.Do(t, c.method, v3+"/presence/"+url.PathEscape(c.user)+"/status", c.body); resp.Status != c.status {
					t.Fatalf("got %d %s, want %d", resp.Status, resp.Raw, c.status)
				}
			})
		}
		if resp := r.alice.Do(t, "GET", v3+"/sync?set_presence=away", nil); resp.Status != 400 {
			t.Fatalf("set_presence=away: %d %s", resp.Status, resp.Raw)
		}
	})
}

// TestPresenceOfNewMembers: a user who joins a room gets the presence of
// its members, and they get the joiner's, even when it did not change.
func TestPresenceOfNewMembers(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		srv := testserver.Start(t, testserver.Config(t.TempDir(), dbURL))
		alice, bob := srv.Register(t, "alice"), srv.Register(t, "bob")
		roomID := alice.Do(t, "POST", v3+"/createRoom", map[string]any{"preset": "public_chat"}).MustOK(t).String("room_id")
		aliceSince := alice.Do(t, "GET", v3+"/sync", nil).MustOK(t).String("next_batch") // alice is online
		bobSince := syncFrom(t, bob, "", 0).String("next_batch")

		bob.Do(t, "POST", v3+"/rooms/"+url.PathEscape(roomID)+"/join", map[string]any{}).MustOK(t)
		resp := syncFrom(t, bob, bobSince, 0)
		if p := presenceOf(t, resp, "@alice:localhost"); p["presence"] != "online" {
			t.Fatalf("bob joined alice's room and sees her presence as %v", p)
		}
		resp = syncFrom(t, bob, resp.String("next_batch"), 0)
		if pres, _ := resp.Body["presence"].(map[string]any); len(pres["events"].([]any)) != 0 {
			t.Fatalf("presence sent again: %s", resp.Raw)
		}
		resp = syncFrom(t, alice, aliceSince, 0)
		if p := presenceOf(t, resp, "@bob:localhost"); p["presence"] != "offline" {
			t.Fatalf("alice sees her new member bob as %v", p)
		}
	})
}

// TestPresenceTimeout: a user whose client stops syncing goes offline,
// which its room-mates see; one who keeps syncing stays online.
func TestPresenceTimeout(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		srv := testserver.Start(t, testserver.Config(t.TempDir(), dbURL, func(c *config.Config) {
			c.Sync.PresenceTimeout = time.Second
		}))
		r := newRoom(t, srv)
		carol := srv.Register(t, "carol")
		r.bob.Do(t, "GET", v3+"/sync?timeout=0", nil).MustOK(t)
		carol.Do(t, "PUT", v3+"/presence/@carol:localhost/status", map[string]any{"presence": "online"}).MustOK(t)
		since := r.alice.Do(t, "GET", v3+"/sync?timeout=0", nil).MustOK(t).String("next_batch")
		// Carol keeps a long-poll open all along: she stays online.
		polling := make(chan *testserver.Response, 1)
		go func() { polling <- carol.Do(t, "GET", v3+"/sync?timeout=4000&since="+since, nil) }()

		poll.True(t, 10*time.Second, "bob to go offline", func() bool {
			resp := r.alice.Do(t, "GET", v3+"/sync?timeout=1000&since="+since, nil).MustOK(t)
			since = resp.String("next_batch")
			p := presenceOf(t, resp, "@bob:localhost")
			return p != nil && p["presence"] == "offline"
		})
		if got := r.alice.Do(t, "GET", v3+"/presence/@alice:localhost/status", nil).MustOK(t).String("presence"); got != "online" {
			t.Fatalf("alice, who kept syncing, is %s", got)
		}
		// carol shares no room with alice; she checks herself.
		if got := carol.Do(t, "GET", v3+"/presence/@carol:localhost/status", nil).MustOK(t).String("presence"); got != "online" {
			t.Fatalf("carol, whose /sync is waiting, is %s", got)
		}
		receive(t, polling, 10*time.Second)
	})
}
