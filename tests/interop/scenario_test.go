package main

import "testing"

func TestPrivilegedCreators(t *testing.T) {
	tests := []struct {
		version string
		want    bool
	}{
		{"1", false},
		{"10", false},
		{"11", false},
		{"12", true},
		{"13", true},
		// An unstable version is taken as a new one: listing its creator
		// would make the createRoom fail, and the step say why.
		{"org.matrix.hydra.11", true},
	}
	for _, tt := range tests {
		if got := privilegedCreators(tt.version); got != tt.want {
			t.Errorf("privilegedCreators(%q) = %v, want %v", tt.version, got, tt.want)
		}
	}
}
