package perform

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"sync"
	"time"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"myelin/internal/cache"
	"myelin/internal/mxid"
	rsapi "myelin/roomserver/api"
)

// Bounds of one backfill.
const (
	// backfillTimeout bounds asking the servers, in turn, for one batch.
	backfillTimeout = 30 * time.Second
	// maxBackfill is the most events asked for at once (servers clamp
	// /backfill to 100, Synapse and Myelin alike).
	maxBackfill = 100
	// maxBackfillFrom is the most event IDs named in one request (Myelin
	// serves at most 50).
	maxBackfillFrom = 50
	// maxBackfillServers bounds the servers asked for one batch, besides
	// the room ID's own.
	maxBackfillServers = 5
	// backfillQuiet is how long a room whose servers had nothing to give
	// (or failed) is not asked again: each /messages reaching the start
	// of its history would otherwise ask anew.
	backfillQuiet = time.Minute
)

// backfills remembers the backfills under way and what earlier ones found.
type backfills struct {
	mu      sync.Mutex
	running map[string]*backfillRun
	// complete holds rooms whose create event is in their timeline here.
	complete *cache.LRU[string, bool]
	// quiet holds, per room, until when not to ask its servers again.
	quiet *cache.LRU[string, time.Time]
}

type backfillRun struct {
	done chan struct{}
	res  *rsapi.BackfillResponse
	err  error
}

func newBackfills() *backfills {
	return &backfills{
		running:  map[string]*backfillRun{},
		complete: cache.New[string, bool](10000),
		quiet:    cache.New[string, time.Time](10000),
	}
}

// PerformBackfill implements rsapi.Performer: one batch of history older
// than the room's oldest events here, from the room's other servers, is
// stored as historical events through the input. Only one runs per room:
// a second caller waits for the first and gets its answer.
func (p *Performer) PerformBackfill(ctx context.Context, req *rsapi.BackfillRequest) (*rsapi.BackfillResponse, error) {
	// A gap in the middle (From) is its own run, beside the room's start.
	key := req.RoomID
	if len(req.From) > 0 {
		key = req.RoomID + "|" + req.After
	} else if done, _ := p.bf.complete.Get(req.RoomID); done {
		return &rsapi.BackfillResponse{Complete: true}, nil
	}
	p.bf.mu.Lock()
	if run, ok := p.bf.running[key]; ok {
		p.bf.mu.Unlock()
		select {
		case <-run.done:
			return run.res, run.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	run := &backfillRun{done: make(chan struct{})}
	p.bf.running[key] = run
	p.bf.mu.Unlock()
	defer func() {
		p.bf.mu.Lock()
		delete(p.bf.running, key)
		p.bf.mu.Unlock()
		close(run.done)
	}()
	// Others may wait for this run: a first caller that goes away (a
	// client closing its /messages) must not cut it short for them.
	bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*backfillTimeout)
	defer cancel()
	run.res, run.err = p.backfill(bctx, req, key)
	if run.err == nil && run.res.Complete && len(req.From) == 0 {
		p.bf.complete.Put(req.RoomID, true)
	}
	if run.err != nil || (run.res.Stored == 0 && !run.res.Complete) {
		p.bf.quiet.Put(key, p.now().Add(backfillQuiet))
	}
	return run.res, run.err
}

func (p *Performer) backfill(ctx context.Context, req *rsapi.BackfillRequest, key string) (*rsapi.BackfillResponse, error) {
	if until, ok := p.bf.quiet.Get(key); ok && p.now().Before(until) {
		return &rsapi.BackfillResponse{}, nil
	}
	from, earliest := req.From, []string{req.After}
	if len(req.From) == 0 {
		var complete bool
		var err error
		from, earliest, complete, err = p.rooms.BackfillPoint(ctx, req.RoomID)
		if err != nil {
			return nil, fmt.Errorf("where to backfill %s from: %w", req.RoomID, err)
		}
		if complete {
			return &rsapi.BackfillResponse{Complete: true}, nil
		}
	}
	if len(from) == 0 || p.fetcher == nil {
		return &rsapi.BackfillResponse{}, nil
	}
	if len(from) > maxBackfillFrom {
		from = from[:maxBackfillFrom]
	}
	ver, err := p.rooms.RoomVersion(ctx, req.RoomID)
	if err != nil {
		return nil, err
	}
	servers, err := p.backfillServers(ctx, req.RoomID, earliest)
	if err != nil {
		return nil, err
	}
	limit := max(1, min(req.Limit, maxBackfill))
	fctx, cancel := context.WithTimeout(ctx, backfillTimeout)
	defer cancel()
	scope := rsapi.FetchScope{RoomID: req.RoomID, RoomVersion: ver, Servers: servers}
	evs, by, err := p.fetcher.Backfill(fctx, scope, from, limit)
	if err != nil {
		return nil, fmt.Errorf("backfill %s: %w", req.RoomID, err)
	}
	if len(evs) == 0 {
		return &rsapi.BackfillResponse{}, nil
	}
	in := &rsapi.InputRequest{RoomID: req.RoomID, Origin: by, Historical: true}
	create := ""
	for _, ev := range evs {
		in.Events = append(in.Events, rsapi.InputEvent{PDU: json.RawMessage(ev.JSON())})
		if ev.Type() == spec.MRoomCreate && ev.StateKeyEquals("") {
			create = ev.EventID()
		}
	}
	resp, err := p.rooms.Input(ctx, in)
	if err != nil {
		return nil, fmt.Errorf("store backfilled events of %s: %w", req.RoomID, err)
	}
	out := &rsapi.BackfillResponse{Stored: len(resp.EventIDs)}
	for _, id := range resp.EventIDs {
		out.Complete = out.Complete || id == create
	}
	p.log.WithField("room_id", req.RoomID).WithField("server", by).WithField("events", out.Stored).Debug("backfilled")
	return out, nil
}

// backfillServers lists whom to ask for a room's history: the servers with
// members joined at its earliest events here (those who were there then
// may have what came before), the most members first, then the room ID's
// own server; never this one.
func (p *Performer) backfillServers(ctx context.Context, roomID string, earliest []string) ([]spec.ServerName, error) {
	var state []gmsl.PDU
	var err error
	if len(earliest) > 0 {
		state, err = p.rooms.StateBefore(ctx, earliest[0])
	}
	if len(earliest) == 0 || err != nil {
		if state, err = p.rooms.CurrentState(ctx, roomID); err != nil {
			return nil, fmt.Errorf("servers of %s: %w", roomID, err)
		}
	}
	count := map[string]int{}
	for _, ev := range state {
		if ev.Type() != spec.MRoomMember || ev.StateKey() == nil {
			continue
		}
		if m, err := ev.Membership(); err != nil || m != spec.Join {
			continue
		}
		if s, ok := mxid.Server(*ev.StateKey()); ok {
			count[s]++
		}
	}
	names := make([]string, 0, len(count))
	for s := range count {
		names = append(names, s)
	}
	sort.Slice(names, func(i, j int) bool {
		if count[names[i]] != count[names[j]] {
			return count[names[i]] > count[names[j]]
		}
		return names[i] < names[j]
	})
	if len(names) > maxBackfillServers+1 { // this server may be among them
		names = names[:maxBackfillServers+1]
	}
	return p.servers(roomID, names), nil
}
