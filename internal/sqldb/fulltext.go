package sqldb

import (
	"fmt"
	"strings"
	"unicode"
)

// FullText is a full-text index of short texts keyed by an integer (its
// rowid), for queries written once for both dialects. A migration makes
// it (see Migrate's dialect blocks): on SQLite a contentless FTS5 table
// (no content table, contentless_delete=1) with one column, text; on PostgreSQL
// a table of rowid BIGINT PRIMARY KEY and tsv TSVECTOR with a GIN index.
// Neither keeps the text, only its words: the caller has it elsewhere.
// Both split words on Unicode letters and digits and fold case, with no
// stemming (the same for any language), through the 'simple'
// configuration on PostgreSQL. They differ at the edges: FTS5 also folds
// diacritics ("cafe" finds "café"), and PostgreSQL folds the case of
// non-ASCII letters only under a database locale that knows them.
type FullText struct {
	dialect Dialect
	table   string
}

// FullText returns the full-text index table.
func (db *DB) FullText(table string) FullText {
	return FullText{dialect: db.Dialect, table: table}
}

// Insert is the statement adding n rows: parameters $1, $2 are the first
// row's key and text, $3, $4 the second's, and so on. (FTS5 tables take
// no ON CONFLICT: a key must be new.)
func (f FullText) Insert(n int) string {
	var q strings.Builder
	col, val := "text", "$%d"
	if f.dialect == Postgres {
		col, val = "tsv", "to_tsvector('simple', $%d)"
	}
	fmt.Fprintf(&q, "INSERT INTO %s (rowid, %s) VALUES ", f.table, col)
	for i := range n {
		if i > 0 {
			q.WriteString(", ")
		}
		fmt.Fprintf(&q, "($%d, "+val+")", 2*i+1, 2*i+2)
	}
	return q.String()
}

// Match is the condition that a row of the table (named by its table
// name, not an alias) matches the query in parameter n, made by
// FullTextQuery.
func (f FullText) Match(n int) string {
	if f.dialect == Postgres {
		return fmt.Sprintf("%s.tsv @@ to_tsquery('simple', $%d)", f.table, n)
	}
	return fmt.Sprintf("%s MATCH $%d", f.table, n)
}

// Rank is a matching row's relevance to the query in parameter n, a
// double where more is better: ts_rank on PostgreSQL (from the row's own
// words), BM25 on SQLite (which also weighs words by their rarity in the
// whole index). The same row gets the same value in every query over the
// same index, so it may be compared in a keyset.
func (f FullText) Rank(n int) string {
	if f.dialect == Postgres {
		return fmt.Sprintf("CAST(ts_rank(%s.tsv, to_tsquery('simple', $%d)) AS DOUBLE PRECISION)", f.table, n)
	}
	return fmt.Sprintf("(0.0 - bm25(%s))", f.table)
}

// MaxQueryWords bounds the words of a full-text query.
const MaxQueryWords = 32

// FullTextQuery turns a user's search term into the dialect's query
// syntax: every word (a run of letters, digits and marks) must appear,
// each as a prefix, so that "meet" finds "meeting" as clients expect. It
// also returns the words, and "" when the term has none: such a term
// matches nothing. No character of the term reaches the query syntax but
// those of words, so no input can be an operator. Case is left to the
// engine, which folds the query as it folded the text. Words past the
// first MaxQueryWords are left out: each is one more scan of the index.
func FullTextQuery(d Dialect, term string) (string, []string) {
	words := strings.FieldsFunc(term, func(r rune) bool {
		return !unicode.IsLetter(r) && !unicode.IsDigit(r) && !unicode.IsMark(r)
	})
	if len(words) == 0 {
		return "", nil
	}
	words = words[:min(len(words), MaxQueryWords)]
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
