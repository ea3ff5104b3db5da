// Package sqldb is the small SQL dialect shim every component's storage is
// written against: one set of queries for SQLite and PostgreSQL, numbered
// migrations, transactions, and SQLite's single-writer rule.
//
// Queries are written in PostgreSQL style ($1, $2, ...); for SQLite they are
// rewritten to ?1, ?2, ... which SQLite binds by index, so a parameter may be
// used twice or out of order in both dialects.
package sqldb

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lib/pq"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// Dialect says which database engine a DB talks to.
type Dialect int

const (
	SQLite Dialect = iota
	Postgres
)

func (d Dialect) String() string {
	if d == Postgres {
		return "postgres"
	}
	return "sqlite"
}

// DB is a database handle shared by the storage of one or more components.
// For SQLite it holds a single-connection writer pool (SQLite allows one
// writer at a time; serialising in-process avoids SQLITE_BUSY storms) and a
// read pool; for PostgreSQL both are the same pool.
type DB struct {
	Dialect Dialect
	writer  *sql.DB
	reader  *sql.DB
	// writeLock (SQLite only) admits one writer at a time, on the writer
	// pool's one connection.
	writeLock *writeGate

	stmts sync.Map // rewritten query -> *sql.Stmt on the matching pool
	// queries counts the statements run, for benchmarks that state how
	// many queries an operation costs (one atomic add each).
	queries atomic.Int64
}

// Queries is the number of statements run through db so far.
func (db *DB) Queries() int64 { return db.queries.Load() }

// Options tune a DB. Zero values mean defaults.
type Options struct {
	MaxOpenConns int // PostgreSQL pool size and SQLite reader pool size
}

// IsPostgresURL reports whether url names a PostgreSQL database.
func IsPostgresURL(url string) bool {
	return strings.HasPrefix(url, "postgres://") || strings.HasPrefix(url, "postgresql://")
}

// Open opens url: a postgres:// DSN, or a file path (optionally file:) for SQLite.
func Open(ctx context.Context, url string, opts Options) (*DB, error) {
	if opts.MaxOpenConns <= 0 {
		opts.MaxOpenConns = 16
	}
	if IsPostgresURL(url) {
		pool, err := sql.Open("postgres", url)
		if err != nil {
			return nil, fmt.Errorf("open postgres: %w", err)
		}
		pool.SetMaxOpenConns(opts.MaxOpenConns)
		pool.SetMaxIdleConns(opts.MaxOpenConns)
		if err := pool.PingContext(ctx); err != nil {
			pool.Close()
			return nil, fmt.Errorf("connect to postgres: %w", err)
		}
		return &DB{Dialect: Postgres, writer: pool, reader: pool}, nil
	}
	path := strings.TrimPrefix(url, "file:")
	if i := strings.IndexByte(path, '?'); i >= 0 {
		path = path[:i]
	}
	if path == "" {
		return nil, errors.New("empty sqlite path")
	}
	if dir := filepath.Dir(path); dir != "" {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("create database directory: %w", err)
		}
	}
	// WAL lets readers run beside the writer; synchronous=NORMAL in WAL mode
	// survives a process crash (the WAL is in the OS cache) at a fraction
	// of FULL's fsync cost. (A memory map of the file, mmap_size, measured
	// no faster here, and its pages count in the process's RSS.)
	pragmas := "_pragma=busy_timeout(30000)&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_pragma=foreign_keys(1)"
	// Each connection has its own page cache, outside Go's heap: the
	// writer's is large (it reads what it changes), the readers' small,
	// since every reader would otherwise hold its own copy of the hot
	// pages (16 readers at 16 MB made a small server's RSS mostly cache),
	// and the OS keeps the file's pages for them anyway. The writer keeps
	// its statement journals in memory: a statement that may fail halfway
	// (a multi-row INSERT ... ON CONFLICT) journals the pages it changes,
	// and past 64 KiB SQLite spilled them to a temporary file, a write
	// system call per page.
	writer, err := sql.Open("sqlite", "file:"+path+"?"+pragmas+fmt.Sprintf("&_pragma=cache_size(-%d)", writerCacheKiB)+"&_pragma=temp_store(MEMORY)&_txlock=immediate")
	if err != nil {
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	// One connection: a second one (to prepare statements while a
	// transaction holds the first) took turns with it, and each turn
	// started with an empty page cache, since SQLite drops a connection's
	// cache when another one wrote; it also doubled the caches' memory.
	// A transaction prepares a new statement on its own connection
	// instead (Tx.stmt).
	writer.SetMaxOpenConns(1)
	writer.SetMaxIdleConns(1)
	writer.SetConnMaxLifetime(0)
	if err := writer.PingContext(ctx); err != nil {
		writer.Close()
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	reader, err := sql.Open("sqlite", "file:"+path+"?"+pragmas+fmt.Sprintf("&_pragma=cache_size(-%d)", readerCacheKiB)+"&_pragma=query_only(1)")
	if err != nil {
		writer.Close()
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	readers := SQLiteReaders(opts.MaxOpenConns, runtime.GOMAXPROCS(0))
	reader.SetMaxOpenConns(readers)
	reader.SetMaxIdleConns(readers)
	// A reader idle this long goes, and its cache with it: a burst's
	// extra readers do not stay for good.
	reader.SetConnMaxIdleTime(5 * time.Minute)
	return &DB{Dialect: SQLite, writer: writer, reader: reader, writeLock: newWriteGate()}, nil
}

// Page cache sizes in KiB (SQLite's negative cache_size). The readers'
// small caches hold the hot interior pages of the indexes; the rest comes
// from the OS's cache of the file at the cost of a read system call, not
// from disk. Measured on the ten-server federation run (docs/performance.md):
// 16 readers at 2 MB and a writer at 16 MB were 45 MB of each server's RSS.
// A reader's cache is also short-lived: SQLite empties a connection's cache
// when another one (the writer) has written since its last read.
const (
	writerCacheKiB = 4000
	readerCacheKiB = 500
)

// SQLiteReaders is the size of SQLite's reader pool: maxOpen, but no more
// than two connections a core. SQLite's reads run on the calling goroutine
// (the driver is Go), so readers past the cores only queue for the CPU,
// while each open one keeps its own page cache, schema and prepared
// statements outside Go's heap (about 3 MB each under load).
func SQLiteReaders(maxOpen, cores int) int {
	return max(1, min(maxOpen, 2*max(cores, 1)))
}

// Close closes the pools.
func (db *DB) Close() error {
	err := db.writer.Close()
	if db.reader != db.writer {
		if rerr := db.reader.Close(); err == nil {
			err = rerr
		}
	}
	return err
}

// Rebind rewrites a PostgreSQL-style query for this dialect.
func (db *DB) Rebind(q string) string {
	if db.Dialect == Postgres {
		return q
	}
	var b strings.Builder
	b.Grow(len(q))
	for i := 0; i < len(q); i++ {
		c := q[i]
		if c == '$' && i+1 < len(q) && q[i+1] >= '0' && q[i+1] <= '9' {
			b.WriteByte('?')
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

func (db *DB) stmtKey(pool *sql.DB, q string) string {
	if pool == db.writer && db.writer != db.reader {
		return "w\x00" + q
	}
	return q
}

// prepared returns q's statement on pool, counting one statement run.
func (db *DB) prepared(ctx context.Context, pool *sql.DB, q string) (*sql.Stmt, error) {
	db.queries.Add(1)
	return db.prepare(ctx, pool, q)
}

func (db *DB) prepare(ctx context.Context, pool *sql.DB, q string) (*sql.Stmt, error) {
	key := db.stmtKey(pool, q)
	if s, ok := db.stmts.Load(key); ok {
		return s.(*sql.Stmt), nil
	}
	s, err := pool.PrepareContext(ctx, db.Rebind(q))
	if err != nil {
		return nil, fmt.Errorf("prepare %q: %w", firstLine(q), mark(err))
	}
	if prev, loaded := db.stmts.LoadOrStore(key, s); loaded {
		s.Close()
		return prev.(*sql.Stmt), nil
	}
	return s, nil
}

// Query runs a read query on the read pool.
func (db *DB) Query(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	s, err := db.prepared(ctx, db.reader, q)
	if err != nil {
		return nil, err
	}
	rows, err := s.QueryContext(ctx, args...)
	return rows, mark(err)
}

// Row is the result of QueryRow. As with sql.Row, its error surfaces from
// Scan; an outage of the database is marked as one (IsUnavailable).
type Row struct {
	row *sql.Row
	err error
}

// Scan copies the row's columns into dest (sql.ErrNoRows if there is none).
func (r *Row) Scan(dest ...any) error {
	if r.err != nil {
		return r.err
	}
	return mark(r.row.Scan(dest...))
}

// QueryRow runs a read query expected to return at most one row.
func (db *DB) QueryRow(ctx context.Context, q string, args ...any) *Row {
	s, err := db.prepared(ctx, db.reader, q)
	if err != nil {
		return &Row{err: err}
	}
	return &Row{row: s.QueryRowContext(ctx, args...)}
}

// lockWrite takes the SQLite write lock; it returns the release function.
func (db *DB) lockWrite(ctx context.Context) (func(), error) {
	if db.writeLock == nil {
		return func() {}, nil
	}
	return db.writeLock.lock(ctx)
}

// Exec runs one write statement outside a transaction.
func (db *DB) Exec(ctx context.Context, q string, args ...any) (sql.Result, error) {
	s, err := db.prepared(ctx, db.writer, q)
	if err != nil {
		return nil, err
	}
	unlock, err := db.lockWrite(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	res, err := s.ExecContext(ctx, args...)
	return res, mark(err)
}

// Tx is a write transaction. Its methods take PostgreSQL-style queries.
type Tx struct {
	db *DB
	tx *sql.Tx
	// fresh (SQLite) are the statements first seen in this transaction,
	// prepared on its connection; they are prepared on the pool once the
	// transaction has let the connection go.
	fresh map[string]*sql.Stmt
}

// stmt returns q's statement for use in the transaction.
func (t *Tx) stmt(ctx context.Context, q string) (*sql.Stmt, error) {
	db := t.db
	db.queries.Add(1)
	if db.writer == db.reader {
		s, err := db.prepare(ctx, db.writer, q)
		if err != nil {
			return nil, err
		}
		return t.tx.StmtContext(ctx, s), nil
	}
	if s, ok := db.stmts.Load(db.stmtKey(db.writer, q)); ok {
		return t.tx.StmtContext(ctx, s.(*sql.Stmt)), nil
	}
	// The pool's one connection is this transaction's: preparing on the
	// pool would wait for it forever.
	if s, ok := t.fresh[q]; ok {
		return s, nil
	}
	s, err := t.tx.PrepareContext(ctx, db.Rebind(q))
	if err != nil {
		return nil, fmt.Errorf("prepare %q: %w", firstLine(q), mark(err))
	}
	if t.fresh == nil {
		t.fresh = map[string]*sql.Stmt{}
	}
	t.fresh[q] = s
	return s, nil
}

// cacheFresh prepares on the writer pool the statements a finished
// transaction saw first, while the caller still holds the write lock (so
// the connection is free). A statement that fails here is prepared again
// by the next transaction that needs it.
func (db *DB) cacheFresh(ctx context.Context, fresh map[string]*sql.Stmt) {
	ctx = context.WithoutCancel(ctx)
	for q := range fresh {
		_, _ = db.prepare(ctx, db.writer, q)
	}
}

// Exec runs a statement in the transaction.
func (t *Tx) Exec(ctx context.Context, q string, args ...any) (sql.Result, error) {
	s, err := t.stmt(ctx, q)
	if err != nil {
		return nil, err
	}
	res, err := s.ExecContext(ctx, args...)
	return res, mark(err)
}

// Query runs a query in the transaction.
func (t *Tx) Query(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	s, err := t.stmt(ctx, q)
	if err != nil {
		return nil, err
	}
	rows, err := s.QueryContext(ctx, args...)
	return rows, mark(err)
}

// QueryRow runs a single-row query in the transaction.
func (t *Tx) QueryRow(ctx context.Context, q string, args ...any) *Row {
	s, err := t.stmt(ctx, q)
	if err != nil {
		return &Row{err: err}
	}
	return &Row{row: s.QueryRowContext(ctx, args...)}
}

// Dialect returns the dialect of the transaction's database.
func (t *Tx) Dialect() Dialect { return t.db.Dialect }

// FullText is DB.FullText, inside the transaction.
func (t *Tx) FullText(table string) FullText { return t.db.FullText(table) }

// WithTx runs f in a write transaction, committing if f returns nil. For
// SQLite the single writer connection serialises transactions in-process.
// An error means nothing was stored, unless it wraps ErrOutcomeUnknown.
func (db *DB) WithTx(ctx context.Context, f func(tx *Tx) error) (err error) {
	unlock, err := db.lockWrite(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	sqlTx, err := db.writer.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin transaction: %w", mark(err))
	}
	defer func() {
		if p := recover(); p != nil {
			_ = sqlTx.Rollback()
			panic(p)
		}
	}()
	tx := &Tx{db: db, tx: sqlTx}
	if err := f(tx); err != nil {
		_ = sqlTx.Rollback()
		db.cacheFresh(ctx, tx.fresh)
		return err
	}
	err = sqlTx.Commit()
	db.cacheFresh(ctx, tx.fresh) // the connection is free, the lock still held
	if err != nil {
		if commitOutcomeUnknown(db.Dialect, err) {
			return fmt.Errorf("commit: %w: %w", ErrOutcomeUnknown, mark(err))
		}
		return fmt.Errorf("commit: %w", mark(err))
	}
	return nil
}

// IsUniqueViolation reports whether err is a unique or primary-key
// constraint failure in either dialect.
func IsUniqueViolation(err error) bool {
	var pqErr *pq.Error
	if errors.As(err, &pqErr) {
		return pqErr.Code == "23505"
	}
	var sqErr *sqlite.Error
	if errors.As(err, &sqErr) {
		c := sqErr.Code()
		return c == sqlite3.SQLITE_CONSTRAINT_UNIQUE || c == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY
	}
	return false
}

// InList returns "$from, $from+1, ..." with n placeholders, for IN clauses.
func InList(from, n int) string {
	var b strings.Builder
	for i := 0; i < n; i++ {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "$%d", from+i)
	}
	return b.String()
}

// inChunkSizes are the IN list lengths InChunks sends: a chunk is padded
// to the next of them, so that a few prepared statements (one per size,
// cached on every connection) serve any number of values.
var inChunkSizes = []int{8, 64, 512}

// InChunks calls f for vals in chunks of at most 512, each with an IN
// list of placeholders from $from on, padded to 8, 64 or 512 by repeating
// the chunk's last value (which IN ignores), and the chunk's arguments.
func InChunks[T any](from int, vals []T, f func(in string, args []any) error) error {
	largest := inChunkSizes[len(inChunkSizes)-1]
	for len(vals) > 0 {
		chunk := vals[:min(len(vals), largest)]
		vals = vals[len(chunk):]
		size := largest
		for _, n := range inChunkSizes {
			if n >= len(chunk) {
				size = n
				break
			}
		}
		args := make([]any, size)
		for i := range args {
			args[i] = chunk[min(i, len(chunk)-1)]
		}
		if err := f(InList(from, size), args); err != nil {
			return err
		}
	}
	return nil
}

func firstLine(q string) string {
	q = strings.TrimSpace(q)
	if i := strings.IndexByte(q, '\n'); i >= 0 {
		return q[:i] + "..."
	}
	return q
}

// Column reads the one column of rows, and closes them.
func Column[T any](rows *sql.Rows) ([]T, error) {
	defer rows.Close()
	var out []T
	for rows.Next() {
		var v T
		if err := rows.Scan(&v); err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}
