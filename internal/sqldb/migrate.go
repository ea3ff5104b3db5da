package sqldb

import (
	"context"
	"fmt"
	"hash/fnv"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Migrate applies the numbered migrations in fsys (files named
// NNNN_description.sql at its root) that component has not applied yet, each
// in its own transaction, recording them in schema_migrations.
//
// Migration text may use macros that differ between dialects:
//
//	{{serial}}  an auto-incrementing BIGINT primary key
//	{{blob}}    a binary column
//
// and blocks kept for one dialect only, where the engines differ in more
// than a type (a full-text index: FTS5 against tsvector):
//
//	{{sqlite}} ... {{end}}
//	{{postgres}} ... {{end}}
func Migrate(ctx context.Context, db *DB, component string, fsys fs.FS) error {
	names, err := fs.Glob(fsys, "*.sql")
	if err != nil {
		return fmt.Errorf("list migrations of %s: %w", component, err)
	}
	type migration struct {
		version int
		name    string
	}
	var todo []migration
	for _, n := range names {
		base := path.Base(n)
		num, _, ok := strings.Cut(base, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v <= 0 {
			return fmt.Errorf("migration %s of %s: name must start with a positive number and '_'", base, component)
		}
		todo = append(todo, migration{v, n})
	}
	sort.Slice(todo, func(i, j int) bool { return todo[i].version < todo[j].version })
	for i := 1; i < len(todo); i++ {
		if todo[i].version == todo[i-1].version {
			return fmt.Errorf("migrations of %s: two files numbered %d", component, todo[i].version)
		}
	}

	if _, err := db.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		component TEXT NOT NULL,
		version INTEGER NOT NULL,
		name TEXT NOT NULL,
		applied_at BIGINT NOT NULL,
		PRIMARY KEY (component, version)
	)`); err != nil {
		return fmt.Errorf("create schema_migrations: %w", err)
	}
	for _, m := range todo {
		body, err := fs.ReadFile(fsys, m.name)
		if err != nil {
			return fmt.Errorf("read migration %s of %s: %w", m.name, component, err)
		}
		err = db.WithTx(ctx, func(tx *Tx) error {
			if db.Dialect == Postgres {
				// Several processes of a split deployment may start at once.
				h := fnv.New32a()
				h.Write([]byte(component))
				if _, err := tx.tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(h.Sum32())); err != nil {
					return err
				}
			}
			var n int
			if err := tx.tx.QueryRowContext(ctx, db.Rebind(`SELECT COUNT(*) FROM schema_migrations WHERE component = $1 AND version = $2`), component, m.version).Scan(&n); err != nil {
				return err
			}
			if n > 0 {
				return nil
			}
			if _, err := tx.tx.ExecContext(ctx, expandMacros(db.Dialect, string(body))); err != nil {
				return err
			}
			_, err := tx.tx.ExecContext(ctx, db.Rebind(`INSERT INTO schema_migrations (component, version, name, applied_at) VALUES ($1, $2, $3, $4)`),
				component, m.version, path.Base(m.name), time.Now().UnixMilli())
			return err
		})
		if err != nil {
			return fmt.Errorf("apply migration %s of %s: %w", m.name, component, err)
		}
	}
	return nil
}

func expandMacros(d Dialect, s string) string {
	s = dialectBlocks(d, s)
	if d == Postgres {
		return strings.NewReplacer(
			"{{serial}}", "BIGSERIAL PRIMARY KEY",
			"{{blob}}", "BYTEA",
		).Replace(s)
	}
	return strings.NewReplacer(
		"{{serial}}", "INTEGER PRIMARY KEY AUTOINCREMENT",
		"{{blob}}", "BLOB",
	).Replace(s)
}

// dialectBlocks keeps the {{sqlite}} and {{postgres}} blocks of dialect d
// (without their markers) and drops the others'. Blocks do not nest.
func dialectBlocks(d Dialect, s string) string {
	var b strings.Builder
	for {
		i := strings.Index(s, "{{sqlite}}")
		j := strings.Index(s, "{{postgres}}")
		if i < 0 || (j >= 0 && j < i) {
			i = j
		}
		if i < 0 {
			b.WriteString(s)
			return b.String()
		}
		b.WriteString(s[:i])
		s = s[i:]
		open := "{{sqlite}}"
		if strings.HasPrefix(s, "{{postgres}}") {
			open = "{{postgres}}"
		}
		body, rest, _ := strings.Cut(s[len(open):], "{{end}}")
		if open == "{{"+d.String()+"}}" {
			b.WriteString(body)
		}
		s = rest
	}
}
