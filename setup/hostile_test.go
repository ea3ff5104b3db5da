package setup_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"testing"
	"time"

	"myelin/internal/sqldb/sqldbtest"
	"myelin/internal/testserver"
)

// TestHostileInput walks every operation of the Client-Server API spec
// and sends each one hostile input: overlong, malformed and "../" values
// in every path parameter, junk in every query parameter, and in every
// body field of its request schema a 70 KB string, an escaped NUL, the
// wrong JSON type, or nothing where the field is required. Every answer
// must be a Matrix error (JSON with an errcode, or a user-interactive
// auth challenge) with a 4xx status or a success where success is
// allowed: never a 5xx, never a redirect, never a hang, never a 2xx where
// the input must be refused. After each operation the server must still
// serve a normal send and /sync.
//
// Each operation runs against a fixture of its own (fresh users, a room,
// an event), so that an operation that succeeds (a logout, a leave) does
// not take the next one's ground away.
func TestHostileInput(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: thousands of requests")
	}
	_, paths := readSpec(t)
	ops := specOperations(paths)
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		srv := testserver.Start(t, testserver.Config(t.TempDir(), dbURL))
		hc := &http.Client{
			Timeout:       10 * time.Second,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
		canary := newHostileFixture(t, srv, hc, "canary")
		var (
			failures []string
			requests int
			classes  = map[string]int{}
			unknown  int // operations the server does not implement (yet)
		)
		for i, op := range ops {
			fx := newHostileFixture(t, srv, hc, fmt.Sprint(i))
			muts := op.mutations()
			implemented := false
			for _, m := range muts {
				req := op.baseRequest(fx, requests)
				m.apply(req, fx)
				requests++
				classes[m.class]++
				status, body, err := req.send(hc, srv.URL, fx.aliceToken)
				if problem := m.judge(status, body, err); problem != "" && !lenientOn(op, m) {
					failures = append(failures, fmt.Sprintf("%s %s [%s %s]: %s", op.method, op.path, m.class, m.what, problem))
				}
				if !isUnrecognized(status, body) {
					implemented = true
				}
			}
			if len(muts) > 0 && !implemented {
				unknown++
			}
			canary.mustStillServe(t, fmt.Sprintf("after %s %s", op.method, op.path), i)
		}
		t.Logf("%d operations (%d not implemented, answered M_UNRECOGNIZED), %d hostile requests in %d classes: %v",
			len(ops), unknown, requests, len(classes), classes)
		if len(failures) > 0 {
			sort.Strings(failures)
			t.Errorf("%d of %d hostile requests were answered wrongly:\n%s", len(failures), requests, strings.Join(capLines(failures, 300), "\n"))
		}
	})
}

// lenient lists the fields where Myelin knowingly takes more than the
// spec's type, with why: "METHOD path field" of a field:wrong-type
// mutation.
var lenient = map[string]string{
	// Opaque to the server; Synapse keeps any value and sytest's key
	// backup tests send a string. Numbers, arrays and booleans are refused.
	"POST /_matrix/client/v3/room_keys/version auth_data":          "a string, as Synapse takes",
	"PUT /_matrix/client/v3/room_keys/version/{version} auth_data": "a string, as Synapse takes",
}

func lenientOn(op hostileOp, m hostileMutation) bool {
	_, ok := lenient[op.method+" "+op.path+" "+m.what]
	return ok && m.class == "field:wrong-type"
}

func capLines(lines []string, n int) []string {
	if len(lines) <= n {
		return lines
	}
	return append(lines[:n:n], fmt.Sprintf("... and %d more", len(lines)-n))
}

func isUnrecognized(status int, body []byte) bool {
	var e struct {
		Errcode string `json:"errcode"`
	}
	_ = json.Unmarshal(body, &e)
	return (status == 404 || status == 405) && e.Errcode == "M_UNRECOGNIZED"
}

// hostileOp is one operation of the spec.
type hostileOp struct {
	method, path string
	params       []hostileParam
	body         map[string]any // the JSON request body's schema; nil without one
}

type hostileParam struct {
	name, in string
	schema   map[string]any
	required bool
}

// specOperations lists the spec's operations in a stable order.
func specOperations(paths map[string]any) []hostileOp {
	var ops []hostileOp
	for path, item := range paths {
		for method, raw := range item.(map[string]any) {
			op, ok := raw.(map[string]any)
			if !ok {
				continue
			}
			h := hostileOp{method: strings.ToUpper(method), path: path}
			params, _ := op["parameters"].([]any)
			for _, p := range params {
				pm, _ := p.(map[string]any)
				in, _ := pm["in"].(string)
				if in != "path" && in != "query" {
					continue
				}
				name, _ := pm["name"].(string)
				sch, _ := pm["schema"].(map[string]any)
				req, _ := pm["required"].(bool)
				h.params = append(h.params, hostileParam{name: name, in: in, schema: sch, required: req})
			}
			if rb, ok := op["requestBody"].(map[string]any); ok {
				if sch, ok := dig(rb, "content", "application/json", "schema").(map[string]any); ok {
					h.body = sch
				}
			}
			ops = append(ops, h)
		}
	}
	sort.Slice(ops, func(i, j int) bool {
		if ops[i].path != ops[j].path {
			return ops[i].path < ops[j].path
		}
		return ops[i].method < ops[j].method
	})
	return ops
}

func dig(v any, keys ...string) any {
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

// hostileRequest is a request being built: path values, query and body.
type hostileRequest struct {
	method, path string
	vars         map[string]string
	rawVars      map[string]bool // sent without escaping (".." segments)
	query        url.Values
	body         any // nil, a map to encode, or a string sent as is
	bodySchema   map[string]any
}

func (r *hostileRequest) send(hc *http.Client, base, token string) (int, []byte, error) {
	path := r.path
	for k, v := range r.vars {
		if !r.rawVars[k] {
			v = url.PathEscape(v)
		}
		path = strings.ReplaceAll(path, "{"+k+"}", v)
	}
	if len(r.query) > 0 {
		path += "?" + r.query.Encode()
	}
	var rd io.Reader
	switch b := r.body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			return 0, nil, err
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(r.method, base+path, rd)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	return resp.StatusCode, raw, err
}

// baseRequest is the operation with ordinary values from fx: what a
// client would send, before one thing is made hostile.
func (op hostileOp) baseRequest(fx *hostileFixture, n int) *hostileRequest {
	r := &hostileRequest{method: op.method, path: op.path, vars: map[string]string{}, rawVars: map[string]bool{}, query: url.Values{}}
	for _, p := range op.params {
		switch {
		case p.in == "path":
			r.vars[p.name] = fx.pathValue(p, n)
		case p.name == "timeout":
			r.query.Set("timeout", "0") // never a long-poll
		case p.required:
			r.query.Set(p.name, fx.queryValue(p))
		}
	}
	if op.body != nil {
		r.body, r.bodySchema = fx.sampleObject(op.body), op.body
	}
	return r
}

// hostileMutation makes one thing of a request hostile and says what the
// server may answer.
type hostileMutation struct {
	class, what string
	// mustRefuse: the spec requires a 4xx for this input.
	mustRefuse bool
	// wantStatus, when set, is the only acceptable status.
	wantStatus int
	apply      func(*hostileRequest, *hostileFixture)
}

// idParams are the path parameters that name Matrix identifiers, with
// an overlong and a malformed value of each.
var idParams = map[string][2]string{
	"roomId":        {"!" + strings.Repeat("a", 5000) + ":localhost", "not-a-room-id"},
	"roomIdOrAlias": {"!" + strings.Repeat("a", 5000) + ":localhost", "neither-room-nor-alias"},
	"eventId":       {"$" + strings.Repeat("a", 5000), "not-an-event-id"},
	"userId":        {"@" + strings.Repeat("a", 5000) + ":localhost", "not-a-user-id"},
	"roomAlias":     {"#" + strings.Repeat("a", 5000) + ":localhost", "not-an-alias"},
	"serverName":    {strings.Repeat("a", 5000) + ".example.org", "not a server name!"},
}

// eventContentPaths take an event's content as their body.
var eventContentPaths = map[string]bool{
	"/_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}":     true,
	"/_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}": true,
}

func (op hostileOp) mutations() []hostileMutation {
	var ms []hostileMutation
	setVar := func(name, v string, raw bool) func(*hostileRequest, *hostileFixture) {
		return func(r *hostileRequest, _ *hostileFixture) { r.vars[name] = v; r.rawVars[name] = raw }
	}
	for _, p := range op.params {
		if p.in != "path" {
			continue
		}
		if vals, ok := idParams[p.name]; ok {
			ms = append(ms,
				hostileMutation{class: "path:overlong", what: p.name, mustRefuse: true, apply: setVar(p.name, vals[0], false)},
				hostileMutation{class: "path:malformed", what: p.name, mustRefuse: true, apply: setVar(p.name, vals[1], false)},
				hostileMutation{class: "path:traversal", what: p.name, mustRefuse: true, apply: setVar(p.name, "../../../../etc/passwd", false)},
				hostileMutation{class: "path:dotdot", what: p.name, mustRefuse: true, apply: setVar(p.name, "..", true)},
				hostileMutation{class: "path:nul", what: p.name, mustRefuse: true, apply: setVar(p.name, "!a\x00b:localhost", false)},
			)
			continue
		}
		enum, _ := p.schema["enum"].([]any)
		ms = append(ms,
			hostileMutation{class: "path:overlong", what: p.name, mustRefuse: true, apply: setVar(p.name, strings.Repeat("x", 5000), false)},
			hostileMutation{class: "path:traversal", what: p.name, mustRefuse: len(enum) > 0, apply: setVar(p.name, "../../../../etc/passwd", false)},
			hostileMutation{class: "path:dotdot", what: p.name, mustRefuse: len(enum) > 0, apply: setVar(p.name, "..", true)},
			hostileMutation{class: "path:nul", what: p.name, apply: setVar(p.name, "a\x00b", false)},
		)
	}
	for _, p := range op.params {
		if p.in != "query" {
			continue
		}
		junk := strings.Repeat("x", 5000)
		switch p.schema["type"] {
		case "integer", "number":
			junk = "not-a-number"
		case "boolean":
			junk = "maybe"
		}
		name := p.name
		ms = append(ms, hostileMutation{class: "query:junk", what: name, apply: func(r *hostileRequest, _ *hostileFixture) { r.query.Set(name, junk) }})
	}
	if op.body == nil {
		// A body where none is expected (GET /events with one hung).
		return append(ms, hostileMutation{class: "body:unexpected", what: "body", apply: func(r *hostileRequest, _ *hostileFixture) { r.body = `{"junk` }})
	}
	ms = append(ms,
		hostileMutation{class: "body:not-json", what: "body", mustRefuse: true, apply: func(r *hostileRequest, _ *hostileFixture) { r.body = `{"unterminated` }},
		hostileMutation{class: "body:array", what: "body", mustRefuse: true, apply: func(r *hostileRequest, _ *hostileFixture) { r.body = []any{1, 2} }},
	)
	if eventContentPaths[op.path] {
		ms = append(ms,
			hostileMutation{class: "body:event-too-large", what: "content", wantStatus: 413, apply: func(r *hostileRequest, _ *hostileFixture) {
				r.body = map[string]any{"msgtype": "m.text", "body": strings.Repeat("x", 70<<10)}
			}},
			hostileMutation{class: "field:escaped-nul", what: "content.body", apply: func(r *hostileRequest, _ *hostileFixture) {
				r.body = map[string]any{"msgtype": "m.text", "body": "a\u0000b"}
			}},
		)
	}
	ms = append(ms, fieldMutations(op.body, nil)...)
	return ms
}

// fieldStep is one step from a request body down to a field: the key of
// an object ("[]" for the first item of an array) and the schema of what
// it leads to.
type fieldStep struct {
	key string
	sch map[string]any
}

func fieldName(steps []fieldStep) string {
	var b strings.Builder
	for i, st := range steps {
		switch {
		case st.key == "[]":
			b.WriteString("[0]")
		case i > 0:
			b.WriteString("." + st.key)
		default:
			b.WriteString(st.key)
		}
	}
	return b.String()
}

// maxFieldDepth bounds how deep fieldMutations walks a body's schema.
const maxFieldDepth = 4

// fieldMutations are the mutations of every field of the object schema
// sch, which lies at steps in the body, and of the fields of the objects
// and arrays of objects inside it.
func fieldMutations(sch map[string]any, steps []fieldStep) []hostileMutation {
	var ms []hostileMutation
	props, _ := sch["properties"].(map[string]any)
	names := make([]string, 0, len(props))
	for name := range props {
		names = append(names, name)
	}
	sort.Strings(names)
	set := func(field []fieldStep, v any) func(*hostileRequest, *hostileFixture) {
		return func(r *hostileRequest, fx *hostileFixture) {
			r.body = fx.edit(r.body, r.bodySchema, field, func(any, bool) (any, bool) { return v, true })
		}
	}
	for _, name := range names {
		ps := flatten(props[name])
		field := append(append([]fieldStep(nil), steps...), fieldStep{name, ps})
		what := fieldName(field)
		typ, single := ps["type"].(string)
		if single {
			ms = append(ms, hostileMutation{class: "field:wrong-type", what: what, mustRefuse: true, apply: set(field, wrongType(typ))})
		}
		if typ == "string" {
			ms = append(ms,
				hostileMutation{class: "field:70k-string", what: what, apply: set(field, strings.Repeat("x", 70<<10))},
				hostileMutation{class: "field:escaped-nul", what: what, apply: set(field, "a\u0000b")},
			)
		}
		if len(field) >= maxFieldDepth {
			continue
		}
		switch typ {
		case "object":
			ms = append(ms, fieldMutations(ps, field)...)
		case "array":
			items := flatten(ps["items"])
			itemType, _ := items["type"].(string)
			switch itemType {
			case "object":
				ms = append(ms, fieldMutations(items, append(field, fieldStep{"[]", items}))...)
			case "string", "integer", "number", "boolean":
				ms = append(ms, hostileMutation{class: "field:wrong-item-type", what: what + "[0]", mustRefuse: true, apply: set(field, []any{wrongType(itemType)})})
			}
		}
	}
	required, _ := sch["required"].([]any)
	for _, r := range required {
		name, _ := r.(string)
		field := append(append([]fieldStep(nil), steps...), fieldStep{key: name})
		ms = append(ms, hostileMutation{class: "field:missing", what: fieldName(field), mustRefuse: true, apply: func(r *hostileRequest, fx *hostileFixture) {
			r.body = fx.edit(r.body, r.bodySchema, field, func(any, bool) (any, bool) { return nil, false })
		}})
	}
	return ms
}

// flatten is schema v with an allOf merged in: the spec writes a
// property that reuses a definition (auth, third_party_signed, device
// keys) as an allOf of that one definition.
func flatten(v any) map[string]any {
	sch, _ := v.(map[string]any)
	all, _ := sch["allOf"].([]any)
	if len(all) == 0 {
		return sch
	}
	out := map[string]any{}
	props := map[string]any{}
	var required []any
	own := map[string]any{}
	for k, val := range sch {
		if k != "allOf" {
			own[k] = val
		}
	}
	for _, part := range append([]any{own}, all...) {
		for k, val := range flatten(part) {
			switch k {
			case "properties":
				pp, _ := val.(map[string]any)
				for name, ps := range pp {
					props[name] = ps
				}
			case "required":
				r, _ := val.([]any)
				required = append(required, r...)
			default:
				out[k] = val
			}
		}
	}
	if len(props) > 0 {
		out["properties"] = props
	}
	if len(required) > 0 {
		out["required"] = required
	}
	return out
}

// wrongType is a JSON value of another type than typ.
func wrongType(typ string) any {
	switch typ {
	case "string":
		return 12345
	case "integer", "number", "boolean":
		return "not-" + typ
	case "array":
		return map[string]any{"not": "an array"}
	default:
		return "not an object"
	}
}

// edit returns v, a value of schema sch, with the field at steps replaced
// by what f makes of it (removed when f says not to keep it). Objects and
// arrays missing on the way are made from their schemas' samples, so that
// a field of an optional object is changed in an otherwise ordinary one.
func (fx *hostileFixture) edit(v any, sch map[string]any, steps []fieldStep, f func(old any, present bool) (any, bool)) any {
	st, last := steps[0], len(steps) == 1
	if st.key == "[]" {
		arr, ok := v.([]any)
		if !ok || len(arr) == 0 {
			arr = []any{fx.sampleValue("", st.sch)}
		}
		if !last {
			arr[0] = fx.edit(arr[0], st.sch, steps[1:], f)
		} else if nv, keep := f(arr[0], true); keep {
			arr[0] = nv
		} else {
			arr = arr[1:]
		}
		return arr
	}
	m, ok := v.(map[string]any)
	if !ok {
		m, _ = fx.sampleValue("", sch).(map[string]any)
		if m == nil {
			m = map[string]any{}
		}
	}
	if !last {
		m[st.key] = fx.edit(m[st.key], st.sch, steps[1:], f)
		return m
	}
	old, present := m[st.key]
	if nv, keep := f(old, present); keep {
		m[st.key] = nv
	} else {
		delete(m, st.key)
	}
	return m
}

// judge says what is wrong with an answer to m, "" if nothing.
func (m hostileMutation) judge(status int, body []byte, err error) string {
	switch {
	case err != nil:
		return fmt.Sprintf("no answer: %v", err)
	case status >= 500:
		return fmt.Sprintf("%d: %.200s", status, body)
	case status < 200 || (status >= 300 && status < 400):
		return fmt.Sprintf("%d is not a Matrix answer: %.200s", status, body)
	case m.wantStatus != 0 && status != m.wantStatus:
		return fmt.Sprintf("%d, want %d: %.200s", status, m.wantStatus, body)
	case m.mustRefuse && status < 400:
		return fmt.Sprintf("accepted (%d) where the spec requires a refusal: %.200s", status, body)
	}
	if status >= 400 {
		var e map[string]any
		if json.Unmarshal(body, &e) != nil {
			return fmt.Sprintf("%d without a JSON body: %.200s", status, body)
		}
		if _, ok := e["errcode"].(string); !ok {
			if _, uia := e["flows"]; !(status == 401 && uia) {
				return fmt.Sprintf("%d without an errcode: %.200s", status, body)
			}
		}
	}
	return ""
}

// hostileFixture is the ground one operation's requests stand on:
// alice, who created a public room with an alias and sent a message in
// it, and bob, who joined it.
type hostileFixture struct {
	srv                 *testserver.Server
	hc                  *http.Client
	alice               *testserver.Client
	aliceToken, aliceID string
	bobID, device       string
	room, alias, event  string
	filter              string
	canarySince         string // for the canary's /sync
}

func newHostileFixture(t *testing.T, srv *testserver.Server, hc *http.Client, tag string) *hostileFixture {
	t.Helper()
	fx := &hostileFixture{srv: srv, hc: hc}
	alice := srv.Register(t, "hostile_a"+tag)
	alice.HTTP = hc
	bob := srv.Register(t, "hostile_b"+tag)
	bob.HTTP = hc
	who := alice.Do(t, "GET", "/_matrix/client/v3/account/whoami", nil).MustOK(t)
	fx.alice, fx.aliceToken, fx.aliceID, fx.device = alice, alice.Token, who.String("user_id"), who.String("device_id")
	fx.bobID = bob.Do(t, "GET", "/_matrix/client/v3/account/whoami", nil).MustOK(t).String("user_id")
	fx.room = alice.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{
		"preset": "public_chat", "room_alias_name": "hostile_" + tag,
	}).MustOK(t).String("room_id")
	fx.alias = "#hostile_" + tag + ":localhost"
	bob.Do(t, "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(fx.room)+"/join", map[string]any{}).MustOK(t)
	fx.event = alice.Do(t, "PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(fx.room)+"/send/m.room.message/fixture",
		map[string]any{"msgtype": "m.text", "body": "fixture"}).MustOK(t).String("event_id")
	fx.filter = alice.Do(t, "POST", "/_matrix/client/v3/user/"+url.PathEscape(fx.aliceID)+"/filter", map[string]any{}).MustOK(t).String("filter_id")
	return fx
}

// mustStillServe fails the test unless a normal send and /sync work.
func (fx *hostileFixture) mustStillServe(t *testing.T, when string, n int) {
	t.Helper()
	send := fx.alice.Do(t, "PUT", fmt.Sprintf("/_matrix/client/v3/rooms/%s/send/m.room.message/canary-%d", url.PathEscape(fx.room), n),
		map[string]any{"msgtype": "m.text", "body": "still here"})
	if send.Status != 200 {
		t.Fatalf("%s: a normal send fails: %d %s", when, send.Status, send.Raw)
	}
	sync := fx.alice.Do(t, "GET", "/_matrix/client/v3/sync?timeout=0&since="+url.QueryEscape(fx.canarySince), nil)
	if sync.Status != 200 {
		t.Fatalf("%s: /sync fails: %d %s", when, sync.Status, sync.Raw)
	}
	if fx.canarySince != "" && !strings.Contains(string(sync.Raw), send.String("event_id")) {
		t.Fatalf("%s: /sync does not bring the message just sent: %.500s", when, sync.Raw)
	}
	fx.canarySince = sync.String("next_batch")
}

// pathValue is an ordinary value of a path parameter.
func (fx *hostileFixture) pathValue(p hostileParam, n int) string {
	switch p.name {
	case "roomId", "roomIdOrAlias":
		return fx.room
	case "eventId":
		return fx.event
	case "userId":
		return fx.aliceID
	case "roomAlias":
		return fx.alias
	case "serverName":
		return "localhost"
	case "deviceId":
		return fx.device
	case "filterId":
		return fx.filter
	case "txnId":
		return fmt.Sprintf("hostile-%d", n)
	case "eventType", "type":
		return "org.example.hostile"
	case "tag":
		return "u.hostile"
	}
	if enum, _ := p.schema["enum"].([]any); len(enum) > 0 {
		if s, ok := enum[0].(string); ok {
			return s
		}
	}
	return "hostile"
}

// queryValue is an ordinary value of a required query parameter.
func (fx *hostileFixture) queryValue(p hostileParam) string {
	if enum, _ := p.schema["enum"].([]any); len(enum) > 0 {
		if s, ok := enum[0].(string); ok {
			return s
		}
	}
	switch p.schema["type"] {
	case "integer", "number":
		return "1"
	case "boolean":
		return "true"
	}
	switch p.name {
	case "room_id":
		return fx.room
	case "user_id":
		return fx.aliceID
	}
	return "hostile"
}

// sampleObject is an ordinary body for schema sch: its example when the
// spec gives one (with the fixture's IDs in place of the example's), else
// its required fields filled by type.
func (fx *hostileFixture) sampleObject(sch map[string]any) map[string]any {
	if ex, ok := sch["example"].(map[string]any); ok {
		out, _ := fx.localise("", deepCopy(ex)).(map[string]any)
		return out
	}
	out := map[string]any{}
	props, _ := sch["properties"].(map[string]any)
	required, _ := sch["required"].([]any)
	for _, r := range required {
		name, _ := r.(string)
		ps, _ := props[name].(map[string]any)
		out[name] = fx.sampleValue(name, ps)
	}
	return out
}

func (fx *hostileFixture) sampleValue(name string, sch map[string]any) any {
	if enum, _ := sch["enum"].([]any); len(enum) > 0 {
		return enum[0]
	}
	if ex, ok := sch["example"]; ok {
		return fx.localise(name, deepCopy(ex))
	}
	switch sch["type"] {
	case "integer", "number":
		return 1
	case "boolean":
		return true
	case "array":
		return []any{}
	case "object":
		return fx.sampleObject(sch)
	}
	return fx.localise(name, "hostile")
}

// localise replaces the IDs of the spec's examples, which name servers
// that do not exist, by the fixture's, so that requests reach past the
// membership checks.
func (fx *hostileFixture) localise(name string, v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, val := range x {
			x[k] = fx.localise(k, val)
		}
		return x
	case []any:
		for i, val := range x {
			x[i] = fx.localise(name, val)
		}
		return x
	case string:
		switch {
		case strings.HasPrefix(x, "@"):
			return fx.bobID
		case strings.HasPrefix(x, "!"):
			return fx.room
		case strings.HasPrefix(x, "$"):
			return fx.event
		case strings.HasPrefix(x, "#") && strings.Contains(x, ":"):
			return fx.alias
		}
		switch name {
		case "user_id":
			return fx.bobID
		case "room_id":
			return fx.room
		case "event_id":
			return fx.event
		case "device_id":
			return fx.device
		}
	}
	return v
}

func deepCopy(v any) any {
	raw, _ := json.Marshal(v)
	var out any
	_ = json.Unmarshal(raw, &out)
	return out
}
