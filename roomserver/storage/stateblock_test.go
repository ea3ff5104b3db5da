package storage

import (
	"reflect"
	"testing"
)

func TestEntriesRoundTrip(t *testing.T) {
	for _, es := range [][]Entry{
		{},
		{{1, 1}},
		{{1, 5}, {2, 3}, {1000, 1 << 40}},
	} {
		got, err := decodeEntries(encodeEntries(es))
		if err != nil || !reflect.DeepEqual(got, es) {
			t.Fatalf("round trip %v: got %v, %v", es, got, err)
		}
	}
	if _, err := decodeEntries([]byte{5, 1}); err == nil {
		t.Fatal("truncated encoding decoded")
	}
	ns := []int64{0, 7, 1 << 33}
	if got, err := decodeNIDs(encodeNIDs(ns)); err != nil || !reflect.DeepEqual(got, ns) {
		t.Fatalf("nids round trip: %v %v", got, err)
	}
}

func TestMergeEntries(t *testing.T) {
	tests := []struct {
		name        string
		es, changes []Entry
		want        []Entry
		changed     bool
	}{
		{"add to empty", nil, []Entry{{2, 20}}, []Entry{{2, 20}}, true},
		{"replace", []Entry{{1, 10}, {2, 20}}, []Entry{{2, 21}}, []Entry{{1, 10}, {2, 21}}, true},
		{"same value", []Entry{{1, 10}}, []Entry{{1, 10}}, []Entry{{1, 10}}, false},
		{"remove", []Entry{{1, 10}, {2, 20}}, []Entry{{1, 0}}, []Entry{{2, 20}}, true},
		{"remove missing", []Entry{{1, 10}}, []Entry{{3, 0}}, []Entry{{1, 10}}, false},
		{"interleave", []Entry{{1, 1}, {5, 5}}, []Entry{{0, 9}, {3, 3}, {7, 7}}, []Entry{{0, 9}, {1, 1}, {3, 3}, {5, 5}, {7, 7}}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, changed := mergeEntries(tt.es, tt.changes)
			if changed != tt.changed || !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %v changed=%v, want %v changed=%v", got, changed, tt.want, tt.changed)
			}
		})
	}
}

func BenchmarkMergeBlock(b *testing.B) {
	es := make([]Entry, targetPerBlock)
	for i := range es {
		es[i] = Entry{int64(i * 2), int64(i)}
	}
	ch := []Entry{{33, 99}}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		out, _ := mergeEntries(es, ch)
		_ = encodeEntries(out)
	}
}
