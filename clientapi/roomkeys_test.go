package clientapi_test

import (
	"net/http"
	"testing"

	"myelin/internal/sqldb/sqldbtest"
	uapi "myelin/userapi/api"
)

func TestKeyBackup(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		s := newAcctServer(t, dbURL, acctOptions{})
		tok := s.register(t, "alice", "secret")
		bobTok := s.register(t, "bob", "pw")
		const alg = "m.megolm_backup.v1.curve25519-aes-sha2"
		auth := map[string]any{"public_key": "pk", "signatures": map[string]any{}}
		key := func(first, fwd int, verified bool, data string) map[string]any {
			return map[string]any{"first_message_index": first, "forwarded_count": fwd, "is_verified": verified,
				"session_data": map[string]any{"ciphertext": data}}
		}
		room := "/room_keys/keys/!r:test.local"
		runAcctCases(t, s, []acctCase{
			{name: "no backup yet", method: "GET", path: "/room_keys/version", token: &tok, status: 404, errcode: "M_NOT_FOUND"},
			{name: "create", method: "POST", path: "/room_keys/version", token: &tok,
				body: map[string]any{"algorithm": alg, "auth_data": auth}, status: 200, check: want(map[string]any{"version": "1"})},
			{name: "create without auth data", method: "POST", path: "/room_keys/version", token: &tok,
				body: map[string]any{"algorithm": alg}, status: 400, errcode: "M_MISSING_PARAM"},
			{name: "create without algorithm", method: "POST", path: "/room_keys/version", token: &tok,
				body: map[string]any{"auth_data": auth}, status: 400, errcode: "M_MISSING_PARAM"},
			{name: "not JSON", method: "POST", path: "/room_keys/version", token: &tok, body: "{", status: 400, errcode: "M_NOT_JSON"},
			{name: "auth data a number", method: "POST", path: "/room_keys/version", token: &tok,
				body: map[string]any{"algorithm": alg, "auth_data": 5}, status: 400, errcode: "M_BAD_JSON"},
			{name: "without a token", method: "GET", path: "/room_keys/version", status: 401, errcode: "M_MISSING_TOKEN"},
			{name: "latest", method: "GET", path: "/room_keys/version", token: &tok, status: 200,
				check: exactly(`{"algorithm":"` + alg + `","auth_data":{"public_key":"pk","signatures":{}},"count":0,"etag":"0","version":"1"}`)},
			{name: "another user's backups are their own", method: "GET", path: "/room_keys/version", token: &bobTok, status: 404, errcode: "M_NOT_FOUND"},
			{name: "bad version", method: "GET", path: "/room_keys/version/bogus", token: &tok, status: 404, errcode: "M_NOT_FOUND"},
			{name: "update", method: "PUT", path: "/room_keys/version/1", token: &tok,
				body: map[string]any{"algorithm": alg, "auth_data": "opaque", "version": "1"}, status: 200, check: exactly(`{}`)},
			{name: "updated", method: "GET", path: "/room_keys/version/1", token: &tok, status: 200, check: want(map[string]any{"auth_data": "opaque"})},
			{name: "update with another algorithm", method: "PUT", path: "/room_keys/version/1", token: &tok,
				body: map[string]any{"algorithm": "other", "auth_data": auth}, status: 400, errcode: "M_INVALID_PARAM"},
			{name: "update with another version in the body", method: "PUT", path: "/room_keys/version/1", token: &tok,
				body: map[string]any{"algorithm": alg, "auth_data": auth, "version": "2"}, status: 400, errcode: "M_INVALID_PARAM"},
			{name: "update an unknown version", method: "PUT", path: "/room_keys/version/9", token: &tok,
				body: map[string]any{"algorithm": alg, "auth_data": auth}, status: 404, errcode: "M_NOT_FOUND"},

			{name: "empty backup", method: "GET", path: "/room_keys/keys?version=1", token: &tok, status: 200, check: exactly(`{"rooms":{}}`)},
			{name: "empty room", method: "GET", path: room + "?version=1", token: &tok, status: 200, check: exactly(`{"sessions":{}}`)},
			{name: "missing session", method: "GET", path: room + "/s1?version=1", token: &tok, status: 404, errcode: "M_NOT_FOUND"},
			{name: "keys of an unknown version", method: "GET", path: "/room_keys/keys?version=bogus", token: &tok, status: 404, errcode: "M_NOT_FOUND"},
			{name: "keys without a version", method: "GET", path: "/room_keys/keys", token: &tok, status: 400, errcode: "M_MISSING_PARAM"},

			{name: "put a session", method: "PUT", path: room + "/s1?version=1", token: &tok, body: key(3, 0, false, "a"),
				status: 200, check: exactly(`{"count":1,"etag":"1"}`)},
			{name: "a worse key is kept out", method: "PUT", path: room + "/s1?version=1", token: &tok, body: key(4, 0, false, "worse"),
				status: 200, check: exactly(`{"count":1,"etag":"1"}`)},
			{name: "kept", method: "GET", path: room + "/s1?version=1", token: &tok, status: 200,
				check: exactly(`{"first_message_index":3,"forwarded_count":0,"is_verified":false,"session_data":{"ciphertext":"a"}}`)},
			{name: "an earlier index replaces it", method: "PUT", path: room + "/s1?version=1", token: &tok, body: key(1, 2, false, "b"),
				status: 200, check: exactly(`{"count":1,"etag":"2"}`)},
			{name: "a verified key beats any unverified one", method: "PUT", path: room + "/s1?version=1", token: &tok, body: key(9, 9, true, "c"),
				status: 200, check: exactly(`{"count":1,"etag":"3"}`)},
			{name: "an unverified key never replaces a verified one", method: "PUT", path: room + "/s1?version=1", token: &tok, body: key(0, 0, false, "d"),
				status: 200, check: exactly(`{"count":1,"etag":"3"}`)},
			{name: "fewer forwards win at the same index", method: "PUT", path: room + "/s1?version=1", token: &tok, body: key(9, 1, true, "e"),
				status: 200, check: exactly(`{"count":1,"etag":"4"}`)},
			{name: "put a room", method: "PUT", path: room + "?version=1", token: &tok,
				body:   map[string]any{"sessions": map[string]any{"s2": key(0, 0, false, "f"), "s3": key(0, 0, false, "g")}},
				status: 200, check: exactly(`{"count":3,"etag":"5"}`)},
			{name: "put all", method: "PUT", path: "/room_keys/keys?version=1", token: &tok,
				body:   map[string]any{"rooms": map[string]any{"!o:test.local": map[string]any{"sessions": map[string]any{"s4": key(0, 0, false, "h")}}}},
				status: 200, check: exactly(`{"count":4,"etag":"6"}`)},
			{name: "get a room", method: "GET", path: room + "?version=1", token: &tok, status: 200, check: func(t *testing.T, got map[string]any, _ http.Header) {
				if n := len(got["sessions"].(map[string]any)); n != 3 {
					t.Fatalf("%d sessions, want 3: %v", n, got)
				}
			}},
			{name: "get all", method: "GET", path: "/room_keys/keys?version=1", token: &tok, status: 200, check: func(t *testing.T, got map[string]any, _ http.Header) {
				rooms := got["rooms"].(map[string]any)
				other := rooms["!o:test.local"].(map[string]any)["sessions"].(map[string]any)
				if len(rooms) != 2 || len(other) != 1 {
					t.Fatalf("rooms %v", rooms)
				}
			}},
			{name: "version info counts the keys", method: "GET", path: "/room_keys/version", token: &tok, status: 200,
				check: want(map[string]any{"count": float64(4), "etag": "6"})},

			{name: "missing field", method: "PUT", path: room + "/s5?version=1", token: &tok,
				body: map[string]any{"first_message_index": 0, "forwarded_count": 0, "session_data": "x"}, status: 400, errcode: "M_MISSING_PARAM"},
			{name: "wrong type", method: "PUT", path: room + "/s5?version=1", token: &tok,
				body: map[string]any{"first_message_index": "0", "forwarded_count": 0, "is_verified": false, "session_data": "x"}, status: 400, errcode: "M_BAD_JSON"},
			{name: "session data an array", method: "PUT", path: room + "/s5?version=1", token: &tok,
				body: map[string]any{"first_message_index": 0, "forwarded_count": 0, "is_verified": false, "session_data": []int{1}}, status: 400, errcode: "M_BAD_JSON"},
			{name: "negative index", method: "PUT", path: room + "/s5?version=1", token: &tok,
				body: key(-1, 0, false, "x"), status: 400, errcode: "M_INVALID_PARAM"},
			{name: "null session in a room", method: "PUT", path: room + "?version=1", token: &tok,
				body: `{"sessions":{"s5":null}}`, status: 400, errcode: "M_BAD_JSON"},
			{name: "a bad key stores nothing", method: "PUT", path: room + "?version=1", token: &tok,
				body:   map[string]any{"sessions": map[string]any{"s6": key(0, 0, false, "i"), "s7": map[string]any{"is_verified": true}}},
				status: 400, errcode: "M_MISSING_PARAM"},
			{name: "still four", method: "GET", path: "/room_keys/version/1", token: &tok, status: 200, check: want(map[string]any{"count": float64(4)})},

			{name: "a second version", method: "POST", path: "/room_keys/version", token: &tok,
				body: map[string]any{"algorithm": alg, "auth_data": auth}, status: 200, check: want(map[string]any{"version": "2"})},
			{name: "keys go to the latest version only", method: "PUT", path: room + "/s1?version=1", token: &tok, body: key(0, 0, true, "j"),
				status: 403, errcode: "M_WRONG_ROOM_KEYS_VERSION", check: want(map[string]any{"current_version": "2"})},
			{name: "the old version's keys can still be read", method: "GET", path: room + "/s1?version=1", token: &tok, status: 200},
			{name: "delete a session", method: "DELETE", path: room + "/s1?version=1", token: &tok, status: 200, check: exactly(`{"count":3,"etag":"7"}`)},
			{name: "delete a room", method: "DELETE", path: room + "?version=1", token: &tok, status: 200, check: exactly(`{"count":1,"etag":"8"}`)},
			{name: "delete nothing", method: "DELETE", path: room + "?version=1", token: &tok, status: 200, check: exactly(`{"count":1,"etag":"8"}`)},
			{name: "delete all", method: "DELETE", path: "/room_keys/keys?version=1", token: &tok, status: 200, check: exactly(`{"count":0,"etag":"9"}`)},

			{name: "delete version 2", method: "DELETE", path: "/room_keys/version/2", token: &tok, status: 200, check: exactly(`{}`)},
			{name: "the latest is 1 again", method: "GET", path: "/room_keys/version", token: &tok, status: 200, check: want(map[string]any{"version": "1"})},
			{name: "deleted is gone", method: "GET", path: "/room_keys/version/2", token: &tok, status: 404, errcode: "M_NOT_FOUND"},
			{name: "deleted again", method: "DELETE", path: "/room_keys/version/2", token: &tok, status: 404, errcode: "M_NOT_FOUND"},
			{name: "keys of a deleted version", method: "GET", path: "/room_keys/keys?version=2", token: &tok, status: 404, errcode: "M_NOT_FOUND"},
			{name: "numbers are not given twice", method: "POST", path: "/room_keys/version", token: &tok,
				body: map[string]any{"algorithm": alg, "auth_data": auth}, status: 200, check: want(map[string]any{"version": "3"})},
			{name: "a new version starts empty", method: "GET", path: "/room_keys/keys?version=3", token: &tok, status: 200, check: exactly(`{"rooms":{}}`)},
			{name: "another user cannot touch it", method: "DELETE", path: "/room_keys/version/3", token: &bobTok, status: 404, errcode: "M_NOT_FOUND"},
		})
	})
}

func TestBackupKeyBetter(t *testing.T) {
	k := func(verified bool, first, fwd int64) uapi.BackupKey {
		return uapi.BackupKey{IsVerified: verified, FirstMessageIndex: first, ForwardedCount: fwd}
	}
	for _, tc := range []struct {
		name     string
		new, old uapi.BackupKey
		want     bool
	}{
		{"verified beats unverified", k(true, 5, 5), k(false, 0, 0), true},
		{"unverified never beats verified", k(false, 0, 0), k(true, 5, 5), false},
		{"earlier index", k(false, 1, 9), k(false, 2, 0), true},
		{"later index", k(false, 3, 0), k(false, 2, 9), false},
		{"fewer forwards", k(false, 2, 0), k(false, 2, 1), true},
		{"same key", k(false, 2, 1), k(false, 2, 1), false},
	} {
		if got := tc.new.Better(tc.old); got != tc.want {
			t.Errorf("%s: Better = %v, want %v", tc.name, got, tc.want)
		}
	}
}
