package setup

import (
	"context"
	"net/http"
	"sync"
	"time"

	"myelin/internal/mxhttp"
)

// healthTimeout bounds each check of GET /health.
const healthTimeout = 5 * time.Second

// health answers GET /health: 200 when the bus is connected with JetStream
// answering and the database answers, else 503; the body names each
// check's state, for example
//
//	{"status":"unavailable","checks":{"bus":"not connected for 42s","database":"ok"}}
//
// It is what a load balancer or an orchestrator polls: a server whose bus
// cannot heal says so here (and in its log) instead of failing requests.
func (s *Server) health(r *http.Request) (any, error) {
	ctx, cancel := context.WithTimeout(r.Context(), healthTimeout)
	defer cancel()
	checks := map[string]func(context.Context) string{
		"bus": func(ctx context.Context) string {
			if err := s.bus.Health(ctx); err != nil {
				return err.Error()
			}
			return "ok"
		},
		"database": func(ctx context.Context) string {
			var one int
			if err := s.db.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
				return "not answering"
			}
			return "ok"
		},
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	results := make(map[string]string, len(checks))
	for name, check := range checks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res := check(ctx)
			mu.Lock()
			results[name] = res
			mu.Unlock()
		}()
	}
	wg.Wait()
	status := "ok"
	for _, res := range results {
		if res != "ok" {
			status = "unavailable"
		}
	}
	body := map[string]any{"status": status, "checks": results}
	if status != "ok" {
		return &mxhttp.Response{Status: http.StatusServiceUnavailable, Body: body}, nil
	}
	return body, nil
}
