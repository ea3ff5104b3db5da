package sqldb_test

import (
	"fmt"
	"strings"
	"testing"

	"myelin/internal/sqldb"
)

func TestInChunks(t *testing.T) {
	vals := func(n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = fmt.Sprint(i)
		}
		return out
	}
	for _, tc := range []struct {
		n     int
		sizes []int // placeholders of each call
	}{
		{0, nil},
		{1, []int{8}},
		{8, []int{8}},
		{9, []int{64}},
		{512, []int{512}},
		{513, []int{512, 8}},
		{1050, []int{512, 512, 64}},
	} {
		var sizes []int
		seen := map[string]bool{}
		err := sqldb.InChunks(3, vals(tc.n), func(in string, args []any) error {
			if !strings.HasPrefix(in, "$3, ") && in != "$3" {
				t.Errorf("n=%d: list %q does not start at $3", tc.n, in)
			}
			if strings.Count(in, "$") != len(args) {
				t.Errorf("n=%d: %d placeholders for %d args", tc.n, strings.Count(in, "$"), len(args))
			}
			sizes = append(sizes, len(args))
			for _, a := range args {
				seen[a.(string)] = true
			}
			return nil
		})
		if err != nil || fmt.Sprint(sizes) != fmt.Sprint(tc.sizes) || len(seen) != tc.n {
			t.Errorf("n=%d: chunks %v (%v), %d values seen; want %v", tc.n, sizes, err, len(seen), tc.sizes)
		}
	}
}
