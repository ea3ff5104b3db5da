// Package poll is the one way tests wait for something to happen: they
// poll a condition, with a bound, instead of sleeping for a guessed time
// (as nats-server's tests do with checkFor). Test code only.
package poll

import (
	"fmt"
	"testing"
	"time"
)

// Until calls f until it returns nil, failing t with f's last error when
// total has passed. The interval starts at 5 ms and doubles to 100 ms, so
// quick conditions cost little and slow ones do not spin.
func Until(t testing.TB, total time.Duration, f func() error) {
	t.Helper()
	if err := Wait(total, f); err != nil {
		t.Fatalf("after %v: %v", total, err)
	}
}

// True is Until for a condition with no error of its own to report.
func True(t testing.TB, total time.Duration, what string, cond func() bool) {
	t.Helper()
	Until(t, total, func() error {
		if cond() {
			return nil
		}
		return fmt.Errorf("still waiting for %s", what)
	})
}

// Wait is Until without a test: it returns f's last error once total has
// passed, nil as soon as f succeeds.
func Wait(total time.Duration, f func() error) error {
	deadline := time.Now().Add(total)
	interval := 5 * time.Millisecond
	for {
		err := f()
		if err == nil {
			return nil
		}
		if !time.Now().Before(deadline) {
			return err
		}
		time.Sleep(min(interval, time.Until(deadline)))
		interval = min(2*interval, 100*time.Millisecond)
	}
}
