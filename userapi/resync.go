package userapi

import (
	"context"
	"fmt"
	"hash/fnv"
	"slices"
	"sync"
	"time"

	"myelin/internal/mxid"
	"myelin/userapi/storage"
)

// The background fetch of remote users' device lists. An
// m.device_list_update that shows a gap (or names a user not tracked yet)
// marks the list stale in storage and asks the resyncer for it; the
// origin's transaction is answered at once, not after a round trip to the
// origin (which may answer /user/devices only once it has our answer: so
// sytest's fake servers do). The resyncer fetches each list once however
// many updates ask for it, on a few workers, retrying with backoff while
// the user shares a room with a local user; a /keys/query for a stale
// list waits for the fetch, bounded by the query's own timeout. A restart
// finds the stale lists in storage and fetches them again.

const (
	// resyncWorkers bounds the device lists fetched at once.
	resyncWorkers = 4
	// resyncFirstRetry and resyncMaxRetry bound the backoff between the
	// attempts to fetch one list: doubled on each failure.
	resyncFirstRetry = 2 * time.Second
	resyncMaxRetry   = 10 * time.Minute
	// resyncLocks is the number of stripes of the per-user lock.
	resyncLocks = 64
	// resyncBatch bounds the fetched lists stored in one transaction, and
	// resyncLinger is how long a fetched list waits for others to be
	// stored with it: joining a room makes its remote members' lists
	// fetched together, and SQLite has one writer. It also orders the
	// change after what the origin does upon our fetch's answer (sytest's
	// fake server, for one, then starts a client's initial sync, and
	// expects the list to show as changed after it).
	resyncBatch  = 64
	resyncLinger = 50 * time.Millisecond
	// resyncCatchUp bounds how long the fetch of a list whose user did
	// not seem to share a room waits for the userapi's view of membership
	// to catch up with the events before it.
	resyncCatchUp = 10 * time.Second
)

// resyncer fetches remote users' device lists in the background. Lock
// order: a user's stripe (lock) before mu.
type resyncer struct {
	u *UserAPI

	stripes [resyncLocks]sync.Mutex

	mu      sync.Mutex
	jobs    map[string]*resyncJob // by user ID
	ready   []string              // users due now, oldest first
	wake    chan struct{}         // capacity 1: ready has grown
	ctx     context.Context       // nil until start
	fetched chan fetchedList      // from the workers to the writer
	wg      sync.WaitGroup
	retryIn func(attempts int) time.Duration
}

// resyncJob is the fetch of one user's list, queued, running or waiting
// for its retry.
type resyncJob struct {
	queued   bool        // in ready
	running  bool        // a worker is fetching it
	again    bool        // asked for while running: fetch once more
	retry    *time.Timer // waiting for its next attempt
	attempts int         // failed attempts in a row
	unsure   bool        // whether the user shares a room is to be checked after a catch-up
	done     chan struct{}
	err      error // of the attempt that closed done
}

func newResyncer(u *UserAPI) *resyncer {
	return &resyncer{
		u:       u,
		jobs:    map[string]*resyncJob{},
		wake:    make(chan struct{}, 1),
		fetched: make(chan fetchedList, resyncWorkers),
		retryIn: func(attempts int) time.Duration {
			d := resyncFirstRetry
			for i := 1; i < attempts && d < resyncMaxRetry; i++ {
				d *= 2
			}
			return min(d, resyncMaxRetry)
		},
	}
}

// lock locks userID's stripe: held across an update's application and the
// request for a fetch it makes, and across a fetched list's storing, so a
// fetch that an update asked for while it ran is never lost.
func (r *resyncer) lock(userID string) func() {
	m := &r.stripes[stripeOf(userID)]
	m.Lock()
	return m.Unlock
}

func stripeOf(userID string) int {
	h := fnv.New32a()
	h.Write([]byte(userID))
	return int(h.Sum32() % resyncLocks)
}

// start starts the workers, which stop when ctx ends (wait waits for
// them), and asks for every stale list of a user sharing a room: those a
// previous run had not fetched yet.
func (r *resyncer) start(ctx context.Context) error {
	r.mu.Lock()
	r.ctx = ctx
	r.mu.Unlock()
	for range resyncWorkers {
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			r.work(ctx)
		}()
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		r.write(ctx)
	}()
	users, err := r.u.store.StaleListsSharing(ctx)
	if err != nil {
		return err
	}
	for _, id := range users {
		r.kick(id)
	}
	return nil
}

// stop waits for the workers and stops the retry timers, after start's
// context ended.
func (r *resyncer) stop() {
	r.wg.Wait()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, j := range r.jobs {
		if j.retry != nil {
			j.retry.Stop()
		}
	}
}

// kick asks for userID's list to be fetched: now, or once more after the
// fetch under way (whose answer may predate what asked). A list waiting for
// its retry is fetched now: its server just spoke.
func (r *resyncer) kick(userID string) *resyncJob {
	r.mu.Lock()
	defer r.mu.Unlock()
	j := r.jobs[userID]
	if j == nil {
		j = &resyncJob{done: make(chan struct{})}
		r.jobs[userID] = j
	}
	switch {
	case j.running:
		j.again = true
	case !j.queued:
		if j.retry != nil {
			j.retry.Stop()
			j.retry = nil
		}
		r.enqueue(userID, j)
	}
	return j
}

// kickUnsure asks for the list of a user not tracked whom an update
// named but who did not seem to share a room with a local user: once the
// view of membership has caught up, it is tracked and fetched if it does.
// A job already asked for covers it.
func (r *resyncer) kickUnsure(userID string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.jobs[userID] != nil {
		return
	}
	j := &resyncJob{done: make(chan struct{}), unsure: true}
	r.jobs[userID] = j
	r.enqueue(userID, j)
}

// enqueue makes j due now; r.mu is held.
func (r *resyncer) enqueue(userID string, j *resyncJob) {
	j.queued = true
	r.ready = append(r.ready, userID)
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// wait asks for userID's list and waits for the fetch to end, or ctx. It
// returns the fetch's error. Before start (no workers), it fetches itself.
func (r *resyncer) wait(ctx context.Context, userID string) error {
	r.mu.Lock()
	started := r.ctx != nil
	r.mu.Unlock()
	if !started {
		l, err := r.fetch(ctx, userID)
		if err != nil {
			return err
		}
		return r.store(ctx, []fetchedList{{write: l}})
	}
	// A fetch already asked for serves the waiter: it is no new update
	// that the fetch under way may predate.
	// One waiting for its retry is fetched now.
	r.mu.Lock()
	j := r.jobs[userID]
	idle := j == nil || !j.queued && !j.running
	r.mu.Unlock()
	if idle {
		j = r.kick(userID)
	}
	r.mu.Lock()
	done := j.done
	r.mu.Unlock()
	select {
	case <-done:
		r.mu.Lock()
		defer r.mu.Unlock()
		return j.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// work runs the due fetches until ctx ends.
func (r *resyncer) work(ctx context.Context) {
	for {
		r.mu.Lock()
		if len(r.ready) == 0 {
			r.mu.Unlock()
			select {
			case <-ctx.Done():
				return
			case <-r.wake:
				continue
			}
		}
		userID := r.ready[0]
		r.ready = r.ready[1:]
		if len(r.ready) > 0 {
			// Let another worker take the next one.
			select {
			case r.wake <- struct{}{}:
			default:
			}
		}
		j := r.jobs[userID]
		j.queued, j.running, j.again = false, true, false
		unsure := j.unsure
		j.unsure = false
		r.mu.Unlock()

		l, err := r.attempt(ctx, userID, unsure)
		if ctx.Err() != nil {
			return
		}
		if err != nil || l == nil {
			r.finish(ctx, userID, j, err)
			continue
		}
		// The job stays running until its list is stored: an update
		// meanwhile has it fetched again.
		select {
		case r.fetched <- fetchedList{write: *l, job: j}:
		case <-ctx.Done():
			return
		}
	}
}

// fetchedList is a fetched list on its way to the writer.
type fetchedList struct {
	write storage.RemoteListWrite
	job   *resyncJob // nil: fetched for a waiter before start
}

// write stores what the workers fetched, in batches, until ctx ends.
func (r *resyncer) write(ctx context.Context) {
	var batch []fetchedList
	var linger <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case f := <-r.fetched:
			batch = append(batch, f)
			if len(batch) == 1 {
				linger = time.After(resyncLinger)
			}
			if len(batch) < resyncBatch {
				continue
			}
		case <-linger:
		}
		err := r.store(ctx, batch)
		if ctx.Err() != nil {
			return
		}
		for _, f := range batch {
			r.finish(ctx, f.write.UserID, f.job, err)
		}
		batch, linger = nil, nil
	}
}

// attempt fetches userID's list if the user still shares a room with a
// local user (else the list stays stale: its server tells us no more, and
// it is fetched when needed again; l is nil). When unsure, the view of
// membership catches up first, and the list is marked wanted once it is
// known to be shared.
func (r *resyncer) attempt(ctx context.Context, userID string, unsure bool) (*storage.RemoteListWrite, error) {
	shares, err := r.u.store.SharesRoomWithLocal(ctx, userID)
	if err == nil && !shares && unsure && r.u.bus != nil {
		r.u.catchUpEvents(ctx, resyncCatchUp)
		shares, err = r.u.store.SharesRoomWithLocal(ctx, userID)
	}
	if err != nil || !shares {
		return nil, err
	}
	if unsure {
		unlock := r.lock(userID)
		err := r.u.store.MarkDeviceListWanted(ctx, userID)
		unlock()
		if err != nil {
			return nil, err
		}
	}
	fctx, cancel := context.WithTimeout(ctx, resyncTimeout)
	defer cancel()
	l, err := r.fetch(fctx, userID)
	if err != nil {
		return nil, err
	}
	return &l, nil
}

// finish ends an attempt: it wakes the waiters, and queues the job again
// when it was asked for meanwhile, or for a retry after a failure.
func (r *resyncer) finish(ctx context.Context, userID string, j *resyncJob, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	j.running = false
	if j.again {
		// Its waiters wait for the next attempt: this one's answer may
		// predate what asked for it.
		j.again = false
		r.enqueue(userID, j)
		return
	}
	j.err = err
	close(j.done)
	j.done = make(chan struct{})
	switch {
	case err != nil:
		j.attempts++
		r.u.log.WithError(err).WithField("user_id", userID).Debug("device list resync failed")
		j.retry = time.AfterFunc(r.retryIn(j.attempts), func() {
			if ctx.Err() != nil {
				return
			}
			r.mu.Lock()
			defer r.mu.Unlock()
			if j.retry == nil || j.running || j.queued {
				return
			}
			j.retry = nil
			r.enqueue(userID, j)
		})
	default:
		delete(r.jobs, userID)
	}
}

// fetch fetches userID's whole device list from its server.
func (r *resyncer) fetch(ctx context.Context, userID string) (storage.RemoteListWrite, error) {
	l := storage.RemoteListWrite{UserID: userID}
	srv, ok := mxid.Server(userID)
	if !ok {
		return l, fmt.Errorf("no server in %q", userID)
	}
	if r.u.remote == nil {
		return l, fmt.Errorf("no federation")
	}
	ud, err := r.u.remote.UserDevices(ctx, srv, userID)
	if err != nil {
		return l, fmt.Errorf("fetch devices of %s: %w", userID, err)
	}
	if ud.UserID != userID {
		return l, fmt.Errorf("%s answered the devices of %q for %s", srv, ud.UserID, userID)
	}
	l.StreamID = ud.StreamID
	l.Devs = make([]storage.DeviceKeys, 0, len(ud.Devices))
	for _, d := range ud.Devices {
		if d.DeviceID == "" {
			continue
		}
		l.Devs = append(l.Devs, storage.DeviceKeys{UserID: userID, DeviceID: d.DeviceID, DisplayName: d.DisplayName, KeyJSON: presentJSON(d.Keys)})
	}
	l.Cross = crossSigningKeys(ud.MasterKey, ud.SelfSigningKey)
	return l, nil
}

// store stores fetched lists in one transaction and announces their
// changes. A list an update asked for while it was being fetched stays
// stale (its worker fetches it again): the users' stripes are held
// across that check and the write, as DeviceListUpdate holds its user's.
func (r *resyncer) store(ctx context.Context, batch []fetchedList) error {
	stripes := make([]int, 0, len(batch))
	for _, f := range batch {
		stripes = append(stripes, stripeOf(f.write.UserID))
	}
	slices.Sort(stripes)
	stripes = slices.Compact(stripes)
	for _, i := range stripes { // in order: no two writers deadlock
		r.stripes[i].Lock()
	}
	writes := make([]storage.RemoteListWrite, len(batch))
	r.mu.Lock()
	for i, f := range batch {
		writes[i] = f.write
		writes[i].Stale = f.job != nil && f.job.again
	}
	r.mu.Unlock()
	// The write is not the caller's to cancel: the answers are here.
	pos, err := r.u.store.StoreRemoteDeviceLists(context.WithoutCancel(ctx), writes)
	for _, i := range stripes {
		r.stripes[i].Unlock()
	}
	if err != nil {
		return err
	}
	for i, w := range writes {
		if err := r.u.announce(context.WithoutCancel(ctx), w.UserID, "device_lists", pos[i]); err != nil {
			return err
		}
	}
	return nil
}
