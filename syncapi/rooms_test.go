package syncapi

import (
	"slices"
	"testing"
)

func TestPrevEventIDs(t *testing.T) {
	tests := []struct {
		name, js string
		want     []string
	}{
		{"room version 3 and later: IDs", `{"prev_events":["$a","$b"]}`, []string{"$a", "$b"}},
		{"room versions 1 and 2: [ID, hashes] pairs", `{"prev_events":[["$a:hs",{"sha256":"x"}],["$b:hs",{}]]}`, []string{"$a:hs", "$b:hs"}},
		{"none", `{"prev_events":[]}`, []string{}},
		{"absent", `{}`, []string{}},
		{"not JSON", `{`, nil},
		{"odd entries skipped", `{"prev_events":[1,[],["$a"]]}`, []string{"$a"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := prevEventIDs(tc.js); !slices.Equal(got, tc.want) {
				t.Fatalf("prevEventIDs(%s) = %q, want %q", tc.js, got, tc.want)
			}
		})
	}
}
