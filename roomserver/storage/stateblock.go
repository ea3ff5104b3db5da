package storage

import (
	"encoding/binary"
	"errors"
	"sort"
)

// Entry maps a state tuple (type, state key) to the event that holds it.
type Entry struct {
	Tuple int64
	Event int64
}

// Snapshot is a room state: the entries of its blocks. Entry e lives in
// block e.Tuple mod len(Blocks), and len(Blocks) is a power of two, so a
// state change rewrites only the block it falls in; when blocks grow past
// targetPerBlock entries on average, the snapshot doubles its block count.
type Snapshot struct {
	NID    int64
	Blocks []int64 // block NIDs; 0 is the empty block
	Count  int64   // number of entries
}

// targetPerBlock bounds the average block size: a state change costs about
// this many entries to write, whatever the room's size.
const targetPerBlock = 64

func bucketOf(tuple int64, n int) int { return int(uint64(tuple) & uint64(n-1)) }

var errCorrupt = errors.New("corrupt state encoding")

// encodeEntries encodes entries sorted by tuple as varint deltas.
func encodeEntries(es []Entry) []byte {
	b := make([]byte, 0, 2+len(es)*6)
	b = binary.AppendUvarint(b, uint64(len(es)))
	var prev int64
	for _, e := range es {
		b = binary.AppendUvarint(b, uint64(e.Tuple-prev))
		b = binary.AppendUvarint(b, uint64(e.Event))
		prev = e.Tuple
	}
	return b
}

func decodeEntries(b []byte) ([]Entry, error) {
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)) {
		return nil, errCorrupt
	}
	b = b[k:]
	es := make([]Entry, n)
	var prev int64
	for i := range es {
		d, k1 := binary.Uvarint(b)
		if k1 <= 0 {
			return nil, errCorrupt
		}
		ev, k2 := binary.Uvarint(b[k1:])
		if k2 <= 0 {
			return nil, errCorrupt
		}
		b = b[k1+k2:]
		prev += int64(d)
		es[i] = Entry{Tuple: prev, Event: int64(ev)}
	}
	return es, nil
}

func encodeNIDs(ns []int64) []byte {
	b := make([]byte, 0, 1+len(ns)*4)
	b = binary.AppendUvarint(b, uint64(len(ns)))
	for _, n := range ns {
		b = binary.AppendUvarint(b, uint64(n))
	}
	return b
}

func decodeNIDs(b []byte) ([]int64, error) {
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)) {
		return nil, errCorrupt
	}
	b = b[k:]
	ns := make([]int64, n)
	for i := range ns {
		v, k := binary.Uvarint(b)
		if k <= 0 {
			return nil, errCorrupt
		}
		ns[i] = int64(v)
		b = b[k:]
	}
	return ns, nil
}

// mergeEntries applies changes (sorted by tuple; Event 0 removes) to es
// (sorted), returning the result and whether anything changed.
func mergeEntries(es, changes []Entry) ([]Entry, bool) {
	out := make([]Entry, 0, len(es)+len(changes))
	changed := false
	i, j := 0, 0
	for i < len(es) || j < len(changes) {
		switch {
		case j == len(changes) || (i < len(es) && es[i].Tuple < changes[j].Tuple):
			out = append(out, es[i])
			i++
		case i == len(es) || changes[j].Tuple < es[i].Tuple:
			if changes[j].Event != 0 {
				out = append(out, changes[j])
				changed = true
			}
			j++
		default: // same tuple
			if changes[j].Event != 0 {
				out = append(out, changes[j])
			}
			if changes[j].Event != es[i].Event {
				changed = true
			}
			i++
			j++
		}
	}
	return out, changed
}

// sortEntries sorts by tuple, keeping the last of duplicate tuples.
func sortEntries(es []Entry) []Entry {
	sort.SliceStable(es, func(i, j int) bool { return es[i].Tuple < es[j].Tuple })
	out := es[:0]
	for i, e := range es {
		if i+1 < len(es) && es[i+1].Tuple == e.Tuple {
			continue
		}
		out = append(out, e)
	}
	return out
}

// findEntry looks tuple up in sorted entries.
func findEntry(es []Entry, tuple int64) (int64, bool) {
	i := sort.Search(len(es), func(i int) bool { return es[i].Tuple >= tuple })
	if i < len(es) && es[i].Tuple == tuple {
		return es[i].Event, true
	}
	return 0, false
}
