package federationapi

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/sirupsen/logrus"

	"myelin/federationapi/storage"
	"myelin/internal/bus"
	"myelin/internal/fedpolicy"
	"myelin/internal/poll"
	"myelin/internal/sqldb/sqldbtest"
	rsapi "myelin/roomserver/api"
)

// recorder is a remote server over TLS that records the event IDs of the
// PDUs it receives in /send.
type recorder struct {
	srv  *httptest.Server
	name string
	ca   string
	mu   sync.Mutex
	got  []string
}

func newRecorder(t *testing.T) *recorder {
	t.Helper()
	r := &recorder{}
	r.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if !strings.HasPrefix(req.URL.Path, "/_matrix/federation/v1/send/") {
			http.NotFound(w, req)
			return
		}
		var body struct {
			PDUs []struct {
				EventID string `json:"event_id"`
			} `json:"pdus"`
		}
		_ = json.NewDecoder(req.Body).Decode(&body)
		r.mu.Lock()
		for _, p := range body.PDUs {
			r.got = append(r.got, p.EventID)
		}
		r.mu.Unlock()
		_, _ = w.Write([]byte(`{"pdus":{}}`))
	}))
	t.Cleanup(r.srv.Close)
	r.name = strings.TrimPrefix(r.srv.URL, "https://")
	r.ca = filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(r.ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return r
}

func (r *recorder) received() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.got...)
}

// TestOutboundConsumer feeds OutputRoomEvent messages through the bus and
// checks which servers each event goes to: the servers of the joined
// members after the event, never this one, only for events made here, and
// a member event to its member's server too.
func TestOutboundConsumer(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		dialect := "sqlite"
		if strings.HasPrefix(dbURL, "postgres") {
			dialect = "postgres"
		}
		ctx, cancel := context.WithCancel(context.Background())
		remote := newRecorder(t)
		f := newAPI(t, dialect, "origin.test", remote.ca)
		b := startOutbound(t, ctx, cancel, f)

		room := "!r:origin.test"
		alice, bob := "@alice:origin.test", "@bob:"+remote.name
		steps := []struct {
			id, sender, evType string
			stateKey           *string
			membership         string
			removes            []string
			// the remote got these events (in order) once this one is
			// processed
			want []string
		}{
			{id: "$create", sender: alice, evType: "m.room.create", stateKey: ptr("")},
			{id: "$alice", sender: alice, evType: "m.room.member", stateKey: &alice, membership: "join"},
			{id: "$alone", sender: alice, evType: "m.room.message"},
			// A remote join is not sent on (its origin sends it), but
			// the remote is in the room from now on.
			{id: "$bob", sender: bob, evType: "m.room.member", stateKey: &bob, membership: "join"},
			{id: "$hello", sender: alice, evType: "m.room.message", want: []string{"$hello"}},
			{id: "$fromBob", sender: bob, evType: "m.room.message", want: []string{"$hello"}},
			// The kick goes to bob's server though the state after it
			// names no member of it.
			{id: "$kick", sender: alice, evType: "m.room.member", stateKey: &bob, membership: "leave", removes: []string{"$bob"}, want: []string{"$hello", "$kick"}},
			{id: "$after", sender: alice, evType: "m.room.message", want: []string{"$hello", "$kick"}},
			{id: "$marker", sender: alice, evType: "m.room.member", stateKey: &bob, membership: "ban", removes: []string{"$kick"}, want: []string{"$hello", "$kick", "$marker"}},
		}
		for _, s := range steps {
			ev := map[string]any{"event_id": s.id, "room_id": room, "sender": s.sender, "type": s.evType, "content": map[string]any{}}
			out := rsapi.OutputEvent{RoomID: room, RoomVersion: "10", EventID: s.id, RemovesState: s.removes}
			if s.stateKey != nil {
				ev["state_key"] = *s.stateKey
				out.AddsState = []string{s.id}
				if s.membership != "" {
					ev["content"] = map[string]any{"membership": s.membership}
				}
			}
			out.Event, _ = json.Marshal(ev)
			data, _ := json.Marshal(out)
			if err := b.Publish(ctx, bus.NewMsg(bus.OutputRoomEvent, data, s.id)); err != nil {
				t.Fatal(err)
			}
			poll.Until(t, 10*time.Second, func() error {
				// The event was consumed when the queue is empty again
				// and the recorded events match.
				if got := remote.received(); strings.Join(got, ",") != strings.Join(s.want, ",") {
					return fmt.Errorf("after %s the remote got %v, want %v", s.id, got, s.want)
				}
				p, _, err := f.store.QueueLength(ctx, remote.name)
				if err != nil || p > 0 {
					return fmt.Errorf("after %s: %d queued (%v)", s.id, p, err)
				}
				return nil
			})
		}
		hosts, err := f.JoinedHosts(ctx, room)
		if err != nil || len(hosts) != 1 || hosts[0] != "origin.test" {
			t.Fatalf("joined hosts %v %v", hosts, err)
		}
	})
}

func ptr(s string) *string { return &s }

// startOutbound starts f's outbound side on a bus of its own, stopped
// (cancel) and waited for when the test ends.
func startOutbound(t *testing.T, ctx context.Context, cancel context.CancelFunc, f *FederationAPI) *bus.Bus {
	t.Helper()
	l := logrus.New()
	l.SetLevel(logrus.ErrorLevel)
	b, err := bus.Open(ctx, bus.Options{StoreDir: t.TempDir(), Name: "test", Replicas: 1, Log: logrus.NewEntry(l)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	if err := f.StartOutbound(ctx, b); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); f.Wait() })
	return b
}

// TestInboundWakesQueue: a request signed by a server we had given up on
// sends its queue at once; a request that fails authentication does not.
func TestInboundWakesQueue(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		dialect := "sqlite"
		if strings.HasPrefix(dbURL, "postgres") {
			dialect = "postgres"
		}
		ctx, cancel := context.WithCancel(context.Background())
		p := newFedPair(t, dialect, nil)
		var mu sync.Mutex
		var got []string
		originRoutes := handler(p.origin)
		p.originSrv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !strings.HasPrefix(r.URL.Path, "/_matrix/federation/v1/send/") {
				originRoutes.ServeHTTP(w, r)
				return
			}
			var body struct {
				PDUs []struct {
					EventID string `json:"event_id"`
				} `json:"pdus"`
			}
			_ = json.NewDecoder(r.Body).Decode(&body)
			mu.Lock()
			for _, e := range body.PDUs {
				got = append(got, e.EventID)
			}
			mu.Unlock()
			_, _ = w.Write([]byte(`{"pdus":{}}`))
		})
		dest := string(p.originName)
		if _, err := p.recv.store.RecordEvent(ctx, storage.RoomEvent{
			RoomID: "!r:recv.test", EventID: "$e", JSON: `{"event_id":"$e"}`, Self: "recv.test", Send: true,
			Joins: []storage.Join{{EventID: "$j", Server: dest}},
		}); err != nil {
			t.Fatal(err)
		}
		if err := p.recv.store.SetDestination(ctx, storage.Destination{Name: dest, Failures: 20, FailingSince: 1, Blacklisted: true}); err != nil {
			t.Fatal(err)
		}
		if err := p.recv.out.queues.Start(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cancel(); p.recv.Wait() })
		req := signedReq{
			method: "GET", uri: "/_matrix/federation/v1/query/profile?user_id=" + url.QueryEscape("@bob:recv.test"),
			origin: p.originName, dest: "recv.test", keyID: p.origin.key.KeyID, priv: p.origin.key.Private,
		}
		// A forged request (the wrong key) wakes nothing.
		_, other, _ := ed25519.GenerateKey(rand.Reader)
		forged := req
		forged.priv = other
		if code, _ := p.send(t, forged, nil); code != http.StatusUnauthorized {
			t.Fatalf("forged request: %d", code)
		}
		if d, _ := p.recv.store.Destination(ctx, dest); !d.Blacklisted {
			t.Fatalf("a forged request woke the destination: %+v", d)
		}
		if code, body := p.send(t, req, nil); code != http.StatusOK {
			t.Fatalf("request: %d %v", code, body)
		}
		poll.True(t, 10*time.Second, "the queued event at the origin", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(got) == 1 && got[0] == "$e"
		})
	})
}

// TestOutboundDenied: an event of a room with members of a server the
// operator denies is queued for the other servers only, and neither an
// EDU.
func TestOutboundDenied(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		dialect := "sqlite"
		if strings.HasPrefix(dbURL, "postgres") {
			dialect = "postgres"
		}
		ctx, cancel := context.WithCancel(context.Background())
		remote := newRecorder(t)
		f := newAPI(t, dialect, "origin.test", remote.ca)
		// denied.test resolves nowhere: were anything queued for it, it
		// would stay queued, failing.
		f.policy = fedpolicy.New(nil, []string{"*.test"})
		b := startOutbound(t, ctx, cancel, f)

		room := "!r:origin.test"
		alice, bob, eve := "@alice:origin.test", "@bob:"+remote.name, "@eve:denied.test"
		publish := func(id, sender, evType string, stateKey *string, content map[string]any) {
			ev := map[string]any{"event_id": id, "room_id": room, "sender": sender, "type": evType, "content": content}
			out := rsapi.OutputEvent{RoomID: room, RoomVersion: "10", EventID: id}
			if stateKey != nil {
				ev["state_key"] = *stateKey
				out.AddsState = []string{id}
			}
			out.Event, _ = json.Marshal(ev)
			data, _ := json.Marshal(out)
			if err := b.Publish(ctx, bus.NewMsg(bus.OutputRoomEvent, data, id)); err != nil {
				t.Fatal(err)
			}
		}
		join := map[string]any{"membership": "join"}
		publish("$create", alice, "m.room.create", ptr(""), map[string]any{})
		publish("$alice", alice, "m.room.member", &alice, join)
		publish("$bob", bob, "m.room.member", &bob, join)
		publish("$eve", eve, "m.room.member", &eve, join)
		publish("$hello", alice, "m.room.message", nil, map[string]any{"body": "hi"})
		poll.Until(t, 10*time.Second, func() error {
			if got := remote.received(); len(got) != 1 || got[0] != "$hello" {
				return fmt.Errorf("the remote got %v", got)
			}
			return nil
		})
		hosts, err := f.JoinedHosts(ctx, room)
		if err != nil || len(hosts) != 3 {
			t.Fatalf("joined hosts %v %v: the denied server's members still count", hosts, err)
		}
		if err := f.SendEDU(ctx, gmsl.EDU{Type: "m.typing", Content: []byte(`{}`)}, []spec.ServerName{"denied.test"}); err != nil {
			t.Fatal(err)
		}
		if p, e, err := f.store.QueueLength(ctx, "denied.test"); err != nil || p+e > 0 {
			t.Fatalf("queued for the denied server: %d PDUs, %d EDUs (%v)", p, e, err)
		}
	})
}
