package stateres

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	gmsl "github.com/matrix-org/gomatrixserverlib"
)

var updateSeeds = flag.Bool("update-seeds", false, "rewrite testdata/fuzz/FuzzResolve from generated forks")

var fuzzVersions = []gmsl.RoomVersion{gmsl.RoomVersionV1, gmsl.RoomVersionV10, gmsl.RoomVersionV11, gmsl.RoomVersionV12}

// fuzzInput encodes forks for FuzzResolve: the first byte picks the room
// version, then one event a line: a byte whose bits say which state sets
// hold the event (none: an auth event only), then its JSON.
func fuzzInput(verIndex byte, r *testRoom, forks []StateSet) []byte {
	var b bytes.Buffer
	b.WriteByte(verIndex)
	for id, ev := range r.events {
		mask := byte(0)
		for i, f := range forks {
			for _, s := range f {
				if s.EventID() == id {
					mask |= 1 << i
				}
			}
		}
		b.WriteByte('0' + mask)
		b.Write(ev.JSON())
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// FuzzResolve feeds arbitrary events and state sets to Resolve, which must
// answer (a state or an error) without panicking.
func FuzzResolve(f *testing.F) {
	for i := 0; i < 4; i++ {
		rng := rand.New(rand.NewPCG(uint64(i), 7))
		vi := byte(i % len(fuzzVersions))
		r := newTestRoom(f, fuzzVersions[vi])
		f.Add(fuzzInput(vi, r, randomForks(r, rng)))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		ver := gmsl.MustGetRoomVersion(fuzzVersions[int(data[0])%len(fuzzVersions)])
		sets := make([]StateSet, 3)
		for i := range sets {
			sets[i] = StateSet{}
		}
		byID := map[string]gmsl.PDU{}
		for _, line := range bytes.Split(data[1:], []byte("\n")) {
			if len(line) < 2 {
				continue
			}
			ev, err := ver.NewEventFromTrustedJSON(line[1:], false)
			if err != nil {
				continue
			}
			byID[ev.EventID()] = ev
			if ev.StateKey() == nil {
				continue
			}
			for i := range sets {
				if (line[0]-'0')&(1<<i) != 0 {
					sets[i][gmsl.StateKeyTuple{EventType: ev.Type(), StateKey: *ev.StateKey()}] = ev
				}
			}
		}
		load := func(_ context.Context, ids []string) ([]gmsl.PDU, error) {
			var out []gmsl.PDU
			for _, id := range ids {
				if ev, ok := byID[id]; ok {
					out = append(out, ev)
				}
			}
			return out, nil
		}
		res, err := Resolve(context.Background(), Params{Version: ver.Version(), StateSets: sets, Load: load, MaxEvents: 10_000})
		if err == nil {
			for k, ev := range res {
				if ev == nil || ev.Type() != k.EventType || !ev.StateKeyEquals(k.StateKey) {
					t.Fatalf("resolved state has %v under %v", ev, k)
				}
			}
		}
	})
}

// TestWriteFuzzSeeds rewrites the committed seed corpus with -update-seeds.
func TestWriteFuzzSeeds(t *testing.T) {
	if !*updateSeeds {
		t.Skip("run with -update-seeds to rewrite the seed corpus")
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzResolve")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 12; i++ {
		rng := rand.New(rand.NewPCG(uint64(100+i), 7))
		vi := byte(i % len(fuzzVersions))
		r := newTestRoom(t, fuzzVersions[vi])
		in := fuzzInput(vi, r, randomForks(r, rng))
		body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", in)
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("fork-v%s-%02d", fuzzVersions[vi], i)), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
