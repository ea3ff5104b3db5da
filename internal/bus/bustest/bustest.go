// Package bustest runs a NATS server for tests that need an external one
// (the bus's own, and the whole-server fault tests). Test code only.
package bustest

import (
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
)

// RunServer starts a NATS server with JetStream on a loopback port (-1:
// any free one), storing in storeDir. The caller shuts it down (and may
// start another on the same port and store, as a restart).
func RunServer(t testing.TB, storeDir string, port int) *natsserver.Server {
	t.Helper()
	ns, err := natsserver.NewServer(&natsserver.Options{
		Host: "127.0.0.1", Port: port, JetStream: true, StoreDir: storeDir, NoSigs: true, NoLog: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		t.Fatal("nats server not ready")
	}
	return ns
}
