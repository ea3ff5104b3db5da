package clientapi

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"time"

	"myelin/internal/mxhttp"
)

// User-interactive authentication (spec: Client-Server API, "User-Interactive
// Authentication API"). Sessions live in memory: they last minutes, and a
// restart only makes a client start its flow again.

const (
	uiaSessionTTL  = 15 * time.Minute
	maxUIASessions = 10_000

	stageDummy    = "m.login.dummy"
	stagePassword = "m.login.password"
)

// uiaSessions tracks user-interactive authentication sessions.
type uiaSessions struct {
	store *expiring[uiaSession]
}

func newUIASessions() *uiaSessions {
	return &uiaSessions{store: newExpiring[uiaSession](uiaSessionTTL, maxUIASessions)}
}

// uiaSession is one session: the operation it was started for, and the
// stages completed so far.
type uiaSession struct {
	scope     string
	completed []string
}

// authDict is the "auth" object of a request. Only the fields of the stages
// Myelin offers are read.
type authDict struct {
	Type       string         `json:"type"`
	Session    string         `json:"session"`
	Password   string         `json:"password"`
	Identifier userIdentifier `json:"identifier"`
	// User is the deprecated form of Identifier.
	User string `json:"user"`
}

// userIdentifier names the user logging in (spec: "Identifier types").
type userIdentifier struct {
	Type string `json:"type"`
	User string `json:"user"`
}

type uiaFlow struct {
	Stages []string `json:"stages"`
}

// uiaChallenge is the 401 body that tells the client what to complete.
// completed is always present, if empty: the spec marks it optional, but
// clients (and sytest) look for it in every challenge.
type uiaChallenge struct {
	Flows     []uiaFlow      `json:"flows"`
	Params    map[string]any `json:"params"`
	Session   string         `json:"session"`
	Completed []string       `json:"completed"`
	ErrCode   string         `json:"errcode,omitempty"`
	Error     string         `json:"error,omitempty"`
}

// stageFailed is returned by a stage check when the client's credentials
// are wrong: the client is challenged again, with the reason.
type stageFailed struct {
	code, msg string
}

func (e *stageFailed) Error() string { return e.code + ": " + e.msg }

// uiaRequest is one request's part in user-interactive authentication.
type uiaRequest struct {
	// scope names the operation, so a session started for one cannot be
	// completed by another (another endpoint, another user).
	scope string
	flows [][]string
	// auth is the request's "auth" field, absent or null at the start.
	auth json.RawMessage
	// password checks an m.login.password stage; it returns *stageFailed
	// for wrong credentials, any other error to fail the request.
	password func(d *authDict) error
}

// run advances the request's session by the stage in its auth dict. It
// returns (nil, nil) once a flow is complete; otherwise the challenge to
// answer with, or an error.
func (s *uiaSessions) run(req uiaRequest) (*mxhttp.Response, error) {
	challenge := func(id string, sess uiaSession, failure *stageFailed) *mxhttp.Response {
		body := uiaChallenge{Params: map[string]any{}, Session: id, Completed: sess.completed}
		if body.Completed == nil {
			body.Completed = []string{}
		}
		for _, f := range req.flows {
			body.Flows = append(body.Flows, uiaFlow{Stages: f})
		}
		if failure != nil {
			body.ErrCode, body.Error = failure.code, failure.msg
		}
		return &mxhttp.Response{Status: http.StatusUnauthorized, Body: body}
	}
	if len(req.auth) == 0 || string(req.auth) == "null" {
		sess := uiaSession{scope: req.scope}
		id, err := s.store.add(sess)
		if err != nil {
			return nil, err
		}
		return challenge(id, sess, nil), nil
	}
	var d authDict
	if err := json.Unmarshal(req.auth, &d); err != nil {
		return nil, mxhttp.BadJSON("auth must be an object with string fields")
	}

	// A client may send its first stage without a session (sytest's
	// registration does, with m.login.dummy): start one for it.
	id, sess := d.Session, uiaSession{scope: req.scope}
	if id != "" {
		var ok bool
		if sess, ok = s.store.get(id); !ok {
			return nil, mxhttp.Unknown("Unknown or expired session %q", id)
		}
		if sess.scope != req.scope {
			return nil, mxhttp.Forbidden("Requested operation has changed during the UI authentication session")
		}
	}

	// An auth dict with only a session asks where the session stands
	// (the spec's fallback flow retries so).
	if d.Type == "" {
		if id == "" {
			var err error
			if id, err = s.store.add(sess); err != nil {
				return nil, err
			}
		}
		return challenge(id, sess, nil), nil
	}
	offered := false
	for _, f := range req.flows {
		offered = offered || slices.Contains(f, d.Type)
	}
	if !offered {
		return nil, mxhttp.New("M_UNRECOGNIZED", "Unrecognised auth type %q", d.Type).WithStatus(http.StatusBadRequest)
	}
	var err error
	switch d.Type {
	case stageDummy:
	case stagePassword:
		if req.password == nil {
			return nil, fmt.Errorf("uia scope %s offers %s without a checker", req.scope, stagePassword)
		}
		err = req.password(&d)
	default:
		return nil, fmt.Errorf("uia scope %s offers %s, which has no checker", req.scope, d.Type)
	}
	var failed *stageFailed
	if errors.As(err, &failed) {
		if id == "" {
			if id, err = s.store.add(sess); err != nil {
				return nil, err
			}
		}
		return challenge(id, sess, failed), nil
	}
	if err != nil {
		return nil, err
	}

	if !slices.Contains(sess.completed, d.Type) {
		sess.completed = append(slices.Clip(sess.completed), d.Type)
	}
	for _, f := range req.flows {
		done := true
		for _, stage := range f {
			done = done && slices.Contains(sess.completed, stage)
		}
		if done {
			// A session authorises one operation.
			if id != "" {
				s.store.take(id)
			}
			return nil, nil
		}
	}
	if id == "" {
		id, err = s.store.add(sess)
	} else {
		s.store.set(id, sess)
	}
	if err != nil {
		return nil, err
	}
	return challenge(id, sess, nil), nil
}

// expiring is a bounded in-memory map from random IDs to values that
// expire: UIA sessions, shared-secret registration nonces.
type expiring[T any] struct {
	ttl time.Duration
	max int
	now func() time.Time

	mu    sync.Mutex
	items map[string]expiringItem[T]
}

type expiringItem[T any] struct {
	v       T
	expires time.Time
}

func newExpiring[T any](ttl time.Duration, max int) *expiring[T] {
	return &expiring[T]{ttl: ttl, max: max, now: time.Now, items: map[string]expiringItem[T]{}}
}

// add stores v under a new random ID. When full, expired items are
// dropped, and if that is not enough an arbitrary one.
func (e *expiring[T]) add(v T) (string, error) {
	id, err := randomID()
	if err != nil {
		return "", err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.now()
	if len(e.items) >= e.max {
		for k, it := range e.items {
			if now.After(it.expires) {
				delete(e.items, k)
			}
		}
		for k := range e.items {
			if len(e.items) < e.max {
				break
			}
			delete(e.items, k)
		}
	}
	e.items[id] = expiringItem[T]{v: v, expires: now.Add(e.ttl)}
	return id, nil
}

// get returns the value under id if it has not expired.
func (e *expiring[T]) get(id string) (T, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	it, ok := e.items[id]
	if !ok || e.now().After(it.expires) {
		delete(e.items, id)
		var zero T
		return zero, false
	}
	return it.v, true
}

// set replaces the value under id, keeping its expiry.
func (e *expiring[T]) set(id string, v T) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if it, ok := e.items[id]; ok {
		it.v = v
		e.items[id] = it
	}
}

// take removes and returns the value under id if it has not expired; of
// two concurrent takes of one ID, only one gets it.
func (e *expiring[T]) take(id string) (T, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	it, ok := e.items[id]
	delete(e.items, id)
	if !ok || e.now().After(it.expires) {
		var zero T
		return zero, false
	}
	return it.v, true
}

// randomID returns 18 random bytes, URL-safe base64-encoded.
func randomID() (string, error) {
	var b [18]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("random ID: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b[:]), nil
}
