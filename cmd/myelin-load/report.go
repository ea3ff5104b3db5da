package main

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
)

// Report is the outcome of one scenario run, printed as a table and
// written as JSON with -json.
type Report struct {
	Tool     string            `json:"tool"`
	Scenario string            `json:"scenario"`
	Name     string            `json:"name"` // the scenario and its size, e.g. "fanout M=1000"
	Label    string            `json:"label"`
	BaseURL  string            `json:"base_url"`
	Started  time.Time         `json:"started"`
	Finished time.Time         `json:"finished"`
	Params   map[string]string `json:"params"`
	Host     HostInfo          `json:"host"`

	Metrics []Metric `json:"metrics"`
	Details any      `json:"details,omitempty"`
	// Server and DB cover the measured phase of the scenario, not setup.
	Server       *Usage         `json:"server,omitempty"`
	DB           *Usage         `json:"db,omitempty"`
	ServerGone   string         `json:"server_gone,omitempty"`
	Errors       map[string]int `json:"errors,omitempty"`
	ErrorSamples []string       `json:"error_samples,omitempty"`
	Failed       string         `json:"failed,omitempty"`
}

// Metric is one headline number of a run. Better is "higher", "lower" or
// empty (informational).
type Metric struct {
	Name   string  `json:"name"`
	Value  float64 `json:"value"`
	Unit   string  `json:"unit"`
	Better string  `json:"better,omitempty"`
}

func (r *Report) add(name string, v float64, unit, better string) {
	r.Metrics = append(r.Metrics, Metric{Name: name, Value: v, Unit: unit, Better: better})
}

// addLatency adds the p50, p95 and p99 of s as metrics named prefix p50 ...
func (r *Report) addLatency(prefix string, s Summary) {
	r.add(prefix+" p50", s.P50, "ms", "lower")
	r.add(prefix+" p95", s.P95, "ms", "lower")
	r.add(prefix+" p99", s.P99, "ms", "lower")
}

func (r *Report) addUsageMetrics() {
	if u := r.Server; u != nil && u.Samples > 1 {
		r.add("server CPU", u.CPUS, "s", "lower")
		r.add("server avg cores", u.AvgCores, "cores", "lower")
		r.add("server RSS peak", u.RSSPeakMB, "MB", "lower")
		r.add("server RSS avg", u.RSSAvgMB, "MB", "lower")
	}
	if u := r.DB; u != nil && u.Samples > 1 {
		r.add("database CPU", u.CPUS, "s", "lower")
		r.add("database avg cores", u.AvgCores, "cores", "lower")
	}
}

// print writes the human-readable table.
func (r *Report) print(w io.Writer) {
	fmt.Fprintf(w, "\n== %s  %s  (%s)\n", r.Name, r.Label, r.BaseURL)
	fmt.Fprintf(w, "   %s .. %s, load average %s -> %s on %d CPUs\n",
		r.Started.Format(time.RFC3339), r.Finished.Format("15:04:05"), r.Host.LoadAvgStart, r.Host.LoadAvgEnd, r.Host.CPUs)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	for _, m := range r.Metrics {
		fmt.Fprintf(tw, "   %s\t%s\t %s\t\n", m.Name, formatValue(m.Value), m.Unit)
	}
	tw.Flush()
	for _, u := range []struct {
		what string
		u    *Usage
	}{{"server", r.Server}, {"database", r.DB}} {
		if u.u != nil && u.u.Gone != "" {
			fmt.Fprintf(w, "   %s process %d: sampling stopped: %s\n", u.what, u.u.PID, u.u.Gone)
		}
	}
	if len(r.Errors) > 0 {
		fmt.Fprintln(w, "   errors:")
		keys := make([]string, 0, len(r.Errors))
		for k := range r.Errors {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(w, "     %6d  %s\n", r.Errors[k], k)
		}
		for _, s := range r.ErrorSamples[:min(5, len(r.ErrorSamples))] {
			fmt.Fprintf(w, "       e.g. %s\n", s)
		}
	}
	if r.Failed != "" {
		fmt.Fprintf(w, "   FAILED: %s\n", r.Failed)
	}
}

func formatValue(v float64) string {
	switch {
	case v == float64(int64(v)) && v < 1e15 && v > -1e15:
		return fmt.Sprintf("%d", int64(v))
	case v >= 100 || v <= -100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10 || v <= -10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.3g", v)
	}
}

// HostInfo describes the machine the run happened on.
type HostInfo struct {
	CPUs         int    `json:"cpus"`
	CPUModel     string `json:"cpu_model"`
	MemTotalMB   int64  `json:"mem_total_mb"`
	NoFile       uint64 `json:"nofile_limit"`
	LoadAvgStart string `json:"loadavg_start"`
	LoadAvgEnd   string `json:"loadavg_end"`
	GoVersion    string `json:"go_version"`
}

func hostInfo() HostInfo {
	h := HostInfo{CPUs: runtime.NumCPU(), LoadAvgStart: loadAvg(), GoVersion: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				h.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				var kb int64
				fmt.Sscanf(strings.TrimSpace(rest), "%d", &kb)
				h.MemTotalMB = kb / 1024
			}
		}
	}
	h.NoFile = noFileLimit()
	return h
}

// loadAvg returns the 1, 5 and 15 minute load averages from /proc/loadavg.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// noFileLimit is this process's soft limit on open file descriptors.
func noFileLimit() uint64 {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0
	}
	return rl.Cur
}
