package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"myelin/internal/sqldb/sqldbtest"
)

// TestRegistrationTokenCommand creates, lists and deletes tokens with the
// command line, on each database, and checks its refusals.
func TestRegistrationTokenCommand(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		dir := t.TempDir()
		cfgPath := filepath.Join(dir, "config.yaml")
		cfg := "server_name: test.local\ndata_dir: " + dir + "\ndatabase:\n  url: " + dbURL + "\n"
		if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := func(args ...string) (int, string, string) {
			var out, errOut bytes.Buffer
			code := run(append([]string{"--config", cfgPath, "registration-token"}, args...), strings.NewReader(""), &out, &errOut)
			return code, out.String(), errOut.String()
		}
		steps := []struct {
			args     []string
			code     int
			stdout   string // a substring; "" checks nothing
			stderr   string
			lineSeen func(out string) bool
		}{
			{args: []string{"create", "--token", "abc", "--uses", "3", "--expires", "24h"}, code: 0, stdout: "abc\n"},
			{args: []string{"create", "--token", "abc"}, code: 1, stderr: "exists already"},
			{args: []string{"create", "--token", "a b"}, code: 2, stderr: "1 to 64"},
			{args: []string{"create", "--uses", "-1"}, code: 2},
			{args: []string{"create"}, code: 0},
			{args: []string{"list"}, code: 0, stdout: "abc\tuses_allowed=3 pending=0 completed=0 expires=2"},
			{args: []string{"list", "--invalid"}, code: 0, lineSeen: func(out string) bool { return out == "" }},
			{args: []string{"list", "--valid", "--invalid"}, code: 2},
			{args: []string{"delete", "abc"}, code: 0},
			{args: []string{"delete", "abc"}, code: 1, stderr: "no registration token"},
			{args: []string{"list"}, code: 0, lineSeen: func(out string) bool {
				return strings.Count(out, "\n") == 1 && strings.Contains(out, "uses_allowed=unlimited") && strings.Contains(out, "expires=never")
			}},
			{args: []string{"frobnicate"}, code: 2},
			{args: nil, code: 2},
		}
		for _, s := range steps {
			code, out, errOut := cmd(s.args...)
			if code != s.code || !strings.Contains(out, s.stdout) || !strings.Contains(errOut, s.stderr) || (s.lineSeen != nil && !s.lineSeen(out)) {
				t.Fatalf("registration-token %v: exit %d, stdout %q, stderr %q", s.args, code, out, errOut)
			}
		}
	})
}
