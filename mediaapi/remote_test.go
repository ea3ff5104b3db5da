package mediaapi

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"myelin/internal/mxhttp"
	"myelin/internal/poll"
	"myelin/internal/sqldb"
	"myelin/internal/sqldb/sqldbtest"
	"myelin/mediaapi/storage"
	"myelin/setup/config"
	uapi "myelin/userapi/api"
)

type oneDevice struct{}

func (oneDevice) DeviceByToken(_ context.Context, token string) (*uapi.Device, error) {
	if token != "tok" {
		return nil, mxhttp.UnknownToken(false)
	}
	return &uapi.Device{UserID: "@u:local.test", DeviceID: "D"}, nil
}

// slowRemote counts its downloads and holds each until released.
type slowRemote struct {
	calls   atomic.Int32
	release chan struct{}
	content []byte
}

func (r *slowRemote) Download(ctx context.Context, server, id string) (io.ReadCloser, string, string, error) {
	r.calls.Add(1)
	if id == "missing" {
		return nil, "", "", storage.ErrNotFound
	}
	select {
	case <-r.release:
	case <-ctx.Done():
		return nil, "", "", ctx.Err()
	}
	return io.NopCloser(bytes.NewReader(r.content)), "image/png", "x.png", nil
}

// newTestAPI serves a MediaAPI alone on loopback, with remote as its
// federation.
func newTestAPI(t testing.TB, dbURL string, remote Remote, adjust ...func(*config.MediaAPI)) (*MediaAPI, string) {
	return newTestAPIClock(t, dbURL, remote, time.Now, adjust...)
}

// newTestAPIClock is newTestAPI with the mediaapi's clock, set before it
// serves anything.
func newTestAPIClock(t testing.TB, dbURL string, remote Remote, now func() time.Time, adjust ...func(*config.MediaAPI)) (*MediaAPI, string) {
	ctx := context.Background()
	db, err := sqldb.Open(ctx, dbURL, sqldb.Options{MaxOpenConns: 4})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	cfg := config.Defaults().MediaAPI
	cfg.BasePath = t.TempDir()
	for _, a := range adjust {
		a(&cfg)
	}
	log := logrus.New()
	log.SetOutput(io.Discard)
	m, err := New(ctx, db, Options{Config: cfg, ServerName: "local.test", Devices: oneDevice{}, Log: logrus.NewEntry(log)})
	if err != nil {
		t.Fatal(err)
	}
	m.SetRemote(remote)
	m.now = now
	r := mxhttp.NewRouter()
	m.Routes(r)
	srv := httptest.NewServer(mxhttp.Serve(logrus.NewEntry(log), cfg.MaxUploadBytes, nil, r))
	t.Cleanup(srv.Close)
	return m, srv.URL
}

// TestRemoteFetchedOnce: concurrent requests for one remote item make one
// download, whose result all of them get, and later ones are served from
// the cache; an item the remote does not have is not found.
func TestRemoteFetchedOnce(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		remote := &slowRemote{release: make(chan struct{}), content: bytes.Repeat([]byte("remote"), 10000)}
		m, base := newTestAPI(t, dbURL, remote)
		get := func(path string) (int, []byte) {
			req, _ := http.NewRequest("GET", base+path, nil)
			req.Header.Set("Authorization", "Bearer tok")
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				return 0, nil
			}
			defer res.Body.Close()
			b, _ := io.ReadAll(res.Body)
			return res.StatusCode, b
		}
		const n = 10
		var wg sync.WaitGroup
		results := make([][]byte, n)
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, results[i] = get("/_matrix/client/v1/media/download/remote.test/abc")
			}()
		}
		// All are waiting on the one download before it is let go.
		poll.True(t, 10*time.Second, "requests joining the flight", func() bool {
			m.flights.mu.Lock()
			defer m.flights.mu.Unlock()
			return len(m.flights.calls) == 1 && remote.calls.Load() == 1
		})
		close(remote.release)
		wg.Wait()
		for i, b := range results {
			if !bytes.Equal(b, remote.content) {
				t.Errorf("request %d: %d bytes", i, len(b))
			}
		}
		if status, b := get("/_matrix/client/v1/media/download/remote.test/abc"); status != 200 || !bytes.Equal(b, remote.content) {
			t.Errorf("cached: %d", status)
		}
		if c := remote.calls.Load(); c != 1 {
			t.Errorf("%d downloads, want 1", c)
		}
		if status, _ := get("/_matrix/client/v1/media/download/remote.test/missing"); status != 404 {
			t.Errorf("missing: %d", status)
		}
	})
}

// TestUnusedIDsExpire: an ID made by /create and not used within
// unused_expiry cannot be uploaded to, and the expiry sweep forgets it.
func TestUnusedIDsExpire(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		var offset atomic.Int64 // how far the clock is ahead
		clock := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
		m, base := newTestAPIClock(t, dbURL, nil, clock)
		do := func(method, path string) (int, string) {
			req, _ := http.NewRequest(method, base+path, bytes.NewReader([]byte("content")))
			req.Header.Set("Authorization", "Bearer tok")
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			b, _ := io.ReadAll(res.Body)
			return res.StatusCode, string(b)
		}
		status, body := do("POST", "/_matrix/media/v1/create")
		if status != 200 {
			t.Fatalf("create: %d %s", status, body)
		}
		_, after, _ := bytes.Cut([]byte(body), []byte("mxc://local.test/"))
		id, _, _ := bytes.Cut(after, []byte(`"`))
		offset.Store(int64(25 * time.Hour))
		if status, body := do("PUT", "/_matrix/media/v3/upload/local.test/"+string(id)); status != 404 {
			t.Errorf("upload to an expired ID: %d %s", status, body)
		}
		if err := m.store.DeleteExpiredPending(context.Background(), clock().UnixMilli()); err != nil {
			t.Fatal(err)
		}
		if _, err := m.store.Media(context.Background(), "local.test", string(id)); err != storage.ErrNotFound {
			t.Errorf("expired ID still stored: %v", err)
		}
		// The expired one no longer counts against the pending bound.
		if n, _ := m.store.PendingCount(context.Background(), "@u:local.test", clock().UnixMilli()); n != 0 {
			t.Errorf("%d pending", n)
		}
	})
}
