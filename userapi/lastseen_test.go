package userapi

import (
	"testing"

	"myelin/userapi/storage"
)

func TestLastSeenBatch(t *testing.T) {
	var b lastSeenBatch
	if p := b.take(); len(p) != 0 {
		t.Fatalf("empty batch gave %v", p)
	}
	b.add(1, 100, "10.0.0.1")
	b.add(1, 200, "") // no IP known: the pending one stays
	b.add(2, 150, "")
	b.add(3, 120, "10.0.0.3")
	b.add(3, 130, "10.0.0.4")
	want := map[int64]storage.LastSeen{1: {TS: 200, IP: "10.0.0.1"}, 2: {TS: 150}, 3: {TS: 130, IP: "10.0.0.4"}}
	got := b.take()
	if len(got) != len(want) {
		t.Fatalf("took %v, want %v", got, want)
	}
	for s, w := range want {
		if got[s] != w {
			t.Errorf("session %d: %+v, want %+v", s, got[s], w)
		}
	}
	if p := b.take(); len(p) != 0 {
		t.Fatalf("second take gave %v", p)
	}
}
