package main

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestParseStat(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    procStat
		wantErr bool
	}{
		{
			name: "plain",
			in:   "30579 (cat) R 30518 30518 20167 0 -1 4194304 101 0 0 0 12 34 5 6 20 0 1 0 726785 3133440 390 18446744073709551615",
			want: procStat{PPID: 30518, UTime: 12, STime: 34, CUTime: 5, CSTime: 6},
		},
		{
			name: "command with spaces and parentheses",
			in:   "42 (my (odd) name) S 1 42 42 0 -1 4194560 500 0 0 0 700 300 0 0 20 0 9 0 100 1000 200 18446744073709551615",
			want: procStat{PPID: 1, UTime: 700, STime: 300},
		},
		{name: "truncated", in: "42 (x) S 1 42 42", wantErr: true},
		{name: "no command", in: "42 x S 1", wantErr: true},
		{name: "garbage time", in: "1 (x) S 0 1 1 0 -1 0 0 0 0 0 zz 1 0 0 20 0 1 0 1 1 1 1", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStat([]byte(tt.in))
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestParseVmRSS(t *testing.T) {
	status := "Name:\tmyelin\nVmPeak:\t 2000000 kB\nVmRSS:\t   123456 kB\nRssAnon:\t 100000 kB\n"
	got, err := parseVmRSS([]byte(status))
	if err != nil || got != 123456*1024 {
		t.Errorf("parseVmRSS = %d, %v; want %d", got, err, 123456*1024)
	}
	if _, err := parseVmRSS([]byte("Name:\tkthreadd\nState:\tS\n")); err == nil {
		t.Error("no VmRSS line: no error")
	}
	if _, err := parseVmRSS([]byte("VmRSS:\t12 MB\n")); err == nil {
		t.Error("unexpected unit: no error")
	}
}

func TestParsePss(t *testing.T) {
	rollup := "55d0c0a4e000-7ffd5b7f2000 ---p 00000000 00:00 0 [rollup]\nRss:  96924 kB\nPss:   71234 kB\nPss_Anon:  70656 kB\n"
	got, err := parsePss([]byte(rollup))
	if err != nil || got != 71234*1024 {
		t.Errorf("parsePss = %d, %v; want %d", got, err, 71234*1024)
	}
	if _, err := parsePss([]byte("Rss:  1 kB\n")); err == nil {
		t.Error("no Pss line: no error")
	}
}

func TestParseClkTck(t *testing.T) {
	pairs := func(order binary.AppendByteOrder, kv ...uint64) []byte {
		var b []byte
		for _, v := range kv {
			b = order.AppendUint64(b, v)
		}
		return b
	}
	auxv := pairs(binary.LittleEndian, 6, 4096, atClkTck, 250, 0, 0)
	if hz, ok := parseClkTck(auxv, 8, binary.LittleEndian); !ok || hz != 250 {
		t.Errorf("parseClkTck = %d, %v; want 250", hz, ok)
	}
	// AT_NULL ends the vector; nothing after it counts.
	auxv = pairs(binary.LittleEndian, 6, 4096, 0, 0, atClkTck, 250)
	if _, ok := parseClkTck(auxv, 8, binary.LittleEndian); ok {
		t.Error("found AT_CLKTCK after AT_NULL")
	}
	var b32 []byte
	for _, v := range []uint32{atClkTck, 100, 0, 0} {
		b32 = binary.BigEndian.AppendUint32(b32, v)
	}
	if hz, ok := parseClkTck(b32, 4, binary.BigEndian); !ok || hz != 100 {
		t.Errorf("32-bit big-endian: %d, %v", hz, ok)
	}
	if hz := clockTicks(); hz <= 0 {
		t.Errorf("clockTicks() = %d", hz)
	}
}

// fakeProc writes a /proc-like tree: pid -> (ppid, utime, stime, cutime, rss kB).
func fakeProc(t *testing.T, dir string, procs map[int][5]int) {
	t.Helper()
	for pid, p := range procs {
		d := filepath.Join(dir, itoa(pid))
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		stat := itoa(pid) + " (p) S " + itoa(p[0]) + " 1 1 0 -1 0 0 0 0 0 " + itoa(p[1]) + " " + itoa(p[2]) + " " + itoa(p[3]) + " 0 20 0 1 0 1 1 1"
		status := "Name:\tp\nVmRSS:\t" + itoa(p[4]) + " kB\n"
		if err := os.WriteFile(filepath.Join(d, "stat"), []byte(stat), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "status"), []byte(status), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func itoa(i int) string { return formatValue(float64(i)) }

func TestSamplerWindow(t *testing.T) {
	dir := t.TempDir()
	s := &Sampler{pid: 10, hz: 100, proc: dir}
	fakeProc(t, dir, map[int][5]int{10: {1, 100, 50, 0, 1024}})
	t0 := s.Mark()
	time.Sleep(10 * time.Millisecond)
	fakeProc(t, dir, map[int][5]int{10: {1, 200, 150, 0, 3072}})
	t1 := s.Mark()
	u := s.Window(t0, t1)
	if u.Samples != 2 || u.CPUS != 2 || u.RSSPeakMB != 3 || u.RSSAvgMB != 2 {
		t.Errorf("window = %+v; want 2 samples, 2 CPU s, peak 3 MB, avg 2 MB", u)
	}
	if u.AvgCores <= 0 {
		t.Errorf("avg cores %v", u.AvgCores)
	}
	os.RemoveAll(filepath.Join(dir, "10"))
	s.Mark()
	if s.GoneReason() == "" {
		t.Error("a vanished process is not reported")
	}
}

func TestSamplerTree(t *testing.T) {
	dir := t.TempDir()
	// 20 is the postmaster; 21 and 22 its backends; 23 a child of 22;
	// 30 is unrelated.
	fakeProc(t, dir, map[int][5]int{
		20: {1, 10, 10, 100, 0},
		21: {20, 1, 2, 0, 0},
		22: {20, 3, 4, 0, 0},
		23: {22, 5, 0, 0, 0},
		30: {1, 1000, 1000, 0, 0},
	})
	s := &Sampler{pid: 20, tree: true, hz: 100, proc: dir}
	smp, err := s.read()
	if err != nil {
		t.Fatal(err)
	}
	// 10+10+100 (own and reaped) + 3 + 7 + 5 ticks.
	if want := 1.35; smp.CPU != want {
		t.Errorf("tree CPU = %v s, want %v", smp.CPU, want)
	}
}
