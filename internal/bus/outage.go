package bus

import (
	"time"

	"github.com/sirupsen/logrus"
)

// outageError is how long a loss of the connection lasts before it is
// logged again, as an error: an operator should look.
const outageError = 30 * time.Second

// outage tracks one loss of the connection so that it is logged three
// times at most, whatever the number of attempts to heal it: when it
// happens (warning), when it has lasted outageError (error), and when it
// ends (info).
type outage struct {
	since     time.Time // zero while connected
	last      error     // the latest failure
	escalated bool
}

// lost records that the connection was lost at now because of err.
func (o *outage) lost(log *logrus.Entry, now time.Time, err error) {
	if !o.since.IsZero() {
		o.failed(log, now, err)
		return
	}
	o.since, o.last, o.escalated = now, err, false
	log.WithError(err).Warn("bus connection lost; reconnecting")
}

// failed records a failed attempt to heal at now.
func (o *outage) failed(log *logrus.Entry, now time.Time, err error) {
	if o.since.IsZero() {
		// Lost before it was ever noticed (a first connection, or a
		// session that failed while being set up).
		o.lost(log, now, err)
		return
	}
	o.last = err
	if !o.escalated && now.Sub(o.since) >= outageError {
		o.escalated = true
		log.WithError(err).WithField("down_for", now.Sub(o.since).Round(time.Second).String()).
			Error("bus still down; writes answer 503 until it is back")
	}
}

// healed records that a connection is up again at now.
func (o *outage) healed(log *logrus.Entry, now time.Time) {
	if o.since.IsZero() {
		return
	}
	log.WithField("down_for", now.Sub(o.since).Round(time.Millisecond).String()).Info("bus connection restored")
	*o = outage{}
}
