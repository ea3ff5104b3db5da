package setup_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"myelin/internal/sqldb/sqldbtest"
	"myelin/internal/testserver"
	"myelin/setup/config"
)

// badInputMaxBody is the request size limit of the bad-input server: small,
// so that the oversized rows stay cheap.
// It is over the 64 KiB event limit, so that a body can carry a 70 KB
// string to the event size check.
const badInputMaxBody = 128 << 10

// caller says who makes a bad-input request.
type caller int

const (
	asAnon  caller = iota // no access token
	asAlice               // owns the rooms of the fixture
	asBob                 // another user: joined the public room only
)

// badInput is one request a client gets wrong (or may not make) and the
// error the spec (or, where the spec is silent, Synapse) answers it with.
type badInput struct {
	name   string
	who    caller
	method string
	// path may name fixtures: {pub}, {priv}, {alice}, {bob}, {ev}
	// (alice's message in {pub}). A path is sent as it is, unescaped
	// dots included.
	path string
	body string
	// authz, when set, is sent as the Authorization header as it is.
	authz string
	// chunked sends the body without a Content-Length.
	chunked bool

	status  int
	errcode string
}

// TestBadInput sends one real server every kind of request a client can
// get wrong and checks each is refused with the right status and errcode,
// in the standard error shape, and never with a 5xx.
func TestBadInput(t *testing.T) {
	// Bodies just over the limit: bigger ones only make the client's
	// write race the server's early answer.
	huge := `{"body":"` + strings.Repeat("x", 2*badInputMaxBody) + `"}`
	badUTF8 := "{\"name\":\"\xff\xfe\"}"
	// Hostile IDs and strings (issue 10).
	long := strings.Repeat("a", 5000)
	longRoom := "!" + long + ":localhost"
	longEvent := "$" + long
	longUser := "@" + long + ":localhost"
	t300 := strings.Repeat("t", 300)
	big := strings.Repeat("x", 70<<10) // over the 64 KiB event limit on its own
	unknownEvent := "$" + strings.Repeat("A", 43)

	rows := []badInput{
		// Bodies that are not JSON (spec: M_NOT_JSON).
		{name: "register/unterminated", method: "POST", path: "/register", body: `{`, status: 400, errcode: "M_NOT_JSON"},
		{name: "register/not json", method: "POST", path: "/register", body: `not json`, status: 400, errcode: "M_NOT_JSON"},
		{name: "register/invalid utf-8", method: "POST", path: "/register", body: badUTF8, status: 400, errcode: "M_NOT_JSON"},
		{name: "register/empty", method: "POST", path: "/register", body: ``, status: 400, errcode: "M_NOT_JSON"},
		{name: "login/unterminated", method: "POST", path: "/login", body: `{`, status: 400, errcode: "M_NOT_JSON"},
		{name: "login/not json", method: "POST", path: "/login", body: `not json`, status: 400, errcode: "M_NOT_JSON"},
		{name: "login/invalid utf-8", method: "POST", path: "/login", body: badUTF8, status: 400, errcode: "M_NOT_JSON"},
		{name: "createRoom/unterminated", who: asAlice, method: "POST", path: "/createRoom", body: `{`, status: 400, errcode: "M_NOT_JSON"},
		{name: "createRoom/not json", who: asAlice, method: "POST", path: "/createRoom", body: `not json`, status: 400, errcode: "M_NOT_JSON"},
		{name: "createRoom/invalid utf-8", who: asAlice, method: "POST", path: "/createRoom", body: badUTF8, status: 400, errcode: "M_NOT_JSON"},
		{name: "send/unterminated", who: asAlice, method: "PUT", path: "/rooms/{pub}/send/m.room.message/nj1", body: `{`, status: 400, errcode: "M_NOT_JSON"},
		{name: "send/not json", who: asAlice, method: "PUT", path: "/rooms/{pub}/send/m.room.message/nj2", body: `not json`, status: 400, errcode: "M_NOT_JSON"},
		{name: "send/form feed after the object", who: asAlice, method: "PUT", path: "/rooms/{pub}/send/m.room.message/nj4", body: "{}\f", status: 400, errcode: "M_NOT_JSON"},
		{name: "send/invalid utf-8", who: asAlice, method: "PUT", path: "/rooms/{pub}/send/m.room.message/nj3", body: "{\"body\":\"\xc3\x28\"}", status: 400, errcode: "M_NOT_JSON"},
		{name: "state/unterminated", who: asAlice, method: "PUT", path: "/rooms/{pub}/state/m.room.topic/", body: `{`, status: 400, errcode: "M_NOT_JSON"},
		{name: "state/not json", who: asAlice, method: "PUT", path: "/rooms/{pub}/state/m.room.topic", body: `not json`, status: 400, errcode: "M_NOT_JSON"},
		{name: "state/invalid utf-8", who: asAlice, method: "PUT", path: "/rooms/{pub}/state/m.room.topic/", body: badUTF8, status: 400, errcode: "M_NOT_JSON"},
		{name: "profile/unterminated", who: asAlice, method: "PUT", path: "/profile/{alice}/displayname", body: `{`, status: 400, errcode: "M_NOT_JSON"},
		{name: "profile/not json", who: asAlice, method: "PUT", path: "/profile/{alice}/avatar_url", body: `not json`, status: 400, errcode: "M_NOT_JSON"},
		{name: "profile/invalid utf-8", who: asAlice, method: "PUT", path: "/profile/{alice}/displayname", body: "{\"displayname\":\"\xff\"}", status: 400, errcode: "M_NOT_JSON"},
		{name: "account data/unterminated", who: asAlice, method: "PUT", path: "/user/{alice}/account_data/org.example.x", body: `{`, status: 400, errcode: "M_NOT_JSON"},
		{name: "account data/not json", who: asAlice, method: "PUT", path: "/user/{alice}/account_data/org.example.x", body: `not json`, status: 400, errcode: "M_NOT_JSON"},
		{name: "room account data/invalid utf-8", who: asAlice, method: "PUT", path: "/user/{alice}/rooms/{pub}/account_data/org.example.x", body: badUTF8, status: 400, errcode: "M_NOT_JSON"},
		{name: "filter/unterminated", who: asAlice, method: "POST", path: "/user/{alice}/filter", body: `{`, status: 400, errcode: "M_NOT_JSON"},
		{name: "filter/not json", who: asAlice, method: "POST", path: "/user/{alice}/filter", body: `not json`, status: 400, errcode: "M_NOT_JSON"},
		{name: "filter/invalid utf-8", who: asAlice, method: "POST", path: "/user/{alice}/filter", body: "{\"event_fields\":[\"\xff\"]}", status: 400, errcode: "M_NOT_JSON"},
		{name: "join/not json", who: asBob, method: "POST", path: "/rooms/{pub}/join", body: `not json`, status: 400, errcode: "M_NOT_JSON"},
		{name: "invite/unterminated", who: asAlice, method: "POST", path: "/rooms/{priv}/invite", body: `{`, status: 400, errcode: "M_NOT_JSON"},
		{name: "alias/not json", who: asAlice, method: "PUT", path: "/directory/room/%23nj:localhost", body: `not json`, status: 400, errcode: "M_NOT_JSON"},

		// JSON of the wrong shape (spec: M_BAD_JSON).
		{name: "createRoom/name number", who: asAlice, method: "POST", path: "/createRoom", body: `{"name": 5}`, status: 400, errcode: "M_BAD_JSON"},
		{name: "createRoom/visibility number", who: asAlice, method: "POST", path: "/createRoom", body: `{"visibility": 3}`, status: 400, errcode: "M_BAD_JSON"},
		{name: "createRoom/visibility unknown", who: asAlice, method: "POST", path: "/createRoom", body: `{"visibility": "secret"}`, status: 400, errcode: "M_BAD_JSON"},
		{name: "createRoom/invite string", who: asAlice, method: "POST", path: "/createRoom", body: `{"invite": "notalist"}`, status: 400, errcode: "M_BAD_JSON"},
		{name: "createRoom/array", who: asAlice, method: "POST", path: "/createRoom", body: `[]`, status: 400, errcode: "M_BAD_JSON"},
		{name: "createRoom/initial_state object", who: asAlice, method: "POST", path: "/createRoom", body: `{"initial_state": {}}`, status: 400, errcode: "M_BAD_JSON"},
		{name: "profile/displayname number", who: asAlice, method: "PUT", path: "/profile/{alice}/displayname", body: `{"displayname": 5}`, status: 400, errcode: "M_BAD_JSON"},
		{name: "profile/array", who: asAlice, method: "PUT", path: "/profile/{alice}/displayname", body: `["x"]`, status: 400, errcode: "M_BAD_JSON"},
		{name: "send/array", who: asAlice, method: "PUT", path: "/rooms/{pub}/send/m.room.message/bj1", body: `[]`, status: 400, errcode: "M_BAD_JSON"},
		{name: "send/string", who: asAlice, method: "PUT", path: "/rooms/{pub}/send/m.room.message/bj2", body: `"hello"`, status: 400, errcode: "M_BAD_JSON"},
		{name: "state/array", who: asAlice, method: "PUT", path: "/rooms/{pub}/state/m.room.topic/", body: `[]`, status: 400, errcode: "M_BAD_JSON"},
		{name: "account data/array", who: asAlice, method: "PUT", path: "/user/{alice}/account_data/org.example.x", body: `[1]`, status: 400, errcode: "M_BAD_JSON"},
		{name: "filter/limit string", who: asAlice, method: "POST", path: "/user/{alice}/filter", body: `{"room": {"timeline": {"limit": "ten"}}}`, status: 400, errcode: "M_BAD_JSON"},
		{name: "filter/types string", who: asAlice, method: "POST", path: "/user/{alice}/filter", body: `{"room": {"state": {"types": "m.room.name"}}}`, status: 400, errcode: "M_BAD_JSON"},
		{name: "register/username number", method: "POST", path: "/register", body: `{"username": 5, "password": "p"}`, status: 400, errcode: "M_BAD_JSON"},
		{name: "login/password number", method: "POST", path: "/login", body: `{"type": "m.login.password", "user": "alice", "password": 5}`, status: 400, errcode: "M_BAD_JSON"},
		{name: "invite/user_id number", who: asAlice, method: "POST", path: "/rooms/{priv}/invite", body: `{"user_id": 5}`, status: 400, errcode: "M_BAD_JSON"},
		{name: "redact/reason number", who: asAlice, method: "PUT", path: "/rooms/{pub}/redact/{ev}/bj3", body: `{"reason": 5}`, status: 400, errcode: "M_BAD_JSON"},

		{name: "login/identifier string", method: "POST", path: "/login", body: `{"type": "m.login.password", "identifier": "alice", "password": "x"}`, status: 400, errcode: "M_BAD_JSON"},
		{name: "join/array", who: asBob, method: "POST", path: "/rooms/{pub}/join", body: `[]`, status: 400, errcode: "M_BAD_JSON"},
		{name: "device/display_name number", who: asAlice, method: "PUT", path: "/devices/NOSUCHDEVICE", body: `{"display_name": 5}`, status: 400, errcode: "M_BAD_JSON"},
		{name: "delete_devices/devices string", who: asAlice, method: "POST", path: "/delete_devices", body: `{"devices": "x"}`, status: 400, errcode: "M_BAD_JSON"},
		{name: "createRoom/initial_state content string", who: asAlice, method: "POST", path: "/createRoom", body: `{"initial_state": [{"type": "m.room.topic", "content": "x"}]}`, status: 400, errcode: "M_BAD_JSON"},
		{name: "createRoom/power levels of the wrong shape", who: asAlice, method: "POST", path: "/createRoom", body: `{"power_level_content_override": {"users": "everyone"}}`, status: 400, errcode: "M_BAD_JSON"},
		{name: "createRoom/creation_content array", who: asAlice, method: "POST", path: "/createRoom", body: `{"creation_content": []}`, status: 400, errcode: "M_BAD_JSON"},
		{name: "state/membership number", who: asBob, method: "PUT", path: "/rooms/{pub}/state/m.room.member/{bob}", body: `{"membership": 5}`, status: 400, errcode: "M_BAD_JSON"},
		{name: "missing/kick user_id", who: asAlice, method: "POST", path: "/rooms/{pub}/kick", body: `{}`, status: 400, errcode: "M_MISSING_PARAM"},
		{name: "invalid/invite user_id", who: asAlice, method: "POST", path: "/rooms/{priv}/invite", body: `{"user_id": "carol"}`, status: 400, errcode: "M_INVALID_PARAM"},
		{name: "invalid/createRoom invitee", who: asAlice, method: "POST", path: "/createRoom", body: `{"invite": ["carol"]}`, status: 400, errcode: "M_INVALID_PARAM"},
		{name: "alias/exists", who: asAlice, method: "PUT", path: "/directory/room/%23taken:localhost", body: `{"room_id":"{pub}"}`, status: 409, errcode: "M_UNKNOWN"},
		{name: "alias/room_id missing", who: asAlice, method: "PUT", path: "/directory/room/%23other:localhost", body: `{}`, status: 400, errcode: "M_INVALID_PARAM"},

		// Bodies over client_api.max_request_bytes (M_TOO_LARGE): refused
		// from the Content-Length, or cut off while streaming.
		{name: "too large/send", who: asAlice, method: "PUT", path: "/rooms/{pub}/send/m.room.message/big1", body: huge, status: 413, errcode: "M_TOO_LARGE"},
		{name: "too large/anonymous register", method: "POST", path: "/register", body: huge, status: 413, errcode: "M_TOO_LARGE"},
		{name: "too large/chunked send", who: asAlice, method: "PUT", path: "/rooms/{pub}/send/m.room.message/big2", body: huge, chunked: true, status: 413, errcode: "M_TOO_LARGE"},
		{name: "too large/chunked account data", who: asAlice, method: "PUT", path: "/user/{alice}/account_data/org.example.big", body: huge, chunked: true, status: 413, errcode: "M_TOO_LARGE"},
		{name: "too large/chunked register", method: "POST", path: "/register", body: huge, chunked: true, status: 413, errcode: "M_TOO_LARGE"},

		// An event over the 64 KiB PDU limit in a body under the request
		// limit.
		{name: "too large/event", who: asAlice, method: "PUT", path: "/rooms/{pub}/send/m.room.message/big3", body: `{"body":"` + strings.Repeat("x", badInputMaxBody-100) + `"}`, status: 413, errcode: "M_TOO_LARGE"},
		// Content that passes clientapi's early check (its size plus the
		// least an event adds, 256 bytes, is under 64 KiB) but not the
		// roomserver's, once the event is built.
		{name: "too large/event once built", who: asAlice, method: "PUT", path: "/rooms/{pub}/send/m.room.message/big4", body: `{"body":"` + strings.Repeat("x", 65536-256-len("@alice:localhost")-len("m.room.message")-len(`{"body":""}`)) + `"}`, status: 413, errcode: "M_TOO_LARGE"},
		// Synapse answers every PDU size limit (here: a state key over 255
		// bytes) with 413 M_TOO_LARGE.
		{name: "too large/state key", who: asAlice, method: "PUT", path: "/rooms/{pub}/state/org.example.x/" + strings.Repeat("k", 300), body: `{}`, status: 413, errcode: "M_TOO_LARGE"},

		// Unknown endpoints and methods (spec: M_UNRECOGNIZED).
		{name: "unknown/v3 path", who: asAlice, method: "GET", path: "/no_such_endpoint", status: 404, errcode: "M_UNRECOGNIZED"},
		{name: "unknown/anonymous", method: "POST", path: "/rooms/{pub}/no_such_thing", body: `{}`, status: 404, errcode: "M_UNRECOGNIZED"},
		{name: "unknown/outside client API", method: "GET", path: "//_matrix/nothing/here", status: 404, errcode: "M_UNRECOGNIZED"},
		{name: "unknown/version prefix", method: "GET", path: "//_matrix/client/v9/login", status: 404, errcode: "M_UNRECOGNIZED"},
		{name: "method/GET createRoom", who: asAlice, method: "GET", path: "/createRoom", status: 405, errcode: "M_UNRECOGNIZED"},
		{name: "method/POST sync", who: asAlice, method: "POST", path: "/sync", body: `{}`, status: 405, errcode: "M_UNRECOGNIZED"},
		{name: "method/GET send", who: asAlice, method: "GET", path: "/rooms/{pub}/send/m.room.message/x", status: 405, errcode: "M_UNRECOGNIZED"},
		{name: "method/DELETE login", method: "DELETE", path: "/login", status: 405, errcode: "M_UNRECOGNIZED"},
		{name: "method/PUT versions", method: "PUT", path: "//_matrix/client/versions", body: `{}`, status: 405, errcode: "M_UNRECOGNIZED"},

		// Access tokens (spec: M_MISSING_TOKEN, M_UNKNOWN_TOKEN).
		{name: "token/missing", method: "GET", path: "/account/whoami", status: 401, errcode: "M_MISSING_TOKEN"},
		{name: "token/missing on createRoom", method: "POST", path: "/createRoom", body: `{}`, status: 401, errcode: "M_MISSING_TOKEN"},
		{name: "token/missing on sync", method: "GET", path: "/sync", status: 401, errcode: "M_MISSING_TOKEN"},
		{name: "token/unknown", method: "GET", path: "/account/whoami", authz: "Bearer not-a-real-token", status: 401, errcode: "M_UNKNOWN_TOKEN"},
		{name: "token/unknown on send", method: "PUT", path: "/rooms/{pub}/send/m.room.message/t1", body: `{}`, authz: "Bearer syt_bogus", status: 401, errcode: "M_UNKNOWN_TOKEN"},
		{name: "token/unknown in query", method: "GET", path: "/sync?access_token=bogus", status: 401, errcode: "M_UNKNOWN_TOKEN"},
		{name: "authorization/basic scheme", method: "GET", path: "/account/whoami", authz: "Basic YWxpY2U6cGFzcw==", status: 401, errcode: "M_MISSING_TOKEN"},
		{name: "authorization/bearer alone", method: "GET", path: "/account/whoami", authz: "Bearer", status: 401, errcode: "M_MISSING_TOKEN"},
		{name: "authorization/bearer blank", method: "GET", path: "/account/whoami", authz: "Bearer   ", status: 401, errcode: "M_MISSING_TOKEN"},
		{name: "authorization/two tokens", method: "GET", path: "/account/whoami", authz: "Bearer abc def", status: 401, errcode: "M_MISSING_TOKEN"},
		{name: "authorization/raw token", method: "GET", path: "/account/whoami", authz: "abcdef", status: 401, errcode: "M_MISSING_TOKEN"},

		// What the user may not do (spec: M_FORBIDDEN).
		{name: "forbidden/send to a room not joined", who: asBob, method: "PUT", path: "/rooms/{priv}/send/m.room.message/f1", body: `{"msgtype":"m.text","body":"hi"}`, status: 403, errcode: "M_FORBIDDEN"},
		{name: "forbidden/power levels above own", who: asBob, method: "PUT", path: "/rooms/{pub}/state/m.room.power_levels/", body: `{"users":{"{bob}":100}}`, status: 403, errcode: "M_FORBIDDEN"},
		{name: "forbidden/room name below level", who: asBob, method: "PUT", path: "/rooms/{pub}/state/m.room.name", body: `{"name":"mine now"}`, status: 403, errcode: "M_FORBIDDEN"},
		{name: "forbidden/kick without power", who: asBob, method: "POST", path: "/rooms/{pub}/kick", body: `{"user_id":"{alice}"}`, status: 403, errcode: "M_FORBIDDEN"},
		{name: "forbidden/ban without power", who: asBob, method: "POST", path: "/rooms/{pub}/ban", body: `{"user_id":"{alice}"}`, status: 403, errcode: "M_FORBIDDEN"},
		{name: "forbidden/invite below level", who: asBob, method: "POST", path: "/rooms/{pub}/invite", body: `{"user_id":"@carol:localhost"}`, status: 403, errcode: "M_FORBIDDEN"},
		{name: "forbidden/invite to a room not joined", who: asBob, method: "POST", path: "/rooms/{priv}/invite", body: `{"user_id":"@carol:localhost"}`, status: 403, errcode: "M_FORBIDDEN"},
		{name: "forbidden/state of a private room", who: asBob, method: "GET", path: "/rooms/{priv}/state", status: 403, errcode: "M_FORBIDDEN"},
		{name: "forbidden/state event of a private room", who: asBob, method: "GET", path: "/rooms/{priv}/state/m.room.name/", status: 403, errcode: "M_FORBIDDEN"},
		{name: "forbidden/messages of a private room", who: asBob, method: "GET", path: "/rooms/{priv}/messages?dir=b", status: 403, errcode: "M_FORBIDDEN"},
		{name: "forbidden/members of a private room", who: asBob, method: "GET", path: "/rooms/{priv}/members", status: 403, errcode: "M_FORBIDDEN"},
		{name: "forbidden/joined members of a private room", who: asBob, method: "GET", path: "/rooms/{priv}/joined_members", status: 403, errcode: "M_FORBIDDEN"},
		// Synapse answers 403 "Unknown room" rather than revealing which
		// rooms exist.
		{name: "forbidden/send to unknown room", who: asBob, method: "PUT", path: "/rooms/!nowhere:localhost/send/m.room.message/nf1", body: `{}`, status: 403, errcode: "M_FORBIDDEN"},
		{name: "forbidden/join an invite-only room", who: asBob, method: "POST", path: "/rooms/{priv}/join", body: `{}`, status: 403, errcode: "M_FORBIDDEN"},
		{name: "forbidden/another's displayname", who: asBob, method: "PUT", path: "/profile/{alice}/displayname", body: `{"displayname":"bob was here"}`, status: 403, errcode: "M_FORBIDDEN"},
		{name: "forbidden/another's account data", who: asBob, method: "PUT", path: "/user/{alice}/account_data/org.example.x", body: `{}`, status: 403, errcode: "M_FORBIDDEN"},
		{name: "forbidden/read another's account data", who: asBob, method: "GET", path: "/user/{alice}/account_data/org.example.x", status: 403, errcode: "M_FORBIDDEN"},
		{name: "forbidden/another's room account data", who: asBob, method: "PUT", path: "/user/{alice}/rooms/{pub}/account_data/org.example.x", body: `{}`, status: 403, errcode: "M_FORBIDDEN"},
		{name: "forbidden/another's filter", who: asBob, method: "POST", path: "/user/{alice}/filter", body: `{}`, status: 403, errcode: "M_FORBIDDEN"},
		{name: "forbidden/redact another's event", who: asBob, method: "PUT", path: "/rooms/{pub}/redact/{ev}/f2", body: `{}`, status: 403, errcode: "M_FORBIDDEN"},
		{name: "forbidden/alias for a room not joined", who: asBob, method: "PUT", path: "/directory/room/%23bobs:localhost", body: `{"room_id":"{priv}"}`, status: 403, errcode: "M_FORBIDDEN"},
		{name: "forbidden/delete another's alias", who: asBob, method: "DELETE", path: "/directory/room/%23taken:localhost", status: 403, errcode: "M_FORBIDDEN"},

		// What does not exist (spec: M_NOT_FOUND).
		{name: "not found/alias", method: "GET", path: "/directory/room/%23nowhere:localhost", status: 404, errcode: "M_NOT_FOUND"},
		{name: "not found/join alias", who: asBob, method: "POST", path: "/join/%23nowhere:localhost", body: `{}`, status: 404, errcode: "M_NOT_FOUND"},
		{name: "not found/delete alias", who: asAlice, method: "DELETE", path: "/directory/room/%23nowhere:localhost", status: 404, errcode: "M_NOT_FOUND"},
		{name: "not found/state event", who: asAlice, method: "GET", path: "/rooms/{pub}/state/m.room.nothing/", status: 404, errcode: "M_NOT_FOUND"},
		{name: "not found/state key", who: asAlice, method: "GET", path: "/rooms/{pub}/state/m.room.member/@nobody:localhost", status: 404, errcode: "M_NOT_FOUND"},
		{name: "not found/filter", who: asAlice, method: "GET", path: "/user/{alice}/filter/987654", status: 404, errcode: "M_NOT_FOUND"},
		{name: "not found/filter id", who: asAlice, method: "GET", path: "/user/{alice}/filter/abc", status: 404, errcode: "M_NOT_FOUND"},
		{name: "not found/event", who: asAlice, method: "GET", path: "/rooms/{pub}/event/" + unknownEvent, status: 404, errcode: "M_NOT_FOUND"},
		{name: "not found/context", who: asAlice, method: "GET", path: "/rooms/{pub}/context/" + unknownEvent, status: 404, errcode: "M_NOT_FOUND"},
		{name: "not found/account data", who: asAlice, method: "GET", path: "/user/{alice}/account_data/org.example.unset", status: 404, errcode: "M_NOT_FOUND"},
		{name: "not found/profile", method: "GET", path: "/profile/@nobody:localhost", status: 404, errcode: "M_NOT_FOUND"},
		{name: "not found/device", who: asAlice, method: "GET", path: "/devices/NOSUCHDEVICE", status: 404, errcode: "M_NOT_FOUND"},
		{name: "not found/join unknown room", who: asBob, method: "POST", path: "/rooms/!nowhere:localhost/join", body: `{}`, status: 404, errcode: "M_NOT_FOUND"},

		// Query parameters (spec: M_INVALID_PARAM, M_NOT_JSON for filters).
		{name: "params/messages dir", who: asAlice, method: "GET", path: "/rooms/{pub}/messages?dir=x", status: 400, errcode: "M_INVALID_PARAM"},
		{name: "params/messages limit", who: asAlice, method: "GET", path: "/rooms/{pub}/messages?dir=b&limit=abc", status: 400, errcode: "M_INVALID_PARAM"},
		{name: "params/messages from", who: asAlice, method: "GET", path: "/rooms/{pub}/messages?dir=b&from=garbage", status: 400, errcode: "M_INVALID_PARAM"},
		{name: "params/messages filter", who: asAlice, method: "GET", path: "/rooms/{pub}/messages?dir=b&filter=" + url.QueryEscape("{nope"), status: 400, errcode: "M_NOT_JSON"},
		{name: "params/context limit", who: asAlice, method: "GET", path: "/rooms/{pub}/context/{ev}?limit=-1", status: 400, errcode: "M_INVALID_PARAM"},
		{name: "params/sync timeout", who: asAlice, method: "GET", path: "/sync?timeout=abc", status: 400, errcode: "M_INVALID_PARAM"},
		{name: "params/sync since", who: asAlice, method: "GET", path: "/sync?since=garbage", status: 400, errcode: "M_INVALID_PARAM"},
		{name: "params/sync filter", who: asAlice, method: "GET", path: "/sync?filter=notjson", status: 400, errcode: "M_INVALID_PARAM"},
		{name: "params/sync unknown filter", who: asAlice, method: "GET", path: "/sync?filter=424242", status: 400, errcode: "M_INVALID_PARAM"},
		{name: "params/sync inline filter", who: asAlice, method: "GET", path: "/sync?filter=" + url.QueryEscape("{nope"), status: 400, errcode: "M_NOT_JSON"},
		{name: "params/sync inline filter shape", who: asAlice, method: "GET", path: "/sync?filter=" + url.QueryEscape(`{"room":{"timeline":{"limit":"ten"}}}`), status: 400, errcode: "M_BAD_JSON"},
		{name: "params/register kind", method: "POST", path: "/register?kind=robot", body: `{}`, status: 400, errcode: "M_INVALID_PARAM"},
		{name: "params/alias", method: "GET", path: "/directory/room/notanalias", status: 400, errcode: "M_INVALID_PARAM"},
		{name: "params/join target", who: asBob, method: "POST", path: "/join/notaroom", body: `{}`, status: 400, errcode: "M_INVALID_PARAM"},

		{name: "params/messages to", who: asAlice, method: "GET", path: "/rooms/{pub}/messages?dir=b&to=garbage", status: 400, errcode: "M_INVALID_PARAM"},
		{name: "params/sync negative timeout", who: asAlice, method: "GET", path: "/sync?timeout=-5", status: 400, errcode: "M_INVALID_PARAM"},
		// Synapse answers these 403 (it does not parse the room ID); the
		// spec's M_INVALID_PARAM says what is wrong, and no component
		// sees an ID of the wrong shape.
		{name: "params/state of a non-room", who: asAlice, method: "GET", path: "/rooms/notaroom/state", status: 400, errcode: "M_INVALID_PARAM"},
		{name: "params/messages of a non-room", who: asAlice, method: "GET", path: "/rooms/notaroom/messages?dir=b", status: 400, errcode: "M_INVALID_PARAM"},
		{name: "params/send to a non-room", who: asAlice, method: "PUT", path: "/rooms/notaroom/send/m.room.message/x1", body: `{}`, status: 400, errcode: "M_INVALID_PARAM"},
		{name: "params/members of a non-room", who: asAlice, method: "GET", path: "/rooms/notaroom/members", status: 400, errcode: "M_INVALID_PARAM"},
		{name: "params/event ID of no room version", who: asAlice, method: "GET", path: "/rooms/{pub}/event/$nothing", status: 400, errcode: "M_INVALID_PARAM"},
		{name: "params/context of a non-event", who: asAlice, method: "GET", path: "/rooms/{pub}/context/nothing", status: 400, errcode: "M_INVALID_PARAM"},
		{name: "params/forget a joined room", who: asAlice, method: "POST", path: "/rooms/{pub}/forget", body: `{}`, status: 400, errcode: "M_UNKNOWN"},
		{name: "forbidden/leave a room never joined", who: asBob, method: "POST", path: "/rooms/{priv}/leave", body: `{}`, status: 403, errcode: "M_FORBIDDEN"},
		{name: "params/unban someone not banned", who: asAlice, method: "POST", path: "/rooms/{pub}/unban", body: `{"user_id":"{bob}"}`, status: 403, errcode: "M_FORBIDDEN"},
		{name: "params/profile of a non-user", method: "GET", path: "/profile/alice", status: 400, errcode: "M_INVALID_PARAM"},
		{name: "params/account data of a non-room", who: asAlice, method: "PUT", path: "/user/{alice}/rooms/notaroom/account_data/x", body: `{}`, status: 400, errcode: "M_INVALID_PARAM"},

		// Hostile path parameters (issue 10): every ID is parsed at the
		// edge with the spec's grammar and its 255-byte limit, before any
		// component (or the bus) sees it.
		{name: "hostile path/leave overlong room", who: asAlice, method: "POST", path: "/rooms/" + longRoom + "/leave", body: `{}`, status: 400, errcode: "M_INVALID_PARAM"},
		{name: "hostile path/join overlong room", who: asBob, method: "POST", path: "/rooms/" + longRoom + "/join", body: `{}`, status: 400, errcode: "M_INVALID_PARAM"},
		{name: "hostile path/join overlong alias", who: asBob, method: "POST", path: "/join/%23" + long + ":localhost", body: `{}`, status: 400, errcode: "M_INVALID_PARAM"},
		{name: "hostile path/ban overlong room", who: asAlice, method: "POST", path: "/rooms/" + longRoom + "/ban", body: `{"user_id":"{bob}"}`, status: 400, errcode: "M_INVALID_PARAM"},
		{name: "hostile path/invite overlong room", who: asAlice, method: "POST", path: "/rooms/" + longRoom + "/invite", body: `{"user_id":"{bob}"}`, status: 400, errcode: "M_INVALID_PARAM"},
		{name: "hostile path/send overlong room", who: asAlice, method: "PUT", path: "/rooms/" + longRoom + "/send/m.room.message/h1", body: `{"body":"x"}`, status: 400, errcode: "M_INVALID_PARAM"},
		{name: "hostile path/send overlong txn", who: asAlice, method: "PUT", path: "/rooms/{pub}/send/m.room.message/" + t300, body: `{"body":"x"}`, status: 400, errcode: "M_INVALID_PARAM"},
		{name: "hostile path/send overlong event type", who: asAlice, method: "PUT", path: "/rooms/{pub}/send/" + t300 + "/h2", body: `{"body":"x"}`, status: 413, errcode: "M_TOO_LARGE"},
		{name: "hostile path/send NUL in event type", who: asAlice, method: "PUT", path: "/rooms/{pub}/send/m.x%00y/h3", body: `{}`, status: 400, errcode: "M_INVALID_PARAM"},
		{name: "hostile path/state overlong room", who: asAlice, method: "PUT", path: "/rooms/" + longRoom + "/state/m.room.topic/", body: `{"topic":"x"}`, status: 400, errcode: "M_INVALID_PARAM"},
		{name: "hostile path/state overlong event type", who: asAlice, method: "PUT", path: "/rooms/{pub}/state/" + t300 + "/", body: `{}`, status: 413, errcode: "M_TOO_LARGE"},
		{name: "hostile path/get state overlong room", who: asAlice, method: "GET", path: "/rooms/" + longRoom + "/state", status: 400, errcode: "M_INVALID_PARAM"},
		{name: "hostile path/redact overlong event", who: asAlice, method: "PUT", path: "/rooms/{pub}/redact/" + longEvent + "/h4", body: `{}`, status: 400, errcode: "M_INVALID_PARAM"},
		{name: "hostile path/redact non-event", who: asAlice, method: "PUT", path: "/rooms/{pub}/redact/notanevent/h5", body: `{}`, status: 400, errcode: "M_INVALID_PARAM"},
		{name: "hostile path/typing overlong room", who: asAlice, method: "PUT", path: "/rooms/" + longRoom + "/typing/{alice}", body: `{"typing":true}`, status: 400, errcode: "M_INVALID_PARAM"},
		{name: "hostile path/typing non-user", who: asAlice, method: "PUT", path: "/rooms/{pub}/typing/alice", body: `{"typing":true}`, status: 400, errcode: "M_INVALID_PARAM"},
		{name: "hostile path/receipt overlong event", who: asAlice, method: "POST", path: "/rooms/{pub}/receipt/m.read/" + longEvent, body: `{}`, status: 400, errcode: "M_INVALID_PARAM"},
		{name: "hostile path/receipt overlong room", who: asAlice, method: "POST", path: "/rooms/" + longRoom + "/receipt/m.read/{ev}", body: `{}`, status: 400, errcode: "M_INVALID_PARAM"},
		{name: "hostile path/account data overlong user", who: asAlice, method: "PUT", path: "/user/" + longUser + "/account_data/org.example.x", body: `{}`, status: 400, errcode: "M_INVALID_PARAM"},
		{name: "hostile path/account data overlong type", who: asAlice, method: "PUT", path: "/user/{alice}/account_data/" + t300, body: `{}`, status: 400, errcode: "M_INVALID_PARAM"},
		{name: "hostile path/room account data overlong room", who: asAlice, method: "PUT", path: "/user/{alice}/rooms/" + longRoom + "/account_data/org.example.x", body: `{}`, status: 400, errcode: "M_INVALID_PARAM"},
		{name: "hostile path/tag overlong", who: asAlice, method: "PUT", path: "/user/{alice}/rooms/{pub}/tags/" + t300, body: `{}`, status: 400, errcode: "M_INVALID_PARAM"},
		{name: "hostile path/tag overlong room", who: asAlice, method: "PUT", path: "/user/{alice}/rooms/" + longRoom + "/tags/u.x", body: `{}`, status: 400, errcode: "M_INVALID_PARAM"},
		{name: "hostile path/get tags of a non-room", who: asAlice, method: "GET", path: "/user/{alice}/rooms/notaroom/tags", status: 400, errcode: "M_INVALID_PARAM"},
		{name: "hostile path/delete tag of a non-room", who: asAlice, method: "DELETE", path: "/user/{alice}/rooms/notaroom/tags/u.x", status: 400, errcode: "M_INVALID_PARAM"},
		{name: "hostile path/push rule overlong", who: asAlice, method: "PUT", path: "/pushrules/global/override/" + t300, body: `{"actions":[]}`, status: 400, errcode: "M_INVALID_PARAM"},
		{name: "hostile path/push rule NUL", who: asAlice, method: "PUT", path: "/pushrules/global/override/a%00b", body: `{"actions":[]}`, status: 400, errcode: "M_INVALID_PARAM"},
		{name: "hostile path/dot dot room", who: asAlice, method: "POST", path: "/rooms/../leave", body: `{}`, status: 400, errcode: "M_INVALID_PARAM"},
		{name: "hostile path/escaped dot dot room", who: asAlice, method: "POST", path: "/rooms/..%2F..%2Fx/leave", body: `{}`, status: 400, errcode: "M_INVALID_PARAM"},
		{name: "hostile path/NUL in room", who: asAlice, method: "POST", path: "/rooms/%21a%00:localhost/leave", body: `{}`, status: 400, errcode: "M_INVALID_PARAM"},
		{name: "hostile path/not UTF-8 room", who: asAlice, method: "POST", path: "/rooms/%21a%FF:localhost/leave", body: `{}`, status: 400, errcode: "M_INVALID_PARAM"},
		{name: "hostile path/unknown event", who: asAlice, method: "GET", path: "/rooms/{pub}/event/" + unknownEvent, status: 404, errcode: "M_NOT_FOUND"},
		{name: "hostile query/NUL in room_id", who: asAlice, method: "GET", path: "/events?timeout=0&room_id=%21a%00:localhost", status: 400, errcode: "M_INVALID_PARAM"},
		{name: "hostile query/not UTF-8", who: asAlice, method: "GET", path: "/rooms/{pub}/members?membership=%FF", status: 400, errcode: "M_INVALID_PARAM"},
		{name: "hostile query/bad escape", who: asAlice, method: "GET", path: "/rooms/{pub}/members?membership=%ZZ", status: 400, errcode: "M_INVALID_PARAM"},

		// Hostile bodies (issue 10): NUL, which PostgreSQL text cannot
		// hold; strings that make an event too large; IDs of the wrong
		// shape; fields of the wrong type or missing.
		{name: "hostile body/ban reason too large", who: asAlice, method: "POST", path: "/rooms/{pub}/ban", body: `{"user_id":"@carol:localhost","reason":"` + big + `"}`, status: 413, errcode: "M_TOO_LARGE"},
		{name: "hostile body/ban overlong user", who: asAlice, method: "POST", path: "/rooms/{pub}/ban", body: `{"user_id":"` + longUser + `"}`, status: 400, errcode: "M_INVALID_PARAM"},
		{name: "hostile body/kick reason NUL", who: asAlice, method: "POST", path: "/rooms/{pub}/kick", body: `{"user_id":"{bob}","reason":"a\u0000b"}`, status: 400, errcode: "M_BAD_JSON"},
		{name: "hostile body/invite user NUL", who: asAlice, method: "POST", path: "/rooms/{priv}/invite", body: `{"user_id":"@a\u0000:localhost"}`, status: 400, errcode: "M_BAD_JSON"},
		{name: "hostile body/invite reason too large", who: asAlice, method: "POST", path: "/rooms/{priv}/invite", body: `{"user_id":"@carol:localhost","reason":"` + big + `"}`, status: 413, errcode: "M_TOO_LARGE"},
		{name: "hostile body/unban user number", who: asAlice, method: "POST", path: "/rooms/{pub}/unban", body: `{"user_id":5}`, status: 400, errcode: "M_BAD_JSON"},
		{name: "hostile body/leave reason NUL", who: asBob, method: "POST", path: "/rooms/{pub}/leave", body: `{"reason":"a\u0000"}`, status: 400, errcode: "M_BAD_JSON"},
		{name: "hostile body/leave reason number", who: asBob, method: "POST", path: "/rooms/{pub}/leave", body: `{"reason":5}`, status: 400, errcode: "M_BAD_JSON"},
		{name: "hostile body/join reason too large", who: asBob, method: "POST", path: "/rooms/{pub}/join", body: `{"reason":"` + big + `"}`, status: 413, errcode: "M_TOO_LARGE"},
		{name: "hostile body/join third_party_signed string", who: asBob, method: "POST", path: "/rooms/{pub}/join", body: `{"third_party_signed":"x"}`, status: 400, errcode: "M_BAD_JSON"},
		{name: "hostile body/join alias third_party_signed array", who: asBob, method: "POST", path: "/join/{pub}", body: `{"third_party_signed":[]}`, status: 400, errcode: "M_BAD_JSON"},
		{name: "hostile body/redact reason NUL", who: asAlice, method: "PUT", path: "/rooms/{pub}/redact/{ev}/hb1", body: `{"reason":"\u0000"}`, status: 400, errcode: "M_BAD_JSON"},
		{name: "hostile body/redact reason too large", who: asAlice, method: "PUT", path: "/rooms/{pub}/redact/{ev}/hb2", body: `{"reason":"` + big + `"}`, status: 413, errcode: "M_TOO_LARGE"},
		{name: "hostile body/send NUL", who: asAlice, method: "PUT", path: "/rooms/{pub}/send/m.room.message/hb3", body: `{"msgtype":"m.text","body":"a\u0000b"}`, status: 400, errcode: "M_BAD_JSON"},
		{name: "hostile body/send NUL key", who: asAlice, method: "PUT", path: "/rooms/{pub}/send/m.room.message/hb4", body: `{"a\u0000":1}`, status: 400, errcode: "M_BAD_JSON"},
		{name: "hostile body/send too large", who: asAlice, method: "PUT", path: "/rooms/{pub}/send/m.room.message/hb5", body: `{"msgtype":"m.text","body":"` + big + `"}`, status: 413, errcode: "M_TOO_LARGE"},
		{name: "hostile body/send no txn too large", who: asAlice, method: "POST", path: "/rooms/{pub}/send/m.room.message", body: `{"body":"` + big + `"}`, status: 413, errcode: "M_TOO_LARGE"},
		{name: "hostile body/state NUL", who: asAlice, method: "PUT", path: "/rooms/{pub}/state/m.room.topic/", body: `{"topic":"\u0000"}`, status: 400, errcode: "M_BAD_JSON"},
		{name: "hostile body/state too large", who: asAlice, method: "PUT", path: "/rooms/{pub}/state/m.room.topic/", body: `{"topic":"` + big + `"}`, status: 413, errcode: "M_TOO_LARGE"},
		{name: "hostile body/typing string", who: asAlice, method: "PUT", path: "/rooms/{pub}/typing/{alice}", body: `{"typing":"yes"}`, status: 400, errcode: "M_BAD_JSON"},
		{name: "hostile body/typing timeout string", who: asAlice, method: "PUT", path: "/rooms/{pub}/typing/{alice}", body: `{"typing":true,"timeout":"soon"}`, status: 400, errcode: "M_BAD_JSON"},
		{name: "hostile body/typing missing", who: asAlice, method: "PUT", path: "/rooms/{pub}/typing/{alice}", body: `{}`, status: 400, errcode: "M_BAD_JSON"},
		{name: "hostile body/receipt thread_id NUL", who: asAlice, method: "POST", path: "/rooms/{pub}/receipt/m.read/{ev}", body: `{"thread_id":"a\u0000"}`, status: 400, errcode: "M_BAD_JSON"},
		{name: "hostile body/receipt thread_id number", who: asAlice, method: "POST", path: "/rooms/{pub}/receipt/m.read/{ev}", body: `{"thread_id":5}`, status: 400, errcode: "M_BAD_JSON"},
		{name: "hostile body/receipt thread_id too long", who: asAlice, method: "POST", path: "/rooms/{pub}/receipt/m.read/{ev}", body: `{"thread_id":"` + big + `"}`, status: 400, errcode: "M_INVALID_PARAM"},
		{name: "hostile body/receipt thread_id not an event", who: asAlice, method: "POST", path: "/rooms/{pub}/receipt/m.read/{ev}", body: `{"thread_id":"nothread"}`, status: 400, errcode: "M_INVALID_PARAM"},
		{name: "hostile body/read markers not an event", who: asAlice, method: "POST", path: "/rooms/{pub}/read_markers", body: `{"m.read":"` + longEvent + `"}`, status: 400, errcode: "M_INVALID_PARAM"},
		{name: "hostile body/account data NUL", who: asAlice, method: "PUT", path: "/user/{alice}/account_data/org.example.x", body: `{"a":"\u0000"}`, status: 400, errcode: "M_BAD_JSON"},
		{name: "hostile body/room account data NUL", who: asAlice, method: "PUT", path: "/user/{alice}/rooms/{pub}/account_data/org.example.x", body: `{"a":"\u0000"}`, status: 400, errcode: "M_BAD_JSON"},
		{name: "hostile body/tag NUL", who: asAlice, method: "PUT", path: "/user/{alice}/rooms/{pub}/tags/u.x", body: `{"order":0.5,"x":"\u0000"}`, status: 400, errcode: "M_BAD_JSON"},
		{name: "hostile body/tag order string", who: asAlice, method: "PUT", path: "/user/{alice}/rooms/{pub}/tags/u.x", body: `{"order":"first"}`, status: 400, errcode: "M_BAD_JSON"},
		{name: "hostile body/displayname NUL", who: asAlice, method: "PUT", path: "/profile/{alice}/displayname", body: `{"displayname":"a\u0000b"}`, status: 400, errcode: "M_BAD_JSON"},
		{name: "hostile body/device name NUL", who: asAlice, method: "PUT", path: "/devices/NOSUCHDEVICE", body: `{"display_name":"\u0000"}`, status: 400, errcode: "M_BAD_JSON"},
		{name: "hostile body/presence status NUL", who: asAlice, method: "PUT", path: "/presence/{alice}/status", body: `{"presence":"online","status_msg":"\u0000"}`, status: 400, errcode: "M_BAD_JSON"},
		{name: "hostile body/user search without term", who: asAlice, method: "POST", path: "/user_directory/search", body: `{}`, status: 400, errcode: "M_MISSING_PARAM"},
		{name: "hostile body/user search term number", who: asAlice, method: "POST", path: "/user_directory/search", body: `{"search_term":5}`, status: 400, errcode: "M_BAD_JSON"},
		{name: "hostile body/createRoom invite_3pid string", who: asAlice, method: "POST", path: "/createRoom", body: `{"invite_3pid":"x"}`, status: 400, errcode: "M_BAD_JSON"},
		{name: "hostile body/createRoom invite_3pid entry", who: asAlice, method: "POST", path: "/createRoom", body: `{"invite_3pid":[5]}`, status: 400, errcode: "M_BAD_JSON"},
		{name: "hostile body/createRoom alias NUL", who: asAlice, method: "POST", path: "/createRoom", body: `{"room_alias_name":"a\u0000"}`, status: 400, errcode: "M_BAD_JSON"},
		{name: "hostile body/createRoom alias overlong", who: asAlice, method: "POST", path: "/createRoom", body: `{"room_alias_name":"` + t300 + `"}`, status: 400, errcode: "M_INVALID_PARAM"},
		{name: "hostile body/createRoom invitee overlong", who: asAlice, method: "POST", path: "/createRoom", body: `{"invite":["` + longUser + `"]}`, status: 400, errcode: "M_INVALID_PARAM"},
		{name: "hostile body/createRoom name too large", who: asAlice, method: "POST", path: "/createRoom", body: `{"name":"` + big + `"}`, status: 413, errcode: "M_TOO_LARGE"},
		{name: "hostile body/createRoom state key overlong", who: asAlice, method: "POST", path: "/createRoom", body: `{"initial_state":[{"type":"org.example.x","state_key":"` + t300 + `","content":{}}]}`, status: 413, errcode: "M_TOO_LARGE"},
		{name: "hostile body/alias room_id malformed", who: asAlice, method: "PUT", path: "/directory/room/%23hostile:localhost", body: `{"room_id":"!` + long + `:localhost"}`, status: 400, errcode: "M_INVALID_PARAM"},
		{name: "hostile body/filter room not a room", who: asAlice, method: "POST", path: "/user/{alice}/filter", body: `{"room":{"timeline":{"rooms":["not_a_room_id"]}}}`, status: 400, errcode: "M_INVALID_PARAM"},
		{name: "hostile body/filter sender not a user", who: asAlice, method: "POST", path: "/user/{alice}/filter", body: `{"room":{"timeline":{"senders":["not_a_sender_id"]}}}`, status: 400, errcode: "M_INVALID_PARAM"},
		{name: "hostile body/filter rooms not a room", who: asAlice, method: "POST", path: "/user/{alice}/filter", body: `{"room":{"not_rooms":["` + longRoom + `"]}}`, status: 400, errcode: "M_INVALID_PARAM"},
		// GET /events answers at once, rather than long-polling through
		// a request it cannot have understood.
		{name: "hostile body/events junk body", who: asAlice, method: "GET", path: "/events", body: `junk`, status: 400, errcode: "M_NOT_JSON"},
		{name: "hostile body/events array body", who: asAlice, method: "GET", path: "/events", body: `[1]`, status: 400, errcode: "M_BAD_JSON"},
		{name: "hostile query/events room_id not a room", who: asAlice, method: "GET", path: "/events?room_id=5", status: 400, errcode: "M_INVALID_PARAM"},
		{name: "hostile body/delete tag junk body", who: asAlice, method: "DELETE", path: "/user/{alice}/rooms/{pub}/tags/u.x", body: `junk`, status: 400, errcode: "M_NOT_JSON"},

		// Rooms, aliases and names already taken or not possible.
		{name: "createRoom/unsupported version", who: asAlice, method: "POST", path: "/createRoom", body: `{"room_version": "999"}`, status: 400, errcode: "M_UNSUPPORTED_ROOM_VERSION"},
		{name: "createRoom/alias taken", who: asAlice, method: "POST", path: "/createRoom", body: `{"room_alias_name": "taken"}`, status: 400, errcode: "M_ROOM_IN_USE"},
		{name: "register/name taken", method: "POST", path: "/register", body: `{"username": "alice", "password": "pw", "auth": {"type": "m.login.dummy"}}`, status: 400, errcode: "M_USER_IN_USE"},
		{name: "register/name invalid", method: "POST", path: "/register", body: `{"username": "not valid!", "password": "pw", "auth": {"type": "m.login.dummy"}}`, status: 400, errcode: "M_INVALID_USERNAME"},
		{name: "register/available taken", method: "GET", path: "/register/available?username=alice", status: 400, errcode: "M_USER_IN_USE"},
		{name: "login/wrong password", method: "POST", path: "/login", body: `{"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "wrong"}`, status: 403, errcode: "M_FORBIDDEN"},
		{name: "login/unknown type", method: "POST", path: "/login", body: `{"type": "m.login.magic"}`, status: 400, errcode: "M_UNKNOWN"},
	}

	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		cfg := testserver.Config(t.TempDir(), dbURL, func(c *config.Config) {
			c.ClientAPI.MaxRequestBytes = badInputMaxBody
		})
		srv := testserver.Start(t, cfg)
		a := srv.Register(t, "alice")
		b := srv.Register(t, "bob")
		pub := a.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{
			"preset": "public_chat", "room_alias_name": "taken",
		}).MustOK(t).String("room_id")
		priv := a.Do(t, "POST", "/_matrix/client/v3/createRoom", map[string]any{
			"preset": "private_chat", "name": "secret",
		}).MustOK(t).String("room_id")
		b.Do(t, "POST", "/_matrix/client/v3/rooms/"+pub+"/join", map[string]any{}).MustOK(t)
		ev := a.Do(t, "PUT", "/_matrix/client/v3/rooms/"+pub+"/send/m.room.message/fixture", map[string]any{
			"msgtype": "m.text", "body": "mine",
		}).MustOK(t).String("event_id")

		fill := strings.NewReplacer(
			"{pub}", pub, "{priv}", priv, "{ev}", url.PathEscape(ev),
			"{alice}", "@alice:localhost", "{bob}", "@bob:localhost",
		)
		tokens := map[caller]string{asAnon: "", asAlice: a.Token, asBob: b.Token}
		hc := &http.Client{Timeout: 30 * time.Second}
		for _, row := range rows {
			t.Run(row.name, func(t *testing.T) {
				path := fill.Replace(row.path)
				// A leading "//" marks a path outside /_matrix/client/v3.
				if p, ok := strings.CutPrefix(path, "/"); ok && strings.HasPrefix(p, "/") {
					path = p
				} else {
					path = "/_matrix/client/v3" + path
				}
				authz := row.authz
				if authz == "" && tokens[row.who] != "" {
					authz = "Bearer " + tokens[row.who]
				}
				status, raw := sendBadInput(t, hc, row.method, srv.URL+path, fill.Replace(row.body), authz, row.chunked)
				if status >= 500 {
					t.Fatalf("%s %.200s: server error %d: %.300s", row.method, path, status, raw)
				}
				var body map[string]any
				if err := json.Unmarshal(raw, &body); err != nil {
					t.Fatalf("%s %.200s: %d, body is not a JSON object: %v: %.300q", row.method, path, status, err, raw)
				}
				errcode, ok1 := body["errcode"].(string)
				_, ok2 := body["error"].(string)
				if !ok1 || !ok2 {
					t.Errorf("%s %.200s: %d, want errcode and error strings: %.300s", row.method, path, status, raw)
				}
				if status != row.status || errcode != row.errcode {
					t.Errorf("%s %.200s: got %d %s, want %d %s: %.300s", row.method, path, status, errcode, row.status, row.errcode, raw)
				}
			})
		}
		// Issue 10: one hostile request (a 5,000-byte room ID) used to
		// break the server's bus, failing every later write.
		t.Run("still serves a send and a sync", func(t *testing.T) {
			a.Do(t, "PUT", "/_matrix/client/v3/rooms/"+pub+"/send/m.room.message/after", map[string]any{
				"msgtype": "m.text", "body": "still here",
			}).MustOK(t)
			a.Do(t, "GET", "/_matrix/client/v3/sync?timeout=0", nil).MustOK(t)
		})
	})
}

// sendBadInput sends one request as given and returns the answer's status
// and body.
func sendBadInput(t *testing.T, hc *http.Client, method, target, body, authz string, chunked bool) (int, []byte) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
		if chunked {
			rd = io.MultiReader(rd) // hides the length
		}
	}
	req, err := http.NewRequest(method, target, rd)
	if err != nil {
		t.Fatal(err)
	}
	if chunked {
		req.ContentLength = -1
	}
	if authz != "" {
		req.Header.Set("Authorization", authz)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, target, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, target, err)
	}
	return resp.StatusCode, raw
}

// TestMalformedRequestLine sends what Go's HTTP server refuses before any
// handler runs (a percent-escape that is not one, as in issue 10) and
// checks the answer is still a Matrix error, and the server serves on.
func TestMalformedRequestLine(t *testing.T) {
	srv := testserver.Start(t, testserver.Config(t.TempDir(), sqldbtest.URL(t, "sqlite")))
	a := srv.Register(t, "alice")
	addr := strings.TrimPrefix(srv.URL, "http://")
	for _, target := range []string{
		"/_matrix/client/v3/rooms/%ZZ/state",
		"/_matrix/client/v3/rooms/!a:localhost/send/m.room.message/%Z",
		"/_matrix/client/v3/sync%",
	} {
		t.Run(target, func(t *testing.T) {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(30 * time.Second))
			fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer %s\r\n\r\n", target, a.Token)
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var body map[string]any
			if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
				t.Fatalf("%d, not JSON: %v", resp.StatusCode, err)
			}
			if resp.StatusCode != 400 || body["errcode"] != "M_UNRECOGNIZED" {
				t.Fatalf("got %d %v, want 400 M_UNRECOGNIZED", resp.StatusCode, body)
			}
		})
	}
	a.Do(t, "GET", "/_matrix/client/v3/account/whoami", nil).MustOK(t)
}
