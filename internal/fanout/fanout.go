// Package fanout runs the independent steps of a batch (checking the
// signatures of a transaction's PDUs, parsing them) on up to GOMAXPROCS
// goroutines, each step writing only its own result, so results stay in
// their order. Anything may import it.
package fanout

import (
	"runtime"
	"sync"
	"sync/atomic"
)

// MinPerWorker is the fewest steps worth a goroutine: the steps this is
// for take 0.1 to 0.3 ms, starting a goroutine about a microsecond.
const MinPerWorker = 4

// Each calls f(i) for every i in [0, n), on the caller's goroutine and
// up to GOMAXPROCS-1 more (one per MinPerWorker steps at most), and
// returns when all have returned. f must be safe to call concurrently for
// different i. A panic of f reaches the caller, once every goroutine has
// stopped.
//
// The caller takes steps too: on a busy process a new goroutine waits in
// the run queue behind the others, and a caller waiting for it would
// take longer than doing the work alone. So the caller never waits for
// more than the steps the others have started.
func Each(n int, f func(i int)) {
	workers := min(runtime.GOMAXPROCS(0), n/MinPerWorker)
	if workers <= 1 {
		for i := range n {
			f(i)
		}
		return
	}
	var next atomic.Int64
	take := func() {
		for {
			i := int(next.Add(1)) - 1
			if i >= n {
				return
			}
			f(i)
		}
	}
	var wg sync.WaitGroup
	var once sync.Once
	var panicked any
	for range workers - 1 {
		wg.Go(func() {
			// A panic is raised again in the caller's goroutine, where
			// its recover (gomatrixserverlib panics on some odd input)
			// can see it; in a worker it would end the process.
			defer func() {
				if p := recover(); p != nil {
					once.Do(func() { panicked = p })
				}
			}()
			take()
		})
	}
	func() {
		defer func() {
			if p := recover(); p != nil {
				once.Do(func() { panicked = p })
			}
		}()
		take()
	}()
	wg.Wait()
	if panicked != nil {
		panic(panicked)
	}
}
