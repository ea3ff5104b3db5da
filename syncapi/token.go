package syncapi

import (
	"fmt"
	"strconv"
	"strings"
)

// Token is a /sync position: one position per stream. Its text form is
// "s<pdu>_<account data>_<typing>_<receipt>_<presence>_<device lists>_<to-device>"; streams added
// later append fields, and missing fields parse as 0 so old tokens stay
// valid (a 0 means "everything", as for an initial sync of that stream).
type Token struct {
	PDU         int64
	AccountData int64
	// Typing is the position of the in-memory typing stream. It is not
	// stored; it starts from the clock (see newTypingRooms), so it never
	// goes back across a restart.
	Typing   int64
	Receipt  int64
	Presence int64
	// DeviceLists is the userapi's device-list stream.
	DeviceLists int64
	ToDevice    int64
}

func (t Token) String() string {
	return fmt.Sprintf("s%d_%d_%d_%d_%d_%d_%d", t.PDU, t.AccountData, t.Typing, t.Receipt, t.Presence, t.DeviceLists, t.ToDevice)
}

// After reports whether t is ahead of o in any stream.
func (t Token) After(o Token) bool {
	return t.PDU > o.PDU || t.AccountData > o.AccountData || t.Typing > o.Typing ||
		t.Receipt > o.Receipt || t.Presence > o.Presence || t.DeviceLists > o.DeviceLists ||
		t.ToDevice > o.ToDevice
}

// Max returns the later position of t and o in each stream.
func (t Token) Max(o Token) Token {
	return Token{
		PDU:         max(t.PDU, o.PDU),
		AccountData: max(t.AccountData, o.AccountData),
		Typing:      max(t.Typing, o.Typing),
		Receipt:     max(t.Receipt, o.Receipt),
		Presence:    max(t.Presence, o.Presence),
		DeviceLists: max(t.DeviceLists, o.DeviceLists),
		ToDevice:    max(t.ToDevice, o.ToDevice),
	}
}

// ParseToken reads a sync token. Fields of streams this version does not
// know are ignored, so a newer token still parses.
func ParseToken(s string) (Token, error) {
	if !strings.HasPrefix(s, "s") {
		return Token{}, fmt.Errorf("sync token %q does not start with 's'", s)
	}
	var vals [7]int64
	for i, f := range strings.Split(s[1:], "_") {
		n, err := strconv.ParseInt(f, 10, 64)
		if err != nil || n < 0 {
			return Token{}, fmt.Errorf("bad sync token %q", s)
		}
		if i < len(vals) {
			vals[i] = n
		}
	}
	return Token{PDU: vals[0], AccountData: vals[1], Typing: vals[2], Receipt: vals[3], Presence: vals[4], DeviceLists: vals[5], ToDevice: vals[6]}, nil
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
