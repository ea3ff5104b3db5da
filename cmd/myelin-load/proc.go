package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// procStat holds the fields of /proc/PID/stat that the sampler needs, in
// clock ticks.
type procStat struct {
	PPID   int
	UTime  uint64
	STime  uint64
	CUTime uint64
	CSTime uint64
}

// parseStat parses the contents of /proc/PID/stat (proc(5)). The command
// name, field 2, is in parentheses and may itself contain spaces and
// parentheses, so fields are counted from the last ')'.
func parseStat(b []byte) (procStat, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("stat: no ')' in %q", b)
	}
	// After ")": field 3 (state) onwards.
	f := strings.Fields(string(b[i+1:]))
	const (
		ppid   = 4 - 3
		utime  = 14 - 3
		stime  = 15 - 3
		cutime = 16 - 3
		cstime = 17 - 3
	)
	if len(f) <= cstime {
		return procStat{}, fmt.Errorf("stat: %d fields after the command name, want more than %d", len(f), cstime)
	}
	var s procStat
	var err error
	if s.PPID, err = strconv.Atoi(f[ppid]); err != nil {
		return procStat{}, fmt.Errorf("stat: ppid: %w", err)
	}
	for _, x := range []struct {
		dst *uint64
		i   int
	}{{&s.UTime, utime}, {&s.STime, stime}, {&s.CUTime, cutime}, {&s.CSTime, cstime}} {
		// cutime and cstime are signed in the kernel (long); they are never
		// negative in practice, but parse them as such.
		v, err := strconv.ParseInt(f[x.i], 10, 64)
		if err != nil || v < 0 {
			return procStat{}, fmt.Errorf("stat: field %d is %q", x.i+3, f[x.i])
		}
		*x.dst = uint64(v)
	}
	return s, nil
}

// parseVmRSS returns VmRSS from the contents of /proc/PID/status, in bytes.
// Kernel threads and zombies have no VmRSS line: an error.
func parseVmRSS(b []byte) (int64, error) { return kbField(b, "status", "VmRSS") }

// parsePss returns Pss from the contents of /proc/PID/smaps_rollup, in
// bytes: the process's resident memory with each page shared by N
// processes counted 1/N (the binary's pages, shared by servers started
// from one file, count once in a sum over them; RSS counts them in each).
func parsePss(b []byte) (int64, error) { return kbField(b, "smaps_rollup", "Pss") }

// kbField reads the "key:  N kB" line of a /proc file (named src in
// errors), in bytes.
func kbField(b []byte, src, key string) (int64, error) {
	for line := range strings.SplitSeq(string(b), "\n") {
		rest, ok := strings.CutPrefix(line, key+":")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("%s: %s line %q", src, key, line)
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s: %s: %w", src, key, err)
		}
		return kb * 1024, nil
	}
	return 0, fmt.Errorf("%s: no %s line", src, key)
}

// atClkTck is the auxiliary vector entry carrying sysconf(_SC_CLK_TCK).
const atClkTck = 17

// parseClkTck finds AT_CLKTCK in the contents of /proc/self/auxv, a list of
// native-endian (type, value) word pairs ending with AT_NULL.
func parseClkTck(auxv []byte, wordSize int, order binary.ByteOrder) (int, bool) {
	word := func(b []byte) uint64 {
		if wordSize == 4 {
			return uint64(order.Uint32(b))
		}
		return order.Uint64(b)
	}
	for i := 0; i+2*wordSize <= len(auxv); i += 2 * wordSize {
		typ, val := word(auxv[i:]), word(auxv[i+wordSize:])
		if typ == 0 {
			break
		}
		if typ == atClkTck && val > 0 {
			return int(val), true
		}
	}
	return 0, false
}

// clockTicks returns the kernel's USER_HZ, the unit of the times in
// /proc/PID/stat. It is 100 on every mainstream Linux, which is the fallback.
func clockTicks() int {
	if b, err := os.ReadFile("/proc/self/auxv"); err == nil {
		if hz, ok := parseClkTck(b, 8, binary.NativeEndian); ok {
			return hz
		}
	}
	return 100
}

// sample is one reading of a process (or process tree).
type sample struct {
	T   time.Time
	CPU float64 // seconds of user+system time so far
	RSS int64   // bytes; 0 when not measured
	PSS int64   // bytes; 0 when not measured (no smaps_rollup)
}

// Sampler reads the CPU time and RSS of a process at a fixed interval.
// With tree set it sums a whole process tree's CPU time instead (for
// PostgreSQL, whose backends are children of the postmaster) and leaves
// RSS alone, which would count shared buffers once per backend.
type Sampler struct {
	pid  int
	tree bool
	hz   float64
	proc string // /proc, replaced in tests

	mu      sync.Mutex
	samples []sample
	gone    string // why sampling stopped, e.g. the process exited
}

func newSampler(pid int, tree bool) *Sampler {
	return &Sampler{pid: pid, tree: tree, hz: float64(clockTicks()), proc: "/proc"}
}

// Run samples every interval until ctx is done.
func (s *Sampler) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		s.Mark()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Mark takes a sample now and returns its time; scenarios call it at the
// edges of a measured phase so that the phase's CPU time is exact.
func (s *Sampler) Mark() time.Time {
	now := time.Now()
	smp, err := s.read()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		if s.gone == "" {
			s.gone = fmt.Sprintf("%s: %v", now.Format(time.RFC3339), err)
		}
		return now
	}
	smp.T = now
	s.samples = append(s.samples, smp)
	return now
}

func (s *Sampler) read() (sample, error) {
	st, err := s.stat(s.pid)
	if err != nil {
		return sample{}, err
	}
	ticks := st.UTime + st.STime
	var rss, pss int64
	if s.tree {
		// Children that exited were reaped by the root, which added their
		// time to its cutime/cstime; live descendants are summed directly.
		ticks += st.CUTime + st.CSTime
		for _, pid := range s.descendants() {
			if d, err := s.stat(pid); err == nil {
				ticks += d.UTime + d.STime
			}
		}
	} else {
		b, err := os.ReadFile(filepath.Join(s.proc, strconv.Itoa(s.pid), "status"))
		if err != nil {
			return sample{}, err
		}
		if rss, err = parseVmRSS(b); err != nil {
			return sample{}, err
		}
		// Optional: kernels before 4.14 have no smaps_rollup.
		if b, err := os.ReadFile(filepath.Join(s.proc, strconv.Itoa(s.pid), "smaps_rollup")); err == nil {
			pss, _ = parsePss(b)
		}
	}
	return sample{CPU: float64(ticks) / s.hz, RSS: rss, PSS: pss}, nil
}

func (s *Sampler) stat(pid int) (procStat, error) {
	b, err := os.ReadFile(filepath.Join(s.proc, strconv.Itoa(pid), "stat"))
	if err != nil {
		return procStat{}, err
	}
	return parseStat(b)
}

// descendants lists the live processes below s.pid.
func (s *Sampler) descendants() []int {
	ents, err := os.ReadDir(s.proc)
	if err != nil {
		return nil
	}
	children := make(map[int][]int)
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, err := s.stat(pid); err == nil {
			children[st.PPID] = append(children[st.PPID], pid)
		}
	}
	var out []int
	queue := []int{s.pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range children[p] {
			out = append(out, c)
			queue = append(queue, c)
		}
	}
	return out
}

// GoneReason says why sampling failed (typically: the process exited), or
// is empty.
func (s *Sampler) GoneReason() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gone
}

// Usage is a process's resource use over a window of time.
type Usage struct {
	PID       int     `json:"pid"`
	WindowS   float64 `json:"window_s"`
	CPUS      float64 `json:"cpu_s"`
	AvgCores  float64 `json:"avg_cores"`
	RSSPeakMB float64 `json:"rss_peak_mb,omitempty"`
	RSSAvgMB  float64 `json:"rss_avg_mb,omitempty"`
	PSSPeakMB float64 `json:"pss_peak_mb,omitempty"`
	Samples   int     `json:"samples"`
	Gone      string  `json:"gone,omitempty"`
}

// Window summarises the samples taken between from and to inclusive.
func (s *Sampler) Window(from, to time.Time) Usage {
	s.mu.Lock()
	defer s.mu.Unlock()
	u := Usage{PID: s.pid, Gone: s.gone}
	var in []sample
	for _, smp := range s.samples {
		if !smp.T.Before(from) && !smp.T.After(to) {
			in = append(in, smp)
		}
	}
	u.Samples = len(in)
	if len(in) == 0 {
		return u
	}
	first, last := in[0], in[len(in)-1]
	u.WindowS = last.T.Sub(first.T).Seconds()
	u.CPUS = last.CPU - first.CPU
	if u.WindowS > 0 {
		u.AvgCores = u.CPUS / u.WindowS
	}
	var sum, peak, pssPeak int64
	for _, smp := range in {
		sum += smp.RSS
		peak = max(peak, smp.RSS)
		pssPeak = max(pssPeak, smp.PSS)
	}
	u.RSSPeakMB = float64(peak) / (1 << 20)
	u.PSSPeakMB = float64(pssPeak) / (1 << 20)
	u.RSSAvgMB = float64(sum) / float64(len(in)) / (1 << 20)
	return u
}
