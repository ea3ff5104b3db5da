package testserver

import (
	"bytes"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"myelin/internal/poll"
)

// live counts the test servers running in this process and remembers the
// goroutines that ran before the first of them started: when the last one
// stops, every goroutine of the server's code started since must have
// ended. (Package state, in test code only: tests start servers one after
// another and sometimes several at once, and the check is only exact once
// none runs.)
var live struct {
	sync.Mutex
	n      int
	before map[string]bool
}

func serverStarted() {
	live.Lock()
	defer live.Unlock()
	if live.n == 0 {
		live.before = map[string]bool{}
		for _, g := range goroutines() {
			live.before[g.id] = true
		}
	}
	live.n++
}

// serverStopped fails t if this was the last running server and
// goroutines of the server's code outlive it.
func serverStopped(t testing.TB) {
	live.Lock()
	live.n--
	last, before := live.n == 0, live.before
	live.Unlock()
	if !last {
		return
	}
	var leaked []goroutine
	err := poll.Wait(10*time.Second, func() error {
		leaked = leaked[:0]
		for _, g := range goroutines() {
			if !before[g.id] && g.ofServer() {
				leaked = append(leaked, g)
			}
		}
		if len(leaked) > 0 {
			return fmt.Errorf("%d goroutines left", len(leaked))
		}
		return nil
	})
	if err != nil {
		var b strings.Builder
		for _, g := range leaked {
			b.WriteString(g.stack)
			b.WriteString("\n\n")
		}
		t.Errorf("the server left %d goroutines running after it stopped:\n%s", len(leaked), b.String())
	}
}

type goroutine struct {
	id    string
	stack string
}

// serverCode are the prefixes of functions that only a server's own
// goroutines run: Myelin's packages (not this one, not tests), NATS, the
// database drivers and net/http's server side.
var serverCode = []string{"myelin/", "github.com/nats-io/", "database/sql.", "modernc.org/sqlite", "github.com/lib/pq", "net/http.(*conn).serve"}

func (g goroutine) ofServer() bool {
	for _, line := range strings.Split(g.stack, "\n") {
		if strings.HasPrefix(line, "\t") || strings.HasPrefix(line, "created by ") {
			continue
		}
		if strings.HasPrefix(line, "myelin/internal/testserver.") || strings.Contains(line, "_test.") {
			return false // a test's own goroutine (a client waiting on the server)
		}
		for _, p := range serverCode {
			if strings.HasPrefix(line, p) {
				return true
			}
		}
	}
	return false
}

func goroutines() []goroutine {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var out []goroutine
	for _, block := range bytes.Split(buf, []byte("\n\n")) {
		header, _, _ := bytes.Cut(block, []byte("\n"))
		fields := bytes.Fields(header)
		if len(fields) < 2 || string(fields[0]) != "goroutine" {
			continue
		}
		out = append(out, goroutine{id: string(fields[1]), stack: string(block)})
	}
	return out
}
