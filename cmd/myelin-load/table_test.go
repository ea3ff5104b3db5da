package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestTable(t *testing.T) {
	root := t.TempDir()
	write := func(dir, label string, eps float64) string {
		d := filepath.Join(root, dir)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		r := &Report{Tool: "myelin-load", Scenario: "send", Name: "send S=16 R=4", Label: label}
		r.add("events/s", eps, "ev/s", "higher")
		if err := writeJSON(filepath.Join(d, "send.json"), r); err != nil {
			t.Fatal(err)
		}
		return d
	}
	a := write("a", "myelin-sqlite", 500)
	b := write("b", "dendrite-sqlite", 25)
	empty := filepath.Join(root, "c")
	os.MkdirAll(empty, 0o755)
	var out strings.Builder
	if err := runTable([]string{a, b, empty, empty}, &out); err != nil {
		t.Fatal(err)
	}
	got := out.String()
	for _, want := range []string{
		"### send S=16 R=4",
		"| metric | myelin-sqlite | dendrite-sqlite | ratio | c | c | ratio |",
		"| events/s (ev/s) | 500 | 25 | 20.00 | – | – |  |",
		"- c: not run",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("table lacks %q:\n%s", want, got)
		}
	}
	if err := runTable([]string{a}, &out); err == nil {
		t.Error("an odd number of directories: no error")
	}
}
