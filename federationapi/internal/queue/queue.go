// Package queue sends this server's PDUs and EDUs to other servers: one
// queue per destination, persisted in the federationapi's tables, sent as
// transactions (PUT /_matrix/federation/v1/send/{txnId}) of up to 50 PDUs
// and 100 EDUs, retried with exponential backoff under the same
// transaction ID, shrunk to each room's latest event after a long outage,
// and given up on (blacklisted) when the backoff grows past a limit, until
// the server contacts us again. Only federationapi imports it.
package queue

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/sirupsen/logrus"

	"myelin/federationapi/storage"
)

// The spec's limits on one transaction.
const (
	MaxPDUs = 50
	MaxEDUs = 100
)

// Sender sends a transaction to its destination; the federation client
// implements it.
type Sender interface {
	SendTransaction(ctx context.Context, t gmsl.Transaction) (fclient.RespSend, error)
}

// Options configure the queues. Zero durations take the defaults.
type Options struct {
	Origin spec.ServerName
	Sender Sender
	Store  *storage.Storage
	Log    *logrus.Entry
	// MinBackoff is the delay after the first failure; it doubles with
	// each further one (default 2 s).
	MinBackoff time.Duration
	// BlacklistAfter: once the next delay would exceed it, the destination
	// is given up on until MarkAlive (default 24 h).
	BlacklistAfter time.Duration
	// CatchUpAfter: a destination failing for longer gets only the latest
	// PDU of each room when it is back (default 10 min).
	CatchUpAfter time.Duration
	// SendTimeout bounds one transaction (default 60 s).
	SendTimeout time.Duration
	// MaxSending bounds the transactions in flight at once (default 16).
	MaxSending int
	Now        func() time.Time
}

// Queues holds the destinations' queues. Memory holds only which
// destinations have a worker and which are failing: what is queued is in
// the database and read when a transaction is built.
type Queues struct {
	opts Options
	log  *logrus.Entry
	sem  chan struct{}
	ctx  context.Context
	wg   sync.WaitGroup

	mu      sync.Mutex
	workers map[spec.ServerName]*worker
	// failing are the destinations being retried or given up on: those
	// MarkAlive acts on.
	failing map[spec.ServerName]bool
}

type worker struct {
	name spec.ServerName
	// wake is signalled when something is queued or the destination
	// came back; buffered, so a signal is never lost nor blocks.
	wake chan struct{}
	// next is the transaction taken while the one before was in flight
	// (SentAndFollow): the next step sends it without reading the
	// queue. sent is the transaction acknowledged last and not yet
	// marked sent in the store: the next step's write marks it.
	next *storage.Transaction
	sent string
}

// New makes the queues; nothing is sent until Start.
func New(opts Options) *Queues {
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = 2 * time.Second
	}
	if opts.BlacklistAfter <= 0 {
		opts.BlacklistAfter = 24 * time.Hour
	}
	if opts.CatchUpAfter <= 0 {
		opts.CatchUpAfter = 10 * time.Minute
	}
	if opts.SendTimeout <= 0 {
		opts.SendTimeout = 60 * time.Second
	}
	if opts.MaxSending <= 0 {
		opts.MaxSending = 16
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Queues{
		opts:    opts,
		log:     opts.Log,
		sem:     make(chan struct{}, opts.MaxSending),
		workers: map[spec.ServerName]*worker{},
		failing: map[spec.ServerName]bool{},
	}
}

// Start resumes sending what a previous run left queued, until ctx ends.
func (q *Queues) Start(ctx context.Context) error {
	q.ctx = ctx
	failing, err := q.opts.Store.FailingDestinations(ctx)
	if err != nil {
		return fmt.Errorf("outbound queues: %w", err)
	}
	queued, err := q.opts.Store.QueuedDestinations(ctx)
	if err != nil {
		return fmt.Errorf("outbound queues: %w", err)
	}
	q.mu.Lock()
	for _, d := range failing {
		q.failing[spec.ServerName(d)] = true
	}
	q.mu.Unlock()
	for _, d := range queued {
		q.wake(spec.ServerName(d))
	}
	return nil
}

// Wait waits for the workers to stop after Start's context ended.
func (q *Queues) Wait() { q.wg.Wait() }

// Queued tells the queues that something was stored for dests.
func (q *Queues) Queued(dests []string) {
	for _, d := range dests {
		q.wake(spec.ServerName(d))
	}
}

// SendEDU queues edu for each destination (this server excepted) and
// wakes their queues. A destination given up on does not get it.
func (q *Queues) SendEDU(ctx context.Context, edu gmsl.EDU, destinations []spec.ServerName) error {
	edu.Origin, edu.Destination = "", ""
	b, err := json.Marshal(edu)
	if err != nil {
		return fmt.Errorf("encode EDU %s: %w", edu.Type, err)
	}
	dests := make([]string, 0, len(destinations))
	for _, d := range destinations {
		if d != q.opts.Origin {
			dests = append(dests, string(d))
		}
	}
	queued, err := q.opts.Store.QueueEDU(ctx, string(b), dests)
	if err != nil {
		return err
	}
	q.Queued(queued)
	return nil
}

// MarkAlive says that server just contacted us: if it was being retried
// or given up on, it is tried again at once (catching up). The inbound
// side calls it on every authenticated request, so when server is not
// failing it costs a map lookup.
func (q *Queues) MarkAlive(ctx context.Context, server spec.ServerName) error {
	q.mu.Lock()
	failing := q.failing[server]
	q.mu.Unlock()
	if !failing {
		return nil
	}
	d, err := q.opts.Store.Destination(ctx, string(server))
	if err != nil {
		return err
	}
	// The failures and their start are kept: the next attempt knows how
	// long the server was away, and catches up if it was long.
	d.RetryAt, d.Blacklisted = 0, false
	if err := q.opts.Store.SetDestination(ctx, d); err != nil {
		return err
	}
	q.log.WithField("destination", server).Info("destination is back; retrying")
	q.wake(server)
	return nil
}

// wake makes sure server's worker runs and looks at its queue again.
func (q *Queues) wake(server spec.ServerName) {
	if server == q.opts.Origin || q.ctx == nil {
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if w, ok := q.workers[server]; ok {
		select {
		case w.wake <- struct{}{}:
		default:
		}
		return
	}
	w := &worker{name: server, wake: make(chan struct{}, 1)}
	q.workers[server] = w
	q.wg.Add(1)
	go func() {
		defer q.wg.Done()
		q.run(q.ctx, w)
	}()
}

// run sends w's queue until it is empty, the destination is given up on,
// or ctx ends.
func (q *Queues) run(ctx context.Context, w *worker) {
	log := q.log.WithField("destination", w.name)
	delay := time.Second // between attempts when the database fails
	for ctx.Err() == nil {
		more, wait, err := q.step(ctx, w, log)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			log.WithError(err).Warn("outbound queue failed; retrying")
			wait, delay = delay, min(2*delay, time.Minute)
		} else {
			delay = time.Second
		}
		if more && wait == 0 {
			continue
		}
		if !more && err == nil {
			// Stop unless something was queued meanwhile: the check and
			// the removal are under the lock wake takes.
			q.mu.Lock()
			select {
			case <-w.wake:
				q.mu.Unlock()
				continue
			default:
				delete(q.workers, w.name)
				q.mu.Unlock()
				return
			}
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
		case <-w.wake:
		case <-t.C:
		}
		t.Stop()
	}
	q.mu.Lock()
	delete(q.workers, w.name)
	q.mu.Unlock()
}

// step makes one attempt: it reports whether there may be more to send,
// and how long to wait before the next attempt.
func (q *Queues) step(ctx context.Context, w *worker, log *logrus.Entry) (more bool, wait time.Duration, err error) {
	st := q.opts.Store
	d, err := st.Destination(ctx, string(w.name))
	if err != nil {
		return true, 0, err
	}
	if d.Blacklisted {
		return false, 0, nil // until MarkAlive
	}
	now := q.opts.Now()
	if d.RetryAt > now.UnixMilli() {
		return true, time.Duration(d.RetryAt-now.UnixMilli()) * time.Millisecond, nil
	}
	if d.Failures > 0 && now.UnixMilli()-d.FailingSince >= q.opts.CatchUpAfter.Milliseconds() {
		// Back after a long outage: the remote fetches what it missed
		// from the latest events with /get_missing_events.
		if err := st.CatchUp(ctx, string(w.name), false); err != nil {
			return true, 0, err
		}
	}
	txn, unmarked := w.next, w.sent
	w.next, w.sent = nil, ""
	if d.Failures > 0 {
		// Coming back from failures: the store's order, one write
		// between two transactions, nothing taken ahead.
		txn = nil
	}
	if txn == nil {
		if txn, err = st.SentAndNext(ctx, string(w.name), unmarked, MaxPDUs, MaxEDUs, newTxnID); err != nil || txn == nil {
			return err != nil, 0, err
		}
		unmarked = ""
	}
	// While txn is on the wire, one write marks the transaction before it
	// sent and takes the one to follow it: the spec allows one
	// transaction in flight per destination, so what lies between two of
	// them bounds the throughput to a server. A destination recovering
	// from failures gets no transaction taken ahead.
	type follow struct {
		next *storage.Transaction
		err  error
	}
	var ahead chan follow
	if d.Failures == 0 {
		ahead = make(chan follow, 1)
		go func() {
			next, err := st.SentAndFollow(ctx, string(w.name), unmarked, txn.ID, MaxPDUs, MaxEDUs, newTxnID)
			ahead <- follow{next, err}
		}()
	}
	sendStart := time.Now()
	sendErr := q.send(ctx, w.name, txn)
	sent := time.Now()
	var f follow
	if ahead != nil {
		f = <-ahead
	}
	if ctx.Err() != nil {
		return false, 0, ctx.Err()
	}
	if sendErr == nil {
		if ahead == nil {
			// Marked sent in the same write that takes the next one.
			f.next, f.err = st.SentAndNext(ctx, string(w.name), txn.ID, MaxPDUs, MaxEDUs, newTxnID)
		}
		if f.err != nil {
			// What the store holds is sent again, under the same IDs:
			// the remote answers a transaction it has from its record.
			return true, 0, f.err
		}
		if log.Logger.IsLevelEnabled(logrus.DebugLevel) {
			log.WithFields(logrus.Fields{
				"txn_id": txn.ID, "pdus": len(txn.PDUs), "edus": len(txn.EDUs),
				"send_ms":  float64(sent.Sub(sendStart).Microseconds()) / 1000,
				"queue_ms": float64(time.Since(sent).Microseconds()) / 1000,
			}).Debug("transaction sent")
		}
		if d.Failures > 0 {
			log.Info("destination reachable again")
			q.mu.Lock()
			delete(q.failing, w.name)
			q.mu.Unlock()
		}
		w.next = f.next
		if ahead != nil {
			w.sent = txn.ID
		}
		return true, 0, nil
	}
	if f.err != nil {
		log.WithError(f.err).Debug("taking the next transaction while one was in flight")
	}
	return q.failed(ctx, d, now, sendErr, log)
}

// failed records a failed attempt and schedules the next one, doubling the
// delay each time; once it would exceed BlacklistAfter the destination is
// given up on and its queue shrunk to what catching up needs.
func (q *Queues) failed(ctx context.Context, d storage.Destination, now time.Time, cause error, log *logrus.Entry) (bool, time.Duration, error) {
	q.mu.Lock()
	q.failing[spec.ServerName(d.Name)] = true
	q.mu.Unlock()
	if d.Failures == 0 {
		d.FailingSince = now.UnixMilli()
	}
	d.Failures++
	backoff := q.opts.MinBackoff << min(d.Failures-1, 40)
	if backoff <= 0 || backoff > q.opts.BlacklistAfter {
		d.Blacklisted = true
		log.WithError(cause).WithField("failures", d.Failures).Warn("destination unreachable; giving up until it contacts us")
		if err := q.opts.Store.SetDestination(ctx, d); err != nil {
			return true, 0, err
		}
		return false, 0, q.opts.Store.CatchUp(ctx, d.Name, true)
	}
	d.RetryAt = now.Add(backoff).UnixMilli()
	log.WithError(cause).WithField("failures", d.Failures).WithField("retry_in", backoff).Debug("transaction failed")
	if err := q.opts.Store.SetDestination(ctx, d); err != nil {
		return true, 0, err
	}
	return true, backoff, nil
}

// send puts txn to its destination. Per-PDU errors in the answer are the
// remote's verdict on those events, not a failure to deliver.
func (q *Queues) send(ctx context.Context, dest spec.ServerName, txn *storage.Transaction) error {
	select {
	case q.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-q.sem }()
	t := gmsl.Transaction{
		TransactionID:  gmsl.TransactionID(txn.ID),
		Origin:         q.opts.Origin,
		Destination:    dest,
		OriginServerTS: spec.AsTimestamp(q.opts.Now()),
		PDUs:           make([]json.RawMessage, 0, len(txn.PDUs)),
		EDUs:           make([]gmsl.EDU, 0, len(txn.EDUs)),
	}
	for _, p := range txn.PDUs {
		t.PDUs = append(t.PDUs, json.RawMessage(p))
	}
	for _, e := range txn.EDUs {
		var edu gmsl.EDU
		if err := json.Unmarshal([]byte(e), &edu); err != nil {
			continue // never stored so: SendEDU encoded it
		}
		edu.Origin, edu.Destination = string(q.opts.Origin), string(dest)
		t.EDUs = append(t.EDUs, edu)
	}
	sctx, cancel := context.WithTimeout(ctx, q.opts.SendTimeout)
	defer cancel()
	resp, err := q.opts.Sender.SendTransaction(sctx, t)
	if err != nil {
		return fmt.Errorf("send transaction %s: %w", txn.ID, err)
	}
	for id, r := range resp.PDUs {
		if r.Error != "" {
			q.log.WithField("destination", dest).WithField("event_id", id).WithField("error", r.Error).Debug("remote refused event")
		}
	}
	return nil
}

// newTxnID is a transaction ID unique to this server: the spec asks only
// that it be unique per origin and destination.
func newTxnID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
