package bus

import (
	"fmt"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// Embedded is a NATS server with JetStream running inside the process,
// reachable only through in-process connections.
type Embedded struct {
	server *natsserver.Server
}

// StartEmbedded starts a NATS server that keeps JetStream data in storeDir
// and listens on no port.
func StartEmbedded(storeDir string) (*Embedded, error) {
	opts := &natsserver.Options{
		ServerName:         "myelin",
		DontListen:         true,
		JetStream:          true,
		StoreDir:           storeDir,
		NoSigs:             true,
		NoLog:              true,
		MaxPayload:         8 << 20,
		JetStreamMaxMemory: 256 << 20,
		// A crashed process must not lose acknowledged input: flush the
		// JetStream file store often (the OS cache survives a process crash
		// anyway; this bounds what a machine crash can lose).
		SyncInterval: 2 * time.Second,
	}
	ns, err := natsserver.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("nats server: %w", err)
	}
	ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		ns.Shutdown()
		return nil, fmt.Errorf("embedded nats server did not become ready")
	}
	return &Embedded{server: ns}, nil
}

// Connect opens an in-process client connection.
func (e *Embedded) Connect(name string) (*nats.Conn, error) {
	nc, err := nats.Connect("", nats.InProcessServer(e.server), nats.Name(name), nats.MaxReconnects(-1))
	if err != nil {
		return nil, fmt.Errorf("connect to embedded nats: %w", err)
	}
	return nc, nil
}

// Shutdown stops the server and waits for it.
func (e *Embedded) Shutdown() {
	e.server.Shutdown()
	e.server.WaitForShutdown()
}

// ConnectURL opens a connection to an external NATS server.
func ConnectURL(url, name string) (*nats.Conn, error) {
	nc, err := nats.Connect(url, nats.Name(name), nats.MaxReconnects(-1), nats.ReconnectWait(time.Second))
	if err != nil {
		return nil, fmt.Errorf("connect to nats %s: %w", url, err)
	}
	return nc, nil
}
