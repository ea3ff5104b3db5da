// Package fedpolicy decides which servers this server federates with: the
// operator's allow and deny lists of server name globs
// (federation_api.allowed_servers, federation_api.denied_servers), and the
// glob matching they share with rooms' server ACLs (m.room.server_acl).
// The federationapi asks it of every inbound request's origin and every
// destination it would send to; fedhttp asks it of every outbound
// request, so nothing reaches a denied server.
package fedpolicy

import (
	"net/netip"
	"strings"

	"github.com/matrix-org/gomatrixserverlib/spec"
)

// Policy is the operator's allow and deny lists. A nil *Policy allows
// every server.
type Policy struct {
	allow, deny []string
}

// New makes the policy of the globs given (lower-cased here once). An
// empty allow list allows every server not denied; a non-empty one only
// the servers it matches.
func New(allow, deny []string) *Policy {
	if len(allow) == 0 && len(deny) == 0 {
		return nil
	}
	return &Policy{allow: lower(allow), deny: lower(deny)}
}

func lower(globs []string) []string {
	out := make([]string, len(globs))
	for i, g := range globs {
		out[i] = strings.ToLower(g)
	}
	return out
}

// Allowed reports whether this server may exchange requests with server.
// Globs are matched against the host of the server name, its port left
// out, case-insensitively, as server ACLs are.
func (p *Policy) Allowed(server spec.ServerName) bool {
	if p == nil {
		return true
	}
	host := Host(server)
	if MatchAny(p.deny, host) {
		return false
	}
	return len(p.allow) == 0 || MatchAny(p.allow, host)
}

// Host is the host part of a server name, lower-cased, without its port
// (an IPv6 literal keeps its brackets).
func Host(server spec.ServerName) string {
	h, _, ok := spec.ParseAndValidateServerName(server)
	if !ok {
		h = string(server)
	}
	return strings.ToLower(string(h))
}

// IsIPLiteral reports whether host (as Host returns it) is an IPv4 or a
// bracketed IPv6 literal.
func IsIPLiteral(host string) bool {
	if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		_, err := netip.ParseAddr(host[1 : len(host)-1])
		return err == nil
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Is4()
}

// MatchAny reports whether one of globs (lower case) matches name (lower
// case).
func MatchAny(globs []string, name string) bool {
	for _, g := range globs {
		if Match(g, name) {
			return true
		}
	}
	return false
}

// Match reports whether glob matches all of name: '*' stands for any run
// of characters (none included), '?' for exactly one (spec: "Server
// Access Control Lists"). Both are compared byte for byte, so the caller
// lower-cases them for a case-insensitive match. It backtracks only to
// the last '*', so it runs in time linear in len(glob)*len(name) at
// worst and never recurses.
func Match(glob, name string) bool {
	g, n := 0, 0
	star, mark := -1, 0
	for n < len(name) {
		switch {
		case g < len(glob) && (glob[g] == '?' || glob[g] == name[n]):
			g++
			n++
		case g < len(glob) && glob[g] == '*':
			star, mark = g, n
			g++
		case star >= 0:
			// Let the last '*' take one more character and retry.
			mark++
			g, n = star+1, mark
		default:
			return false
		}
	}
	for g < len(glob) && glob[g] == '*' {
		g++
	}
	return g == len(glob)
}
