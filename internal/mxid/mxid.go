// Package mxid checks Matrix identifiers against the spec's grammar
// (appendices, "Identifier Grammar"; room versions for the hash-shaped
// event and room IDs) and its 255-byte limit, so that a malformed or
// oversized ID from a client is refused at the HTTP edge before any
// component sees it. Anything may import it; it imports only the standard
// library.
//
// The checks are as lenient as the spec requires servers to be, and no
// stricter than Synapse for IDs that exist: historical user IDs
// (appendices, "Historical User IDs": any code point but ':' and NUL, the
// empty localpart included), room and event IDs with a server name and an
// arbitrary localpart (room versions 1-11, event IDs of versions 1-2), and
// the hash-shaped ones without (event IDs from version 3, room IDs from
// version 12). Each check is one pass over the string and allocates
// nothing unless it fails.
package mxid

import (
	"errors"
	"strings"
	"unicode/utf8"
)

// MaxLen is the spec's limit on the length of every identifier, in bytes,
// sigil and server name included; also the limit on event types and state
// keys (client-server API, "Size limits").
const MaxLen = 255

// hashLen is the length of an unpadded base64 SHA-256 reference hash: the
// event IDs of room versions 3 and up, and the room IDs of version 12.
const hashLen = 43

// ErrTooLong is wrapped by the error for an identifier over MaxLen bytes,
// for callers that answer length differently from shape.
var ErrTooLong = errors.New("longer than 255 bytes")

// Error says what an identifier is not, and why.
type Error struct {
	What   string // "room ID", "user ID", ...
	Reason string
	err    error // ErrTooLong, or nil
}

func (e *Error) Error() string { return "not a valid " + e.What + ": " + e.Reason }

func (e *Error) Unwrap() error { return e.err }

func bad(what, reason string) error { return &Error{What: what, Reason: reason} }

func tooLong(what string) error {
	return &Error{What: what, Reason: ErrTooLong.Error(), err: ErrTooLong}
}

// ServerName checks a server name (appendices, "Server Name"):
//
//	server_name = hostname [ ":" port ]
//	hostname    = IPv4address / "[" IPv6address "]" / dns-name
//
// It checks the grammar, not whether the name resolves; an IPv4 literal is
// a dns-name as far as the grammar goes.
func ServerName(s string) error {
	if err := serverName(s); err != "" {
		return bad("server name", err)
	}
	return nil
}

func serverName(s string) string {
	if s == "" {
		return "empty"
	}
	host, port, hasPort := s, "", false
	if s[0] == '[' {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return "unterminated IPv6 literal"
		}
		host = s[1:end]
		if rest := s[end+1:]; rest != "" {
			if rest[0] != ':' {
				return "junk after the IPv6 literal"
			}
			port, hasPort = rest[1:], true
		}
		// IPv6address = 2*45IPv6char (hex digits, ':' and '.')
		if len(host) < 2 || len(host) > 45 {
			return "IPv6 literal of the wrong length"
		}
		for i := 0; i < len(host); i++ {
			if c := host[i]; !isHex(c) && c != ':' && c != '.' {
				return "bad character in IPv6 literal"
			}
		}
	} else {
		if i := strings.IndexByte(s, ':'); i >= 0 {
			host, port, hasPort = s[:i], s[i+1:], true
		}
		// dns-name = 1*255dns-char (digits, letters, '-' and '.')
		if host == "" || len(host) > 255 {
			return "host name of the wrong length"
		}
		for i := 0; i < len(host); i++ {
			if c := host[i]; !isAlnum(c) && c != '-' && c != '.' {
				return "bad character in host name"
			}
		}
	}
	if hasPort {
		// port = 1*5DIGIT
		if port == "" || len(port) > 5 {
			return "port of the wrong length"
		}
		for i := 0; i < len(port); i++ {
			if port[i] < '0' || port[i] > '9' {
				return "port is not a number"
			}
		}
	}
	return ""
}

// UserID checks a user ID, historical ones included (appendices, "User
// Identifiers", "Historical User IDs"): '@', a localpart of any code points
// but ':' and NUL (possibly empty), ':', a server name.
func UserID(s string) error {
	return withServer(s, '@', "user ID", true)
}

// RoomID checks a room ID (appendices, "Room IDs"): '!' and either a
// non-empty localpart of any code points but ':' and NUL, ':' and a server
// name (room versions 1-11), or the 43-character URL-safe base64 hash of
// the create event (room version 12).
func RoomID(s string) error {
	if len(s) > MaxLen {
		return tooLong("room ID")
	}
	if len(s) > 0 && s[0] == '!' && strings.IndexByte(s, ':') < 0 {
		if !isHash(s[1:], false) {
			return bad("room ID", "neither a server name nor a 43-character hash")
		}
		return nil
	}
	return withServer(s, '!', "room ID", false)
}

// EventID checks an event ID (appendices, "Event IDs"; room versions):
// '$' and either a non-empty localpart, ':' and a server name (room
// versions 1 and 2), or a 43-character base64 hash, standard (version 3)
// or URL-safe (version 4 and up).
func EventID(s string) error {
	if len(s) > MaxLen {
		return tooLong("event ID")
	}
	if len(s) > 0 && s[0] == '$' && strings.IndexByte(s, ':') < 0 {
		if !isHash(s[1:], true) {
			return bad("event ID", "neither a server name nor a 43-character hash")
		}
		return nil
	}
	return withServer(s, '$', "event ID", false)
}

// RoomAlias checks a room alias (appendices, "Room Aliases"): '#', a
// localpart of any code points but ':' and NUL, ':', a server name.
func RoomAlias(s string) error {
	return withServer(s, '#', "room alias", true)
}

// RoomIDOrAlias checks a room ID or a room alias, told apart by the sigil.
func RoomIDOrAlias(s string) error {
	if len(s) > 0 && s[0] == '#' {
		return RoomAlias(s)
	}
	if len(s) > 0 && s[0] == '!' {
		return RoomID(s)
	}
	return bad("room ID or alias", "must start with '!' or '#'")
}

// Opaque checks an opaque string the client chooses (an event type, a
// state key, a transaction ID, a tag, ...): valid UTF-8, no NUL, at most
// max bytes. It may be empty.
func Opaque(s string, max int) error {
	if len(s) > max {
		return &Error{What: "value", Reason: "too long", err: ErrTooLong}
	}
	if strings.IndexByte(s, 0) >= 0 {
		return bad("value", "contains NUL")
	}
	if !utf8.ValidString(s) {
		return bad("value", "not UTF-8")
	}
	return nil
}

// withServer checks sigil localpart ':' server_name, at most MaxLen bytes.
func withServer(s string, sigil byte, what string, emptyLocal bool) error {
	if len(s) > MaxLen {
		return tooLong(what)
	}
	if s == "" || s[0] != sigil {
		return bad(what, "must start with '"+string(sigil)+"'")
	}
	colon := strings.IndexByte(s, ':')
	if colon < 0 {
		return bad(what, "no ':' before the server name")
	}
	local := s[1:colon]
	if local == "" && !emptyLocal {
		return bad(what, "empty localpart")
	}
	if strings.IndexByte(local, 0) >= 0 {
		return bad(what, "NUL in the localpart")
	}
	if !utf8.ValidString(local) {
		return bad(what, "localpart is not UTF-8")
	}
	if err := serverName(s[colon+1:]); err != "" {
		return bad(what, "server name: "+err)
	}
	return nil
}

// isHash reports whether s is an unpadded base64 SHA-256 hash: URL-safe,
// or either alphabet when std is set.
func isHash(s string, std bool) bool {
	if len(s) != hashLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case isAlnum(c), c == '-', c == '_':
		case std && (c == '+' || c == '/'):
		default:
			return false
		}
	}
	return true
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

// Server returns the server name of a user ID, room alias or room ID
// with one: what follows the first colon after the sigil. It reports
// false when there is none; it does not check the ID's grammar.
func Server(id string) (string, bool) {
	i := strings.IndexByte(id, ':')
	if len(id) < 2 || i < 1 || i == len(id)-1 {
		return "", false
	}
	return id[i+1:], true
}
