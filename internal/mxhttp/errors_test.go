package mxhttp

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

type codedErr struct{ code string }

func (e codedErr) Error() string         { return "coded " + e.code }
func (e codedErr) MatrixErrCode() string { return e.code }

type outage struct{ down bool }

func (e outage) Error() string     { return "database down" }
func (e outage) Unavailable() bool { return e.down }

func TestToError(t *testing.T) {
	tests := []struct {
		name       string
		err        error
		wantStatus int
		wantCode   string
	}{
		{"matrix error", Forbidden("no"), 403, "M_FORBIDDEN"},
		{"wrapped matrix error", fmt.Errorf("join: %w", NotFound("no room")), 404, "M_NOT_FOUND"},
		{"coded", fmt.Errorf("input: %w", codedErr{"M_BAD_JSON"}), 400, "M_BAD_JSON"},
		{"unavailable", fmt.Errorf("store: %w", outage{down: true}), 503, "M_UNKNOWN"},
		{"not unavailable after all", outage{down: false}, 500, "M_UNKNOWN"},
		{"body too large", fmt.Errorf("read: %w", errBodyTooLarge), 413, "M_TOO_LARGE"},
		{"anything else", errors.New("boom"), 500, "M_UNKNOWN"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := ToError(tc.err)
			if got.Status != tc.wantStatus || got.Code != tc.wantCode {
				t.Fatalf("ToError(%v) = %d %s, want %d %s", tc.err, got.Status, got.Code, tc.wantStatus, tc.wantCode)
			}
			if got.Status >= 500 && got.Message == tc.err.Error() {
				t.Fatalf("a %d answer carries the internal text %q", got.Status, got.Message)
			}
		})
	}
}

func TestOutageLog(t *testing.T) {
	var o outageLog
	t0 := time.Unix(1000, 0)
	steps := []struct {
		at          time.Duration
		log         bool
		wantSkipped int
	}{
		{0, true, 0},
		{100 * time.Millisecond, false, 0},
		{900 * time.Millisecond, false, 0},
		{time.Second, true, 2},
		{1500 * time.Millisecond, false, 0},
		{5 * time.Second, true, 1},
	}
	for _, s := range steps {
		log, skipped := o.allow(t0.Add(s.at))
		if log != s.log || skipped != s.wantSkipped {
			t.Fatalf("at %v: allow = %v, %d; want %v, %d", s.at, log, skipped, s.log, s.wantSkipped)
		}
	}
}
