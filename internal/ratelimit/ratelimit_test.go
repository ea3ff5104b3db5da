package ratelimit

import (
	"testing"
	"time"
)

func TestLimiter(t *testing.T) {
	now := time.Unix(1000, 0)
	l := New(2, 3, func() time.Time { return now })
	steps := []struct {
		name    string
		advance time.Duration
		key     string
		want    bool
	}{
		{"burst 1", 0, "a", true},
		{"burst 2", 0, "a", true},
		{"burst 3", 0, "a", true},
		{"empty", 0, "a", false},
		{"other key unaffected", 0, "b", true},
		{"refilled one after 500ms", 500 * time.Millisecond, "a", true},
		{"empty again", 0, "a", false},
	}
	for _, s := range steps {
		now = now.Add(s.advance)
		ok, wait := l.Allow(s.key)
		if ok != s.want {
			t.Fatalf("%s: allowed=%v, want %v", s.name, ok, s.want)
		}
		if !ok && (wait <= 0 || wait > 500*time.Millisecond) {
			t.Fatalf("%s: retry after %v, want (0, 500ms]", s.name, wait)
		}
	}
	var nilLimiter *Limiter
	if ok, _ := nilLimiter.Allow("x"); !ok {
		t.Fatal("nil limiter must allow")
	}
}
