package sqldb

import (
	"fmt"
	"strings"
	"unicode"
)

// FullText names the full-text index of a table, for queries written once
// for both dialects. A migration makes it (see Migrate's dialect blocks):
// on SQLite an FTS5 table <table>_fts over the table's text column (an
// external-content table whose rowid is the table's integer key, kept in
// step by triggers); on PostgreSQL a tsvector column tsv of the table,
// generated from the text with the 'simple' configuration and indexed with
// GIN. Both split words on Unicode letters and digits and fold case, with
// no stemming (the same for any language). They differ at the edges:
// FTS5 also folds diacritics ("cafe" finds "café"), and PostgreSQL folds
// the case of non-ASCII letters only under a database locale that knows
// them (not under C).
type FullText struct {
	dialect Dialect
	table   string
	alias   string
}

// FullText returns the full-text index of table, which queries name alias.
func (db *DB) FullText(table, alias string) FullText {
	return FullText{dialect: db.Dialect, table: table, alias: alias}
}

// From is the FROM item of a query matching the index: the table under its
// alias (and, on SQLite, the FTS5 table joined on the key).
func (f FullText) From(key string) string {
	if f.dialect == Postgres {
		return f.table + " " + f.alias
	}
	return fmt.Sprintf("%s %s JOIN %s_fts ON %s_fts.rowid = %s.%s", f.table, f.alias, f.table, f.table, f.alias, key)
}

// Match is the condition that a row matches the query in parameter n (made
// by FullTextQuery).
func (f FullText) Match(n int) string {
	if f.dialect == Postgres {
		return fmt.Sprintf("%s.tsv @@ to_tsquery('simple', $%d)", f.alias, n)
	}
	return fmt.Sprintf("%s_fts MATCH $%d", f.table, n)
}

// Rank is a row's relevance to the query in parameter n, a float8 where
// more is better: ts_rank on PostgreSQL (the row's own term frequencies),
// BM25 on SQLite (which weighs terms by their rarity in the whole index).
// The value is exact across queries, so it may be compared in a keyset.
func (f FullText) Rank(n int) string {
	if f.dialect == Postgres {
		return fmt.Sprintf("CAST(ts_rank(%s.tsv, to_tsquery('simple', $%d)) AS DOUBLE PRECISION)", f.alias, n)
	}
	return fmt.Sprintf("(0.0 - bm25(%s_fts))", f.table)
}

// FullTextQuery turns a user's search term into the dialect's query
// syntax: every word (a run of letters, digits and marks) must appear,
// each as a prefix, so that "meet" finds "meeting" as clients expect. It
// also returns the words, and "" when the term has none: such a term
// matches nothing. No character of the term reaches the query syntax but
// those of words, so no input can be an operator. Case is left to the
// engine, which folds the query as it folded the text.
func FullTextQuery(d Dialect, term string) (string, []string) {
	words := strings.FieldsFunc(term, func(r rune) bool {
		return !unicode.IsLetter(r) && !unicode.IsDigit(r) && !unicode.IsMark(r)
	})
	if len(words) == 0 {
		return "", nil
	}
	parts := make([]string, len(words))
	for i, w := range words {
		if d == Postgres {
			parts[i] = "'" + w + "':*"
		} else {
			parts[i] = `"` + w + `"*`
		}
	}
	if d == Postgres {
		return strings.Join(parts, " & "), words
	}
	return strings.Join(parts, " AND "), words
}

// JSONList is a subquery giving the strings of the JSON array in parameter
// n, for "x IN (...)" over a list of any length with one statement (an IN
// list of placeholders would make one statement per length).
func (db *DB) JSONList(n int) string {
	if db.Dialect == Postgres {
		return fmt.Sprintf("SELECT json_array_elements_text(CAST($%d AS JSON))", n)
	}
	return fmt.Sprintf("SELECT value FROM json_each($%d)", n)
}
