package fedpolicy

import (
	"strings"
	"testing"

	"github.com/matrix-org/gomatrixserverlib/spec"
)

func TestMatch(t *testing.T) {
	tests := []struct {
		glob, name string
		want       bool
	}{
		{"example.org", "example.org", true},
		{"example.org", "example.org.evil", false},
		{"example.org", "sub.example.org", false},
		{"*", "", true},
		{"*", "anything.at.all", true},
		{"*.example.org", "a.example.org", true},
		{"*.example.org", "a.b.example.org", true},
		{"*.example.org", "example.org", false},
		{"*example.org", "example.org", true},
		{"ex?mple.org", "example.org", true},
		{"ex?mple.org", "exmple.org", false},
		{"ex??mple.org", "example.org", false},
		{"?", "", false},
		{"a*b*c", "axxbyyc", true},
		{"a*b*c", "axxbyy", false},
		{"a*b*c", "abcbc", true},
		{"**", "x", true},
		{"*a", "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", false},
		{"1.2.3.*", "1.2.3.4", true},
		{"[::1]", "[::1]", true},
		{"", "", true},
		{"", "a", false},
	}
	for _, tt := range tests {
		if got := Match(tt.glob, tt.name); got != tt.want {
			t.Errorf("Match(%q, %q) = %v, want %v", tt.glob, tt.name, got, tt.want)
		}
	}
	// A pathological glob stays cheap: no exponential backtracking.
	if Match(strings.Repeat("*a", 50)+"b", strings.Repeat("a", 5000)) {
		t.Error("pathological glob matched")
	}
}

func TestPolicy(t *testing.T) {
	tests := []struct {
		name        string
		allow, deny []string
		server      spec.ServerName
		want        bool
	}{
		{"no lists", nil, nil, "any.example", true},
		{"denied", nil, []string{"evil.example"}, "evil.example", false},
		{"denied, port ignored", nil, []string{"evil.example"}, "evil.example:8448", false},
		{"denied, case ignored", nil, []string{"Evil.Example"}, "EVIL.example", false},
		{"denied glob", nil, []string{"*.evil.example"}, "a.evil.example", false},
		{"not denied", nil, []string{"*.evil.example"}, "good.example", true},
		{"allow list", []string{"*.friends.example"}, nil, "a.friends.example", true},
		{"not on the allow list", []string{"*.friends.example"}, nil, "stranger.example", false},
		{"deny beats allow", []string{"*"}, []string{"evil.example"}, "evil.example", false},
		{"IPv6 literal", nil, []string{"[::1]"}, "[::1]:8448", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := New(tt.allow, tt.deny).Allowed(tt.server); got != tt.want {
				t.Errorf("Allowed(%s) = %v, want %v", tt.server, got, tt.want)
			}
		})
	}
}

func TestIsIPLiteral(t *testing.T) {
	for host, want := range map[string]bool{
		"1.2.3.4": true, "[::1]": true, "[2001:db8::1]": true,
		"example.org": false, "::1": false, "1.2.3": false, "[example]": false,
	} {
		if got := IsIPLiteral(host); got != want {
			t.Errorf("IsIPLiteral(%q) = %v, want %v", host, got, want)
		}
	}
}
