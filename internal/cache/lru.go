// Package cache is a small, bounded, concurrency-safe LRU cache.
package cache

import (
	"container/list"
	"sync"
)

// LRU holds at most Size entries, or entries costing at most maxCost in all
// when it was made with NewSized, dropping the least recently used.
type LRU[K comparable, V any] struct {
	mu      sync.Mutex
	size    int
	maxCost int
	cost    func(V) int
	total   int
	ll      *list.List
	items   map[K]*list.Element
}

type entry[K comparable, V any] struct {
	key  K
	val  V
	cost int
}

// New returns an LRU holding up to size entries.
func New[K comparable, V any](size int) *LRU[K, V] {
	if size < 1 {
		size = 1
	}
	// The map grows as entries come: a cache sized for a large server
	// costs a small one (or one of ten on a test machine) nothing up front.
	return &LRU[K, V]{size: size, ll: list.New(), items: make(map[K]*list.Element, min(size, 64))}
}

// NewSized returns an LRU whose entries cost at most maxCost in all, each
// entry costing cost(v) (typically its size in bytes), so that a cache of
// values of very different sizes is bounded by what it holds rather than by
// how many. The most recently used entry is kept even if it alone costs more.
func NewSized[K comparable, V any](maxCost int, cost func(V) int) *LRU[K, V] {
	c := New[K, V](int(^uint(0) >> 1))
	c.maxCost, c.cost = max(maxCost, 1), cost
	return c
}

// Get returns the value for k and marks it recently used.
func (c *LRU[K, V]) Get(k K) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.items[k]; ok {
		c.ll.MoveToFront(e)
		return e.Value.(*entry[K, V]).val, true
	}
	var zero V
	return zero, false
}

// Put stores v under k.
func (c *LRU[K, V]) Put(k K, v V) {
	cost := 0
	if c.cost != nil {
		cost = c.cost(v)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.items[k]; ok {
		en := e.Value.(*entry[K, V])
		c.total += cost - en.cost
		en.val, en.cost = v, cost
		c.ll.MoveToFront(e)
	} else {
		c.items[k] = c.ll.PushFront(&entry[K, V]{k, v, cost})
		c.total += cost
	}
	for c.ll.Len() > 1 && (c.ll.Len() > c.size || (c.maxCost > 0 && c.total > c.maxCost)) {
		c.removeElement(c.ll.Back())
	}
}

// Remove drops k.
func (c *LRU[K, V]) Remove(k K) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.items[k]; ok {
		c.removeElement(e)
	}
}

func (c *LRU[K, V]) removeElement(e *list.Element) {
	en := e.Value.(*entry[K, V])
	c.ll.Remove(e)
	delete(c.items, en.key)
	c.total -= en.cost
}

// Len is the number of entries.
func (c *LRU[K, V]) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ll.Len()
}

// Cost is what the entries cost in all (0 for a cache made with New).
func (c *LRU[K, V]) Cost() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.total
}
