package setup_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"

	"myelin/internal/poll"
	"myelin/internal/sqldb/sqldbtest"
	"myelin/internal/testserver"
	"myelin/setup/config"
)

// The bus's fault tests (issue 10): the NATS connection is broken under a
// send load, several ways, and the server must recover by itself with
// every acknowledged event in the room, in order, once.

// busFault breaks the bus of a server while senders send.
type busFault struct {
	name  string
	apply func(t *testing.T, r *busRun)
}

// busRun is a server under a send load.
type busRun struct {
	srv     *testserver.Server
	senders []*busSender
}

// overlongSubject provokes a protocol error on the bus's connection: the
// server answers -ERR to a subject longer than its control line, which
// closes the connection for good (what issue 10's room ID did).
func overlongSubject(t *testing.T, r *busRun) {
	nc := r.srv.Bus().Conn()
	_ = nc.Publish("InputRoomEvent."+strings.Repeat("a", 5000), nil)
	poll.True(t, 10*time.Second, "the connection to close", nc.IsClosed)
}

// TestBusFaultsEmbedded breaks the connection to the embedded NATS
// server, and the server itself.
func TestBusFaultsEmbedded(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		srv := testserver.Start(t, testserver.Config(t.TempDir(), dbURL))
		runBusFaults(t, srv, []busFault{
			{"connection closed", func(t *testing.T, r *busRun) { r.srv.Bus().Conn().Close() }},
			{"protocol error", overlongSubject},
			{"server stopped", func(t *testing.T, r *busRun) { r.srv.Bus().EmbeddedServer().Shutdown() }},
			// What nats-server does when its store runs out of disk.
			{"JetStream disabled", func(t *testing.T, r *busRun) {
				if err := r.srv.Bus().EmbeddedServer().DisableJetStream(); err != nil {
					t.Fatal(err)
				}
			}},
		})
	})
}

// TestBusFaultsExternal runs Myelin against a NATS server of its own on a
// loopback port (nats.url), and restarts that server on the same port and
// store.
func TestBusFaultsExternal(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		store := t.TempDir()
		ns := startNATS(t, store, -1)
		port := ns.Addr().(*net.TCPAddr).Port
		srv := testserver.Start(t, testserver.Config(t.TempDir(), dbURL, func(c *config.Config) {
			c.NATS.URL = fmt.Sprintf("nats://127.0.0.1:%d", port)
			// Sends answer 503 soon after the bus goes down.
			c.NATS.PublishRetry = time.Second
		}))
		// Registered after the test server's, so run before it: the test
		// server checks that no goroutine of NATS outlives it.
		t.Cleanup(func() {
			ns.Shutdown()
			ns.WaitForShutdown()
		})
		runBusFaults(t, srv, []busFault{
			{"protocol error", overlongSubject},
			// Down long enough for sends to fail, and be retried by
			// their clients with the same transaction IDs.
			{"nats-server restarted", func(t *testing.T, r *busRun) {
				ns.Shutdown()
				ns.WaitForShutdown()
				poll.Until(t, 30*time.Second, func() error {
					if status, _ := health(r.srv.URL); status != http.StatusServiceUnavailable {
						return fmt.Errorf("/health answers %d with the bus down", status)
					}
					for _, s := range r.senders {
						if s.failedWith(http.StatusServiceUnavailable) > 0 {
							return nil
						}
					}
					return errors.New("no send has failed yet")
				})
				ns = startNATS(t, store, port)
			}},
		})
	})
}

// TestOverlongRoomIDThenSend is issue 10's report: a request naming a
// 5,000-character room ID, then a normal send, which must succeed.
func TestOverlongRoomIDThenSend(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		srv := testserver.Start(t, testserver.Config(t.TempDir(), dbURL))
		c := srv.Register(t, "alice")
		room := c.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{}).MustOK(t).String("room_id")
		long := "!" + strings.Repeat("a", 5000) + ":localhost"
		r := c.Do(t, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(long)+"/leave", map[string]any{})
		if r.Status >= 500 {
			t.Fatalf("leave of a 5,000-character room ID: %d %s", r.Status, r.Raw)
		}
		c.Do(t, "PUT", "/_matrix/client/v3/rooms/"+room+"/send/m.room.message/t1", map[string]any{"msgtype": "m.text", "body": "still here"}).MustOK(t)
		if status, body := health(srv.URL); status != http.StatusOK {
			t.Fatalf("/health: %d %s", status, body)
		}
	})
}

// startNATS runs a NATS server with JetStream on a loopback port (-1: a
// free one), storing in storeDir.
func startNATS(t *testing.T, storeDir string, port int) *natsserver.Server {
	t.Helper()
	ns, err := natsserver.NewServer(&natsserver.Options{
		Host: "127.0.0.1", Port: port, JetStream: true, StoreDir: storeDir, NoSigs: true, NoLog: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		t.Fatal("nats server not ready")
	}
	return ns
}

// health returns the status and body of GET /health.
func health(base string) (int, string) {
	resp, err := http.Get(base + "/health")
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// runBusFaults runs three senders in one room, applies each fault while
// they send, and checks after each that the server recovers by itself;
// then that every acknowledged event is in the room, in order per sender,
// once, and that a send and /sync work.
func runBusFaults(t *testing.T, srv *testserver.Server, faults []busFault) {
	creator := srv.Register(t, "creator")
	room := creator.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{"preset": "public_chat"}).MustOK(t).String("room_id")
	senders := make([]*busSender, 3)
	for i := range senders {
		name := fmt.Sprintf("sender%d", i)
		c := srv.Register(t, name)
		c.Do(t, "POST", "/_matrix/client/v3/join/"+url.PathEscape(room), map[string]any{}).MustOK(t)
		senders[i] = &busSender{name: name, base: srv.URL, token: c.Token, room: room, failures: map[int]int{}}
	}
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, s := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.run(ctx)
		}()
	}
	stopped := false
	halt := func() {
		if !stopped {
			stop()
			wg.Wait()
			stopped = true
		}
	}
	defer halt()
	// progress waits until every sender has had n more sends
	// acknowledged.
	progress := func(what string, n int) {
		t.Helper()
		marks := make([]int, len(senders))
		for i, s := range senders {
			marks[i] = s.count()
		}
		poll.Until(t, 60*time.Second, func() error {
			for i, s := range senders {
				if err := s.failed(); err != nil {
					return fmt.Errorf("%s gave up: %w", s.name, err)
				}
				if s.count() < marks[i]+n {
					return fmt.Errorf("%s: %s has %d sends acknowledged, waiting for %d", what, s.name, s.count(), marks[i]+n)
				}
			}
			return nil
		})
	}
	progress("before the faults", 3)
	run := &busRun{srv: srv, senders: senders}
	for _, f := range faults {
		f.apply(t, run)
		poll.Until(t, 30*time.Second, func() error {
			if status, body := health(srv.URL); status != http.StatusOK {
				return fmt.Errorf("after %s, /health answers %d %s", f.name, status, body)
			}
			return nil
		})
		progress("after "+f.name, 3)
	}
	halt()
	for _, s := range senders {
		if err := s.failed(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		for status, n := range s.failures {
			// A failed send is a clean, retryable refusal: 503.
			if status != http.StatusServiceUnavailable {
				t.Errorf("%s: %d sends answered %d", s.name, n, status)
			}
		}
		t.Logf("%s: %d sends acknowledged, failed attempts by status: %v", s.name, s.count(), s.failures)
	}
	checkAcked(t, creator, room, senders)

	// A normal send and /sync still work.
	since := creator.Do(t, "GET", "/_matrix/client/v3/sync?timeout=0", nil).MustOK(t).String("next_batch")
	id := creator.Do(t, "PUT", "/_matrix/client/v3/rooms/"+room+"/send/m.room.message/after", map[string]any{"msgtype": "m.text", "body": "after the faults"}).MustOK(t).String("event_id")
	r := creator.Do(t, "GET", "/_matrix/client/v3/sync?timeout=10000&since="+url.QueryEscape(since), nil).MustOK(t)
	if !bytes.Contains(r.Raw, []byte(id)) {
		t.Fatalf("/sync after the faults does not bring %s: %s", id, r.Raw)
	}
}

// checkAcked pages through the room's history and checks that each
// sender's messages are exactly the ones it had acknowledged, in order.
func checkAcked(t *testing.T, c *testserver.Client, room string, senders []*busSender) {
	t.Helper()
	type event struct{ id, body string }
	bySender := map[string][]event{}
	from := ""
	for page := 0; ; page++ {
		if page > 200 {
			t.Fatal("pagination did not end")
		}
		path := "/_matrix/client/v3/rooms/" + url.PathEscape(room) + "/messages?dir=b&limit=100"
		if from != "" {
			path += "&from=" + url.QueryEscape(from)
		}
		var resp struct {
			Chunk []struct {
				EventID string `json:"event_id"`
				Type    string `json:"type"`
				Sender  string `json:"sender"`
				Content struct {
					Body string `json:"body"`
				} `json:"content"`
			} `json:"chunk"`
			End string `json:"end"`
		}
		if err := json.Unmarshal(c.Do(t, "GET", path, nil).MustOK(t).Raw, &resp); err != nil {
			t.Fatal(err)
		}
		for _, ev := range resp.Chunk {
			if ev.Type == "m.room.message" {
				// Backwards: prepend.
				bySender[ev.Sender] = append([]event{{ev.EventID, ev.Content.Body}}, bySender[ev.Sender]...)
			}
		}
		if resp.End == "" || len(resp.Chunk) == 0 {
			break
		}
		from = resp.End
	}
	for _, s := range senders {
		var got []event
		for who, evs := range bySender {
			if strings.HasPrefix(who, "@"+s.name+":") {
				got = evs
			}
		}
		if len(got) != len(s.acked) {
			t.Errorf("%s: %d messages in the room, %d acknowledged", s.name, len(got), len(s.acked))
		}
		for i := range min(len(got), len(s.acked)) {
			if want := fmt.Sprintf("%s %d", s.name, i); got[i].body != want || got[i].id != s.acked[i] {
				t.Errorf("%s: message %d in the room is %s %q, want the acknowledged %s %q", s.name, i, got[i].id, got[i].body, s.acked[i], want)
				break
			}
		}
	}
}

// busSender sends numbered messages into a room one at a time, retrying
// each failed send with the same transaction ID, as clients do, and
// records the event IDs acknowledged.
type busSender struct {
	name, base, token, room string

	mu       sync.Mutex
	acked    []string
	failures map[int]int // failed attempts by status (0: no answer)
	err      error
}

// maxBusSends bounds a sender's loop.
const maxBusSends = 2000

func (s *busSender) run(ctx context.Context) {
	hc := &http.Client{Timeout: 90 * time.Second}
	for i := 0; i < maxBusSends && ctx.Err() == nil; i++ {
		txn := fmt.Sprintf("%s-%d", s.name, i)
		body := fmt.Sprintf(`{"msgtype":"m.text","body":"%s %d"}`, s.name, i)
		// Once started, a send is retried until acknowledged, even after
		// the test stopped asking for more: an event the server stored
		// but did not acknowledge would otherwise be in the room unknown
		// to the check.
		err := poll.Wait(60*time.Second, func() error {
			status, id, err := busSend(hc, s.base+"/_matrix/client/v3/rooms/"+url.PathEscape(s.room)+"/send/m.room.message/"+txn, s.token, body)
			if status == http.StatusOK {
				s.mu.Lock()
				s.acked = append(s.acked, id)
				s.mu.Unlock()
				return nil
			}
			s.mu.Lock()
			s.failures[status]++
			s.mu.Unlock()
			return fmt.Errorf("send %s: %d %v", txn, status, err)
		})
		if err != nil {
			s.mu.Lock()
			s.err = err
			s.mu.Unlock()
			return
		}
	}
}

func (s *busSender) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.acked)
}

func (s *busSender) failedWith(status int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.failures[status]
}

func (s *busSender) failed() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// busSend PUTs one event and returns the status and the event ID.
func busSend(hc *http.Client, u, token, body string) (int, string, error) {
	req, err := http.NewRequest(http.MethodPut, u, strings.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := hc.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, "", err
	}
	var out struct {
		EventID string `json:"event_id"`
	}
	if err := json.Unmarshal(raw, &out); err != nil || (resp.StatusCode == http.StatusOK && out.EventID == "") {
		return resp.StatusCode, "", errors.Join(err, fmt.Errorf("answer %s", raw))
	}
	return resp.StatusCode, out.EventID, fmt.Errorf("answer %s", raw)
}
