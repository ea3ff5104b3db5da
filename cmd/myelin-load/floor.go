package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"
)

// The floor server is a stand-in homeserver that does only what the idle
// scenario needs and nothing else: registration hands out a token, an
// initial /sync answers at once, and a long-poll waits for its timeout
// (less a random tenth and rounded down to a quarter second, as Myelin's
// are) and answers an empty next_batch. Running the idle scenario against it
// measures what Go's HTTP server, the runtime and the kernel cost on this
// machine for the same connections and polls, below which no Go
// homeserver can go.
//
//	myelin-load floor -listen 127.0.0.1:18100 &
//	myelin-load idle -url http://127.0.0.1:18100 -pid $! -room-size 0 -conns 18000

func runFloor(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("myelin-load floor", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:18100", "loopback address to serve on")
	if err := fs.Parse(args); err != nil {
		return err
	}
	host, _, err := net.SplitHostPort(*listen)
	if err != nil {
		return err
	}
	if ip := net.ParseIP(host); ip == nil || !isLoopback(ip) {
		return fmt.Errorf("-listen %s: only loopback addresses", *listen)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "floor server on http://%s\n", ln.Addr())
	return http.Serve(ln, floorHandler())
}

func floorHandler() http.Handler {
	var users atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("GET /_matrix/client/versions", func(w http.ResponseWriter, _ *http.Request) {
		floorJSON(w, `{"versions":["v1.11"]}`)
	})
	mux.HandleFunc("POST "+clientPrefix+"/register", func(w http.ResponseWriter, _ *http.Request) {
		n := users.Add(1)
		floorJSON(w, fmt.Sprintf(`{"user_id":"@u%d:floor","access_token":"t%d","device_id":"D%d"}`, n, n, n))
	})
	mux.HandleFunc("GET "+clientPrefix+"/sync", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if q.Get("since") != "" {
			ms, _ := strconv.ParseInt(q.Get("timeout"), 10, 64)
			// As Myelin does: less a random part of a tenth, so that a
			// herd does not stay in step, and rounded down to a quarter
			// second, so that timeouts fire in batches.
			timeout := time.Duration(max(ms, 0)) * time.Millisecond
			if spread := timeout / 10; spread > 0 {
				timeout -= rand.N(spread)
			}
			deadline := time.Now().Add(timeout).Truncate(250 * time.Millisecond)
			ctx, cancel := context.WithDeadline(r.Context(), deadline)
			<-ctx.Done()
			cancel()
		}
		floorJSON(w, `{"next_batch":"s1","rooms":{"join":{}}}`)
	})
	return mux
}

func floorJSON(w http.ResponseWriter, body string) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = io.WriteString(w, body)
}
