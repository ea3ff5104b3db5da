// Package netguard decides which addresses the server may connect to when
// someone else chooses the destination: federation (a remote names its
// own addresses, or a name resolving to ours) and URL previews (a user
// names any URL). Refusing loopback, private and other non-public
// addresses keeps such requests from reaching the server's own network
// (SSRF). The check is made on the address actually dialled, after DNS
// resolution, so a name that resolves to a private address is refused
// however it resolves next time. fedhttp and the mediaapi import it.
package netguard

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
)

// notPublic are the ranges, beyond those netip classifies, that no server
// on the public internet has: "this network", carrier-grade NAT, IETF
// protocol assignments, benchmarking, reserved (RFC 6890), NAT64 and
// documentation prefixes.
var notPublic = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("100.64.0.0/10"),
	netip.MustParsePrefix("192.0.0.0/24"),
	netip.MustParsePrefix("192.0.2.0/24"),
	netip.MustParsePrefix("198.18.0.0/15"),
	netip.MustParsePrefix("198.51.100.0/24"),
	netip.MustParsePrefix("203.0.113.0/24"),
	netip.MustParsePrefix("240.0.0.0/4"),
	netip.MustParsePrefix("64:ff9b::/96"),
	netip.MustParsePrefix("64:ff9b:1::/48"),
	netip.MustParsePrefix("2001:db8::/32"),
	// Site-local (deprecated, RFC 3879), still routed inside some sites.
	netip.MustParsePrefix("fec0::/10"),
}

// Public reports whether a is an address a server on the internet may
// have: not loopback, private (IPv4 RFC 1918, IPv6 ULA fc00::/7),
// link-local, multicast, unspecified, nor in notPublic. An IPv4-mapped
// IPv6 address is judged by its IPv4 address.
func Public(a netip.Addr) bool {
	a = a.Unmap()
	if !a.IsValid() || a.IsLoopback() || a.IsPrivate() || a.IsUnspecified() || a.IsLinkLocalUnicast() ||
		a.IsLinkLocalMulticast() || a.IsInterfaceLocalMulticast() || a.IsMulticast() {
		return false
	}
	for _, p := range notPublic {
		if p.Contains(a) {
			return false
		}
	}
	return true
}

// ErrRefused is the error of a connection the guard refused.
var ErrRefused = errors.New("address not allowed")

// Guard refuses non-public addresses and an operator's deny list, except
// those of an operator's allow list (which wins over both, as Synapse's
// url_preview_ip_range_whitelist does).
type Guard struct {
	deny, allow []netip.Prefix
}

// New makes a Guard from CIDR ranges ("10.0.0.0/8") or single addresses.
func New(deny, allow []string) (*Guard, error) {
	g := &Guard{}
	var err error
	if g.deny, err = ParsePrefixes(deny); err != nil {
		return nil, err
	}
	if g.allow, err = ParsePrefixes(allow); err != nil {
		return nil, err
	}
	return g, nil
}

// ParsePrefixes reads CIDR ranges, or addresses standing for themselves.
func ParsePrefixes(ss []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(ss))
	for _, s := range ss {
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("%q is neither an address range (CIDR) nor an address", s)
		}
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

func contains(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// Allowed reports whether a may be connected to. An IPv4-mapped IPv6
// address is refused as such (a dual-stack socket would reach the IPv4
// host through it), unless the allow list names it.
func (g *Guard) Allowed(a netip.Addr) bool {
	if contains(g.allow, a) || a.Is4In6() && contains(g.allow, a.Unmap()) {
		return true
	}
	if a.Is4In6() {
		return false
	}
	return Public(a) && !contains(g.deny, a)
}

// Control is a net.Dialer Control function: it runs once the name is
// resolved, just before each connection attempt, with the address about
// to be dialled, so nothing but an allowed address is ever connected to.
func (g *Guard) Control(network, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("dial %s: %w", address, ErrRefused)
	}
	if !g.Allowed(ap.Addr()) {
		return fmt.Errorf("dial %s: %w", ap.Addr(), ErrRefused)
	}
	return nil
}

// Dialer is a net.Dialer whose every connection passes the guard.
func (g *Guard) Dialer(d net.Dialer) *net.Dialer {
	d.Control = g.Control
	return &d
}
