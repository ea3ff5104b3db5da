package main

import (
	"errors"
	"fmt"
	"math"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	hundred := make([]float64, 100)
	for i := range hundred {
		hundred[i] = float64(i + 1)
	}
	tests := []struct {
		name   string
		sorted []float64
		p      float64
		want   float64
	}{
		{"one sample", []float64{7}, 99, 7},
		{"p50 of 1..100", hundred, 50, 50},
		{"p95 of 1..100", hundred, 95, 95},
		{"p99 of 1..100", hundred, 99, 99},
		{"p100 is the max", hundred, 100, 100},
		{"p0 is the min", hundred, 0, 1},
		{"p50 of two rounds up to a measured value", []float64{10, 20}, 50, 10},
		{"p99 of ten is the max", []float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, 99, 10},
		{"p95 of ten", []float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, 95, 10},
		{"p90 of ten", []float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, 90, 9},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := percentile(tt.sorted, tt.p); got != tt.want {
				t.Errorf("percentile(%v, %v) = %v, want %v", tt.sorted, tt.p, got, tt.want)
			}
		})
	}
	if !math.IsNaN(percentile(nil, 50)) {
		t.Error("percentile of nothing is not NaN")
	}
}

func TestSummarize(t *testing.T) {
	in := []float64{5, 1, 4, 2, 3}
	s := summarize(in)
	want := Summary{Count: 5, Min: 1, Mean: 3, P50: 3, P95: 5, P99: 5, Max: 5}
	if s != want {
		t.Errorf("summarize = %+v, want %+v", s, want)
	}
	if in[0] != 5 {
		t.Error("summarize reordered its input")
	}
	if s := summarize(nil); s != (Summary{}) {
		t.Errorf("summarize(nil) = %+v", s)
	}
}

func TestErrorKind(t *testing.T) {
	tests := []struct {
		err  error
		want string
	}{
		{&apiError{Status: 500, Code: "M_UNKNOWN"}, "500 M_UNKNOWN"},
		{fmt.Errorf("wrapped: %w", &apiError{Status: 502}), "502"},
		{fmt.Errorf("GET /sync: %w", errTimeout), "timeout"},
		{errors.New("dial tcp 127.0.0.1:1: connect: connection refused"), "connection refused"},
		{errors.New("something else"), "other"},
	}
	for _, tt := range tests {
		if got := errorKind(tt.err); got != tt.want {
			t.Errorf("errorKind(%v) = %q, want %q", tt.err, got, tt.want)
		}
	}
}

func TestTally(t *testing.T) {
	ta := newTally()
	for range 30 {
		ta.Add("send", &apiError{Status: 500, Code: "M_UNKNOWN"})
	}
	ta.Merge(map[string]int{"sync: timeout": 2}, []string{"from a worker"})
	counts, samples := ta.Snapshot()
	if counts["send: 500 M_UNKNOWN"] != 30 || counts["sync: timeout"] != 2 {
		t.Errorf("counts = %v", counts)
	}
	if len(samples) != maxErrorSamples {
		t.Errorf("%d samples kept, want %d", len(samples), maxErrorSamples)
	}
	if ta.Total() != 32 {
		t.Errorf("Total = %d, want 32", ta.Total())
	}
}

func TestJoinSlices(t *testing.T) {
	start := time.Unix(1000, 0)
	var done []joinDone
	// Five joins one second apart, then five two seconds apart: the second
	// slice is half as fast.
	at := start
	for i := range 10 {
		if i < 5 {
			at = at.Add(time.Second)
		} else {
			at = at.Add(2 * time.Second)
		}
		done = append(done, joinDone{at: at, latency: float64(i)})
	}
	// Completion order, not input order, decides the slices.
	done[0], done[9] = done[9], done[0]
	slices, all := joinSlices(done, start, 5)
	if len(slices) != 2 {
		t.Fatalf("%d slices, want 2", len(slices))
	}
	if slices[0].PerSec != 1 || slices[1].PerSec != 0.5 {
		t.Errorf("rates %v and %v, want 1 and 0.5", slices[0].PerSec, slices[1].PerSec)
	}
	if slices[1].From != 5 || slices[1].To != 10 {
		t.Errorf("second slice %d-%d, want 5-10", slices[1].From, slices[1].To)
	}
	if all.Count != 10 {
		t.Errorf("overall count %d", all.Count)
	}
}

func TestFanoutAccount(t *testing.T) {
	sent := []sentEvent{
		{room: 0, acked: true},
		{room: 1, acked: true},
		{room: 0, acked: true},
		{room: 0, acked: false}, // failed send
		{room: 0, acked: true},
	}
	var d FanoutDetails
	// Saw 0 twice, 2 once, missed 4, and saw 3 although its send failed.
	d.account(sent, 0, "@a:x", []int64{0, 2, 0, 3})
	if d.Expected != 3 || d.Delivered != 2 || d.Missing != 1 || d.Duplicates != 1 || d.Unexpected != 1 {
		t.Errorf("got %+v", d)
	}
	if d.MissingUsers != 1 || len(d.MissingSamples) != 1 {
		t.Errorf("missing users %d, samples %v", d.MissingUsers, d.MissingSamples)
	}
}
