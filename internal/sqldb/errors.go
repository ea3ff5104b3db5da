package sqldb

import (
	"database/sql/driver"
	"errors"
	"io"
	"net"
	"syscall"

	"github.com/lib/pq"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// ErrOutcomeUnknown is wrapped by a WithTx error when the commit itself
// failed in a way that leaves its outcome unknown: the connection to
// PostgreSQL was lost while COMMIT was on the wire, so the transaction may
// or may not be stored. Every other WithTx error means nothing was stored.
var ErrOutcomeUnknown = errors.New("outcome of the commit is unknown")

// IsFull reports whether err says the database has no room left: SQLite's
// disk (SQLITE_FULL) or PostgreSQL's (53100 disk_full).
func IsFull(err error) bool {
	var pqErr *pq.Error
	if errors.As(err, &pqErr) {
		return pqErr.Code == "53100"
	}
	var sqErr *sqlite.Error
	if errors.As(err, &sqErr) {
		return sqErr.Code()&0xff == sqlite3.SQLITE_FULL
	}
	return false
}

// IsUnavailable reports whether err says the database cannot serve anyone
// right now, whatever the request: it is unreachable or restarting, the
// connection was lost, or it is out of disk, memory or connections. Such a
// failure is the server's, not the request's, and may pass.
func IsUnavailable(err error) bool {
	if err == nil {
		return false
	}
	var un *unavailableError
	if errors.As(err, &un) {
		return true
	}
	return classify(err)
}

// classify is IsUnavailable for raw driver errors.
func classify(err error) bool {
	var pqErr *pq.Error
	if errors.As(err, &pqErr) {
		switch pqErr.Code.Class() {
		case "08", // connection exception
			"53", // insufficient resources: disk full, out of memory, too many connections
			"57": // operator intervention: shutdown, crash, starting up
			return pqErr.Code != "57014" // query_canceled is a request's own
		}
		return false
	}
	var sqErr *sqlite.Error
	if errors.As(err, &sqErr) {
		switch sqErr.Code() & 0xff {
		case sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_NOMEM, sqlite3.SQLITE_CANTOPEN:
			return true
		}
		return false
	}
	var opErr *net.OpError
	return errors.Is(err, driver.ErrBadConn) ||
		errors.As(err, &opErr) ||
		errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, io.EOF) ||
		errors.Is(err, io.ErrUnexpectedEOF)
}

// unavailableError marks a driver error that means the database is down or
// full. It says so with Unavailable, which the HTTP edge answers with 503
// (mxhttp.Unavailable) without either package importing the other.
type unavailableError struct{ err error }

func (e *unavailableError) Error() string     { return e.err.Error() }
func (e *unavailableError) Unwrap() error     { return e.err }
func (e *unavailableError) Unavailable() bool { return true }

// mark returns err marked unavailable when it is a database outage, else
// err as it is (sql.ErrNoRows and constraint failures pass unchanged).
func mark(err error) error {
	if err == nil || !classify(err) {
		return err
	}
	var un *unavailableError
	if errors.As(err, &un) {
		return err
	}
	return &unavailableError{err: err}
}

// commitOutcomeUnknown reports whether a failed COMMIT may have taken
// effect. SQLite is in this process and atomic: a failed COMMIT stored
// nothing (the driver rolls back what is left). PostgreSQL stored nothing
// if it answered the COMMIT with an error of its own; if the connection
// broke instead, the answer was lost and the commit may have happened.
func commitOutcomeUnknown(d Dialect, err error) bool {
	if d != Postgres {
		return false
	}
	var pqErr *pq.Error
	if errors.As(err, &pqErr) && !pqErr.Fatal() {
		return false
	}
	return true
}
