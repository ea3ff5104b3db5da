package input

import (
	"context"
	"errors"

	"github.com/nats-io/nats.go/jetstream"

	"myelin/internal/sqldb"
)

// outage decides, for one batch whose transaction failed, between
// retrying it (as for any failure) and answering its producers at once
// that the database cannot store anything right now. Retrying while the
// database is down or its disk is full would hold every producer of the
// room until its own timeout, and a client cannot tell that from a hang.
type outage struct {
	// mayBeStored is set once a commit of this batch failed with an
	// unknown outcome: from then on the batch is only ever retried, so
	// that its retry finds the request in the input log and publishes what
	// was stored, and no producer is told "not stored" about it.
	mayBeStored bool
}

// answered reports whether it took the batch out of the retry loop: err
// is an outage and nothing of the batch can have been stored, so each
// message is acked and its producer told to retry. A message answered so
// is never stored afterwards (it is gone from the stream before the
// answer is sent); a client retrying with its transaction ID gets a new
// event, once.
func (o *outage) answered(ctx context.Context, in *Inputer, msgs []jetstream.Msg, err error) bool {
	if !o.answerNow(err) {
		return false
	}
	in.log.WithError(err).WithField("subject", msgs[0].Subject()).Debug("database unavailable: input answered with a retryable error")
	in.answerUnavailable(ctx, msgs, err.Error())
	return true
}

// answerNow reports whether the batch's latest failure, err, is to be
// answered rather than retried.
func (o *outage) answerNow(err error) bool {
	if errors.Is(err, sqldb.ErrOutcomeUnknown) {
		o.mayBeStored = true
	}
	return !o.mayBeStored && sqldb.IsUnavailable(err)
}
