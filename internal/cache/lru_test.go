package cache

import "testing"

func TestLRU(t *testing.T) {
	c := New[string, int](2)
	c.Put("a", 1)
	c.Put("b", 2)
	if v, ok := c.Get("a"); !ok || v != 1 {
		t.Fatalf("get a = %d %v", v, ok)
	}
	c.Put("c", 3) // evicts b, the least recently used
	if _, ok := c.Get("b"); ok {
		t.Fatal("b should have been evicted")
	}
	if _, ok := c.Get("a"); !ok {
		t.Fatal("a should still be cached")
	}
	c.Put("a", 10)
	if v, _ := c.Get("a"); v != 10 {
		t.Fatalf("a = %d after update", v)
	}
	c.Remove("a")
	if _, ok := c.Get("a"); ok || c.Len() != 1 {
		t.Fatalf("after remove: len %d", c.Len())
	}
}

func TestLRUSized(t *testing.T) {
	c := NewSized[string, []byte](10, func(v []byte) int { return len(v) })
	steps := []struct {
		put       string
		size      int
		wantKeys  []string
		wantGone  []string
		wantTotal int
	}{
		{"a", 4, []string{"a"}, nil, 4},
		{"b", 4, []string{"a", "b"}, nil, 8},
		{"c", 4, []string{"b", "c"}, []string{"a"}, 8},   // 12 > 10: a goes
		{"b", 1, []string{"b", "c"}, nil, 5},             // an update changes the cost
		{"d", 20, []string{"d"}, []string{"b", "c"}, 20}, // the newest stays even if it alone is over
	}
	for i, s := range steps {
		c.Put(s.put, make([]byte, s.size))
		for _, k := range s.wantKeys {
			if _, ok := c.Get(k); !ok {
				t.Errorf("step %d: %s missing", i, k)
			}
		}
		for _, k := range s.wantGone {
			if _, ok := c.Get(k); ok {
				t.Errorf("step %d: %s still cached", i, k)
			}
		}
		if got := c.Cost(); got != s.wantTotal {
			t.Errorf("step %d: cost %d, want %d", i, got, s.wantTotal)
		}
	}
	c.Remove("d")
	if c.Cost() != 0 || c.Len() != 0 {
		t.Errorf("after remove: cost %d len %d", c.Cost(), c.Len())
	}
}
