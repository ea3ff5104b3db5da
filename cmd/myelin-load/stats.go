package main

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
)

// Summary describes a set of durations in milliseconds.
type Summary struct {
	Count int     `json:"count"`
	Min   float64 `json:"min_ms"`
	Mean  float64 `json:"mean_ms"`
	P50   float64 `json:"p50_ms"`
	P95   float64 `json:"p95_ms"`
	P99   float64 `json:"p99_ms"`
	Max   float64 `json:"max_ms"`
}

// summarize computes a Summary of samples (milliseconds). It sorts a copy,
// so the caller's order is kept.
func summarize(samples []float64) Summary {
	if len(samples) == 0 {
		return Summary{}
	}
	s := slices.Clone(samples)
	sort.Float64s(s)
	var sum float64
	for _, v := range s {
		sum += v
	}
	return Summary{
		Count: len(s),
		Min:   s[0],
		Mean:  sum / float64(len(s)),
		P50:   percentile(s, 50),
		P95:   percentile(s, 95),
		P99:   percentile(s, 99),
		Max:   s[len(s)-1],
	}
}

// percentile returns the nearest-rank p-th percentile of sorted: the
// smallest value with at least p% of the samples at or below it. Nearest
// rank never invents a value that was not measured, which matters for the
// small sample counts of a short run.
func percentile(sorted []float64, p float64) float64 {
	n := len(sorted)
	if n == 0 {
		return math.NaN()
	}
	rank := int(math.Ceil(p / 100 * float64(n)))
	rank = max(1, min(rank, n))
	return sorted[rank-1]
}

func (s Summary) String() string {
	if s.Count == 0 {
		return "no samples"
	}
	return fmt.Sprintf("p50 %s  p95 %s  p99 %s  max %s ms  (n=%d)",
		fmtMS(s.P50), fmtMS(s.P95), fmtMS(s.P99), fmtMS(s.Max), s.Count)
}

func fmtMS(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// Tally counts failed requests by kind ("send: 500 M_UNKNOWN", "sync:
// timeout") and keeps the first few messages as evidence.
type Tally struct {
	mu      sync.Mutex
	counts  map[string]int
	samples []string
}

const maxErrorSamples = 20

func newTally() *Tally { return &Tally{counts: make(map[string]int)} }

// Add records that op failed with err.
func (t *Tally) Add(op string, err error) {
	kind := op + ": " + errorKind(err)
	t.mu.Lock()
	defer t.mu.Unlock()
	t.counts[kind]++
	if len(t.samples) < maxErrorSamples {
		t.samples = append(t.samples, fmt.Sprintf("%s %s: %v", time.Now().Format("15:04:05.000"), op, err))
	}
}

// Merge adds counts and samples reported by a worker process.
func (t *Tally) Merge(counts map[string]int, samples []string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for k, v := range counts {
		t.counts[k] += v
	}
	for _, s := range samples {
		if len(t.samples) < maxErrorSamples {
			t.samples = append(t.samples, s)
		}
	}
}

// Snapshot returns a copy of the counts and samples.
func (t *Tally) Snapshot() (map[string]int, []string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	c := make(map[string]int, len(t.counts))
	for k, v := range t.counts {
		c[k] = v
	}
	return c, slices.Clone(t.samples)
}

// Total is the number of failures recorded.
func (t *Tally) Total() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, v := range t.counts {
		n += v
	}
	return n
}

// errorKind reduces an error to a short class so that counts group.
func errorKind(err error) string {
	var ae *apiError
	var ne net.Error
	var ue *url.Error
	switch {
	case errors.As(err, &ae):
		if ae.Code != "" {
			return fmt.Sprintf("%d %s", ae.Status, ae.Code)
		}
		return fmt.Sprintf("%d", ae.Status)
	case errors.Is(err, errTimeout), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case strings.Contains(err.Error(), "connection refused"):
		return "connection refused"
	case strings.Contains(err.Error(), "connection reset"):
		return "connection reset"
	case strings.Contains(err.Error(), "EOF"):
		return "EOF"
	case errors.As(err, &ue):
		return "network"
	default:
		return "other"
	}
}
