package poll

import (
	"errors"
	"testing"
	"time"
)

func TestWait(t *testing.T) {
	tests := []struct {
		name    string
		succeed int // the call that succeeds; 0 never
		wantErr bool
	}{
		{"at once", 1, false},
		{"after a few tries", 4, false},
		{"never", 0, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			calls := 0
			err := Wait(100*time.Millisecond, func() error {
				calls++
				if calls == tc.succeed {
					return nil
				}
				return errors.New("not yet")
			})
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error %v", err, tc.wantErr)
			}
			if !tc.wantErr && calls != tc.succeed {
				t.Fatalf("%d calls, want %d", calls, tc.succeed)
			}
		})
	}
}
