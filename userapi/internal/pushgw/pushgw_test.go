package pushgw

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"myelin/internal/poll"
)

func quiet() *logrus.Entry {
	l := logrus.New()
	l.SetOutput(io.Discard)
	return logrus.NewEntry(l)
}

func TestDeliver(t *testing.T) {
	tests := []struct {
		name string
		// answers are the gateway's statuses and bodies, one per attempt
		// (the last repeats).
		answers      []string
		status       []int
		wantAttempts int32
		wantRejected bool
	}{
		{"success", []string{`{}`}, []int{200}, 1, false},
		{"empty body", []string{``}, []int{200}, 1, false},
		{"rejected", []string{`{"rejected":["key"]}`}, []int{200}, 1, true},
		{"another key rejected", []string{`{"rejected":["other"]}`}, []int{200}, 1, false},
		{"retried after errors", []string{``, ``, `{}`}, []int{500, 429, 200}, 3, false},
		{"given up", []string{``}, []int{503}, 3, false},
		{"client error is final", []string{``}, []int{400}, 1, false},
		{"redirects are not followed", []string{``}, []int{302}, 1, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var attempts atomic.Int32
			gw := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				n := int(attempts.Add(1)) - 1
				i := min(n, len(tt.status)-1)
				if tt.status[i] == 302 {
					w.Header().Set("Location", "http://127.0.0.1:1/elsewhere")
				}
				w.WriteHeader(tt.status[i])
				_, _ = io.WriteString(w, tt.answers[min(n, len(tt.answers)-1)])
			}))
			defer gw.Close()
			var rejected atomic.Bool
			ctx, cancel := context.WithCancel(context.Background())
			s := New(Options{Workers: 1, MaxAttempts: 3, Backoff: time.Millisecond,
				OnRejected: func(_ context.Context, r Request) { rejected.Store(r.PushKey == "key") }}, quiet())
			s.Start(ctx)
			defer func() { cancel(); s.Wait() }()
			// A second request on the only worker is taken from the queue
			// once the first is finished, retries included.
			s.Enqueue(Request{URL: gw.URL, Body: []byte(`{}`), PushKey: "key"})
			s.Enqueue(Request{URL: "http://invalid.invalid\x7f/"})
			poll.True(t, 5*time.Second, "the first request to finish", func() bool { return len(s.queue) == 0 })
			if got := attempts.Load(); got != tt.wantAttempts {
				t.Errorf("attempts %d, want %d", got, tt.wantAttempts)
			}
			if rejected.Load() != tt.wantRejected {
				t.Errorf("rejected %v, want %v", rejected.Load(), tt.wantRejected)
			}
		})
	}
}

func TestTimeoutAndFullQueue(t *testing.T) {
	block := make(chan struct{})
	var mu sync.Mutex
	calls := 0
	gw := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		calls++
		mu.Unlock()
		select {
		case <-block:
		case <-r.Context().Done():
		}
	}))
	defer gw.Close()
	defer close(block)
	ctx, cancel := context.WithCancel(context.Background())
	s := New(Options{Workers: 1, QueueSize: 2, MaxAttempts: 1, Timeout: 50 * time.Millisecond}, quiet())
	s.Start(ctx)
	// The worker takes one request (unless it is slower than this loop)
	// and hangs on it; two more fill the queue; the rest are dropped at
	// once rather than waited for.
	start := time.Now()
	for i := 0; i < 10; i++ {
		s.Enqueue(Request{URL: gw.URL})
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("enqueueing took %v", d)
	}
	if s.Dropped() < 7 {
		t.Fatalf("dropped %d, want at least 7", s.Dropped())
	}
	// The hanging gateway is cut off by the timeout and the queue drains.
	poll.True(t, 5*time.Second, "timeouts", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return int64(calls) == 10-s.Dropped() && len(s.queue) == 0
	})
	cancel()
	s.Wait()
}
