package mxhttp

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/gorilla/mux"

	"myelin/internal/mxid"
)

// pathVar is how one path variable is checked.
type pathVar struct {
	check func(string) error
	// tooLarge answers a value over the limit with 413 M_TOO_LARGE
	// rather than 400 M_INVALID_PARAM: event types and state keys, whose
	// limits are the PDU size limits (client-server API, "Size limits"),
	// which Synapse answers that way.
	tooLarge bool
}

// opaque bounds a string the client chooses and the server only stores
// and compares: 255 bytes, as the spec bounds event types, state keys and
// tags, and as every ID is bounded; UTF-8 and NUL are checked for every
// variable already.
func opaque(s string) error { return mxid.Opaque(s, mxid.MaxLen) }

// pathVars is the one table of path variables: a route gets its variables
// checked by naming them, before its handler (and its authentication) runs,
// so that no component sees an ID of the wrong shape or size (issue 10: a
// 5,000-byte room ID became a NATS subject). A variable missing from the
// table fails the server's start (CheckRouteVars).
var pathVars = map[string]pathVar{
	"roomId":        {check: mxid.RoomID},
	"eventId":       {check: mxid.EventID},
	"userId":        {check: mxid.UserID},
	"roomAlias":     {check: mxid.RoomAlias},
	"roomIdOrAlias": {check: mxid.RoomIDOrAlias},
	"serverName":    {check: mxid.ServerName},
	"eventType":     {check: opaque, tooLarge: true},
	"relType":       {check: opaque}, // /relations: a rel_type, 255 bytes as event types
	"stateKey":      {check: opaque, tooLarge: true},
	"txnId":         {check: opaque},
	"filterId":      {check: opaque},
	"receiptType":   {check: opaque},
	"tag":           {check: opaque}, // spec: "Room Tagging", at most 255 bytes
	"type":          {check: opaque}, // account data type
	"deviceId":      {check: opaque},
	"keyId":         {check: opaque},
	// Key backup: the room ID only names where the client's keys belong
	// (Synapse and sytest store keys under any string), the rest are ours.
	"backupRoomId": {check: opaque},
	"sessionId":    {check: opaque},
	"version":      {check: opaque},
	// Server-Server API: roomId, eventId, userId, serverName, txnId and
	// keyId above, and these.
	"mediaId":   {check: opaque},
	"queryType": {check: opaque},
	// Media: the file name a client puts after a download's media ID,
	// only ever echoed in Content-Disposition.
	"fileName": {check: opaque},
	// The event ID of the PDU a request carries (send_join, send_leave,
	// send_knock, invite): the handler compares it with the event's own
	// ID once the body is parsed, so a fault of the body answers first
	// (M_BAD_JSON), as Synapse answers it.
	"pduEventId": {check: opaque},
	// A registration token in Synapse's admin API.
	"regToken": {check: opaque},
	// A delayed event's ID and an action on it (MSC4140).
	"delayId":     {check: opaque},
	"delayAction": {check: opaque},
	// A report's ID in Synapse's admin API.
	"reportId": {check: positiveInt},
}

// positiveInt checks a numeric ID of ours.
func positiveInt(s string) error {
	if n, err := strconv.ParseInt(s, 10, 64); err != nil || n <= 0 {
		return errors.New("not a positive integer")
	}
	return nil
}

// decodeVars URL-decodes path variables in place, once, so that handlers
// see room IDs and event IDs as they are ("!a:b", "$x"), and checks each
// against pathVars. Values that are not UTF-8 or hold NUL (which
// PostgreSQL cannot store) are refused whatever the variable.
func decodeVars(vars map[string]string) error {
	for k, v := range vars {
		d := v
		if strings.IndexByte(v, '%') >= 0 {
			var err error
			if d, err = url.PathUnescape(v); err != nil {
				return InvalidParam("%s in the path is not correctly escaped", k)
			}
		}
		if !utf8.ValidString(d) || strings.IndexByte(d, 0) >= 0 {
			return InvalidParam("%s in the path is not UTF-8 without NUL", k)
		}
		if pv, ok := pathVars[k]; ok {
			if err := pv.check(d); err != nil {
				if pv.tooLarge && isTooLong(err) {
					return New("M_TOO_LARGE", "%s in the path is longer than %d bytes", k, mxid.MaxLen)
				}
				return InvalidParam("%s in the path: %s", k, reason(err))
			}
		} else if err := opaque(d); err != nil {
			// CheckRouteVars keeps this from happening; bound it anyway.
			return InvalidParam("%s in the path: %s", k, reason(err))
		}
		vars[k] = d
	}
	return nil
}

// reason is an mxid error's text without the value it was about (which may
// be 5,000 bytes long).
func reason(err error) string {
	if e, ok := err.(*mxid.Error); ok {
		return "not a valid " + e.What + " (" + e.Reason + ")"
	}
	return err.Error()
}

func isTooLong(err error) bool { return errors.Is(err, mxid.ErrTooLong) }

// CheckParam checks a parameter a handler reads from the body or the query
// that the spec types as an ID, with check (one of mxid's), answering
// M_INVALID_PARAM for a value of the wrong shape.
func CheckParam(name, value string, check func(string) error) error {
	if err := check(value); err != nil {
		return InvalidParam("%s: %s", name, reason(err))
	}
	return nil
}

// CheckRouteVars fails when a route of r has a path variable pathVars does
// not know, so that a new route's variables cannot go unchecked: the
// server refuses to start, and every test that starts one fails.
func CheckRouteVars(r *mux.Router) error {
	var unknown []string
	err := r.Walk(func(route *mux.Route, _ *mux.Router, _ []*mux.Route) error {
		names, err := route.GetVarNames()
		if err != nil {
			return err
		}
		for _, n := range names {
			if _, ok := pathVars[n]; !ok {
				tpl, _ := route.GetPathTemplate()
				unknown = append(unknown, fmt.Sprintf("%s in %s", n, tpl))
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return fmt.Errorf("path variables missing from mxhttp's table: %s", strings.Join(unknown, ", "))
	}
	return nil
}

// checkQuery refuses a query string that does not decode to UTF-8 without
// NUL: PostgreSQL cannot store or compare such strings, and Go's own
// parser would silently drop a badly escaped pair. A query of plain ASCII
// with no escape above %7F is checked in one pass without allocating.
func checkQuery(q string) error {
	slow := false
	for i := 0; i < len(q); i++ {
		c := q[i]
		switch {
		case c == '%':
			if i+2 >= len(q) || !isHexDigit(q[i+1]) || !isHexDigit(q[i+2]) {
				return InvalidParam("the query string is not correctly escaped")
			}
			if q[i+1] == '0' && q[i+2] == '0' {
				return InvalidParam("the query string contains NUL")
			}
			if q[i+1] >= '8' {
				slow = true
			}
			i += 2
		case c >= 0x80:
			slow = true
		}
	}
	if slow {
		u, err := url.QueryUnescape(q)
		if err != nil || !utf8.ValidString(u) {
			return InvalidParam("the query string is not UTF-8")
		}
	}
	return nil
}

func isHexDigit(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

// checkBodyless refuses a body sent with a GET or DELETE that is not a
// JSON object (or empty): every Matrix request body is one (spec: "API
// Standards"), and an endpoint that ignores its body must not treat junk
// as a request it understood (issue 10: GET /events with a junk body
// long-polled instead of answering). A DELETE handler that reads its body
// (user-interactive auth) still gets it.
func checkBodyless(r *http.Request) error {
	b, err := ReadBody(r)
	if err != nil {
		return err
	}
	if r.Method == http.MethodDelete {
		r.Body = io.NopCloser(bytes.NewReader(b))
	}
	if len(TrimJSONSpace(b)) == 0 {
		return nil
	}
	return DecodeJSON(b, &struct{}{})
}

// TimeQuery reads the ts and dir query parameters of /timestamp_to_event
// (client and federation): the time in milliseconds, and whether to look
// backward from it.
func TimeQuery(q url.Values) (ts int64, backward bool, err error) {
	tsStr, dir := q.Get("ts"), q.Get("dir")
	if tsStr == "" || dir == "" {
		return 0, false, MissingParam("ts and dir are required")
	}
	ts, perr := strconv.ParseInt(tsStr, 10, 64)
	if perr != nil || ts < 0 {
		return 0, false, InvalidParam("ts must be a timestamp in milliseconds")
	}
	if dir != "f" && dir != "b" {
		return 0, false, InvalidParam("dir must be f or b")
	}
	return ts, dir == "b", nil
}
