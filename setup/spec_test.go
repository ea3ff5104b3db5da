package setup_test

import (
	"bytes"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"myelin/internal/sqldb/sqldbtest"
	"myelin/internal/testserver"
	"myelin/setup/config"
)

// specFile is the Client-Server API as OpenAPI 3.1, from the spec
// repository; CI has it beside the checkout.
const specFile = "../../shared/spec/openapi-client-server-v1.19.json"

// specURL is the document's base URI for the schema compiler: response
// schemas are compiled by JSON pointer into it, so that any $ref into the
// document (#/components/schemas/...) resolves.
const specURL = "https://spec.matrix.org/v1.19/client-server-api/openapi.json"

// clientSpec checks response bodies against the schemas of the spec.
type clientSpec struct {
	url   string // the document's base URI
	paths map[string]any
	c     *jsonschema.Compiler

	mu      sync.Mutex
	schemas map[string]*jsonschema.Schema
}

// readSpec reads the spec document and its paths. Without the file the
// test is skipped, unless MYELIN_REQUIRE_SPEC=1 (CI sets it when the spec
// is beside the checkout) makes that a failure.
func readSpec(t *testing.T) (doc any, paths map[string]any) {
	t.Helper()
	return readSpecFile(t, specFile)
}

// readSpecFile is readSpec for the spec document in file.
func readSpecFile(t *testing.T, specFile string) (doc any, paths map[string]any) {
	t.Helper()
	raw, err := os.ReadFile(specFile)
	if os.IsNotExist(err) {
		abs, _ := filepath.Abs(specFile)
		if os.Getenv("MYELIN_REQUIRE_SPEC") == "1" {
			t.Fatalf("spec not found at %s, and MYELIN_REQUIRE_SPEC=1", abs)
		}
		t.Skipf("spec not found at %s: skipping (CI has it)", abs)
	}
	if err != nil {
		t.Fatal(err)
	}
	doc, err = jsonschema.UnmarshalJSON(bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("parse %s: %v", specFile, err)
	}
	paths, _ = doc.(map[string]any)["paths"].(map[string]any)
	if len(paths) == 0 {
		t.Fatalf("%s has no paths", specFile)
	}
	return doc, paths
}

// loadClientSpec reads the spec and prepares its schemas.
func loadClientSpec(t *testing.T) *clientSpec {
	t.Helper()
	return loadSpec(t, specFile, specURL)
}

// loadSpec reads the spec document in file, with base URI specURL, and
// prepares its schemas (the Server-Server API's too).
func loadSpec(t *testing.T, file, specURL string) *clientSpec {
	t.Helper()
	doc, paths := readSpecFile(t, file)
	c := jsonschema.NewCompiler()
	// OpenAPI 3.1 schemas are JSON Schema 2020-12.
	c.DefaultDraft(jsonschema.Draft2020)
	c.AssertFormat()
	for _, f := range matrixFormats() {
		c.RegisterFormat(f)
	}
	if err := c.AddResource(specURL, doc); err != nil {
		t.Fatal(err)
	}
	return &clientSpec{url: specURL, paths: paths, c: c, schemas: map[string]*jsonschema.Schema{}}
}

// schema returns the schema of the JSON response to method on the spec
// path tmpl with status, nil if the spec defines no JSON body for it. It
// fails the test if the spec does not list that status at all. sub, if
// given, are pointer tokens into that schema.
func (s *clientSpec) schema(t *testing.T, method, tmpl string, status int, sub ...string) *jsonschema.Schema {
	t.Helper()
	op, ok := s.paths[tmpl].(map[string]any)[strings.ToLower(method)].(map[string]any)
	if !ok {
		t.Fatalf("the spec has no %s %s", method, tmpl)
	}
	code := strconv.Itoa(status)
	resp, ok := op["responses"].(map[string]any)[code].(map[string]any)
	if !ok {
		t.Errorf("%s %s: the spec lists no %d response", method, tmpl, status)
		return nil
	}
	if _, ok := resp["content"].(map[string]any)["application/json"].(map[string]any)["schema"]; !ok {
		return nil
	}
	ptr := "#" + pointer(append([]string{"paths", tmpl, strings.ToLower(method), "responses", code, "content", "application/json", "schema"}, sub...)...)
	s.mu.Lock()
	defer s.mu.Unlock()
	if sch := s.schemas[ptr]; sch != nil {
		return sch
	}
	sch, err := s.c.Compile(s.url + ptr)
	if err != nil {
		t.Fatalf("compile the schema of %s %s %d: %v", method, tmpl, status, err)
	}
	s.schemas[ptr] = sch
	return sch
}

// pointer builds a JSON pointer, escaped for a URI fragment.
func pointer(tokens ...string) string {
	var b strings.Builder
	for _, tok := range tokens {
		tok = strings.ReplaceAll(strings.ReplaceAll(tok, "~", "~0"), "/", "~1")
		b.WriteString("/" + url.PathEscape(tok))
	}
	return b.String()
}

// validate checks a response body against the spec.
func (s *clientSpec) validate(t *testing.T, method, tmpl, query string, r *testserver.Response) {
	t.Helper()
	if err := s.check(t, method, tmpl, query, r.Status, r.Raw); err != nil {
		t.Errorf("%s %s: %d response does not match the spec:\n%v\nbody: %.2000s", method, tmpl, r.Status, err, r.Raw)
	}
}

// check validates raw, the body of a response to method on the spec path
// tmpl with query and status.
func (s *clientSpec) check(t *testing.T, method, tmpl, query string, status int, raw []byte) error {
	t.Helper()
	var sub []string
	// Spec bug: GET .../state/{eventType}/{stateKey} answers oneOf [any
	// object (the content), ClientEvent (with format=event)]. Every event
	// is also an object, so an event can never match exactly one branch;
	// with format=event the answer is checked against the event branch.
	if method == "GET" && tmpl == clientV3+"/rooms/{roomId}/state/{eventType}/{stateKey}" && status == 200 {
		if q, _ := url.ParseQuery(query); q.Get("format") == "event" {
			sub = []string{"oneOf", "1"}
		}
	}
	sch := s.schema(t, method, tmpl, status, sub...)
	if sch == nil {
		return nil
	}
	body, err := jsonschema.UnmarshalJSON(bytes.NewReader(raw))
	if err != nil {
		return fmt.Errorf("body is not JSON: %w", err)
	}
	// Deliberate deviation: joined_members gives every member both keys,
	// avatar_url null when unset, as Synapse does and sytest requires
	// ("joined_members fetches my membership"); the spec has optional
	// strings. Only that null is forgiven.
	if method == "GET" && tmpl == clientV3+"/rooms/{roomId}/joined_members" {
		if m, ok := body.(map[string]any); ok {
			joined, _ := m["joined"].(map[string]any)
			for _, member := range joined {
				if mm, ok := member.(map[string]any); ok && mm["avatar_url"] == nil {
					delete(mm, "avatar_url")
				}
			}
		}
	}
	return sch.Validate(body)
}

// TestSpecValidator checks that the checks of TestSpecShapes bite: bodies
// that break the spec in the ways a server could are refused, and their
// fixed versions pass.
func TestSpecValidator(t *testing.T) {
	spec := loadClientSpec(t)
	const event = `{"content":{},"event_id":"$e","origin_server_ts":1,"sender":"@a:b","type":"m.room.message"}`
	for _, c := range []struct {
		name, method, tmpl, query string
		status                    int
		body                      string
		ok                        bool
	}{
		{"whoami", "GET", clientV3 + "/account/whoami", "", 200, `{"user_id":"@alice:example.org"}`, true},
		{"whoami: user ID without sigil", "GET", clientV3 + "/account/whoami", "", 200, `{"user_id":"alice"}`, false},
		{"whoami: no user ID", "GET", clientV3 + "/account/whoami", "", 200, `{"device_id":"X"}`, false},
		{"send", "PUT", clientV3 + "/rooms/{roomId}/send/{eventType}/{txnId}", "", 200, `{"event_id":"$abc"}`, true},
		{"send: event ID without sigil", "PUT", clientV3 + "/rooms/{roomId}/send/{eventType}/{txnId}", "", 200, `{"event_id":"abc"}`, false},
		{"sync", "GET", clientV3 + "/sync", "", 200, `{"next_batch":"s1","rooms":{"join":{"!r:b":{"timeline":{"events":[` + event + `],"limited":false}}}}}`, true},
		{"sync: no next_batch", "GET", clientV3 + "/sync", "", 200, `{}`, false},
		{"sync: timestamp as a string", "GET", clientV3 + "/sync", "", 200, `{"next_batch":"s1","rooms":{"join":{"!r:b":{"timeline":{"events":[` + strings.Replace(event, `"origin_server_ts":1`, `"origin_server_ts":"1"`, 1) + `]}}}}}`, false},
		{"sync: event without an ID", "GET", clientV3 + "/sync", "", 200, `{"next_batch":"s1","rooms":{"join":{"!r:b":{"timeline":{"events":[{"content":{},"origin_server_ts":1,"sender":"@a:b","type":"t"}]}}}}}`, false},
		{"messages: no start", "GET", clientV3 + "/rooms/{roomId}/messages", "", 200, `{"chunk":[]}`, false},
		{"state: event", "GET", clientV3 + "/rooms/{roomId}/state/{eventType}/{stateKey}", "format=event", 200, `{"content":{},"event_id":"$e","origin_server_ts":1,"room_id":"!r:b","sender":"@a:b","state_key":"","type":"m.room.name"}`, true},
		{"state: event without room ID", "GET", clientV3 + "/rooms/{roomId}/state/{eventType}/{stateKey}", "format=event", 200, event, false},
		{"error", "GET", clientV3 + "/account/whoami", "", 401, `{"errcode":"M_UNKNOWN_TOKEN","error":"no"}`, true},
		{"error: no errcode", "GET", clientV3 + "/account/whoami", "", 401, `{"error":"no"}`, false},
		{"uia", "POST", clientV3 + "/register", "", 401, `{"flows":[{"stages":["m.login.dummy"]}],"params":{},"session":"s"}`, true},
		{"uia: stages not a list", "POST", clientV3 + "/register", "", 401, `{"flows":[{"stages":"m.login.dummy"}],"params":{},"session":"s"}`, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := spec.check(t, c.method, c.tmpl, c.query, c.status, []byte(c.body))
			if c.ok && err != nil {
				t.Errorf("refused a body that matches the spec: %v", err)
			}
			if !c.ok && err == nil {
				t.Errorf("accepted a body that breaks the spec: %s", c.body)
			}
		})
	}
}

// matrixFormats checks the spec's own string formats (spec: Appendices,
// "Identifier Grammar"), and int64 for the integers it marks so.
func matrixFormats() []*jsonschema.Format {
	str := func(name string, ok func(s string) bool) *jsonschema.Format {
		return &jsonschema.Format{Name: name, Validate: func(v any) error {
			s, isStr := v.(string)
			if !isStr || ok(s) {
				return nil
			}
			return fmt.Errorf("%q is not a valid %s", s, name)
		}}
	}
	serverName := func(s string) bool {
		host := s
		if h, p, err := net.SplitHostPort(s); err == nil {
			if _, err := strconv.ParseUint(p, 10, 16); err != nil {
				return false
			}
			host = h
		} else if strings.HasPrefix(s, "[") {
			host = strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")
		}
		if net.ParseIP(host) != nil {
			return true
		}
		if host == "" || len(host) > 255 {
			return false
		}
		for _, r := range host {
			if !(r == '-' || r == '.' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
				return false
			}
		}
		return true
	}
	// sigilled is an identifier with a sigil; withServer says whether it
	// must end in :server (room IDs lose theirs from room version 12).
	sigilled := func(sigil byte, withServer bool) func(string) bool {
		return func(s string) bool {
			if len(s) < 2 || len(s) > 255 || s[0] != sigil {
				return false
			}
			local, server, ok := strings.Cut(s[1:], ":")
			if !ok {
				return !withServer && local != ""
			}
			return local != "" && serverName(server)
		}
	}
	return []*jsonschema.Format{
		str("mx-user-id", sigilled('@', true)),
		str("mx-room-alias", sigilled('#', true)),
		str("mx-room-id", sigilled('!', false)),
		str("mx-event-id", func(s string) bool { return len(s) > 1 && len(s) <= 255 && s[0] == '$' }),
		str("mx-server-name", serverName),
		str("mx-mxc-uri", func(s string) bool {
			server, media, ok := strings.Cut(strings.TrimPrefix(s, "mxc://"), "/")
			return strings.HasPrefix(s, "mxc://") && ok && serverName(server) && media != ""
		}),
		{Name: "int64", Validate: func(v any) error {
			if n, ok := v.(interface{ String() string }); ok {
				if _, err := strconv.ParseInt(n.String(), 10, 64); err != nil {
					return fmt.Errorf("%s is not a 64-bit integer", n)
				}
			}
			return nil
		}},
	}
}

// specFlow drives a server through the spec's endpoints and checks each
// answer.
type specFlow struct {
	t    *testing.T
	spec *clientSpec
	srv  *testserver.Server
	anon *testserver.Client
	// called records the spec operations exercised.
	called map[string]bool
}

// call makes a request to the endpoint the spec names tmpl (which may end
// in a query string), with the path variables given as name/value pairs,
// and checks the status and the body against the spec.
func (f *specFlow) call(c *testserver.Client, method, tmpl string, body any, want int, vars ...string) *testserver.Response {
	f.t.Helper()
	specPath, query, _ := strings.Cut(tmpl, "?")
	path := specPath
	for i := 0; i+1 < len(vars); i += 2 {
		path = strings.ReplaceAll(path, "{"+vars[i]+"}", url.PathEscape(vars[i+1]))
	}
	if strings.Contains(path, "{") {
		f.t.Fatalf("%s: unfilled path variables", path)
	}
	if query != "" {
		path += "?" + query
	}
	r := c.Do(f.t, method, path, body)
	if r.Status != want {
		f.t.Fatalf("%s %s: want %d, got %d: %.500s", method, path, want, r.Status, r.Raw)
	}
	f.spec.validate(f.t, method, specPath, query, r)
	f.called[method+" "+specPath] = true
	return r
}

// clientV3 is the prefix of the spec paths of most endpoints.
const clientV3 = "/_matrix/client/v3"

// register signs a user up through user-interactive auth: first the 401
// that lists the flows, then the dummy stage with its session.
func (f *specFlow) register(name string) *testserver.Client {
	f.t.Helper()
	req := map[string]any{"username": name, "password": "password-" + name, "initial_device_display_name": "laptop"}
	challenge := f.call(f.anon, "POST", clientV3+"/register", req, 401)
	req["auth"] = map[string]any{"type": "m.login.dummy", "session": challenge.String("session")}
	r := f.call(f.anon, "POST", clientV3+"/register", req, 200)
	return &testserver.Client{Base: f.srv.URL, Token: r.String("access_token")}
}

// syncRooms returns a section of rooms of a /sync response.
func syncRooms(r *testserver.Response, section string) map[string]any {
	rooms, _ := r.Body["rooms"].(map[string]any)
	m, _ := rooms[section].(map[string]any)
	return m
}

// TestSpecShapes drives a server through a realistic session on each
// database, with rooms of several versions, and validates every response
// body against the schema the Client-Server API spec gives for that
// endpoint, method and status.
func TestSpecShapes(t *testing.T) {
	spec := loadClientSpec(t)
	for _, dialect := range sqldbtest.Dialects {
		t.Run(dialect, func(t *testing.T) {
			// Rooms of the first version (event IDs with a server name,
			// redacts at the top level), the default, and the latest (room
			// IDs without a server name).
			for _, version := range []string{"1", "10", "12"} {
				t.Run("room v"+version, func(t *testing.T) {
					specSession(t, spec, sqldbtest.URL(t, dialect), version)
				})
			}
		})
	}
}

// specSession is one session of TestSpecShapes on a fresh server whose
// rooms are of roomVersion.
func specSession(t *testing.T, spec *clientSpec, dbURL, roomVersion string) {
	srv := testserver.Start(t, testserver.Config(t.TempDir(), dbURL, func(c *config.Config) {
		c.ClientAPI.PublicBaseURL = "https://matrix.example.org"
		c.Rooms.DefaultVersion = roomVersion
	}))
	f := &specFlow{t: t, spec: spec, srv: srv, anon: &testserver.Client{Base: srv.URL}, called: map[string]bool{}}
	anon := f.anon
	const (
		aliceID = "@alice:localhost"
		bobID   = "@bob:localhost"
		carolID = "@carol:localhost"
		daveID  = "@dave:localhost"
	)

	// Discovery and accounts.
	f.call(anon, "GET", "/_matrix/client/versions", nil, 200)
	f.call(anon, "GET", "/.well-known/matrix/client", nil, 200)
	f.call(anon, "GET", clientV3+"/login", nil, 200)
	f.call(anon, "GET", clientV3+"/register/available?username=alice", nil, 200)
	alice := f.register("alice")
	bob := f.register("bob")
	carol := f.register("carol")
	dave := f.register("dave")
	phone := f.call(anon, "POST", clientV3+"/login", map[string]any{
		"type":       "m.login.password",
		"identifier": map[string]any{"type": "m.id.user", "user": "alice"},
		"password":   "password-alice", "initial_device_display_name": "phone",
	}, 200)
	alicePhone := &testserver.Client{Base: srv.URL, Token: phone.String("access_token")}
	f.call(alice, "GET", clientV3+"/account/whoami", nil, 200)
	f.call(alice, "GET", clientV3+"/capabilities", nil, 200)
	f.call(alice, "GET", clientV3+"/devices", nil, 200)
	f.call(alice, "GET", clientV3+"/devices/{deviceId}", nil, 200, "deviceId", phone.String("device_id"))
	f.call(alice, "PUT", clientV3+"/devices/{deviceId}", map[string]any{"display_name": "old phone"}, 200, "deviceId", phone.String("device_id"))

	// Profile and account data.
	f.call(alice, "PUT", clientV3+"/profile/{userId}/{keyName}", map[string]any{"displayname": "Alice"}, 200, "userId", aliceID, "keyName", "displayname")
	f.call(alice, "PUT", clientV3+"/profile/{userId}/{keyName}", map[string]any{"avatar_url": "mxc://localhost/alice"}, 200, "userId", aliceID, "keyName", "avatar_url")
	f.call(bob, "GET", clientV3+"/profile/{userId}", nil, 200, "userId", aliceID)
	f.call(bob, "GET", clientV3+"/profile/{userId}/{keyName}", nil, 200, "userId", aliceID, "keyName", "displayname")
	f.call(anon, "GET", clientV3+"/profile/{userId}/{keyName}", nil, 200, "userId", aliceID, "keyName", "avatar_url")
	f.call(alice, "PUT", clientV3+"/user/{userId}/account_data/{type}", map[string]any{"theme": "dark"}, 200, "userId", aliceID, "type", "org.example.settings")
	f.call(alice, "GET", clientV3+"/user/{userId}/account_data/{type}", nil, 200, "userId", aliceID, "type", "org.example.settings")

	// Filters.
	filter := f.call(dave, "POST", clientV3+"/user/{userId}/filter", map[string]any{
		"room": map[string]any{"timeline": map[string]any{"limit": 20}, "include_leave": true},
	}, 200, "userId", daveID).String("filter_id")
	f.call(dave, "GET", clientV3+"/user/{userId}/filter/{filterId}", nil, 200, "userId", daveID, "filterId", filter)

	// Initial syncs, before anything happens to these users.
	carolSince := f.call(carol, "GET", clientV3+"/sync", nil, 200).String("next_batch")
	daveSince := f.call(dave, "GET", clientV3+"/sync?filter="+filter, nil, 200).String("next_batch")

	// A private room with everything createRoom can set.
	room := f.call(alice, "POST", clientV3+"/createRoom", map[string]any{
		"name": "Spec room", "topic": "shapes", "room_alias_name": "spec",
		"invite": []string{bobID}, "preset": "private_chat",
	}, 200).String("room_id")
	f.call(alice, "PUT", clientV3+"/user/{userId}/rooms/{roomId}/account_data/{type}", map[string]any{"pinned": true}, 200,
		"userId", aliceID, "roomId", room, "type", "org.example.room")
	f.call(alice, "GET", clientV3+"/user/{userId}/rooms/{roomId}/account_data/{type}", nil, 200,
		"userId", aliceID, "roomId", room, "type", "org.example.room")
	f.call(bob, "GET", clientV3+"/sync", nil, 200) // rooms.invite
	f.call(bob, "POST", clientV3+"/rooms/{roomId}/join", map[string]any{}, 200, "roomId", room)
	hello := f.call(alice, "PUT", clientV3+"/rooms/{roomId}/send/{eventType}/{txnId}", map[string]any{"msgtype": "m.text", "body": "hello"}, 200,
		"roomId", room, "eventType", "m.room.message", "txnId", "t1").String("event_id")
	oops := f.call(bob, "PUT", clientV3+"/rooms/{roomId}/send/{eventType}/{txnId}", map[string]any{"msgtype": "m.text", "body": "oops"}, 200,
		"roomId", room, "eventType", "m.room.message", "txnId", "t1").String("event_id")
	f.call(alice, "PUT", clientV3+"/rooms/{roomId}/state/{eventType}/{stateKey}", map[string]any{"topic": "new shapes"}, 200,
		"roomId", room, "eventType", "m.room.topic", "stateKey", "")
	f.call(bob, "GET", clientV3+"/rooms/{roomId}/state/{eventType}/{stateKey}", nil, 200, "roomId", room, "eventType", "m.room.topic", "stateKey", "")
	f.call(bob, "GET", clientV3+"/rooms/{roomId}/state/{eventType}/{stateKey}?format=event", nil, 200, "roomId", room, "eventType", "m.room.name", "stateKey", "")
	f.call(bob, "GET", clientV3+"/rooms/{roomId}/state/{eventType}/{stateKey}", nil, 200, "roomId", room, "eventType", "m.room.member", "stateKey", aliceID)
	f.call(bob, "GET", clientV3+"/rooms/{roomId}/state", nil, 200, "roomId", room)
	f.call(bob, "GET", clientV3+"/rooms/{roomId}/members", nil, 200, "roomId", room)
	f.call(bob, "GET", clientV3+"/rooms/{roomId}/members?membership=join", nil, 200, "roomId", room)
	f.call(bob, "GET", clientV3+"/rooms/{roomId}/joined_members", nil, 200, "roomId", room)
	f.call(bob, "GET", clientV3+"/joined_rooms", nil, 200)

	// Invite carol, who sees it in an incremental sync and declines.
	f.call(alice, "POST", clientV3+"/rooms/{roomId}/invite", map[string]any{"user_id": carolID, "reason": "join us"}, 200, "roomId", room)
	s := f.call(carol, "GET", clientV3+"/sync?timeout=0&since="+carolSince, nil, 200)
	if _, ok := syncRooms(s, "invite")[room]; !ok {
		t.Fatalf("carol's sync has no invite to %s: %.1000s", room, s.Raw)
	}
	carolSince = s.String("next_batch")
	f.call(carol, "POST", clientV3+"/rooms/{roomId}/leave", map[string]any{"reason": "busy"}, 200, "roomId", room)
	s = f.call(carol, "GET", clientV3+"/sync?timeout=0&since="+carolSince, nil, 200)
	if _, ok := syncRooms(s, "leave")[room]; !ok {
		t.Fatalf("carol's sync does not show the declined invite in rooms.leave: %.1000s", s.Raw)
	}
	f.call(carol, "POST", clientV3+"/rooms/{roomId}/forget", map[string]any{}, 200, "roomId", room)

	// A public room dave joins by alias, is kicked from, then banned
	// from and unbanned; his syncs see the join and the kick.
	pub := f.call(alice, "POST", clientV3+"/createRoom", map[string]any{"preset": "public_chat", "room_alias_name": "lobby", "visibility": "public"}, 200).String("room_id")
	f.call(dave, "POST", clientV3+"/join/{roomIdOrAlias}", map[string]any{}, 200, "roomIdOrAlias", "#lobby:localhost")
	f.call(dave, "PUT", clientV3+"/rooms/{roomId}/send/{eventType}/{txnId}", map[string]any{"msgtype": "m.text", "body": "hi all"}, 200,
		"roomId", pub, "eventType", "m.room.message", "txnId", "d1")
	s = f.call(dave, "GET", clientV3+"/sync?timeout=0&filter="+filter+"&since="+daveSince, nil, 200)
	if _, ok := syncRooms(s, "join")[pub]; !ok {
		t.Fatalf("dave's sync has no rooms.join entry for %s: %.1000s", pub, s.Raw)
	}
	daveSince = s.String("next_batch")
	f.call(alice, "POST", clientV3+"/rooms/{roomId}/kick", map[string]any{"user_id": daveID, "reason": "testing"}, 200, "roomId", pub)
	s = f.call(dave, "GET", clientV3+"/sync?timeout=0&filter="+filter+"&since="+daveSince, nil, 200)
	if _, ok := syncRooms(s, "leave")[pub]; !ok {
		t.Fatalf("dave's sync has no rooms.leave entry for %s: %.1000s", pub, s.Raw)
	}
	f.call(alice, "POST", clientV3+"/rooms/{roomId}/ban", map[string]any{"user_id": daveID, "reason": "testing"}, 200, "roomId", pub)
	f.call(alice, "POST", clientV3+"/rooms/{roomId}/unban", map[string]any{"user_id": daveID}, 200, "roomId", pub)
	f.call(dave, "GET", clientV3+"/sync?filter="+filter, nil, 200) // initial, with include_leave
	f.call(dave, "GET", clientV3+"/rooms/{roomId}/messages?dir=b", nil, 200, "roomId", pub)

	// History: redaction, single events, pagination both ways, context.
	f.call(alice, "PUT", clientV3+"/rooms/{roomId}/redact/{eventId}/{txnId}", map[string]any{"reason": "typo"}, 200, "roomId", room, "eventId", oops, "txnId", "r1")
	f.call(bob, "GET", clientV3+"/rooms/{roomId}/event/{eventId}", nil, 200, "roomId", room, "eventId", oops)
	f.call(bob, "GET", clientV3+"/rooms/{roomId}/event/{eventId}", nil, 200, "roomId", room, "eventId", hello)
	back := f.call(bob, "GET", clientV3+"/rooms/{roomId}/messages?dir=b&limit=3", nil, 200, "roomId", room)
	f.call(bob, "GET", clientV3+"/rooms/{roomId}/messages?dir=b&limit=3&from="+url.QueryEscape(back.String("end")), nil, 200, "roomId", room)
	f.call(bob, "GET", clientV3+"/rooms/{roomId}/messages?dir=f&limit=5", nil, 200, "roomId", room)
	f.call(bob, "GET", clientV3+"/rooms/{roomId}/messages?dir=f&from="+url.QueryEscape(back.String("start")), nil, 200, "roomId", room)
	f.call(bob, "GET", clientV3+"/rooms/{roomId}/context/{eventId}?limit=4", nil, 200, "roomId", room, "eventId", hello)
	lazy := url.QueryEscape(`{"lazy_load_members":true}`)
	f.call(bob, "GET", clientV3+"/rooms/{roomId}/messages?dir=b&filter="+lazy, nil, 200, "roomId", room)
	f.call(bob, "GET", clientV3+"/rooms/{roomId}/context/{eventId}?filter="+lazy, nil, 200, "roomId", room, "eventId", hello)

	// Relations: an edit, a thread and a reference of hello, read back
	// with their bundled aggregations.
	f.call(alice, "PUT", clientV3+"/rooms/{roomId}/send/{eventType}/{txnId}", map[string]any{"msgtype": "m.text", "body": "* hello!",
		"m.new_content": map[string]any{"msgtype": "m.text", "body": "hello!"},
		"m.relates_to":  map[string]any{"rel_type": "m.replace", "event_id": hello}}, 200,
		"roomId", room, "eventType", "m.room.message", "txnId", "edit1")
	f.call(bob, "PUT", clientV3+"/rooms/{roomId}/send/{eventType}/{txnId}", map[string]any{"msgtype": "m.text", "body": "threaded",
		"m.relates_to": map[string]any{"rel_type": "m.thread", "event_id": hello}}, 200,
		"roomId", room, "eventType", "m.room.message", "txnId", "thread1")
	f.call(bob, "PUT", clientV3+"/rooms/{roomId}/send/{eventType}/{txnId}", map[string]any{"msgtype": "m.text", "body": "see",
		"m.relates_to": map[string]any{"rel_type": "m.reference", "event_id": hello}}, 200,
		"roomId", room, "eventType", "m.room.message", "txnId", "ref1")
	f.call(bob, "GET", clientV3+"/rooms/{roomId}/event/{eventId}", nil, 200, "roomId", room, "eventId", hello)
	rel := f.call(bob, "GET", "/_matrix/client/v1/rooms/{roomId}/relations/{eventId}?limit=1", nil, 200, "roomId", room, "eventId", hello)
	f.call(bob, "GET", "/_matrix/client/v1/rooms/{roomId}/relations/{eventId}?recurse=true&from="+url.QueryEscape(rel.String("next_batch")), nil, 200,
		"roomId", room, "eventId", hello)
	f.call(bob, "GET", "/_matrix/client/v1/rooms/{roomId}/relations/{eventId}/{relType}?dir=f", nil, 200, "roomId", room, "eventId", hello, "relType", "m.thread")
	f.call(bob, "GET", "/_matrix/client/v1/rooms/{roomId}/relations/{eventId}/{relType}/{eventType}", nil, 200,
		"roomId", room, "eventId", hello, "relType", "m.replace", "eventType", "m.room.message")
	f.call(bob, "GET", "/_matrix/client/v1/rooms/{roomId}/threads?include=participated", nil, 200, "roomId", room)
	f.call(bob, "GET", "/_matrix/client/v1/rooms/{roomId}/threads?from=bad", nil, 400, "roomId", room)
	f.call(bob, "GET", clientV3+"/rooms/{roomId}/context/{eventId}", nil, 200, "roomId", room, "eventId", hello)

	// A gappy incremental sync: more events than the timeline limit,
	// with a state change before the gap.
	bobSince := f.call(bob, "GET", clientV3+"/sync", nil, 200).String("next_batch")
	f.call(alice, "PUT", clientV3+"/rooms/{roomId}/state/{eventType}/{stateKey}", map[string]any{"topic": "gappy"}, 200,
		"roomId", room, "eventType", "m.room.topic", "stateKey", "")
	for i := range 3 {
		f.call(alice, "PUT", clientV3+"/rooms/{roomId}/send/{eventType}/{txnId}", map[string]any{"msgtype": "m.text", "body": fmt.Sprint("gap ", i)}, 200,
			"roomId", room, "eventType", "m.room.message", "txnId", fmt.Sprint("gap", i))
	}
	limit1 := url.QueryEscape(`{"room":{"timeline":{"limit":1},"state":{"lazy_load_members":true}}}`)
	s = f.call(bob, "GET", clientV3+"/sync?timeout=0&filter="+limit1+"&since="+bobSince, nil, 200)
	if jr, _ := syncRooms(s, "join")[room].(map[string]any); jr == nil || jr["timeline"].(map[string]any)["limited"] != true {
		t.Fatalf("bob's sync is not limited: %.1000s", s.Raw)
	}

	// Aliases.
	f.call(anon, "GET", clientV3+"/directory/room/{roomAlias}", nil, 200, "roomAlias", "#spec:localhost")
	f.call(bob, "PUT", clientV3+"/directory/room/{roomAlias}", map[string]any{"room_id": room}, 200, "roomAlias", "#spec-extra:localhost")
	f.call(bob, "GET", clientV3+"/rooms/{roomId}/aliases", nil, 200, "roomId", room)
	f.call(bob, "DELETE", clientV3+"/directory/room/{roomAlias}", nil, 200, "roomAlias", "#spec-extra:localhost")

	// Everything at once, for a user in many states.
	f.call(alice, "GET", clientV3+"/sync", nil, 200)
	f.call(bob, "GET", clientV3+"/sync?full_state=true", nil, 200)
	f.call(bob, "POST", clientV3+"/rooms/{roomId}/leave", map[string]any{}, 200, "roomId", room)
	// What a user who left still sees: the room as it was.
	f.call(bob, "GET", clientV3+"/rooms/{roomId}/members", nil, 200, "roomId", room)
	f.call(bob, "GET", clientV3+"/rooms/{roomId}/state", nil, 200, "roomId", room)
	f.call(bob, "GET", clientV3+"/rooms/{roomId}/state/{eventType}/{stateKey}?format=event", nil, 200, "roomId", room, "eventType", "m.room.topic", "stateKey", "")
	f.call(bob, "GET", clientV3+"/rooms/{roomId}/messages?dir=b", nil, 200, "roomId", room)
	f.call(bob, "GET", clientV3+"/sync?filter="+url.QueryEscape(`{"room":{"include_leave":true}}`), nil, 200)
	f.call(alicePhone, "POST", clientV3+"/logout", map[string]any{}, 200)

	// What sits behind a password: devices, the password, the account.
	tablet := f.call(anon, "POST", clientV3+"/login", map[string]any{
		"type": "m.login.password", "user": "alice", "password": "password-alice", "device_id": "TABLET",
	}, 200).String("device_id")
	challenge := f.call(alice, "DELETE", clientV3+"/devices/{deviceId}", nil, 401, "deviceId", tablet)
	password := func(who, pw, session string) map[string]any {
		return map[string]any{"type": "m.login.password", "identifier": map[string]any{"type": "m.id.user", "user": who}, "password": pw, "session": session}
	}
	f.call(alice, "DELETE", clientV3+"/devices/{deviceId}", map[string]any{"auth": password("alice", "password-alice", challenge.String("session"))}, 200, "deviceId", tablet)
	challenge = f.call(alice, "DELETE", clientV3+"/devices/{deviceId}", map[string]any{}, 401, "deviceId", tablet)
	f.call(alice, "DELETE", clientV3+"/devices/{deviceId}", map[string]any{"auth": password("alice", "password-alice", challenge.String("session"))}, 200, "deviceId", tablet)
	challenge = f.call(alice, "POST", clientV3+"/delete_devices", map[string]any{"devices": []string{"GONE"}}, 401)
	f.call(alice, "POST", clientV3+"/delete_devices", map[string]any{"devices": []string{"GONE"}, "auth": password("alice", "password-alice", challenge.String("session"))}, 200)
	challenge = f.call(dave, "POST", clientV3+"/account/password", map[string]any{"new_password": "new-dave"}, 401)
	f.call(dave, "POST", clientV3+"/account/password", map[string]any{"new_password": "new-dave", "auth": password("dave", "password-dave", challenge.String("session"))}, 200)
	f.call(dave, "POST", clientV3+"/logout/all", map[string]any{}, 200)
	challenge = f.call(carol, "POST", clientV3+"/account/deactivate", map[string]any{}, 401)
	f.call(carol, "POST", clientV3+"/account/deactivate", map[string]any{"auth": password("carol", "password-carol", challenge.String("session"))}, 200)
	f.call(anon, "POST", clientV3+"/register", map[string]any{
		"username": "erin", "password": "password-erin", "inhibit_login": true, "auth": map[string]any{"type": "m.login.dummy"},
	}, 200)

	if testing.Verbose() {
		ops := make([]string, 0, len(f.called))
		for op := range f.called {
			ops = append(ops, op)
		}
		sort.Strings(ops)
		t.Logf("%d operations checked against the spec:\n%s", len(ops), strings.Join(ops, "\n"))
	}
}
