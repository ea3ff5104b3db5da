package bus

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/sirupsen/logrus"
)

// Options say which NATS server the bus uses.
type Options struct {
	// URL of an external NATS server or cluster; empty runs an embedded
	// server, reachable only from this process.
	URL string
	// StoreDir is where the embedded server keeps JetStream data.
	StoreDir string
	// Name is the connection's name, as NATS monitoring shows it.
	Name string
	// Replicas of each stream (1 for the embedded server).
	Replicas int
	// PublishRetry is how long a publish retries while the connection
	// heals before it returns an UnavailableError (0: 10 s).
	PublishRetry time.Duration
	Log          *logrus.Entry
}

const (
	// minBackoff and maxBackoff bound the wait between two attempts to
	// connect (or to reopen a consumer).
	minBackoff = 100 * time.Millisecond
	maxBackoff = 5 * time.Second
	// stableAfter is how long a connection must have lived for its loss
	// to be retried at once: a server that loses JetStream again right
	// after each restart is restarted with growing pauses.
	stableAfter = 30 * time.Second
	// connectTimeout bounds one attempt: connect, create the streams,
	// re-make the subscriptions.
	connectTimeout = 15 * time.Second
	// probeTimeout bounds a JetStream probe (and a /health check).
	probeTimeout = 5 * time.Second
)

// Bus is the connection to NATS JetStream that every component shares. It
// replaces itself on any loss (see the package doc); it is safe for
// concurrent use.
type Bus struct {
	opts Options
	log  *logrus.Entry
	now  func() time.Time

	cur atomic.Pointer[session] // nil while there is no connection

	mu      sync.Mutex
	renewed chan struct{} // closed, and replaced, when a connection comes up
	subs    map[*Subscription]bool
	server  *natsserver.Server // the embedded server; nil for an external one
	outage  outage
	closed  bool

	kick   chan struct{} // asks the supervisor to probe now
	cancel context.CancelFunc
	done   chan struct{} // closed when the supervisor has stopped
}

// session is one connection's lifetime.
type session struct {
	nc     *nats.Conn
	js     jetstream.JetStream
	closed chan struct{} // closed when nc is
	up     time.Time
}

// Open connects to NATS (starting the embedded server when opts.URL is
// empty), creates the streams, and keeps the connection healthy until
// Close. It fails if the first connection cannot be made.
func Open(ctx context.Context, opts Options) (*Bus, error) {
	if opts.Log == nil {
		l := logrus.New()
		l.SetLevel(logrus.PanicLevel)
		opts.Log = logrus.NewEntry(l)
	}
	if opts.Name == "" {
		opts.Name = "myelin"
	}
	if opts.PublishRetry <= 0 {
		opts.PublishRetry = defaultPublishRetry
	}
	b := &Bus{
		opts:    opts,
		log:     opts.Log,
		now:     time.Now,
		renewed: make(chan struct{}),
		subs:    map[*Subscription]bool{},
		kick:    make(chan struct{}, 1),
		done:    make(chan struct{}),
	}
	if err := b.connect(ctx); err != nil {
		b.stopServer()
		return nil, err
	}
	sctx, cancel := context.WithCancel(context.Background())
	b.cancel = cancel
	go b.supervise(sctx)
	return b, nil
}

// Close stops healing, flushes and closes the connection (so that naks
// sent by stopping consumers reach the server) and stops the embedded
// server. Components should have stopped using the bus first.
func (b *Bus) Close() {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return
	}
	b.closed = true
	close(b.renewed) // wakes whoever waits for a connection: it sees closed
	b.mu.Unlock()
	b.cancel()
	<-b.done
	if s := b.cur.Swap(nil); s != nil {
		_ = s.nc.FlushTimeout(5 * time.Second)
		s.close()
	}
	b.stopServer()
}

// close closes the connection and waits until nats.go has reported it
// closed, so that none of its goroutines outlives the session.
func (s *session) close() {
	s.nc.Close()
	select {
	case <-s.closed:
	case <-time.After(5 * time.Second):
	}
}

func (b *Bus) stopServer() {
	b.mu.Lock()
	srv := b.server
	b.server = nil
	b.mu.Unlock()
	if srv != nil {
		srv.Shutdown()
		srv.WaitForShutdown()
	}
}

// Renewed returns a channel that is closed when the next connection comes
// up, with every Subscription already re-made on it. A core message (a
// reply) sent between the loss of the previous connection and then may
// have been lost: whoever waits for one asks again.
func (b *Bus) Renewed() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.renewed
}

// Lost returns a channel that is closed when the connection in use now is
// lost (at once if there is none). A core message (a reply) expected on
// it will not come: whoever waits for one calls Await, then asks again.
func (b *Bus) Lost() <-chan struct{} {
	if s := b.cur.Load(); s != nil {
		return s.closed
	}
	return closedChan
}

// closedChan is a channel that is always closed.
var closedChan = func() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}()

// Await waits until there is a connection, with every Subscription made
// on it, for at most Options.PublishRetry; then it returns an
// UnavailableError.
func (b *Bus) Await(ctx context.Context) error {
	_, err := b.await(ctx, "wait for a connection")
	return err
}

// await is session bounded by Options.PublishRetry.
func (b *Bus) await(ctx context.Context, op string) (*session, error) {
	wctx, cancel := context.WithTimeout(ctx, b.opts.PublishRetry)
	defer cancel()
	s, err := b.session(wctx)
	if err != nil && ctx.Err() == nil && !errors.Is(err, ErrClosed) {
		b.mu.Lock()
		last := b.outage.last
		b.mu.Unlock()
		if last == nil {
			last = errNotConnected
		}
		return nil, &UnavailableError{Op: op, Err: last}
	}
	return s, err
}

// session returns the current connection, waiting for one until ctx ends
// or the bus closes. A connection lost but not yet replaced does not
// count.
func (b *Bus) session(ctx context.Context) (*session, error) {
	for {
		if s := b.cur.Load(); s != nil && !s.nc.IsClosed() {
			return s, nil
		}
		b.mu.Lock()
		renewed, closed := b.renewed, b.closed
		b.mu.Unlock()
		if closed {
			return nil, ErrClosed
		}
		if s := b.cur.Load(); s != nil && !s.nc.IsClosed() {
			return s, nil
		}
		select {
		case <-renewed:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// suspect asks the supervisor to probe the connection now: a publish
// failed in a way a broken connection would explain.
func (b *Bus) suspect() {
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

// supervise keeps a connection up until ctx ends.
func (b *Bus) supervise(ctx context.Context) {
	defer close(b.done)
	every := time.Second
	if b.opts.URL != "" {
		every = 5 * time.Second
	}
	probe := time.NewTicker(every)
	defer probe.Stop()
	delay := minBackoff
	failures := 0
	pause := func() bool {
		t := time.NewTimer(delay)
		defer t.Stop()
		delay = min(2*delay, maxBackoff)
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return true
		}
	}
	for {
		s := b.cur.Load()
		if s == nil {
			err := b.connect(ctx)
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				b.mu.Lock()
				b.outage.failed(b.log, b.now(), err)
				b.mu.Unlock()
				if !pause() {
					return
				}
				continue
			}
			b.mu.Lock()
			b.outage.healed(b.log, b.now())
			b.mu.Unlock()
			failures = 0
			continue
		}
		var err error
		select {
		case <-ctx.Done():
			return
		case <-s.closed:
			err = s.nc.LastError()
			if err == nil {
				err = nats.ErrConnectionClosed
			}
		case <-probe.C:
		case <-b.kick:
		}
		if err == nil {
			if err = b.probe(ctx, s); err == nil {
				failures = 0
				continue
			}
			if ctx.Err() != nil {
				return
			}
			// An external server's JetStream may be slow to answer under
			// load: replace the connection only when it fails twice.
			if failures++; b.opts.URL != "" && failures < 2 {
				continue
			}
		}
		b.lost(s, err)
		if b.now().Sub(s.up) < stableAfter {
			if !pause() {
				return
			}
		} else {
			delay = minBackoff
		}
	}
}

// lost retires session s after err.
func (b *Bus) lost(s *session, err error) {
	b.cur.CompareAndSwap(s, nil)
	s.close()
	b.mu.Lock()
	b.outage.lost(b.log, b.now(), err)
	b.mu.Unlock()
}

// probe reports what is wrong with session s, if anything.
func (b *Bus) probe(ctx context.Context, s *session) error {
	if s.nc.IsClosed() {
		return nats.ErrConnectionClosed
	}
	if b.opts.URL == "" {
		b.mu.Lock()
		srv := b.server
		b.mu.Unlock()
		return embeddedHealth(srv)
	}
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	if _, err := s.js.AccountInfo(ctx); err != nil {
		return fmt.Errorf("JetStream not answering: %w", err)
	}
	return nil
}

// connect makes a new connection (restarting the embedded server first if
// it is down), creates the streams, re-makes the subscriptions on it and
// installs it.
func (b *Bus) connect(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	closed := make(chan struct{})
	var once sync.Once
	opts := []nats.Option{
		nats.Name(b.opts.Name),
		// The bus replaces a lost connection itself (package doc).
		nats.NoReconnect(),
		nats.ClosedHandler(func(*nats.Conn) { once.Do(func() { close(closed) }) }),
		// Without a handler nats.go prints asynchronous errors to stderr.
		// One that closes the connection is logged as its loss.
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			if errors.Is(err, nats.ErrSlowConsumer) && sub != nil {
				b.log.WithError(err).WithField("subject", sub.Subject).Warn("subscriber too slow: messages dropped")
				return
			}
			b.log.WithError(err).Debug("nats error")
		}),
	}
	var nc *nats.Conn
	var err error
	if b.opts.URL == "" {
		srv, serr := b.embedded()
		if serr != nil {
			return serr
		}
		nc, err = nats.Connect("", append(opts, nats.InProcessServer(srv))...)
	} else {
		nc, err = nats.Connect(b.opts.URL, append(opts,
			nats.Timeout(2*time.Second),
			// Notice a server that stopped answering within ~20 s.
			nats.PingInterval(5*time.Second),
			nats.MaxPingsOutstanding(3),
		)...)
	}
	if err != nil {
		return fmt.Errorf("connect to nats: %w", err)
	}
	s := &session{nc: nc, closed: closed}
	fail := func(err error) error {
		s.close()
		return err
	}
	if s.js, err = jetstream.New(nc); err != nil {
		return fail(fmt.Errorf("jetstream: %w", err))
	}
	if err := ensureStreams(ctx, s.js, b.opts.Replicas); err != nil {
		return fail(err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return fail(ErrClosed)
	}
	for sub := range b.subs {
		if err := sub.subscribe(nc); err != nil {
			return fail(err)
		}
	}
	// The subscriptions must be in place on the server before anyone is
	// told to ask again for what they wait for.
	if err := nc.FlushWithContext(ctx); err != nil {
		return fail(fmt.Errorf("flush subscriptions: %w", err))
	}
	s.up = b.now()
	b.cur.Store(s)
	close(b.renewed)
	b.renewed = make(chan struct{})
	return nil
}

// embedded returns the embedded server, (re)started if it is not running
// with JetStream.
func (b *Bus) embedded() (*natsserver.Server, error) {
	b.mu.Lock()
	srv := b.server
	b.mu.Unlock()
	if embeddedHealth(srv) == nil {
		return srv, nil
	}
	if srv != nil {
		b.log.Info("restarting the embedded NATS server")
		b.stopServer()
	}
	srv, err := startEmbedded(b.opts.StoreDir, b.log.WithField("part", "nats-server"))
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	b.server = srv
	b.mu.Unlock()
	return srv, nil
}

// embeddedHealth reports what is wrong with the embedded server, nil if
// nothing is. Beyond a stopped server and JetStream turned off, it asks
// the server's own health check, which sees a stream that hit a write
// error: nats-server then stops storing that stream's messages (and
// answers no publish on it) until it is restarted, which is what a full
// disk does to it (it turns JetStream off only for some errors).
func embeddedHealth(srv *natsserver.Server) error {
	switch {
	case srv == nil || !srv.Running():
		return errors.New("the embedded NATS server stopped")
	case !srv.JetStreamEnabled():
		return errors.New("JetStream is disabled on the embedded NATS server (out of disk space?)")
	}
	if h := srv.Healthz(nil); h.StatusCode != http.StatusOK {
		return fmt.Errorf("the embedded NATS server is unhealthy (out of disk space?): %s", h.Error)
	}
	return nil
}

// startEmbedded starts a NATS server that keeps JetStream data in storeDir
// and listens on no port.
func startEmbedded(storeDir string, log *logrus.Entry) (*natsserver.Server, error) {
	opts := &natsserver.Options{
		ServerName:         "myelin",
		DontListen:         true,
		JetStream:          true,
		StoreDir:           storeDir,
		NoSigs:             true,
		MaxPayload:         8 << 20,
		JetStreamMaxMemory: 256 << 20,
		// Left at 0, the limit would be 75% of the disk space free when
		// the server starts: a server restarted on a full disk (to clear
		// a write error) would refuse every message for good once space
		// is freed. The disk itself is the limit; running out of it is
		// healed like any other loss.
		JetStreamMaxStore: 1 << 50,
		// A crashed process must not lose acknowledged input: flush the
		// JetStream file store often (the OS cache survives a process crash
		// anyway; this bounds what a machine crash can lose).
		SyncInterval: 2 * time.Second,
	}
	ns, err := natsserver.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("nats server: %w", err)
	}
	// Its log goes to ours; in particular a failure to enable JetStream,
	// which it reports as fatal (without a logger, it says nothing and
	// runs without JetStream).
	ns.SetLoggerV2(serverLog{log}, false, false, false)
	ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		ns.Shutdown()
		ns.WaitForShutdown()
		return nil, errors.New("the embedded NATS server did not become ready")
	}
	if !ns.JetStreamEnabled() {
		ns.Shutdown()
		ns.WaitForShutdown()
		return nil, errors.New("the embedded NATS server started without JetStream (its log says why)")
	}
	return ns, nil
}

// serverLog passes the embedded server's log to logrus. Its notices are
// routine (debug); its warnings and errors concern our own connections,
// whose loss the bus logs, so they are context (info); its fatal errors
// are not fatal to us, since the bus restarts it.
type serverLog struct{ log *logrus.Entry }

func (l serverLog) Noticef(format string, v ...any) { l.log.Debugf(format, v...) }
func (l serverLog) Warnf(format string, v ...any)   { l.log.Infof(format, v...) }
func (l serverLog) Errorf(format string, v ...any)  { l.log.Infof(format, v...) }
func (l serverLog) Fatalf(format string, v ...any)  { l.log.Errorf(format, v...) }
func (l serverLog) Debugf(format string, v ...any)  { l.log.Debugf(format, v...) }
func (l serverLog) Tracef(format string, v ...any)  { l.log.Tracef(format, v...) }

// Health reports why the bus cannot serve now, nil if it can: connected,
// with JetStream answering. Its message is fit for a health endpoint (the
// causes, which may name internal addresses, are in the log).
func (b *Bus) Health(ctx context.Context) error {
	s := b.cur.Load()
	if s == nil {
		b.mu.Lock()
		since := b.outage.since
		b.mu.Unlock()
		if since.IsZero() {
			return errors.New("not connected")
		}
		return fmt.Errorf("not connected for %s", b.now().Sub(since).Round(time.Second))
	}
	if err := b.probe(ctx, s); err != nil {
		b.suspect()
		if b.opts.URL == "" {
			return err
		}
		return errors.New("JetStream not answering")
	}
	if b.opts.URL == "" {
		// The embedded probe reads the server's state; ask JetStream
		// through the connection too.
		ctx, cancel := context.WithTimeout(ctx, probeTimeout)
		defer cancel()
		if _, err := s.js.AccountInfo(ctx); err != nil {
			return errors.New("JetStream not answering")
		}
	}
	return nil
}

// Conn is the current connection, nil while there is none. For fault
// tests that break it; components use the bus's methods, which survive
// its replacement.
func (b *Bus) Conn() *nats.Conn {
	if s := b.cur.Load(); s != nil {
		return s.nc
	}
	return nil
}

// JetStream is the current connection's JetStream context, nil while
// there is none. For tests and inspection, like Conn.
func (b *Bus) JetStream() jetstream.JetStream {
	if s := b.cur.Load(); s != nil {
		return s.js
	}
	return nil
}

// EmbeddedServer is the embedded NATS server, nil for an external one or
// while it is being restarted. For fault tests, like Conn.
func (b *Bus) EmbeddedServer() *natsserver.Server {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.server
}
