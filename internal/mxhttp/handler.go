package mxhttp

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/gorilla/mux"
	"github.com/sirupsen/logrus"
)

// Handler answers one request: a JSON body for 200, a *Response for another
// status, an http.Handler to write the response itself, or an error.
type Handler func(r *http.Request) (any, error)

// RawJSON is a 200 response body already encoded.
type RawJSON []byte

// Then is a 200 answer with work to do once it is sent: the client reads
// its answer while After runs, in the request's goroutine, with the
// request's context values but not its cancellation.
type Then struct {
	Body  RawJSON
	After func(ctx context.Context)
}

// Response is a JSON body with a status other than 200.
type Response struct {
	Status int
	Body   any
}

// ServeHTTP runs h and writes its result or its error. Panics become 500s so
// that one bad request never takes the process down.
func (h Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	defer func() {
		if p := recover(); p != nil {
			if p == http.ErrAbortHandler {
				panic(p)
			}
			Logger(r.Context()).WithField("panic", p).WithField("stack", string(debug.Stack())).Error("handler panicked")
			WriteError(w, r, Internal(fmt.Errorf("panic: %v", p)))
		}
	}()
	if err := checkRequest(r); err != nil {
		WriteError(w, r, err)
		return
	}
	res, err := h(r)
	if err != nil {
		WriteError(w, r, err)
		return
	}
	switch v := res.(type) {
	case http.Handler:
		v.ServeHTTP(w, r)
	case RawJSON:
		w.Header()["Content-Type"] = jsonContentType
		_, _ = w.Write(v)
	case *Then:
		// With its length declared, the body is whole to an HTTP/1.1
		// client before the handler returns; an HTTP/2 client that
		// decodes one JSON value (as Go's do) has it too.
		// A newline ends it, as every other JSON answer (WriteJSON).
		body := v.Body
		if len(body) == 0 || body[len(body)-1] != '\n' {
			body = append(body[:len(body):len(body)], '\n')
		}
		w.Header()["Content-Type"] = jsonContentType
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		_, _ = w.Write(body)
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
		v.After(context.WithoutCancel(r.Context()))
	case *Response:
		WriteJSON(w, v.Status, v.Body)
	default:
		WriteJSON(w, http.StatusOK, v)
	}
}

// checkRequest checks what every request carries before its handler
// runs: the path variables (decoded in place), the query string, and the
// body of a GET or DELETE. It returns before the handler is called, so
// that a waiting long-poll's stack is no deeper for it.
func checkRequest(r *http.Request) error {
	if vars := mux.Vars(r); len(vars) > 0 {
		if err := decodeVars(vars); err != nil {
			return err
		}
	}
	if r.URL.RawQuery != "" {
		if err := checkQuery(r.URL.RawQuery); err != nil {
			return err
		}
	}
	if r.ContentLength != 0 && (r.Method == http.MethodGet || r.Method == http.MethodDelete) {
		return checkBodyless(r)
	}
	return nil
}

// WriteError answers with the Matrix form of err, logging internal errors
// once, here.
func WriteError(w http.ResponseWriter, r *http.Request, err error) {
	me := ToError(err)
	if me.Status >= 500 && r.Context().Err() != nil && errors.Is(err, r.Context().Err()) {
		// The client went away (a long-poll it gave up on): nobody to
		// answer, and nothing wrong here.
		Logger(r.Context()).WithError(err).WithField("path", r.URL.Path).Debug("request abandoned by the client")
	} else if me.Status == http.StatusServiceUnavailable {
		// An outage (database or bus down) fails every request alike: one
		// line a second says so, with how many were not logged.
		if rl, ok := r.Context().Value(logKey{}).(*requestLog); !ok || rl.outages == nil {
			Logger(r.Context()).WithError(err).Warn("request failed: service unavailable")
		} else if log, skipped := rl.outages.allow(time.Now()); log {
			Logger(r.Context()).WithError(err).WithField("not_logged", skipped).Warn("request failed: service unavailable")
		}
	} else if me.Status >= 500 {
		Logger(r.Context()).WithError(err).WithField("path", r.URL.Path).Error("request failed")
	} else if me.Cause != nil {
		Logger(r.Context()).WithError(me.Cause).WithField("path", r.URL.Path).Debug("request refused")
	}
	if me.Code == "M_LIMIT_EXCEEDED" {
		if ms, ok := me.Extra["retry_after_ms"].(int64); ok {
			w.Header().Set("Retry-After", fmt.Sprint((ms+999)/1000))
		}
	}
	WriteJSON(w, me.Status, me.Body())
}

// jsonContentType is shared by every response and never modified.
var jsonContentType = []string{"application/json"}

// WriteJSON writes v as a JSON response.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		status = http.StatusInternalServerError
		buf.Reset()
		buf.WriteString(`{"errcode":"M_UNKNOWN","error":"Internal server error"}`)
	}
	w.Header()["Content-Type"] = jsonContentType
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

var errBodyTooLarge = errors.New("request body too large")

// ReadBody reads the whole (already size-limited) request body.
func ReadBody(r *http.Request) ([]byte, error) {
	if r.Body == nil {
		return nil, nil
	}
	b, err := io.ReadAll(r.Body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) || errors.Is(err, errBodyTooLarge) {
			return nil, TooLarge()
		}
		return nil, BadJSON("could not read request body")
	}
	return b, nil
}

// Validator is implemented by request types that check their own fields
// after decoding.
type Validator interface {
	Validate() error
}

// ReadJSON decodes the request body into v: M_TOO_LARGE for oversized
// bodies, M_NOT_JSON for bodies that are not UTF-8 JSON objects,
// M_BAD_JSON for fields of the wrong type, then v.Validate() if v has one.
func ReadJSON(r *http.Request, v any) error {
	b, err := ReadBody(r)
	if err != nil {
		return err
	}
	return DecodeJSON(b, v)
}

// DecodeJSON is ReadJSON for a body already read.
func DecodeJSON(b []byte, v any) error {
	if !utf8.Valid(b) {
		return NotJSON("request body is not valid UTF-8")
	}
	t := TrimJSONSpace(b)
	if len(t) == 0 || !json.Valid(t) {
		return NotJSON("request body is not valid JSON")
	}
	if t[0] != '{' {
		return BadJSON("request body must be a JSON object")
	}
	if hasEscapedNUL(t) {
		// Valid JSON, but PostgreSQL cannot store NUL in a text column,
		// and strings of a body end up in many (display names, thread
		// IDs, state keys of initial_state, ...). One scan here keeps
		// them all out.
		return BadJSON("strings must not contain NUL (\\u0000)")
	}
	if err := json.Unmarshal(t, v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			field := te.Field
			if field == "" {
				field = "body"
			}
			return BadJSON("%s must be %s", field, jsonKind(te.Type.Kind().String()))
		}
		return BadJSON("malformed request body: %v", err)
	}
	if val, ok := v.(Validator); ok {
		return val.Validate()
	}
	return nil
}

// TrimJSONSpace trims what JSON counts as whitespace (RFC 8259: space, tab,
// line feed, carriage return) from b; bytes.TrimSpace would also trim form
// feeds and Unicode spaces, which make the JSON around them invalid.
func TrimJSONSpace(b []byte) []byte { return bytes.Trim(b, " \t\n\r") }

// hasEscapedNUL reports whether valid JSON b has a string holding U+0000,
// which JSON can only write as the escape \u0000 (a raw NUL is not valid
// JSON). An escaped backslash followed by "u0000" is not one.
func hasEscapedNUL(b []byte) bool {
	for {
		i := bytes.IndexByte(b, '\\')
		if i < 0 || i+1 >= len(b) {
			return false
		}
		if b[i+1] == 'u' && len(b) >= i+6 && string(b[i+2:i+6]) == "0000" {
			return true
		}
		b = b[i+2:] // past the escaped character
	}
}

func jsonKind(k string) string {
	switch {
	case strings.HasPrefix(k, "int"), strings.HasPrefix(k, "uint"), strings.HasPrefix(k, "float"):
		return "a number"
	case k == "string":
		return "a string"
	case k == "bool":
		return "a boolean"
	case k == "slice", k == "array":
		return "an array"
	default:
		return "an object"
	}
}

// Var returns the URL-decoded path variable name.
func Var(r *http.Request, name string) string {
	return mux.Vars(r)[name]
}

var (
	corsOrigin  = []string{"*"}
	corsMethods = []string{"GET, POST, PUT, DELETE, OPTIONS"}
	corsHeaders = []string{"Origin, X-Requested-With, Content-Type, Accept, Authorization"}
)

// Serve wraps the router with what every request gets: CORS headers, and
// answers to preflight requests for every path, so that browser clients
// (Element Web) can call from any origin; a context carrying the
// request's logger and whatever scope adds; and the body limit, which
// cuts a body off at maxBody bytes while it streams in and refuses a
// larger Content-Length before reading anything.
//
// It is one wrapper rather than a chain of them because a waiting
// long-poll holds every frame above it on its goroutine's stack, and
// there are thousands of those: a shallow stack at the wait lets the
// runtime shrink each to half.
func Serve(log *logrus.Entry, maxBody int64, scope func(context.Context, *http.Request) context.Context, next http.Handler) http.Handler {
	outages := &outageLog{}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		// Shared, never-modified values: three allocations fewer per request.
		h["Access-Control-Allow-Origin"] = corsOrigin
		h["Access-Control-Allow-Methods"] = corsMethods
		h["Access-Control-Allow-Headers"] = corsHeaders
		if r.Method == http.MethodOptions {
			w.WriteHeader(http.StatusOK)
			return
		}
		ctx := context.WithValue(r.Context(), logKey{}, &requestLog{base: log, method: r.Method, path: r.URL.Path, outages: outages})
		if scope != nil {
			ctx = scope(ctx, r)
		}
		r = r.WithContext(ctx)
		if r.ContentLength > maxBody {
			WriteError(w, r, TooLarge())
			return
		}
		if r.Body != nil {
			r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		}
		next.ServeHTTP(w, r)
	})
}

// NewRouter returns a router whose unknown paths and methods answer
// M_UNRECOGNIZED (404 and 405) and whose path variables are decoded.
func NewRouter() *mux.Router {
	r := mux.NewRouter()
	r.UseEncodedPath()
	// No redirect to a cleaned path: "/rooms/../leave" is a request for a
	// room ID "..", refused as such with a Matrix error (as Synapse does)
	// rather than a 301 to another endpoint.
	r.SkipClean(true)
	r.NotFoundHandler = http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		status := http.StatusNotFound
		if otherMethodMatches(r, req) {
			status = http.StatusMethodNotAllowed
		}
		WriteError(w, req, Unrecognized(status))
	})
	r.MethodNotAllowedHandler = http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		WriteError(w, req, Unrecognized(http.StatusMethodNotAllowed))
	})
	return r
}

// otherMethodMatches reports whether req's path has a route for another
// method. mux finds this itself only within one subrouter: when two
// components each register a subrouter for the same prefix
// (/_matrix/client/v3), a method mismatch in the first is forgotten once
// the second one's prefix matches, and the request ends up here.
func otherMethodMatches(root *mux.Router, req *http.Request) bool {
	for _, m := range [...]string{http.MethodGet, http.MethodPut, http.MethodPost, http.MethodDelete} {
		if m == req.Method {
			continue
		}
		probe := req.Clone(req.Context())
		probe.Method = m
		var match mux.RouteMatch
		if root.Match(probe, &match) && match.MatchErr == nil {
			return true
		}
	}
	return false
}

// ClientIP is the request's remote address without the port.
func ClientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

type logKey struct{}

// outageLog lets one line a second through for the 503s of an outage
// and counts the others, which the next line reports.
type outageLog struct {
	mu      sync.Mutex
	last    time.Time
	skipped int
}

// allow reports whether a 503 at now is logged, and how many were not
// since the last one that was.
func (o *outageLog) allow(now time.Time) (bool, int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if now.Sub(o.last) < time.Second {
		o.skipped++
		return false, 0
	}
	skipped := o.skipped
	o.last, o.skipped = now, 0
	return true, skipped
}

// requestLog is a request's logger, made only when something is logged:
// most requests log nothing.
type requestLog struct {
	base         *logrus.Entry
	method, path string
	outages      *outageLog // the server's, shared by its requests
}

// Logger returns the request-scoped logger in ctx, or the standard logger.
func Logger(ctx context.Context) *logrus.Entry {
	if l, ok := ctx.Value(logKey{}).(*requestLog); ok {
		return l.base.WithFields(logrus.Fields{"method": l.method, "path": l.path})
	}
	return logrus.NewEntry(logrus.StandardLogger())
}
