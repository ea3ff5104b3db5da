package mxid

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/matrix-org/gomatrixserverlib/spec"
)

// hash is a well-formed 43-character URL-safe base64 hash.
const hash = "Pw8vTdHdiUzBpFtwO1o1SvfDAd8SfLQeFUqnwSfeFSc"

func TestServerName(t *testing.T) {
	for _, tc := range []struct {
		s  string
		ok bool
	}{
		// The spec's examples.
		{"matrix.org", true},
		{"matrix.org:8888", true},
		{"1.2.3.4", true},
		{"1.2.3.4:1234", true},
		{"[1234:5678::abcd]", true},
		{"[1234:5678::abcd]:5678", true},
		{"localhost", true},
		{"localhost:0", true},
		{"MATRIX.org", true},
		{"-", true},
		{"a..b", true},                     // the grammar is 1*255dns-char
		{"[::ffff:255.255.255.255]", true}, // IPv4 in IPv6
		{strings.Repeat("a", 255), true},   // dns-name = 1*255dns-char
		{strings.Repeat("a", 250) + ":8448", true},

		{"", false},
		{":8448", false},
		{"matrix.org:", false},
		{"matrix.org:123456", false},
		{"matrix.org:80a", false},
		{"matrix.org:-1", false},
		{"a:b:1", false},
		{"mätrix.org", false},
		{"matrix org", false},
		{"matrix.org/x", false},
		{"matrix_org", false},
		{"[1234:5678::abcd", false},
		{"[1234:5678::abcd]x", false},
		{"[]", false},
		{"[g::1]", false},
		{"[" + strings.Repeat("1", 46) + "]", false},
		{strings.Repeat("a", 256), false},
		{"a\x00", false},
	} {
		if err := ServerName(tc.s); (err == nil) != tc.ok {
			t.Errorf("ServerName(%.40q) = %v, want ok=%v", tc.s, err, tc.ok)
		}
	}
}

func TestIDs(t *testing.T) {
	long := func(sigil, suffix string) string {
		return sigil + strings.Repeat("a", MaxLen-len(sigil)-len(suffix)) + suffix
	}
	for _, tc := range []struct {
		name  string
		check func(string) error
		s     string
		ok    bool
	}{
		{"user", UserID, "@alice:localhost", true},
		{"user/port", UserID, "@alice:localhost:8448", true},
		{"user/ipv6", UserID, "@alice:[::1]:8448", true},
		{"user/255 bytes", UserID, long("@", ":localhost"), true},
		// Historical user IDs: any code point but ':' and NUL, the empty
		// localpart included.
		{"user/historical upper", UserID, "@Alice:localhost", true},
		{"user/historical symbols", UserID, "@a!b#c$d%e&f*g(h)i[j]k{l}~'\"<>?,;^`|\\:localhost", true},
		{"user/historical space", UserID, "@a b:localhost", true},
		{"user/historical control", UserID, "@a\tb\x01:localhost", true},
		{"user/historical emoji", UserID, "@🐈:localhost", true},
		{"user/historical empty", UserID, "@:localhost", true},
		{"user/256 bytes", UserID, long("@", ":localhost") + "a", false},
		{"user/no server", UserID, "@alice", false},
		{"user/empty server", UserID, "@alice:", false},
		{"user/bad server", UserID, "@alice:local host", false},
		{"user/sigil", UserID, "alice:localhost", false},
		{"user/room sigil", UserID, "!alice:localhost", false},
		{"user/NUL", UserID, "@a\x00b:localhost", false},
		{"user/bad UTF-8", UserID, "@a\xffb:localhost", false},
		{"user/empty", UserID, "", false},
		{"user/dot dot", UserID, "../../x", false},

		{"room", RoomID, "!abcdefgh:localhost", true},
		{"room/any localpart", RoomID, "!a b/c?d:localhost", true},
		{"room/v12", RoomID, "!" + hash, true},
		{"room/255 bytes", RoomID, long("!", ":localhost"), true},
		{"room/256 bytes", RoomID, long("!", ":localhost") + "a", false},
		{"room/5000 bytes", RoomID, "!" + strings.Repeat("a", 5000) + ":localhost", false},
		{"room/v12 short", RoomID, "!" + hash[1:], false},
		{"room/v12 long", RoomID, "!" + hash + "A", false},
		{"room/v12 std base64", RoomID, "!" + hash[:42] + "/", false},
		{"room/no sigil", RoomID, "notaroom", false},
		{"room/empty localpart", RoomID, "!:localhost", false},
		{"room/bad server", RoomID, "!a:local_host", false},
		{"room/NUL", RoomID, "!a\x00:localhost", false},
		{"room/dot dot", RoomID, "!../../x:localhost/..", false},
		{"room/empty", RoomID, "", false},
		{"room/sigil only", RoomID, "!", false},

		{"event/v1", EventID, "$1234abcd:matrix.org", true},
		{"event/v3", EventID, "$" + hash[:40] + "+/A", true},
		{"event/v4", EventID, "$" + hash, true},
		{"event/255 bytes", EventID, long("$", ":localhost"), true},
		{"event/256 bytes", EventID, long("$", ":localhost") + "a", false},
		{"event/short hash", EventID, "$nothing", false},
		{"event/no sigil", EventID, hash, false},
		{"event/empty localpart", EventID, "$:localhost", false},
		{"event/bad server", EventID, "$abc:", false},
		{"event/dot dot", EventID, "$../..", false},

		{"alias", RoomAlias, "#room:localhost", true},
		{"alias/any localpart", RoomAlias, "#a b ü:localhost", true},
		{"alias/empty localpart", RoomAlias, "#:localhost", true},
		{"alias/255 bytes", RoomAlias, long("#", ":localhost"), true},
		{"alias/256 bytes", RoomAlias, long("#", ":localhost") + "a", false},
		{"alias/no server", RoomAlias, "#room", false},
		{"alias/wrong sigil", RoomAlias, "%room:localhost", false},

		{"id or alias/id", RoomIDOrAlias, "!a:localhost", true},
		{"id or alias/alias", RoomIDOrAlias, "#a:localhost", true},
		{"id or alias/v12", RoomIDOrAlias, "!" + hash, true},
		{"id or alias/neither", RoomIDOrAlias, "notaroom", false},
		{"id or alias/user", RoomIDOrAlias, "@a:localhost", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.check(tc.s)
			if (err == nil) != tc.ok {
				t.Fatalf("%.60q: %v, want ok=%v", tc.s, err, tc.ok)
			}
			if len(tc.s) > MaxLen && !errors.Is(err, ErrTooLong) {
				t.Fatalf("%d bytes: %v, want ErrTooLong", len(tc.s), err)
			}
		})
	}
}

func TestOpaque(t *testing.T) {
	for _, tc := range []struct {
		s       string
		ok      bool
		tooLong bool
	}{
		{"", true, false},
		{"m.room.message", true, false},
		{"@alice:localhost", true, false},
		{"ümlaut", true, false},
		{strings.Repeat("k", 255), true, false},
		{strings.Repeat("k", 256), false, true},
		{"a\x00b", false, false},
		{"a\xffb", false, false},
	} {
		err := Opaque(tc.s, MaxLen)
		if (err == nil) != tc.ok || errors.Is(err, ErrTooLong) != tc.tooLong {
			t.Errorf("Opaque(%.40q) = %v, want ok=%v tooLong=%v", tc.s, err, tc.ok, tc.tooLong)
		}
	}
}

// FuzzServerName checks that ServerName never accepts what the grammar
// forbids, and never refuses a name gomatrixserverlib (which Dendrite
// federates with) accepts, but for ports over five digits and host names
// over 255 bytes, which the grammar does not have (gomatrixserverlib
// bounds neither).
func FuzzServerName(f *testing.F) {
	for _, s := range []string{"matrix.org", "matrix.org:8888", "1.2.3.4:1234", "[1234:5678::abcd]:5678", "[::ffff:1.2.3.4]", "a:b", "[", "]:", "localhost:000001"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		err := ServerName(s)
		if err == nil {
			// A 255-byte host name and a port.
			if len(s) > 255+6 || strings.IndexByte(s, 0) >= 0 || !utf8.ValidString(s) {
				t.Fatalf("accepted %q", s)
			}
			if strings.Count(s, ":") > 1 && s[0] != '[' {
				t.Fatalf("accepted %q: ':' in a host name", s)
			}
		}
		if _, _, ok := spec.ParseAndValidateServerName(spec.ServerName(s)); ok && err != nil && !longPort(s) && !longHost(s) {
			t.Fatalf("refused %q, which gomatrixserverlib accepts: %v", s, err)
		}
	})
}

// FuzzUserID checks UserID against the grammar and against
// gomatrixserverlib's parser with historical IDs allowed: no valid user ID
// it accepts is refused (NUL, invalid UTF-8, over 255 bytes and long ports
// apart, which the spec forbids).
func FuzzUserID(f *testing.F) {
	for _, s := range []string{"@alice:localhost", "@:localhost", "@Alice:[::1]:8448", "@🐈:localhost", "@a", "@a:", "@a:b:c", "@a\x00:b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		err := UserID(s)
		if err == nil {
			checkAccepted(t, s)
			if s[0] != '@' || !strings.Contains(s, ":") {
				t.Fatalf("accepted %q", s)
			}
		}
		if _, gerr := spec.NewUserID(s, true); gerr == nil && err != nil && specForbids(s) == "" {
			t.Fatalf("refused %q, which gomatrixserverlib accepts: %v", s, err)
		}
	})
}

// FuzzRoomID is FuzzUserID for room IDs, with and without a server name.
func FuzzRoomID(f *testing.F) {
	for _, s := range []string{"!abc:localhost", "!" + hash, "!" + hash[1:], "!:localhost", "!a:[::1]", "!a", "notaroom"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		err := RoomID(s)
		if err == nil {
			checkAccepted(t, s)
			if s[0] != '!' {
				t.Fatalf("accepted %q", s)
			}
		}
		if _, gerr := spec.NewRoomID(s); gerr == nil && err != nil && specForbids(s) == "" {
			t.Fatalf("refused %q, which gomatrixserverlib accepts: %v", s, err)
		}
	})
}

// FuzzEventID checks EventID accepts only what the grammar allows.
func FuzzEventID(f *testing.F) {
	for _, s := range []string{"$abc:localhost", "$" + hash, "$" + hash[:42] + "/", "$nothing", "$:x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if EventID(s) != nil {
			return
		}
		checkAccepted(t, s)
		if s[0] != '$' {
			t.Fatalf("accepted %q", s)
		}
		if !strings.Contains(s, ":") && len(s) != 1+hashLen {
			t.Fatalf("accepted %q: neither a server name nor a hash", s)
		}
	})
}

// FuzzRoomAlias checks RoomAlias and RoomIDOrAlias accept only what the
// grammar allows.
func FuzzRoomAlias(f *testing.F) {
	for _, s := range []string{"#room:localhost", "#:localhost", "#room", "!a:b", "#a:b:1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if RoomAlias(s) == nil {
			checkAccepted(t, s)
			if s[0] != '#' || RoomIDOrAlias(s) != nil {
				t.Fatalf("accepted %q", s)
			}
		}
		if RoomIDOrAlias(s) == nil && RoomAlias(s) != nil && RoomID(s) != nil {
			t.Fatalf("RoomIDOrAlias accepted %q, which is neither", s)
		}
	})
}

// checkAccepted fails t unless s is something any identifier may be.
func checkAccepted(t *testing.T, s string) {
	t.Helper()
	if len(s) > MaxLen || strings.IndexByte(s, 0) >= 0 || !utf8.ValidString(s) {
		t.Fatalf("accepted %q", s)
	}
}

// specForbids says why the spec forbids an ID gomatrixserverlib lets
// through, or "".
func specForbids(s string) string {
	switch {
	case len(s) > MaxLen:
		return "too long"
	case strings.IndexByte(s, 0) >= 0:
		return "NUL"
	case !utf8.ValidString(s):
		return "not UTF-8"
	case longPort(s[strings.IndexByte(s, ':')+1:]):
		return "port over five digits"
	}
	return ""
}

// longHost reports whether server name s has a host name over the
// grammar's 255 bytes.
func longHost(s string) bool {
	if i := strings.LastIndexByte(s, ':'); i >= 0 && s[0] != '[' {
		s = s[:i]
	}
	return len(s) > 255
}

// longPort reports whether server name s ends in a port of more than five
// digits (which gomatrixserverlib reads as a number, the grammar refuses).
func longPort(s string) bool {
	i := strings.LastIndexByte(s, ':')
	if i < 0 || len(s)-i-1 <= 5 {
		return false
	}
	for _, c := range s[i+1:] {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

func TestServer(t *testing.T) {
	tests := []struct {
		id, want string
		ok       bool
	}{
		{"@alice:example.org", "example.org", true},
		{"@alice:example.org:8448", "example.org:8448", true},
		{"#room:[::1]:8448", "[::1]:8448", true},
		{"!opaque:hs.test", "hs.test", true},
		{"!roomv12hashnoserver", "", false},
		{"@alice:", "", false},
		{":example.org", "", false},
		{"", "", false},
	}
	for _, tt := range tests {
		got, ok := Server(tt.id)
		if got != tt.want || ok != tt.ok {
			t.Errorf("Server(%q) = %q, %v; want %q, %v", tt.id, got, ok, tt.want, tt.ok)
		}
	}
}
