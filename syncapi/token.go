package syncapi

import (
	"fmt"
	"strconv"
	"strings"
)

// streamID is a stream's place in a Token. The order is the text form's
// and never changes: a new stream is appended before numStreams.
type streamID int

const (
	pduStream         streamID = iota // room timelines and memberships
	accountDataStream                 // the userapi's account data
	// typingStream is the in-memory typing stream. It is not stored; it
	// starts from the clock (see newTypingRooms), so it never goes back
	// across a restart.
	typingStream
	receiptStream
	presenceStream
	deviceListStream // the userapi's device-list stream
	toDeviceStream
	numStreams
)

// Token is a /sync position: one position per stream, indexed by
// streamID. Its text form is "s<pdu>_<account data>_<typing>_<receipt>_
// <presence>_<device lists>_<to-device>"; streams added later append
// fields, and missing fields parse as 0 so old tokens stay valid (a 0
// means "everything", as for an initial sync of that stream).
type Token [numStreams]int64

func (t Token) String() string {
	b := make([]byte, 0, 16*numStreams)
	for i, p := range t {
		if i == 0 {
			b = append(b, 's')
		} else {
			b = append(b, '_')
		}
		b = strconv.AppendInt(b, p, 10)
	}
	return string(b)
}

// After reports whether t is ahead of o in any stream.
func (t Token) After(o Token) bool {
	for i := range t {
		if t[i] > o[i] {
			return true
		}
	}
	return false
}

// Max returns the later position of t and o in each stream.
func (t Token) Max(o Token) Token {
	for i := range t {
		t[i] = max(t[i], o[i])
	}
	return t
}

// ParseToken reads a sync token. Fields of streams this version does not
// know are ignored, so a newer token still parses.
func ParseToken(s string) (Token, error) {
	if !strings.HasPrefix(s, "s") {
		return Token{}, fmt.Errorf("sync token %q does not start with 's'", s)
	}
	var t Token
	for i, f := range strings.Split(s[1:], "_") {
		n, err := strconv.ParseInt(f, 10, 64)
		if err != nil || n < 0 {
			return Token{}, fmt.Errorf("bad sync token %q", s)
		}
		if i < len(t) {
			t[i] = n
		}
	}
	return t, nil
}

// TopoToken is a /messages position: just before or after (depth, pos).
type TopoToken struct {
	Depth int64
	Pos   int64
}

func (t TopoToken) String() string { return fmt.Sprintf("t%d_%d", t.Depth, t.Pos) }

// ParseTopoToken reads a "t<depth>_<pos>" token.
func ParseTopoToken(s string) (TopoToken, error) {
	d, p, ok := strings.Cut(strings.TrimPrefix(s, "t"), "_")
	if !strings.HasPrefix(s, "t") || !ok {
		return TopoToken{}, fmt.Errorf("bad pagination token %q", s)
	}
	dn, err1 := strconv.ParseInt(d, 10, 64)
	pn, err2 := strconv.ParseInt(p, 10, 64)
	if err1 != nil || err2 != nil {
		return TopoToken{}, fmt.Errorf("bad pagination token %q", s)
	}
	return TopoToken{Depth: dn, Pos: pn}, nil
}
