package main

import "testing"

func TestFederationParse(t *testing.T) {
	tests := []struct {
		remotes, pids string
		wantRemotes   int
		wantPIDs      int
		wantErr       bool
	}{
		{"http://127.0.0.12:8008", "", 1, 0, false},
		{"http://127.0.0.12:8008, http://127.0.0.13:8008,", "12, 13", 2, 2, false},
		{"", "", 0, 0, true},
		{"http://127.0.0.12:8008", "x", 0, 0, true},
		{"http://127.0.0.12:8008", "-3", 0, 0, true},
	}
	for _, tt := range tests {
		p := &federationParams{}
		err := p.parse(tt.remotes, tt.pids)
		if (err != nil) != tt.wantErr {
			t.Errorf("parse(%q, %q): error %v, want error %v", tt.remotes, tt.pids, err, tt.wantErr)
			continue
		}
		if err == nil && (len(p.remotes) != tt.wantRemotes || len(p.remotePIDs) != tt.wantPIDs) {
			t.Errorf("parse(%q, %q): %d remotes, %d pids; want %d, %d", tt.remotes, tt.pids, len(p.remotes), len(p.remotePIDs), tt.wantRemotes, tt.wantPIDs)
		}
	}
}

func TestLCM(t *testing.T) {
	for _, tt := range []struct{ a, b, want int }{{1, 20, 20}, {9, 20, 180}, {4, 6, 12}, {20, 20, 20}} {
		if got := lcm(tt.a, tt.b); got != tt.want {
			t.Errorf("lcm(%d, %d) = %d, want %d", tt.a, tt.b, got, tt.want)
		}
	}
}

func TestServerOf(t *testing.T) {
	for _, tt := range []struct{ in, want string }{{"@a:127.0.0.11:8448", "127.0.0.11:8448"}, {"@a:example.org", "example.org"}, {"nocolon", ""}} {
		if got := serverOf(tt.in); got != tt.want {
			t.Errorf("serverOf(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
