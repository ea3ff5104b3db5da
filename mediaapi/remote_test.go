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
