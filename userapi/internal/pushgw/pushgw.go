// Package pushgw sends notifications to push gateways (spec: Push Gateway
// API, POST /_matrix/push/v1/notify). Requests are queued and sent by a
// fixed pool of workers, each with a timeout and a few retries with
// backoff, so that a slow or dead gateway never holds up the caller (the
// userapi's event consumer): when the queue is full, new requests are
// dropped and counted. Only package userapi imports it.
package pushgw

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"
)

// Request is one notification for one pusher.
type Request struct {
	URL  string
	Body []byte
	// UserID, AppID and PushKey name the pusher, for OnRejected.
	UserID, AppID, PushKey string
}

// Options tune a Sender; zero values take the defaults in brackets.
type Options struct {
	Workers     int           // concurrent requests [8]
	QueueSize   int           // requests waiting for a worker [1024]
	Timeout     time.Duration // per attempt, connection to body [10s]
	MaxAttempts int           // attempts per request [5]
	Backoff     time.Duration // wait after the first failed attempt, doubled after each [1s]
	// OnRejected is called when a gateway rejects the request's pushkey:
	// the pusher should be deleted.
	OnRejected func(ctx context.Context, r Request)
	// Transport sends the requests (nil: http.DefaultTransport); it
	// decides which certificate authorities are trusted.
	Transport http.RoundTripper
}

// Sender owns the queue and the workers.
type Sender struct {
	opts    Options
	client  *http.Client
	log     *logrus.Entry
	queue   chan Request
	wg      sync.WaitGroup
	dropped atomic.Int64
}

// maxResponseBytes bounds what is read of a gateway's answer.
const maxResponseBytes = 64 << 10

// New returns a sender; Start runs its workers.
func New(opts Options, log *logrus.Entry) *Sender {
	if opts.Workers <= 0 {
		opts.Workers = 8
	}
	if opts.QueueSize <= 0 {
		opts.QueueSize = 1024
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 10 * time.Second
	}
	if opts.MaxAttempts <= 0 {
		opts.MaxAttempts = 5
	}
	if opts.Backoff <= 0 {
		opts.Backoff = time.Second
	}
	client := &http.Client{
		Transport: opts.Transport,
		Timeout:   opts.Timeout,
		// A gateway is one URL; following redirects would let a pusher's
		// URL send the server's requests anywhere.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return &Sender{opts: opts, client: client, log: log, queue: make(chan Request, opts.QueueSize)}
}

// Start runs the workers until ctx ends; Wait waits for them.
func (s *Sender) Start(ctx context.Context) {
	for i := 0; i < s.opts.Workers; i++ {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			for {
				select {
				case <-ctx.Done():
					return
				case r := <-s.queue:
					s.deliver(ctx, r)
				}
			}
		}()
	}
}

// Wait waits for the workers to stop after Start's context ended.
func (s *Sender) Wait() { s.wg.Wait() }

// Enqueue queues r without waiting; false when the queue is full and r
// was dropped.
func (s *Sender) Enqueue(r Request) bool {
	select {
	case s.queue <- r:
		return true
	default:
		if n := s.dropped.Add(1); n == 1 || n%100 == 0 {
			s.log.WithField("dropped", n).Warn("push queue full; dropping notifications")
		}
		return false
	}
}

// Dropped is the number of requests dropped because the queue was full.
func (s *Sender) Dropped() int64 { return s.dropped.Load() }

// errPermanent marks a failure that retrying will not fix.
var errPermanent = errors.New("permanent failure")

func (s *Sender) deliver(ctx context.Context, r Request) {
	log := s.log.WithFields(logrus.Fields{"user_id": r.UserID, "app_id": r.AppID})
	delay := s.opts.Backoff
	for attempt := 1; ; attempt++ {
		rejected, err := s.post(ctx, r)
		if err == nil {
			if rejected {
				log.Info("push gateway rejected the pushkey; removing the pusher")
				if s.opts.OnRejected != nil {
					s.opts.OnRejected(ctx, r)
				}
			}
			return
		}
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, errPermanent) || attempt >= s.opts.MaxAttempts {
			log.WithError(err).WithField("attempts", attempt).Warn("push failed; giving up")
			return
		}
		log.WithError(err).WithField("attempt", attempt).Debug("push failed; retrying")
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay *= 2
	}
}

// post makes one attempt; rejected reports whether the gateway rejected
// the request's pushkey.
func (s *Sender) post(ctx context.Context, r Request) (rejected bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.URL, bytes.NewReader(r.Body))
	if err != nil {
		return false, fmt.Errorf("%w: %v", errPermanent, err)
	}
	req.Header.Set("Content-Type", "application/json")
	// One connection per push, as Dendrite does: a user's pushes are few
	// and far between, so a kept-alive connection would mostly sit idle,
	// and some gateways (sytest's among them) misread a second request on
	// a reused connection.
	req.Close = true
	resp, err := s.client.Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
	if err != nil {
		return false, fmt.Errorf("read gateway response: %w", err)
	}
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		return false, fmt.Errorf("gateway answered %d", resp.StatusCode)
	default:
		return false, fmt.Errorf("%w: gateway answered %d", errPermanent, resp.StatusCode)
	}
	var answer struct {
		Rejected []string `json:"rejected"`
	}
	_ = json.Unmarshal(body, &answer) // a 2xx without a body is a success
	for _, k := range answer.Rejected {
		if k == r.PushKey {
			return true, nil
		}
	}
	return false, nil
}
