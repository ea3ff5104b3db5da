package syncapi

import (
	"context"
	"fmt"
	"sync"
	"testing"
)

// BenchmarkNotifierWake measures waking every long-poll of a room's members
// for one event: each iteration is one event and all waiters returning.
func BenchmarkNotifierWake(b *testing.B) {
	for _, waiters := range []int{100, 1000, 10000} {
		b.Run(fmt.Sprint(waiters), func(b *testing.B) {
			users := make([]string, waiters)
			for i := range users {
				users[i] = fmt.Sprintf("@u%d:bench", i)
			}
			n := NewNotifier(Token{}, map[string][]string{"!room:bench": users})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var woken sync.WaitGroup
			start := make([]chan int64, waiters)
			for i := range users {
				start[i] = make(chan int64)
				go func(i int) {
					for since := range start[i] {
						n.Wait(ctx, users[i], "D", Token{pduStream: since})
						woken.Done()
					}
				}(i)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for it := 0; it < b.N; it++ {
				pos := int64(it)
				woken.Add(waiters)
				for i := range start {
					start[i] <- pos
				}
				n.OnRoomEvent("!room:bench", pos+1, "", "", false)
				woken.Wait()
			}
			b.StopTimer()
			for i := range start {
				close(start[i])
			}
		})
	}
}
