package input

import (
	"database/sql/driver"
	"errors"
	"fmt"
	"testing"

	"myelin/internal/sqldb"
)

func TestOutageAnswerNow(t *testing.T) {
	down := fmt.Errorf("begin transaction: %w", driver.ErrBadConn)
	lostCommit := fmt.Errorf("commit: %w: %w", sqldb.ErrOutcomeUnknown, driver.ErrBadConn)
	bug := errors.New("input request processed twice")
	tests := []struct {
		name     string
		failures []error // one batch's failures, in order
		want     []bool
	}{
		{"database down: answer", []error{down}, []bool{true}},
		{"other failure: retry", []error{bug, bug}, []bool{false, false}},
		{"other, then down: answer", []error{bug, down}, []bool{false, true}},
		// Once a commit may have stored the batch, only a retry (which
		// finds it in the input log) may answer it.
		{"lost commit: retry for good", []error{lostCommit, down, down}, []bool{false, false, false}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var o outage
			for i, err := range tc.failures {
				if got := o.answerNow(err); got != tc.want[i] {
					t.Errorf("failure %d (%v): answerNow = %v, want %v", i, err, got, tc.want[i])
				}
			}
		})
	}
}
