// Package syncapi serves the sync-shaped endpoints (/sync, /messages,
// /context, /event, /members, filters) and the per-user streams behind
// them: typing, receipts and read markers, presence. It keeps its own copy
// of each room's timeline and current state, built from the roomserver's
// OutputRoomEvent stream, and wakes long-polling /sync requests from memory
// (see Notifier). Only setup imports this package; other components use
// its api package (sapi).
package syncapi

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/mux"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/sirupsen/logrus"

	"myelin/internal/bus"
	"myelin/internal/cache"
	"myelin/internal/mxhttp"
	"myelin/internal/sqldb"
	rsapi "myelin/roomserver/api"
	"myelin/setup/config"
	"myelin/syncapi/storage"
	uapi "myelin/userapi/api"
)

// SyncAPI is the sync component.
type SyncAPI struct {
	cfg      *config.Config
	store    *storage.Storage
	bus      *bus.Bus
	users    uapi.API
	rooms    rsapi.API
	notifier *Notifier
	// streamList is syncStreams, made once.
	streamList []stream
	lazy       *lazyMembers
	filters    *cache.LRU[string, *Filter] // stored filters by user and ID; inline ones by their JSON
	typing     *typingRooms
	presence   *presenceCache
	timeouts   *deadlines
	log        *logrus.Entry
	now        func() time.Time

	// processed holds the last stream sequence consumed from each stream,
	// so a request can wait until syncapi has seen everything committed
	// before it arrived.
	mu        sync.Mutex
	processed map[string]uint64
	progress  chan struct{} // closed and replaced when processed moves
	// stalled holds the streams whose current message failed (the
	// database is down or full): waiting for them would only delay reads
	// that can be answered from what is stored.
	stalled map[string]bool
	wg      sync.WaitGroup
}

// New opens syncapi's storage and loads the notifier's view of who is in
// which room.
func New(ctx context.Context, cfg *config.Config, db *sqldb.DB, b *bus.Bus, users uapi.API, rooms rsapi.API, log *logrus.Entry) (*SyncAPI, error) {
	store, err := storage.Open(ctx, db)
	if err != nil {
		return nil, fmt.Errorf("syncapi storage: %w", err)
	}
	joined, err := store.JoinedUsers(ctx, ":"+cfg.ServerName)
	if err != nil {
		return nil, fmt.Errorf("load joined users: %w", err)
	}
	s := &SyncAPI{
		cfg:       cfg,
		store:     store,
		bus:       b,
		users:     users,
		rooms:     rooms,
		lazy:      newLazyMembers(100000),
		filters:   cache.New[string, *Filter](100000),
		typing:    newTypingRooms(time.Now),
		presence:  newPresenceCache(100000),
		timeouts:  newDeadlines(timeoutTick),
		log:       log,
		now:       time.Now,
		processed: map[string]uint64{},
		stalled:   map[string]bool{},
		progress:  make(chan struct{}),
	}
	// Each stream's position, from the component that keeps it.
	s.streamList = s.syncStreams()
	current, err := latestPositions(ctx, s.streamList)
	if err != nil {
		return nil, fmt.Errorf("sync positions: %w", err)
	}
	s.notifier = NewNotifier(current, joined)
	if err := s.loadPeeks(ctx); err != nil {
		return nil, fmt.Errorf("load peeks: %w", err)
	}
	return s, nil
}

// timeoutTick is what long-poll timeouts are rounded down to (deadlines).
const timeoutTick = 250 * time.Millisecond

// consumedStream is a stream syncapi consumes and its handler.
type consumedStream struct {
	name   string
	handle bus.Handler
	// batch, when set, takes the stream's messages a batch at a time.
	batch bus.BatchHandler
}

// streams are the streams syncapi consumes. A request that reads its own
// writes waits for all of them (catchUp).
func (s *SyncAPI) streams() []consumedStream {
	return []consumedStream{
		{name: bus.OutputRoomEvent, handle: s.onRoomEvent, batch: s.onRoomEvents},
		{name: bus.OutputUserData, handle: s.onUserData},
		{name: bus.OutputTyping, handle: s.onTyping},
		{name: bus.OutputReceipt, handle: s.onReceipt},
		{name: bus.OutputPresence, handle: s.onPresence},
		{name: bus.OutputSendToDevice, handle: s.onSendToDevice},
	}
}

// Start consumes the output streams, expires typing notifications and
// sets offline the users who stopped syncing, until ctx ends.
func (s *SyncAPI) Start(ctx context.Context) error {
	for _, c := range s.streams() {
		c := c
		// Open the consumer before returning so that nothing published
		// after start is missed.
		cons, err := s.bus.OpenConsumer(ctx, c.name, bus.OutputConsumer("syncapi", jetstream.DeliverAllPolicy))
		if err != nil {
			return err
		}
		s.markProcessed(c.name, cons.AckFloor())
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if c.batch != nil {
				cons.ConsumeBatch(ctx, s.log.WithField("stream", c.name), roomEventBatch, 0, func(ctx context.Context, ms []jetstream.Msg) error {
					if err := c.batch(ctx, ms); err != nil {
						s.setStalled(c.name, true)
						return err
					}
					s.setStalled(c.name, false)
					if md, err := ms[len(ms)-1].Metadata(); err == nil {
						s.markProcessed(c.name, md.Sequence.Stream)
					}
					return nil
				})
				return
			}
			cons.Consume(ctx, s.log.WithField("stream", c.name), func(ctx context.Context, m jetstream.Msg) error {
				if err := c.handle(ctx, m); err != nil {
					s.setStalled(c.name, true)
					return err
				}
				s.setStalled(c.name, false)
				if md, err := m.Metadata(); err == nil {
					s.markProcessed(c.name, md.Sequence.Stream)
				}
				return nil
			})
		}()
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.expireTyping(ctx)
	}()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.expirePresence(ctx)
	}()
	return nil
}

// publish sends a message on one of the streams syncapi consumes.
func (s *SyncAPI) publish(ctx context.Context, stream string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s message: %w", stream, err)
	}
	// Typing, receipts and presence are set, not counted: a copy stored
	// by a retry after a lost ack changes nothing, so no message ID.
	return s.bus.Publish(ctx, bus.NewMsg(stream, data, ""))
}

// SyncWaiters is the number of /sync requests waiting for something new.
func (s *SyncAPI) SyncWaiters() int { return s.notifier.Waiters() }

// Wait waits for the consumers to stop after ctx ended.
func (s *SyncAPI) Wait() { s.wg.Wait() }

func (s *SyncAPI) markProcessed(stream string, seq uint64) {
	s.mu.Lock()
	if seq > s.processed[stream] {
		s.processed[stream] = seq
		close(s.progress)
		s.progress = make(chan struct{})
	}
	s.mu.Unlock()
}

func (s *SyncAPI) setStalled(stream string, stalled bool) {
	s.mu.Lock()
	if stalled && !s.stalled[stream] {
		s.stalled[stream] = true
		close(s.progress) // wake the waiters of catchUp
		s.progress = make(chan struct{})
	} else if !stalled {
		delete(s.stalled, stream)
	}
	s.mu.Unlock()
}

// catchUp waits (briefly) until syncapi has consumed everything that was in
// its streams when called, so that a client reads its own writes. It does
// not wait for a stream that is stalled on a failing message.
func (s *SyncAPI) catchUp(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for _, c := range s.streams() {
		name := c.name
		last, err := s.bus.LastSeq(ctx, name)
		if err != nil {
			return
		}
		for {
			s.mu.Lock()
			done := s.processed[name] >= last || s.stalled[name]
			ch := s.progress
			s.mu.Unlock()
			if done {
				break
			}
			select {
			case <-ch:
			case <-ctx.Done():
				return
			}
		}
	}
}

// Routes registers the sync endpoints.
func (s *SyncAPI) Routes(root *mux.Router) {
	for _, p := range []string{"/_matrix/client/v3", "/_matrix/client/r0"} {
		r := root.PathPrefix(p).Subrouter()
		r.Handle("/sync", s.authed(s.sync)).Methods(http.MethodGet)
		r.Handle("/events", s.authed(s.eventStream)).Methods(http.MethodGet)
		r.Handle("/user/{userId}/filter", s.authed(s.postFilter)).Methods(http.MethodPost)
		r.Handle("/user/{userId}/filter/{filterId}", s.authed(s.getFilter)).Methods(http.MethodGet)
		r.Handle("/rooms/{roomId}/messages", s.authed(s.messages)).Methods(http.MethodGet)
		r.Handle("/rooms/{roomId}/context/{eventId}", s.authed(s.context)).Methods(http.MethodGet)
		r.Handle("/rooms/{roomId}/event/{eventId}", s.authed(s.event)).Methods(http.MethodGet)
		r.Handle("/rooms/{roomId}/members", s.authed(s.members)).Methods(http.MethodGet)
		r.Handle("/rooms/{roomId}/joined_members", s.authed(s.joinedMembers)).Methods(http.MethodGet)
		r.Handle("/rooms/{roomId}/forget", s.authed(s.forget)).Methods(http.MethodPost)
		r.Handle("/peek/{roomIdOrAlias}", s.authed(s.postPeek)).Methods(http.MethodPost)
		r.Handle("/unpeek/{roomId}", s.authed(s.postUnpeek)).Methods(http.MethodPost)
		r.Handle("/search", s.authed(s.search)).Methods(http.MethodPost)
		r.Handle("/rooms/{roomId}/typing/{userId}", s.authed(s.putTyping)).Methods(http.MethodPut)
		r.Handle("/sendToDevice/{eventType}/{txnId}", s.authed(s.sendToDevice)).Methods(http.MethodPut)
		r.Handle("/keys/changes", s.authed(s.keysChanges)).Methods(http.MethodGet)
		r.Handle("/rooms/{roomId}/receipt/{receiptType}/{eventId}", s.authed(s.postReceipt)).Methods(http.MethodPost)
		r.Handle("/rooms/{roomId}/read_markers", s.authed(s.postReadMarkers)).Methods(http.MethodPost)
		r.Handle("/presence/{userId}/status", s.authed(s.getPresence)).Methods(http.MethodGet)
		r.Handle("/presence/{userId}/status", s.authed(s.putPresence)).Methods(http.MethodPut)
	}
	v1 := root.PathPrefix("/_matrix/client/v1").Subrouter()
	for _, p := range []string{"", "/{relType}", "/{relType}/{eventType}"} {
		v1.Handle("/rooms/{roomId}/relations/{eventId}"+p, s.authed(s.relations)).Methods(http.MethodGet)
	}
	v1.Handle("/rooms/{roomId}/threads", s.authed(s.threads)).Methods(http.MethodGet)
	root.Handle("/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device/{deviceId}/events",
		s.authed(s.dehydratedEvents)).Methods(http.MethodPost)
}

func (s *SyncAPI) authed(h func(r *http.Request, dev *uapi.Device) (any, error)) mxhttp.Handler {
	return mxhttp.Authenticated(s.users.DeviceByToken, h)
}

// onUserData wakes the user whose data changed; for a device list, the
// users sharing a room with its owner.
func (s *SyncAPI) onUserData(ctx context.Context, m jetstream.Msg) error {
	var u uapi.UserDataUpdate
	if err := json.Unmarshal(m.Data(), &u); err != nil {
		s.log.WithError(err).Warn("dropping malformed user data update")
		return nil
	}
	switch u.Stream {
	case "account_data":
		s.notifier.OnUser(accountDataStream, u.UserID, u.Pos)
	case "device_lists":
		// Everyone sharing a room with the user hears of it.
		rooms, err := s.joinedRooms(ctx, u.UserID)
		if err != nil {
			return err
		}
		s.notifier.OnShared(deviceListStream, u.UserID, rooms, u.Pos)
		if s.isLocal(u.UserID) {
			return s.dropGoneDevices(ctx, u.UserID)
		}
	}
	return nil
}
