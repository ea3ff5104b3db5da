package bus

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/sirupsen/logrus"

	"myelin/internal/bus/bustest"
	"myelin/internal/poll"
)

// testLog writes the bus's log to the test's.
func testLog(t *testing.T) *logrus.Entry {
	l := logrus.New()
	l.SetLevel(logrus.InfoLevel)
	l.SetOutput(testWriter{t})
	return logrus.NewEntry(l)
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// fault breaks a bus.
type fault struct {
	name  string
	apply func(t *testing.T, b *Bus)
	// sameConn: the fault leaves the connection as it is.
	sameConn bool
}

// protocolError makes the server answer -ERR on the bus's connection, as
// issue 10's 5,000-character room ID did, which closes it for good.
func protocolError(t *testing.T, b *Bus) {
	nc := b.Conn()
	_ = nc.Publish(InputRoomEvent+"."+strings.Repeat("a", 5000), nil)
	poll.True(t, 10*time.Second, "the connection to close", nc.IsClosed)
}

var embeddedFaults = []fault{
	// The consumer's iterator ends; it must be reopened, not spun on.
	{name: "consumer deleted", sameConn: true, apply: func(t *testing.T, b *Bus) {
		if err := b.JetStream().DeleteConsumer(context.Background(), OutputTyping, "test"); err != nil {
			t.Fatal(err)
		}
	}},
	{"connection closed", func(t *testing.T, b *Bus) { b.Conn().Close() }, false},
	{"protocol error", protocolError, false},
	{"server stopped", func(t *testing.T, b *Bus) { b.EmbeddedServer().Shutdown() }, false},
	{"JetStream disabled", func(t *testing.T, b *Bus) {
		if err := b.EmbeddedServer().DisableJetStream(); err != nil {
			t.Fatal(err)
		}
	}, false},
}

// TestHealsEmbedded: after each fault, with nothing done by the test, a
// publish succeeds, the consumer and the subscription made before every
// fault work again, and the bus reports healthy.
func TestHealsEmbedded(t *testing.T) {
	b, err := Open(context.Background(), Options{StoreDir: t.TempDir(), Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	checkHeals(t, b, embeddedFaults)
}

// TestHealsExternal: the external NATS server restarts, on the same port
// and store, and the bus follows.
func TestHealsExternal(t *testing.T) {
	store := t.TempDir()
	srv := bustest.RunServer(t, store, -1)
	port := srv.Addr().(*net.TCPAddr).Port
	defer func() { srv.Shutdown(); srv.WaitForShutdown() }()
	b, err := Open(context.Background(), Options{URL: fmt.Sprintf("nats://127.0.0.1:%d", port), Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	checkHeals(t, b, []fault{
		{name: "protocol error", apply: protocolError},
		{name: "server restarted", apply: func(t *testing.T, b *Bus) {
			srv.Shutdown()
			srv.WaitForShutdown()
			poll.Until(t, 10*time.Second, func() error {
				if b.Health(context.Background()) == nil {
					return errors.New("healthy without a server")
				}
				return nil
			})
			srv = bustest.RunServer(t, store, port)
		}},
	})
}

func checkHeals(t *testing.T, b *Bus, faults []fault) {
	ctx := context.Background()
	cons, err := b.OpenConsumer(ctx, OutputTyping, OutputConsumer("test", jetstream.DeliverAllPolicy))
	if err != nil {
		t.Fatal(err)
	}
	consumed := make(chan string, 1000)
	cctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		cons.Consume(cctx, b.log, func(_ context.Context, m jetstream.Msg) error {
			consumed <- string(m.Data())
			return nil
		})
	}()
	defer func() { stop(); wg.Wait() }()
	inbox := NewInbox()
	replies := make(chan string, 1000)
	sub, err := b.Subscribe(inbox+".*", func(m *nats.Msg) { replies <- string(m.Data) })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()

	for i, f := range append([]fault{{"none", func(*testing.T, *Bus) {}, true}}, faults...) {
		t.Run(f.name, func(t *testing.T) {
			before, renewed := b.Conn(), b.Renewed()
			f.apply(t, b)
			msg := fmt.Sprintf("message %d", i)
			if err := b.Publish(ctx, NewMsg(OutputTyping, []byte(msg), msg)); err != nil {
				t.Fatalf("publish after the fault: %v", err)
			}
			if !f.sameConn {
				select {
				case <-renewed:
				default:
					t.Fatal("published without a new connection")
				}
				if b.Conn() == before {
					t.Fatal("the broken connection is still in use")
				}
			}
			// Redeliveries of earlier messages may come first.
			poll.Until(t, 20*time.Second, func() error {
				for {
					select {
					case got := <-consumed:
						if got == msg {
							return nil
						}
					default:
						return errors.New("the consumer has not seen the message")
					}
				}
			})
			poll.Until(t, 10*time.Second, func() error {
				if err := b.Send(inbox+".x", []byte(msg)); err != nil {
					return err
				}
				for {
					select {
					case got := <-replies:
						if got == msg {
							return nil
						}
					case <-time.After(100 * time.Millisecond):
						return errors.New("the subscription did not receive")
					}
				}
			})
			poll.Until(t, 10*time.Second, func() error { return b.Health(ctx) })
		})
	}
}

// TestRefusesBadSubjects: a subject that would make the server answer
// -ERR is refused before it is sent, and the connection stays.
func TestRefusesBadSubjects(t *testing.T) {
	ctx := context.Background()
	b, err := Open(ctx, Options{StoreDir: t.TempDir(), Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	nc := b.Conn()
	long := InputRoomEvent + "." + strings.Repeat("a", 5000)
	if err := b.Publish(ctx, &nats.Msg{Subject: long}); err == nil {
		t.Fatal("published on a 5,000-byte subject")
	}
	if err := b.PublishAll(ctx, []*nats.Msg{NewMsg(long, nil, "x")}); err == nil {
		t.Fatal("published all on a 5,000-byte subject")
	}
	if err := b.Send(long, nil); err == nil {
		t.Fatal("sent on a 5,000-byte subject")
	}
	if _, err := b.Subscribe("a..b", func(*nats.Msg) {}); err == nil {
		t.Fatal("subscribed to a malformed subject")
	}
	// The digest of a 5,000-character room ID is an ordinary subject.
	if err := b.Publish(ctx, NewMsg(RoomSubject("!"+strings.Repeat("a", 5000)+":localhost"), []byte("{}"), "req")); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil || nc.IsClosed() || b.Conn() != nc {
		t.Fatalf("the connection did not survive: %v", err)
	}
}

// TestPublishUnavailable: with no server to heal to, a publish fails
// within its PublishRetry with an error the HTTP edge answers 503.
func TestPublishUnavailable(t *testing.T) {
	store := t.TempDir()
	srv := bustest.RunServer(t, store, -1)
	b, err := Open(context.Background(), Options{URL: srv.ClientURL(), PublishRetry: time.Second, Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	srv.Shutdown()
	srv.WaitForShutdown()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err = b.Publish(ctx, NewMsg(OutputTyping, []byte("x"), "x"))
	var un interface{ Unavailable() bool }
	if !errors.As(err, &un) || !un.Unavailable() {
		t.Fatalf("publish without a server: %v, want an Unavailable error", err)
	}
	if ctx.Err() != nil {
		t.Fatal("the publish waited for its context, not its PublishRetry")
	}
	if err := b.Health(context.Background()); err == nil {
		t.Fatal("healthy without a server")
	}
	// Once the outage has lasted longer than PublishRetry, a publish is
	// answered at once instead of waiting it out again: with a context
	// shorter than PublishRetry it still fails as Unavailable.
	poll.True(t, 10*time.Second, "the outage to outlast PublishRetry", func() bool { return b.downLongerThan(time.Second) })
	short, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	err = b.Publish(short, NewMsg(OutputTyping, []byte("x"), "y"))
	if !errors.As(err, &un) || !un.Unavailable() {
		t.Fatalf("publish in a long outage: %v, want an Unavailable error at once", err)
	}
}
