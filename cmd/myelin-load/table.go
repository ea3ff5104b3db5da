package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// runTable prints a markdown comparison of the -json reports in several
// directories, one per server and database. Directories come in pairs, and
// each pair gets a ratio column (first / second): Myelin then Dendrite on
// SQLite, then on PostgreSQL, say.
func runTable(args []string, w io.Writer) error {
	if len(args) == 0 || len(args)%2 != 0 {
		return errors.New("usage: myelin-load table DIR_A DIR_B [DIR_C DIR_D ...] (pairs; ratio = A/B)")
	}
	var cols []column
	for _, dir := range args {
		c, err := loadColumn(dir)
		if err != nil {
			return err
		}
		cols = append(cols, c)
	}
	return writeTable(w, cols)
}

// column is one server+database: its reports by name.
type column struct {
	label   string
	reports map[string]*Report
	order   []string
}

func loadColumn(dir string) (column, error) {
	c := column{label: filepath.Base(dir), reports: make(map[string]*Report)}
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		return c, err
	}
	slices.Sort(files)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return c, err
		}
		var r Report
		if err := json.Unmarshal(b, &r); err != nil || r.Tool != "myelin-load" {
			continue // not a report
		}
		if r.Name == "" {
			r.Name = r.Scenario
		}
		if r.Label != "" {
			c.label = r.Label
		}
		if _, dup := c.reports[r.Name]; !dup {
			c.order = append(c.order, r.Name)
		}
		c.reports[r.Name] = &r
	}
	// A directory without reports is a server not (yet) measured: its
	// column shows dashes.
	return c, nil
}

func writeTable(w io.Writer, cols []column) error {
	// Report names in the order they first appear, scenario by scenario.
	var names []string
	for _, c := range cols {
		for _, n := range c.order {
			if !slices.Contains(names, n) {
				names = append(names, n)
			}
		}
	}
	rank := func(n string) int {
		return slices.IndexFunc(scenarios, func(s scenario) bool { return strings.HasPrefix(n, s.name+" ") || n == s.name })
	}
	slices.SortStableFunc(names, func(a, b string) int { return rank(a) - rank(b) })

	for _, name := range names {
		fmt.Fprintf(w, "### %s\n\n", name)
		header := []string{"metric"}
		align := []string{"---"}
		for i := 0; i < len(cols); i += 2 {
			header = append(header, cols[i].label, cols[i+1].label, "ratio")
			align = append(align, "---:", "---:", "---:")
		}
		fmt.Fprintf(w, "| %s |\n|%s|\n", strings.Join(header, " | "), strings.Join(align, "|"))
		for _, m := range metricNames(cols, name) {
			row := []string{m.Name}
			if m.Unit != "" {
				row[0] += " (" + m.Unit + ")"
			}
			for i := 0; i < len(cols); i += 2 {
				a, aok := cols[i].value(name, m.Name)
				b, bok := cols[i+1].value(name, m.Name)
				row = append(row, cell(a, aok), cell(b, bok), ratio(a, b, aok && bok))
			}
			fmt.Fprintf(w, "| %s |\n", strings.Join(row, " | "))
		}
		fmt.Fprintln(w)
		var notes []string
		for _, c := range cols {
			r := c.reports[name]
			if r == nil {
				notes = append(notes, fmt.Sprintf("%s: not run", c.label))
				continue
			}
			note := fmt.Sprintf("%s: load average %s at start, %s at end", c.label, r.Host.LoadAvgStart, r.Host.LoadAvgEnd)
			if n := sumErrors(r.Errors); n > 0 {
				note += fmt.Sprintf("; %d failed requests", n)
			}
			if r.ServerGone != "" {
				note += "; server process gone: " + r.ServerGone
			}
			if r.Failed != "" {
				note += "; FAILED: " + r.Failed
			}
			notes = append(notes, note)
		}
		for _, n := range notes {
			fmt.Fprintf(w, "- %s\n", n)
		}
		fmt.Fprintln(w)
	}
	return nil
}

// metricNames lists the metrics any column reports for name, in order.
func metricNames(cols []column, name string) []Metric {
	var out []Metric
	for _, c := range cols {
		r := c.reports[name]
		if r == nil {
			continue
		}
		for _, m := range r.Metrics {
			if !slices.ContainsFunc(out, func(o Metric) bool { return o.Name == m.Name }) {
				out = append(out, m)
			}
		}
	}
	return out
}

func (c column) value(name, metric string) (float64, bool) {
	r := c.reports[name]
	if r == nil {
		return 0, false
	}
	for _, m := range r.Metrics {
		if m.Name == metric {
			return m.Value, true
		}
	}
	return 0, false
}

func cell(v float64, ok bool) string {
	if !ok {
		return "–"
	}
	return formatValue(v)
}

func ratio(a, b float64, ok bool) string {
	if !ok || b == 0 || math.IsNaN(a) || math.IsNaN(b) {
		return ""
	}
	return fmt.Sprintf("%.2f", a/b)
}

func sumErrors(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}
