package sqldb

import (
	"strings"
	"testing"
)

func TestFullTextQuery(t *testing.T) {
	for _, tc := range []struct {
		name, term, sqlite, postgres string
		words                        int
	}{
		{"one word", "fox", `"fox"*`, `'fox':*`, 1},
		{"words", "Quick  brown", `"Quick"* AND "brown"*`, `'Quick':* & 'brown':*`, 2},
		{"operators dropped", `fox" OR NOT (x) & !y:* '`, `"fox"* AND "OR"* AND "NOT"* AND "x"* AND "y"*`, `'fox':* & 'OR':* & 'NOT':* & 'x':* & 'y':*`, 5},
		{"unicode", "café 日本語", `"café"* AND "日本語"*`, `'café':* & '日本語':*`, 2},
		{"no words", `"*:&|!() '`, "", "", 0},
		{"too many words", strings.Repeat("a ", 100), strings.TrimSuffix(strings.Repeat(`"a"* AND `, MaxQueryWords), " AND "), strings.TrimSuffix(strings.Repeat(`'a':* & `, MaxQueryWords), " & "), MaxQueryWords},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q, words := FullTextQuery(SQLite, tc.term)
			if q != tc.sqlite || len(words) != tc.words {
				t.Errorf("sqlite: %q %q, want %q and %d words", q, words, tc.sqlite, tc.words)
			}
			if q, _ := FullTextQuery(Postgres, tc.term); q != tc.postgres {
				t.Errorf("postgres: %q, want %q", q, tc.postgres)
			}
		})
	}
}

func TestDialectBlocks(t *testing.T) {
	in := "a {{sqlite}}S1{{end}} b {{postgres}}P1{{end}} c {{sqlite}}S2{{end}}"
	for _, tc := range []struct {
		d    Dialect
		want string
	}{
		{SQLite, "a S1 b  c S2"},
		{Postgres, "a  b P1 c "},
	} {
		if got := dialectBlocks(tc.d, in); got != tc.want {
			t.Errorf("%v: %q, want %q", tc.d, got, tc.want)
		}
	}
	if got := dialectBlocks(SQLite, "no blocks {{serial}}"); got != "no blocks {{serial}}" {
		t.Errorf("text without blocks changed: %q", got)
	}
}
