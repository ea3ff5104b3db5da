package mxhttp

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"testing"
)

func TestDecodeVars(t *testing.T) {
	long := strings.Repeat("a", 300)
	for _, tc := range []struct {
		name string
		vars map[string]string
		want string // errcode, "" for none
		out  string // the decoded value of the one variable
	}{
		{"room ID decoded", map[string]string{"roomId": "%21abc%3Alocalhost"}, "", "!abc:localhost"},
		{"v12 room ID", map[string]string{"roomId": "%21" + strings.Repeat("A", 43)}, "", "!" + strings.Repeat("A", 43)},
		{"room ID overlong", map[string]string{"roomId": "!" + long + ":localhost"}, "M_INVALID_PARAM", ""},
		{"room ID malformed", map[string]string{"roomId": "notaroom"}, "M_INVALID_PARAM", ""},
		{"room ID dot dot", map[string]string{"roomId": ".."}, "M_INVALID_PARAM", ""},
		{"event ID v3 slash", map[string]string{"eventId": "%24" + strings.Repeat("A", 42) + "%2F"}, "", "$" + strings.Repeat("A", 42) + "/"},
		{"event ID malformed", map[string]string{"eventId": "$x"}, "M_INVALID_PARAM", ""},
		{"historical user ID", map[string]string{"userId": "@Alice%20B:localhost"}, "", "@Alice B:localhost"},
		{"user ID malformed", map[string]string{"userId": "alice"}, "M_INVALID_PARAM", ""},
		{"alias", map[string]string{"roomAlias": "%23room:localhost"}, "", "#room:localhost"},
		{"room ID or alias", map[string]string{"roomIdOrAlias": "notaroom"}, "M_INVALID_PARAM", ""},
		{"server name", map[string]string{"serverName": "localhost:8448"}, "", "localhost:8448"},
		{"server name malformed", map[string]string{"serverName": "local_host"}, "M_INVALID_PARAM", ""},
		{"empty state key", map[string]string{"stateKey": ""}, "", ""},
		{"state key 255 bytes", map[string]string{"stateKey": long[:255]}, "", long[:255]},
		{"state key overlong", map[string]string{"stateKey": long}, "M_TOO_LARGE", ""},
		{"event type overlong", map[string]string{"eventType": long}, "M_TOO_LARGE", ""},
		{"txn ID overlong", map[string]string{"txnId": long}, "M_INVALID_PARAM", ""},
		{"tag overlong", map[string]string{"tag": long}, "M_INVALID_PARAM", ""},
		{"NUL", map[string]string{"txnId": "a%00b"}, "M_INVALID_PARAM", ""},
		{"not UTF-8", map[string]string{"type": "a%FFb"}, "M_INVALID_PARAM", ""},
		{"bad escape", map[string]string{"deviceId": "a%zz"}, "M_INVALID_PARAM", ""},
		{"unknown variable is bounded", map[string]string{"novel": long}, "M_INVALID_PARAM", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := decodeVars(tc.vars)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("decodeVars(%.60v) = %v", tc.vars, err)
				}
				for _, v := range tc.vars {
					if v != tc.out {
						t.Fatalf("decoded %q, want %q", v, tc.out)
					}
				}
				return
			}
			if got := ToError(err); err == nil || got.Code != tc.want {
				t.Fatalf("decodeVars(%.60v) = %v, want %s", tc.vars, err, tc.want)
			}
			if len(err.Error()) > 200 {
				t.Fatalf("the error repeats the value: %.300s", err)
			}
		})
	}
}

func TestCheckRouteVars(t *testing.T) {
	r := NewRouter()
	sub := r.PathPrefix("/_matrix/client/v3").Subrouter()
	sub.Handle("/rooms/{roomId}/state/{eventType}/{stateKey:.*}", Handler(nil))
	sub.Handle("/join/{roomIdOrAlias}", Handler(nil))
	if err := CheckRouteVars(r); err != nil {
		t.Fatalf("known variables: %v", err)
	}
	sub.Handle("/rooms/{roomID}/novel/{thing:[a-z]+}", Handler(nil))
	err := CheckRouteVars(r)
	if err == nil || !strings.Contains(err.Error(), "roomID in") || !strings.Contains(err.Error(), "thing in") {
		t.Fatalf("unknown variables: %v", err)
	}
}

func TestCheckQuery(t *testing.T) {
	for _, tc := range []struct {
		q  string
		ok bool
	}{
		{"", true},
		{"since=s1_2_3&timeout=30000", true},
		{"filter=%7B%22room%22%3A%7B%7D%7D", true},
		{"q=%C3%A9t%C3%A9", true}, // été
		{"q=caf\xc3\xa9", true},
		{"q=a+b", true},
		{"q=%00", false},
		{"q=a%00b&x=1", false},
		{"q=%FF", false},
		{"q=%C3", false},
		{"q=\xff", false},
		{"q=%ZZ", false},
		{"q=%4", false},
		{"q=%", false},
	} {
		if err := checkQuery(tc.q); (err == nil) != tc.ok {
			t.Errorf("checkQuery(%q) = %v, want ok=%v", tc.q, err, tc.ok)
		}
	}
}

func TestHasEscapedNUL(t *testing.T) {
	for _, tc := range []struct {
		json string
		want bool
	}{
		{`{"a":"b"}`, false},
		{`{"a":"\u0000"}`, true},
		{`{"a\u0000":1}`, true},
		{`{"a":"x\\u0000"}`, false}, // a backslash, then "u0000"
		{`{"a":"x\\\u0000"}`, true},
		{`{"a":"\u00001"}`, true},
		{`{"a":"\u0001"}`, false},
		{`{"a":"\"\u0000"}`, true},
		{`{"a":"\\"}`, false},
	} {
		if got := hasEscapedNUL([]byte(tc.json)); got != tc.want {
			t.Errorf("hasEscapedNUL(%s) = %v, want %v", tc.json, got, tc.want)
		}
	}
}

func TestCheckRequest(t *testing.T) {
	for _, tc := range []struct {
		name, method, body string
		want               string
	}{
		{"GET without body", "GET", "", ""},
		{"GET with blank body", "GET", "  \n", ""},
		{"GET with an object", "GET", `{"x":1}`, ""},
		{"GET with junk", "GET", "junk", "M_NOT_JSON"},
		{"GET with a form feed", "GET", "{}\f", "M_NOT_JSON"},
		{"GET with a no-break space", "GET", "{}\u00a0", "M_NOT_JSON"},
		{"GET with an array", "GET", "[1]", "M_BAD_JSON"},
		{"GET with NUL", "GET", `{"x":"\u0000"}`, "M_BAD_JSON"},
		{"DELETE with junk", "DELETE", "junk", "M_NOT_JSON"},
		{"POST with junk is the handler's", "POST", "junk", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest(tc.method, "/x", strings.NewReader(tc.body))
			err := checkRequest(req)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if got := ToError(err); err == nil || got.Code != tc.want {
				t.Fatalf("got %v, want %s", err, tc.want)
			}
		})
	}
	// A DELETE handler still reads the body checked.
	req := httptest.NewRequest("DELETE", "/x", strings.NewReader(`{"auth":{}}`))
	if err := checkRequest(req); err != nil {
		t.Fatal(err)
	}
	if b, err := ReadBody(req); err != nil || string(b) != `{"auth":{}}` {
		t.Fatalf("body after the check: %q, %v", b, err)
	}
}

// TestServePathVars runs a router with the table's checks in front of a
// handler, as setup wires it.
func TestServePathVars(t *testing.T) {
	r := NewRouter()
	var got string
	r.Handle("/rooms/{roomId}/leave", Handler(func(req *http.Request) (any, error) {
		got = Var(req, "roomId")
		return struct{}{}, nil
	}))
	for _, tc := range []struct {
		path   string
		status int
		room   string
	}{
		{"/rooms/%21a%3Ab/leave", 200, "!a:b"},
		{"/rooms/!" + strings.Repeat("a", 5000) + ":b/leave", 400, ""},
		{"/rooms/../leave", 400, ""},
		{"/rooms/..%2F..%2Fx/leave", 400, ""},
	} {
		got = ""
		w := httptest.NewRecorder()
		r.ServeHTTP(w, httptest.NewRequest("POST", tc.path, nil))
		if w.Code != tc.status || got != tc.room {
			t.Errorf("%.60s: %d, room %q; want %d, %q: %s", tc.path, w.Code, got, tc.status, tc.room, w.Body)
		}
	}
}

// FuzzHasEscapedNUL checks the scan DecodeJSON refuses NUL with against
// what decoding finds: a NUL in any key or string of valid JSON.
func FuzzHasEscapedNUL(f *testing.F) {
	for _, s := range []string{`{"a":"\u0000"}`, `{"a":"x\\u0000"}`, `{"\u0000":1}`, `["\\\u0000"]`, `"\\\\u0000"`, `{"a":["b",{"c":"\u00001"}]}`, `{}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var v any
		if json.Unmarshal(b, &v) != nil {
			return
		}
		if got, want := hasEscapedNUL(b), holdsNUL(v); got != want {
			t.Fatalf("hasEscapedNUL(%q) = %v, decoding finds NUL: %v", b, got, want)
		}
	})
}

func holdsNUL(v any) bool {
	switch v := v.(type) {
	case string:
		return strings.IndexByte(v, 0) >= 0
	case []any:
		for _, e := range v {
			if holdsNUL(e) {
				return true
			}
		}
	case map[string]any:
		for k, e := range v {
			if strings.IndexByte(k, 0) >= 0 || holdsNUL(e) {
				return true
			}
		}
	}
	return false
}

// BenchmarkCheckRequest is what the edge's checks cost a request before its
// handler runs: a send (three path variables, one escaped) and a /sync
// long-poll (a query string, no variables).
func BenchmarkCheckRequest(b *testing.B) {
	b.Run("send", func(b *testing.B) {
		req := httptest.NewRequest("PUT", "/x", nil)
		vars := map[string]string{"roomId": "%21hMrSYbQKLnmgKsTtUk:example.org", "eventType": "m.room.message", "txnId": "m1733496000000.42"}
		b.ReportAllocs()
		for b.Loop() {
			// decodeVars rewrites the map in place: give it fresh values.
			vars["roomId"] = "%21hMrSYbQKLnmgKsTtUk:example.org"
			if err := decodeVars(vars); err != nil {
				b.Fatal(err)
			}
			if err := checkQuery(req.URL.RawQuery); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("sync", func(b *testing.B) {
		req := httptest.NewRequest("GET", "/_matrix/client/v3/sync?filter=0&since=s1234_56_1733496000000_7_8_9&timeout=30000&set_presence=online", nil)
		b.ReportAllocs()
		for b.Loop() {
			if err := checkRequest(req); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestServerSpecPathVars: every path variable of the Server-Server API
// spec has a row in the table, so a federation route written from the
// spec cannot stop the server from starting (CheckRouteVars). Without the
// spec beside the checkout the test is skipped, unless
// MYELIN_REQUIRE_SPEC=1.
func TestServerSpecPathVars(t *testing.T) {
	const file = "../../../shared/spec/openapi-server-server-v1.19.json"
	raw, err := os.ReadFile(file)
	if os.IsNotExist(err) {
		if os.Getenv("MYELIN_REQUIRE_SPEC") == "1" {
			t.Fatalf("spec not found at %s, and MYELIN_REQUIRE_SPEC=1", file)
		}
		t.Skipf("spec not found at %s", file)
	}
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Paths map[string]any `json:"paths"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil || len(doc.Paths) == 0 {
		t.Fatalf("parse %s: %v", file, err)
	}
	seen := 0
	for path := range doc.Paths {
		for _, m := range regexp.MustCompile(`\{(\w+)\}`).FindAllStringSubmatch(path, -1) {
			seen++
			if _, ok := pathVars[m[1]]; !ok {
				t.Errorf("%s: path variable %s is not in the table", path, m[1])
			}
		}
	}
	if seen == 0 {
		t.Fatal("no path variables found in the spec")
	}
}
