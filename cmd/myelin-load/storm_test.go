package main

import (
	"slices"
	"testing"
	"time"
)

func TestStormWindowsWithin(t *testing.T) {
	w := stormWindows{period: 30 * time.Second, before: 2 * time.Second, after: time.Second}
	tests := []struct {
		name     string
		from, to time.Duration
		want     []int
	}{
		{"the default run: three", 5 * time.Second, 95 * time.Second, []int{1, 2, 3}},
		{"ends inside the third", 5 * time.Second, 90500 * time.Millisecond, []int{1, 2}},
		{"ends as the third does", 5 * time.Second, 91 * time.Second, []int{1, 2, 3}},
		{"starts inside the first", 29 * time.Second, 95 * time.Second, []int{2, 3}},
		{"starts as the first does", 28 * time.Second, 62 * time.Second, []int{1, 2}},
		{"too short", 5 * time.Second, 30 * time.Second, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := w.within(tt.from, tt.to); !slices.Equal(got, tt.want) {
				t.Errorf("within(%v, %v) = %v, want %v", tt.from, tt.to, got, tt.want)
			}
		})
	}
}

func TestStormWindowsIndex(t *testing.T) {
	start := time.Unix(1_000_000, 0)
	w := stormWindows{start: start, period: 30 * time.Second, before: 2 * time.Second, after: time.Second}
	ks := []int{1, 2}
	tests := []struct {
		name string
		at   time.Duration // after start
		want int
	}{
		{"the restart itself", 0, 0},
		{"before the first window", 27999 * time.Millisecond, 0},
		{"first window opens", 28 * time.Second, 1},
		{"on the first timeout", 30 * time.Second, 1},
		{"first window's last instant", 30999 * time.Millisecond, 1},
		{"first window closed", 31 * time.Second, 0},
		{"between windows", 45 * time.Second, 0},
		{"second window", 59 * time.Second, 2},
		{"third window, not measured", 90 * time.Second, 0},
		{"before the start", -30 * time.Second, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := w.index(start.Add(tt.at), ks); got != tt.want {
				t.Errorf("index(start+%v) = %d, want %d", tt.at, got, tt.want)
			}
		})
	}
}

func TestStormWindowsSplit(t *testing.T) {
	start := time.Unix(1_000_000, 0)
	w := stormWindows{start: start, period: 30 * time.Second, before: 2 * time.Second, after: time.Second}
	sent := []sentEvent{
		{at: start.Add(10 * time.Second)},
		{at: start.Add(29 * time.Second)}, // in window 1
		{at: start.Add(40 * time.Second)},
		{at: start.Add(60 * time.Second)}, // in window 2
	}
	seqs := []int64{3, 0, 1, 2, 1, 7, -1} // 7 and -1 were never sent
	latencies := []float64{300, 10, 200, 20, 250, 99, 99}
	bins := make([][]float64, w.bins(time.Second))
	in, out := w.split(sent, seqs, latencies, []int{1, 2}, time.Second, bins)
	if want := []float64{300, 200, 250}; !slices.Equal(in, want) {
		t.Errorf("in = %v, want %v", in, want)
	}
	if want := []float64{10, 20}; !slices.Equal(out, want) {
		t.Errorf("out = %v, want %v", out, want)
	}
	// Window 1 opens at 28 s, so the send at 29 s is in its second
	// second; window 2 opens at 58 s, and 60 s is in its third.
	want := [][]float64{nil, {200, 250}, {300}}
	if !slices.EqualFunc(bins, want, slices.Equal) {
		t.Errorf("bins = %v, want %v", bins, want)
	}
}

func TestTimeouts(t *testing.T) {
	base := time.Unix(2_000_000, 0) // a bucket boundary
	at := func(d time.Duration) int64 { return base.Add(d).UnixMicro() / emptyBucket.Microseconds() }
	tl := timeouts{width: emptyBucket, buckets: map[int64]int64{
		at(0):                      1,
		at(10 * time.Second):       5,
		at(10*time.Second + 50e6):  700, // 10.05 s
		at(10*time.Second + 200e6): 600, // 10.2 s: same 250 ms as 10.05 s
		at(10*time.Second + 300e6): 650, // 10.3 s: not with 10.05 s
		at(20 * time.Second):       2,
	}}
	tests := []struct {
		name     string
		from, to time.Duration
		want     int64
	}{
		{"all", 0, 30 * time.Second, 1958},
		{"to is exclusive", 0, 20 * time.Second, 1956},
		{"from is inclusive", 10 * time.Second, 11 * time.Second, 1955},
		{"none", 11 * time.Second, 19 * time.Second, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tl.count(base.Add(tt.from), base.Add(tt.to)); got != tt.want {
				t.Errorf("count = %d, want %d", got, tt.want)
			}
		})
	}
	n, when := tl.peak(base, base.Add(30*time.Second), 250*time.Millisecond)
	if n != 1305 || !when.Equal(base.Add(10*time.Second)) {
		t.Errorf("peak = %d at %v, want 1305 at +10s", n, when.Sub(base))
	}
	// The peak is sought only inside the span asked for.
	if n, _ := tl.peak(base.Add(10250*time.Millisecond), base.Add(30*time.Second), 250*time.Millisecond); n != 650 {
		t.Errorf("peak after 10.25 s = %d, want 650", n)
	}
}

func TestStormParamsValidate(t *testing.T) {
	ok := stormParams{
		fanoutParams: fanoutParams{users: 2000, roomSize: 100, rate: 1, duration: 90 * time.Second, grace: 10 * time.Second,
			poll: 30 * time.Second, settle: 5 * time.Second, inflight: 64},
		activeRooms: 1, before: 3 * time.Second, after: time.Second,
	}
	if err := ok.validate(); err != nil {
		t.Fatalf("default parameters: %v", err)
	}
	tests := []struct {
		name   string
		change func(p *stormParams)
	}{
		{"more active rooms than rooms", func(p *stormParams) { p.activeRooms = 21 }},
		{"no active room", func(p *stormParams) { p.activeRooms = 0 }},
		{"windows as long as the period", func(p *stormParams) { p.before, p.after = 20*time.Second, 10*time.Second }},
		{"sending covers no window", func(p *stormParams) { p.duration = 20 * time.Second }},
		{"negative window", func(p *stormParams) { p.before = -time.Second }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := ok
			tt.change(&p)
			if p.validate() == nil {
				t.Error("accepted")
			}
		})
	}
}
