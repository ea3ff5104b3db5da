package fanout

import (
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

// TestEach: every step runs once, whatever the count, and steps run at
// once when there are enough of them.
func TestEach(t *testing.T) {
	for _, n := range []int{0, 1, MinPerWorker, 2*MinPerWorker + 1, 50, 1000} {
		calls := make([]atomic.Int32, n)
		Each(n, func(i int) { calls[i].Add(1) })
		for i := range calls {
			if c := calls[i].Load(); c != 1 {
				t.Fatalf("n=%d: step %d ran %d times", n, i, c)
			}
		}
	}
	if runtime.GOMAXPROCS(0) < 2 {
		t.Skip("one CPU: no steps at once")
	}
	// Two steps that each wait for the other to start can only finish
	// if they run at once.
	var started, saw atomic.Int32
	done := make(chan struct{})
	go func() {
		Each(2*MinPerWorker, func(i int) {
			if i > 1 {
				return
			}
			started.Add(1)
			deadline := time.Now().Add(5 * time.Second)
			for time.Now().Before(deadline) {
				if started.Load() == 2 {
					saw.Add(1)
					return
				}
				runtime.Gosched()
			}
		})
		close(done)
	}()
	<-done
	if saw.Load() != 2 {
		t.Fatal("the steps did not run at once")
	}
}

// TestEachPanic: a step's panic reaches the caller, in its goroutine,
// whether the steps run on one goroutine or several.
func TestEachPanic(t *testing.T) {
	for _, n := range []int{1, 50} {
		got := func() (p any) {
			defer func() { p = recover() }()
			Each(n, func(i int) {
				if i == n-1 {
					panic("odd input")
				}
			})
			return nil
		}()
		if got != "odd input" {
			t.Errorf("n=%d: recovered %v, want the step's panic", n, got)
		}
	}
}
