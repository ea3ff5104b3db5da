package mxhttp

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestPlainErrorListener sends requests net/http refuses before any handler
// runs, and checks each answer is a Matrix error; answers of handlers,
// and files sent with ReadFrom, go through as they were.
func TestPlainErrorListener(t *testing.T) {
	big := strings.Repeat("f", 1<<20)
	file := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(file, []byte(big), 0o600); err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/plain400", func(w http.ResponseWriter, _ *http.Request) {
		// A handler's own plain-text 400 is its business.
		w.Header().Set("Connection", "close")
		http.Error(w, "mine", http.StatusBadRequest)
	})
	mux.HandleFunc("/file", func(w http.ResponseWriter, r *http.Request) { http.ServeFile(w, r, file) })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux, MaxHeaderBytes: 1 << 10}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(PlainErrorListener(ln)) }()
	t.Cleanup(func() { _ = srv.Close(); <-done })

	for _, tc := range []struct {
		name, request string
		status        int
		errcode       string // "" for a handler's own answer
		body          string
	}{
		{"bad escape in the path", "GET /_matrix/client/v3/rooms/%ZZ/state HTTP/1.1\r\nHost: x\r\n\r\n", 400, "M_UNRECOGNIZED", ""},
		{"space in the target", "GET /a b HTTP/1.1\r\nHost: x\r\n\r\n", 400, "M_UNRECOGNIZED", ""},
		{"no Host", "GET /a HTTP/1.1\r\n\r\n", 400, "M_UNRECOGNIZED", ""},
		{"bad header line", "GET /a HTTP/1.1\r\nHost: x\r\nno colon\r\n\r\n", 400, "M_UNRECOGNIZED", ""},
		{"headers too large", "GET /a HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("b", 8<<10) + "\r\n\r\n", 431, "M_TOO_LARGE", ""},
		{"a handler's plain 400", "GET /plain400 HTTP/1.1\r\nHost: x\r\n\r\n", 400, "", "mine\n"},
		{"a file", "GET /file HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 200, "", big},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(30 * time.Second))
			if _, err := io.WriteString(c, tc.request); err != nil {
				t.Fatal(err)
			}
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			raw, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d: %.200s", resp.StatusCode, tc.status, raw)
			}
			if tc.errcode == "" {
				if string(raw) != tc.body {
					t.Fatalf("body %.100q (%d bytes), want %.100q", raw, len(raw), tc.body)
				}
				return
			}
			var body map[string]string
			if err := json.Unmarshal(raw, &body); err != nil || body["errcode"] != tc.errcode || body["error"] == "" {
				t.Fatalf("body %s (%v), want errcode %s", raw, err, tc.errcode)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
				t.Fatalf("Content-Type %q", ct)
			}
		})
	}
}

// BenchmarkErrConnWrite is the cost the wrapper adds to a response write.
func BenchmarkErrConnWrite(b *testing.B) {
	c := &errConn{Conn: discardConn{}}
	p := []byte("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nDate: x\r\nContent-Length: 2\r\n\r\n{}")
	b.ReportAllocs()
	for b.Loop() {
		_, _ = c.Write(p)
	}
}

type discardConn struct{ net.Conn }

func (discardConn) Write(p []byte) (int, error) { return len(p), nil }
