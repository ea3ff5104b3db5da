package mxhttp

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

type ctxKey struct{}

// TestThenAnswersFirst: the client has a Then's answer while its After
// still runs, and After keeps the request's values but not its
// cancellation.
func TestThenAnswersFirst(t *testing.T) {
	for _, h2 := range []bool{false, true} {
		name := "HTTP/1.1"
		if h2 {
			name = "HTTP/2"
		}
		t.Run(name, func(t *testing.T) { testThenAnswersFirst(t, h2) })
	}
}

func testThenAnswersFirst(t *testing.T, h2 bool) {
	read := make(chan struct{})
	afterDone := make(chan error, 1)
	h := Handler(func(r *http.Request) (any, error) {
		return &Then{Body: RawJSON(`{"ok":true}`), After: func(ctx context.Context) {
			select {
			case <-read:
			case <-time.After(10 * time.Second):
				afterDone <- context.DeadlineExceeded // the answer never came
				return
			}
			if ctx.Value(ctxKey{}) != "v" {
				afterDone <- context.Canceled
				return
			}
			afterDone <- ctx.Err()
		}}, nil
	})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), ctxKey{}, "v")))
	}))
	if h2 {
		srv.EnableHTTP2 = true
		srv.StartTLS()
	} else {
		srv.Start()
	}
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	if h2 != (resp.ProtoMajor == 2) {
		t.Fatalf("answered over %s", resp.Proto)
	}
	// As gomatrixserverlib's client does: decode one JSON value, close.
	var got struct{ OK bool }
	err = json.NewDecoder(resp.Body).Decode(&got)
	resp.Body.Close()
	if err != nil || !got.OK || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("answer %+v (%v), content type %q", got, err, resp.Header.Get("Content-Type"))
	}
	close(read)
	if err := <-afterDone; err != nil {
		t.Fatalf("After: %v", err)
	}
}
