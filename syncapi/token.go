package syncapi

import (
	"fmt"
	"strconv"
	"strings"
)

// Token is a /sync position: one position per stream. Its text form is
// "s<pdu>_<account data>"; streams added later append fields, and missing
// fields parse as 0 so old tokens stay valid.
type Token struct {
	PDU         int64
	AccountData int64
}

func (t Token) String() string {
	return fmt.Sprintf("s%d_%d", t.PDU, t.AccountData)
}

// After reports whether t is ahead of o in any stream.
func (t Token) After(o Token) bool {
	return t.PDU > o.PDU || t.AccountData > o.AccountData
}

// ParseToken reads a sync token.
func ParseToken(s string) (Token, error) {
	if !strings.HasPrefix(s, "s") {
		return Token{}, fmt.Errorf("sync token %q does not start with 's'", s)
	}
	var vals [2]int64
	for i, f := range strings.Split(s[1:], "_") {
		n, err := strconv.ParseInt(f, 10, 64)
		if err != nil || n < 0 {
			return Token{}, fmt.Errorf("bad sync token %q", s)
		}
		if i < len(vals) {
			vals[i] = n
		}
	}
	return Token{PDU: vals[0], AccountData: vals[1]}, nil
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
