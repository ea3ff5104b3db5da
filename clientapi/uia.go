package clientapi

import (
	"bytes"
	"context"
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
	// maxUIAParams bounds the parameters a session remembers, so that
	// sessions anyone may start cannot fill memory (a registration's are
	// well under 2 KiB). Larger ones are not remembered: the client sends
	// them with each request, as the spec has it do anyway.
	maxUIAParams = 8 << 10

	stageDummy             = "m.login.dummy"
	stagePassword          = "m.login.password"
	stageRegistrationToken = "m.login.registration_token"
)

// uiaSessions tracks user-interactive authentication sessions.
type uiaSessions struct {
	store *expiring[uiaSession]
}

func newUIASessions() *uiaSessions {
	return &uiaSessions{store: newExpiring[uiaSession](uiaSessionTTL, maxUIASessions)}
}

// uiaSession is one session: the operation it was started for, the stages
// completed so far, and the operation's parameters.
type uiaSession struct {
	scope     string
	completed []string
	// params is the request body without "auth", as last given: a request
	// of the session that carries nothing but "auth" stands for these.
	// Synapse does so, and clients (sytest among them) send a
	// registration's parameters only with its first request.
	params json.RawMessage
	// The fields below are those of idempotent operations, whose session
	// outlives the operation: lock (a one-slot semaphore) serialises the
	// requests that complete it, and outcome is what the operation made
	// (the user ID of a registration), for a repeated request to answer
	// with.
	lock    chan struct{}
	outcome string
	// regToken is the registration token of a passed
	// m.login.registration_token stage.
	regToken string
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
	// Token is m.login.registration_token's.
	Token string `json:"token"`
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

// uiaOp is an operation behind user-interactive authentication.
type uiaOp struct {
	// scope names the operation, so a session started for one cannot be
	// completed by another (another endpoint, another user).
	scope string
	flows [][]string
	// password checks an m.login.password stage; it returns *stageFailed
	// for wrong credentials, any other error to fail the request.
	password func(d *authDict) error
	// registrationToken checks an m.login.registration_token stage, as
	// password does its stage.
	registrationToken func(d *authDict) error
	// idempotent keeps the session once a flow is complete, so that a
	// client that lost the response can repeat the request and get the same
	// result (registration; see uiaAttempt.lock). Other sessions authorise
	// one operation and end with it.
	idempotent bool
}

// uiaAttempt is one request's part in a session.
type uiaAttempt struct {
	s  *uiaSessions
	op uiaOp
	// id is the session's ID, "" while the request names none.
	id   string
	sess uiaSession
	// auth is the request's auth dict; hasAuth is false when it has none
	// (absent or null), which asks for a challenge.
	auth    authDict
	hasAuth bool
	// params is the request body without "auth", nil if nothing else.
	params json.RawMessage
}

// open decodes a request body into v (as mxhttp.DecodeJSON does) and finds
// the session its auth dict names. When the body has nothing but "auth"
// and the session remembers parameters, v gets those, as if the client had
// sent them again.
func (s *uiaSessions) open(op uiaOp, body []byte, v any) (*uiaAttempt, error) {
	if err := mxhttp.DecodeJSON(body, v); err != nil {
		return nil, err
	}
	var members map[string]json.RawMessage
	if err := json.Unmarshal(body, &members); err != nil {
		return nil, mxhttp.BadJSON("request body must be a JSON object")
	}
	a := &uiaAttempt{s: s, op: op, sess: uiaSession{scope: op.scope}}
	if raw, ok := members["auth"]; ok && string(bytes.TrimSpace(raw)) != "null" {
		if err := json.Unmarshal(raw, &a.auth); err != nil {
			return nil, mxhttp.BadJSON("auth must be an object with string fields")
		}
		a.hasAuth = true
	}
	delete(members, "auth")
	if len(members) > 0 {
		params, err := json.Marshal(members)
		if err != nil {
			return nil, fmt.Errorf("encode request parameters: %w", err)
		}
		a.params = params
	}
	if a.auth.Session == "" {
		return a, nil
	}
	sess, ok := s.store.get(a.auth.Session)
	if !ok {
		return nil, mxhttp.Unknown("Unknown or expired session %q", a.auth.Session)
	}
	if sess.scope != op.scope {
		return nil, mxhttp.Forbidden("Requested operation has changed during the UI authentication session")
	}
	a.id, a.sess = a.auth.Session, sess
	if a.params == nil && sess.params != nil {
		// The remembered parameters were valid when first given; decoding
		// them over v (which holds only what "auth" filled in) checks them
		// again all the same.
		if err := mxhttp.DecodeJSON(sess.params, v); err != nil {
			return nil, err
		}
	}
	return a, nil
}

// outcome is what the session's operation made, "" if it has not
// succeeded (yet). Read it again after lock: another request may have
// completed the operation in between.
func (a *uiaAttempt) outcome() string {
	if a.id == "" {
		return ""
	}
	sess, _ := a.s.store.get(a.id)
	return sess.outcome
}

// registrationToken is the token of the session's (or this request's)
// m.login.registration_token stage, "" if none passed.
func (a *uiaAttempt) registrationToken() string {
	if a.auth.Type == stageRegistrationToken {
		return a.auth.Token
	}
	if a.id == "" {
		return ""
	}
	sess, _ := a.s.store.get(a.id)
	return sess.regToken
}

// run advances the session by the stage in the request's auth dict. It
// returns (nil, nil) once a flow is complete; otherwise the challenge to
// answer with, or an error.
func (a *uiaAttempt) run() (*mxhttp.Response, error) {
	if !a.hasAuth {
		// A request without auth starts a session, even one that names
		// none: the spec's first request carries no auth at all.
		return a.challenge(nil)
	}
	if a.auth.Type != "" {
		if err := a.check(); err != nil {
			var failed *stageFailed
			if errors.As(err, &failed) {
				return a.challenge(failed)
			}
			return nil, err
		}
	}
	if !a.complete(a.auth.Type) {
		// An auth dict with only a session asks where the session stands
		// (the spec's fallback flow retries so).
		return a.challenge(nil)
	}
	switch {
	case a.id == "":
		// The client did the whole flow in one request: no session to
		// end.
	case a.op.idempotent:
		if err := a.s.store.update(a.id, func(sess *uiaSession) {
			sess.completed = addStage(sess.completed, a.auth.Type)
			if a.auth.Type == stageRegistrationToken {
				sess.regToken = a.auth.Token
			}
		}); err != nil {
			return nil, a.expired()
		}
	default:
		// Of two requests completing one session, only the one that takes
		// it goes on.
		if _, ok := a.s.store.take(a.id); !ok {
			return nil, a.expired()
		}
	}
	return nil, nil
}

// check runs the stage named by the auth dict.
func (a *uiaAttempt) check() error {
	offered := false
	for _, f := range a.op.flows {
		offered = offered || slices.Contains(f, a.auth.Type)
	}
	if !offered {
		return mxhttp.New("M_UNRECOGNIZED", "Unrecognised auth type %q", a.auth.Type).WithStatus(http.StatusBadRequest)
	}
	switch a.auth.Type {
	case stageDummy:
		return nil
	case stagePassword:
		if a.op.password == nil {
			return fmt.Errorf("uia scope %s offers %s without a checker", a.op.scope, stagePassword)
		}
		return a.op.password(&a.auth)
	case stageRegistrationToken:
		if a.op.registrationToken == nil {
			return fmt.Errorf("uia scope %s offers %s without a checker", a.op.scope, stageRegistrationToken)
		}
		// A session that passed it already used its token: a repeated
		// request does not count it twice.
		if slices.Contains(a.sess.completed, stageRegistrationToken) && a.sess.regToken == a.auth.Token {
			return nil
		}
		return a.op.registrationToken(&a.auth)
	default:
		return fmt.Errorf("uia scope %s offers %s, which has no checker", a.op.scope, a.auth.Type)
	}
}

// complete reports whether the session's completed stages and stage (the
// one just passed, or "") make up one of the operation's flows.
func (a *uiaAttempt) complete(stage string) bool {
	done := addStage(a.sess.completed, stage)
	for _, f := range a.op.flows {
		all := true
		for _, st := range f {
			all = all && slices.Contains(done, st)
		}
		if all {
			return true
		}
	}
	return false
}

// addStage returns completed with stage added, never writing to the array
// of completed (a snapshot of a session may share it).
func addStage(completed []string, stage string) []string {
	if stage == "" || slices.Contains(completed, stage) {
		return completed
	}
	return append(slices.Clip(completed), stage)
}

func (a *uiaAttempt) expired() error {
	return mxhttp.Unknown("Unknown or expired session %q", a.id)
}

// challenge records the request's progress (its stage if it passed, its
// parameters) in its session, starting one if it names none, and returns
// the 401 that asks for the rest, with failure's reason if a stage failed.
func (a *uiaAttempt) challenge(failure *stageFailed) (*mxhttp.Response, error) {
	passed := ""
	if failure == nil {
		passed = a.auth.Type
	}
	record := func(sess *uiaSession) {
		sess.completed = addStage(sess.completed, passed)
		if passed == stageRegistrationToken {
			sess.regToken = a.auth.Token
		}
		if a.params != nil && len(a.params) <= maxUIAParams {
			sess.params = a.params
		}
	}
	if a.id == "" {
		sess := uiaSession{scope: a.op.scope}
		if a.op.idempotent {
			sess.lock = make(chan struct{}, 1)
		}
		record(&sess)
		id, err := a.s.store.add(sess)
		if err != nil {
			return nil, err
		}
		a.id, a.sess = id, sess
	} else if err := a.s.store.update(a.id, func(sess *uiaSession) {
		record(sess)
		a.sess = *sess
	}); err != nil {
		return nil, a.expired()
	}
	body := uiaChallenge{Params: map[string]any{}, Session: a.id, Completed: a.sess.completed}
	if body.Completed == nil {
		body.Completed = []string{}
	}
	for _, f := range a.op.flows {
		body.Flows = append(body.Flows, uiaFlow{Stages: f})
	}
	if failure != nil {
		body.ErrCode, body.Error = failure.code, failure.msg
	}
	return &mxhttp.Response{Status: http.StatusUnauthorized, Body: body}, nil
}

// lock serialises the requests that complete one session of an idempotent
// operation: the first does the operation and records its outcome
// (succeed), the others wait for it and then find the outcome. Without a
// session (a flow done in one request) there is nothing to serialise.
func (a *uiaAttempt) lock(ctx context.Context) (unlock func(), err error) {
	if a.sess.lock == nil {
		return func() {}, nil
	}
	select {
	case a.sess.lock <- struct{}{}:
		return func() { <-a.sess.lock }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// succeed records what the operation made, for a repeated request to find.
// The remembered parameters lose the password: the operation is done, and
// keeping a password in memory any longer helps no one.
func (a *uiaAttempt) succeed(outcome string) error {
	if a.id == "" {
		return nil
	}
	var members map[string]json.RawMessage
	params := a.params
	if params == nil {
		params = a.sess.params
	}
	if len(params) > maxUIAParams {
		params = nil
	}
	if params != nil && json.Unmarshal(params, &members) == nil {
		delete(members, "password")
		var err error
		if params, err = json.Marshal(members); err != nil {
			return fmt.Errorf("encode request parameters: %w", err)
		}
	}
	// An expired session has nothing left to repeat: not an error.
	_ = a.s.store.update(a.id, func(sess *uiaSession) {
		sess.outcome, sess.params = outcome, params
	})
	return nil
}

// expiring is a bounded in-memory map from random IDs to values that
// expire: UIA sessions, shared-secret registration nonces.
type expiring[T any] struct {
	ttl time.Duration
	max int
	now func() time.Time

	mu    sync.Mutex
	items map[string]expiringItem[T]
	// order holds the IDs in the order they were added, which, with one
	// TTL for all, is the order they expire in; IDs already taken stay
	// until they reach the front.
	order []string
}

type expiringItem[T any] struct {
	v       T
	expires time.Time
}

func newExpiring[T any](ttl time.Duration, max int) *expiring[T] {
	return &expiring[T]{ttl: ttl, max: max, now: time.Now, items: map[string]expiringItem[T]{}}
}

// add stores v under a new random ID. Expired items are dropped, and when
// still full, the oldest: never one just started, so that a burst of
// registrations cannot push out each other's sessions mid-flow.
func (e *expiring[T]) add(v T) (string, error) {
	id, err := randomID()
	if err != nil {
		return "", err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.now()
	for len(e.order) > 0 {
		front := e.order[0]
		it, ok := e.items[front]
		if ok && !now.After(it.expires) && len(e.items) < e.max {
			break
		}
		delete(e.items, front)
		e.order[0] = ""
		e.order = e.order[1:]
	}
	// IDs taken early pile up behind a long-lived front: compact them away.
	if len(e.order) > 2*e.max+16 {
		live := make([]string, 0, len(e.items)+1)
		for _, k := range e.order {
			if _, ok := e.items[k]; ok {
				live = append(live, k)
			}
		}
		e.order = live
	}
	e.items[id] = expiringItem[T]{v: v, expires: now.Add(e.ttl)}
	e.order = append(e.order, id)
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

// update runs f on the value under id, under the map's lock, so that
// read-modify-write sequences of concurrent requests do not lose each
// other's changes. It fails if there is no such (unexpired) item.
func (e *expiring[T]) update(id string, f func(v *T)) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	it, ok := e.items[id]
	if !ok || e.now().After(it.expires) {
		delete(e.items, id)
		return errExpired
	}
	f(&it.v)
	e.items[id] = it
	return nil
}

var errExpired = errors.New("no such item, or expired")

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
