package syncapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"

	"myelin/syncapi/storage"
)

// roomsProvider is the rooms stream (position pduStream): the rooms the
// user is joined to, invited to, knocked on or left, with their timelines
// and state.
type roomsProvider struct{ s *SyncAPI }

func (roomsProvider) id() streamID { return pduStream }

func (p roomsProvider) latest(ctx context.Context) (int64, error) { return p.s.store.MaxPos(ctx) }

// roomsPart is the rooms section of an answer.
type roomsPart struct {
	join   map[string]*joinedRoom
	invite map[string]*invitedRoom
	leave  map[string]*leftRoom
	knock  map[string]any
	peek   map[string]*joinedRoom
}

func newRoomsPart() *roomsPart {
	return &roomsPart{
		join:   map[string]*joinedRoom{},
		invite: map[string]*invitedRoom{},
		leave:  map[string]*leftRoom{},
		knock:  map[string]any{},
		peek:   map[string]*joinedRoom{},
	}
}

func (r *roomsPart) addTo(_ *syncRequest, resp *syncResponse) {
	resp.Rooms.Join, resp.Rooms.Invite, resp.Rooms.Leave, resp.Rooms.Knock = r.join, r.invite, r.leave, r.knock
	resp.Rooms.Peek = r.peek
}

// load reads the rooms of the answer: those the user is in (loadRooms),
// then those the device peeks into.
func (p roomsProvider) load(ctx context.Context, req *syncRequest, from int64) (part, error) {
	peeks := p.s.notifier.Peeks(req.dev.UserID, req.dev.DeviceID)
	out, err := p.loadRooms(ctx, req, from)
	if err != nil {
		return nil, err
	}
	if len(peeks) == 0 {
		if out == nil {
			return nil, nil // no typed nil in the interface
		}
		return out, nil
	}
	if out == nil {
		out = newRoomsPart()
	}
	if err := p.addPeeks(ctx, req, from, peeks, out); err != nil {
		return nil, err
	}
	return out, nil
}

// load reads the rooms with new events or a membership change of the
// user's since the token (every room in an initial or full-state sync).
// A room with only new ephemeral events or account data is added by those
// streams.
func (p roomsProvider) loadRooms(ctx context.Context, req *syncRequest, from int64) (*roomsPart, error) {
	if !req.full() && !req.moved(pduStream) {
		return nil, nil
	}
	if m := req.b.moves; m != nil && !m.own {
		return p.loadMoved(ctx, req, from, m.rooms)
	}
	s := p.s
	user := req.dev.UserID
	memberships, err := s.memberships(ctx, req)
	if err != nil {
		return nil, err
	}
	// The user's membership changes since the last sync decide which rooms
	// are new to it, which it left, and which it is invited to.
	lastChange := map[string]storage.MembershipChange{}
	firstChange := map[string]storage.MembershipChange{}
	joinedInBatch := map[string]bool{}
	var active map[string]bool
	if req.since != nil && req.to[pduStream] > from && !req.quiet(pduStream) {
		changes, err := s.ownChanges(ctx, req)
		if err != nil {
			return nil, err
		}
		for _, c := range changes {
			if _, ok := firstChange[c.RoomID]; !ok {
				firstChange[c.RoomID] = c
			}
			lastChange[c.RoomID] = c
			joinedInBatch[c.RoomID] = joinedInBatch[c.RoomID] || c.Membership == "join"
		}
		if active, err = s.store.RoomsWithEvents(ctx, from, req.to[pduStream]); err != nil {
			return nil, err
		}
	}
	out := newRoomsPart()
	var forgotten map[string]bool
	roomIDs := make([]string, 0, len(memberships))
	for id := range memberships {
		roomIDs = append(roomIDs, id)
	}
	sort.Strings(roomIDs)
	for _, roomID := range roomIDs {
		m := memberships[roomID]
		if !req.filter.Room.AllowsRoom(roomID, nil) {
			continue
		}
		_, changed := lastChange[roomID]
		switch m {
		case "join":
			full := req.full()
			newlyJoined := false
			if changed && req.since != nil {
				before, err := s.membershipBefore(ctx, roomID, user, firstChange[roomID].Pos)
				if err != nil {
					return nil, err
				}
				if before != "join" {
					full, newlyJoined = true, true // the whole state
				}
			}
			if !full && !active[roomID] {
				continue
			}
			jr, err := s.joinedRoom(ctx, req, roomID, from, full, newlyJoined)
			if err != nil {
				return nil, err
			}
			if newlyJoined {
				if req.b.newRooms == nil {
					req.b.newRooms = map[string]bool{}
				}
				req.b.newRooms[roomID] = true
			}
			if !full && jr.empty() {
				continue // everything new was filtered out
			}
			out.join[roomID] = jr
		case "invite", "knock":
			// Both show the stripped state the member event carries; a
			// room knocked on shows it as knock_state (spec: rooms.knock
			// of /sync).
			if req.since != nil && !changed {
				continue
			}
			ir, inviter, err := s.invitedRoom(ctx, roomID, user)
			if err != nil {
				return nil, err
			}
			ignored, err := s.ignored(ctx, req)
			if err != nil {
				return nil, err
			}
			switch {
			case ir == nil:
			case ignored[inviter]:
				// Invites from ignored users are dropped (spec:
				// "Ignoring Users").
			case m == "invite":
				out.invite[roomID] = ir
			default:
				out.knock[roomID] = map[string]any{"knock_state": map[string]any{"events": ir.InviteState.Events}}
			}
		case "leave", "ban":
			if req.since == nil && !req.filter.Room.IncludeLeave {
				continue
			}
			if req.since != nil && !changed && !req.fullState {
				continue
			}
			if forgotten == nil {
				if forgotten, err = s.store.Forgotten(ctx, user); err != nil {
					return nil, err
				}
			}
			// A forgotten room is left out, but for a leave the client
			// has not seen yet: it must learn that it left.
			if forgotten[roomID] && (req.since == nil || !changed || req.fullState) {
				continue
			}
			full := req.full()
			if req.since != nil && changed {
				before, err := s.membershipBefore(ctx, roomID, user, firstChange[roomID].Pos)
				if err != nil {
					return nil, err
				}
				if before == "leave" || before == "ban" {
					continue // e.g. an invite rejected and re-sent: nothing to show
				}
				if before != "join" && joinedInBatch[roomID] {
					full = true // joined and left within the batch
				}
				// An invite (or knock) the user saw before and now
				// rejected shows what came since, as any left room: the
				// rejection, and no state of a room never joined (which
				// for a room on another server this server has not got).
			}
			lr, err := s.leftRoom(ctx, req, roomID, from, full)
			if err != nil {
				return nil, err
			}
			if lr != nil {
				out.leave[roomID] = lr
			}
		}
	}
	if err := s.flushBundles(ctx, req); err != nil {
		return nil, err
	}
	return out, nil
}

// loadMoved is load for a user whose memberships did not change since
// the token (as the notifier knows): only the joined rooms whose timeline
// moved have anything, and the user, joined since before the token, may
// see all of it. It reads no membership.
func (p roomsProvider) loadMoved(ctx context.Context, req *syncRequest, from int64, moved []string) (*roomsPart, error) {
	out := newRoomsPart()
	sort.Strings(moved)
	for _, roomID := range moved {
		if !req.filter.Room.AllowsRoom(roomID, nil) {
			continue
		}
		if req.b.joinedAt == nil {
			req.b.joinedAt = map[string]int64{}
		}
		req.b.joinedAt[roomID] = from
		jr, err := p.s.joinedRoom(ctx, req, roomID, from, false, false)
		if err != nil {
			return nil, err
		}
		if !jr.empty() {
			out.join[roomID] = jr
		}
	}
	if err := p.s.flushBundles(ctx, req); err != nil {
		return nil, err
	}
	return out, nil
}

// membershipBefore returns the user's membership of a room just before pos.
func (s *SyncAPI) membershipBefore(ctx context.Context, roomID, userID string, pos int64) (string, error) {
	log, err := s.store.MembershipLog(ctx, roomID, userID)
	if err != nil {
		return "", err
	}
	m := "leave"
	for _, c := range log {
		if c.Pos >= pos {
			break
		}
		m = c.Membership
	}
	return m, nil
}

func (jr *joinedRoom) empty() bool {
	return len(jr.Timeline.Events) == 0 && (jr.State == nil || len(jr.State.Events) == 0) &&
		(jr.StateAfter == nil || len(jr.StateAfter.Events) == 0) && len(jr.Ephemeral.Events) == 0 && len(jr.AccountData.Events) == 0
}

func newJoinedRoom() *joinedRoom {
	return &joinedRoom{
		State:       &stateList{Events: []ClientEvent{}},
		Timeline:    timeline{Events: []ClientEvent{}},
		Ephemeral:   eventList{Events: []any{}},
		AccountData: eventList{Events: []any{}},
	}
}

// joinedRoom builds one room of rooms.join: the timeline of events after
// from, and either the whole state at its start (full) or the state that
// changed between from and its start. newlyJoined marks a room the user
// joined since the last sync.
func (s *SyncAPI) joinedRoom(ctx context.Context, req *syncRequest, roomID string, from int64, full, newlyJoined bool) (*joinedRoom, error) {
	jr := newJoinedRoom()
	tlFrom := from
	if full {
		// An initial sync, a newly joined room or full_state: the timeline
		// is the room's latest events, limited if there are older ones.
		tlFrom = 0
	}
	vis := s.syncVisibility(req, roomID)
	events, limited, err := s.timelineEvents(ctx, req, vis, tlFrom, req.to[pduStream], req.filter.timelineLimit())
	if err != nil {
		return nil, err
	}
	// A newly joined room's timeline is always limited: the client has
	// none of the room's history (Synapse does the same).
	jr.Timeline.Limited = limited || newlyJoined
	jr.Timeline.PrevBatch = prevBatch(events, req.to)
	inTimeline := make(map[string]bool, len(events))
	for _, e := range events {
		inTimeline[e.EventID] = true
		jr.Timeline.Events = append(jr.Timeline.Events, req.fmt.event(e))
	}
	if err := s.bundleTimeline(ctx, req, vis, events, jr.Timeline.Events, jr.Timeline.Limited); err != nil {
		return nil, err
	}
	stateFilter := &req.filter.Room.State
	lazy := stateFilter.LazyLoadMembers
	var sent *memberSet
	if lazy {
		sent = s.lazy.get(req.dev.SessionID, roomID, full)
	}
	// The member events a lazy-loading client needs: the timeline's senders
	// (and, in a full sync, its own).
	wantMember := map[string]bool{}
	if lazy {
		if full {
			wantMember[req.dev.UserID] = true
		}
		for _, e := range events {
			wantMember[e.Sender] = true
		}
	}
	have := map[string]bool{} // members whose event is in the response
	for _, e := range events {
		if e.Type == "m.room.member" && e.StateKey != nil {
			have[*e.StateKey] = true
		}
	}
	membersChanged := full
	switch {
	case full:
		state, err := s.currentState(ctx, roomID, lazy, wantMember)
		if err != nil {
			return nil, err
		}
		for _, st := range state {
			if inTimeline[st.EventID] {
				continue
			}
			if st.Type == "m.room.member" && lazy && !wantMember[st.StateKey] {
				continue
			}
			ce := req.fmt.state(st)
			if stateFilter.AllowsEvent(st.Type, st.Sender, ce.Content) {
				jr.State.Events = append(jr.State.Events, ce)
				if st.Type == "m.room.member" {
					have[st.StateKey] = true
				}
			}
		}
	case jr.Timeline.Limited && len(events) > 0:
		// A gap: every state change in it, member events included even
		// when lazy-loading (the client cannot know them otherwise).
		changes, err := s.gapState(ctx, roomID, from, events[0].Pos, inTimeline)
		if err != nil {
			return nil, err
		}
		for _, c := range changes {
			ce := req.fmt.event(c)
			if c.Type == "m.room.member" {
				membersChanged = true
			}
			if stateFilter.AllowsEvent(c.Type, c.Sender, ce.Content) {
				jr.State.Events = append(jr.State.Events, ce)
				if c.Type == "m.room.member" {
					have[*c.StateKey] = true
				}
			}
		}
	}
	if lazy {
		// Senders of the timeline whose member event the client lacks,
		// unless this device was sent it already (include_redundant_members
		// asks for them anyway).
		for u := range wantMember {
			if have[u] || (!full && !stateFilter.IncludeRedundantMembers && sent.has(u)) {
				continue
			}
			st, err := s.store.StateEvent(ctx, roomID, "m.room.member", u)
			if err != nil {
				continue
			}
			jr.State.Events = append(jr.State.Events, req.fmt.state(st))
			have[u] = true
		}
		sent.add(have)
	}
	for _, e := range events {
		if e.Type == "m.room.member" {
			membersChanged = true
		}
	}
	if req.useStateAfter {
		after, err := s.stateAfter(ctx, req, roomID, from, full, wantMember, jr.State.Events)
		if err != nil {
			return nil, err
		}
		jr.State, jr.StateAfter = nil, &stateList{Events: after}
	}
	if membersChanged {
		if err := s.summarise(ctx, roomID, req.dev.UserID, &jr.Summary); err != nil {
			return nil, err
		}
	}
	// The userapi counts the notifications (its push rules decide what
	// notifies) and clears them on read receipts.
	if err := s.unread(ctx, req, roomID, jr); err != nil {
		return nil, err
	}
	return jr, nil
}

// unread sets a joined room's unread counts. With
// unread_thread_notifications asked, unread_notifications counts the main
// timeline alone and each thread has its own (spec: threaded read
// receipts).
func (s *SyncAPI) unread(ctx context.Context, req *syncRequest, roomID string, jr *joinedRoom) error {
	counts, err := s.users.NotificationCounts(ctx, req.dev.UserID, roomID)
	if err != nil {
		return fmt.Errorf("unread counts of %s in %s: %w", req.dev.UserID, roomID, err)
	}
	jr.Unread = unreadCounts{Highlight: int(counts.Highlights), Notification: int(counts.Notifications)}
	if !req.filter.Room.Timeline.UnreadThreadNotifications {
		return nil
	}
	threads, err := s.users.ThreadNotificationCounts(ctx, req.dev.UserID, roomID)
	if err != nil {
		return fmt.Errorf("unread counts of %s in the threads of %s: %w", req.dev.UserID, roomID, err)
	}
	for id, c := range threads {
		if jr.UnreadThread == nil {
			jr.UnreadThread = map[string]unreadCounts{}
		}
		jr.UnreadThread[id] = unreadCounts{Highlight: int(c.Highlights), Notification: int(c.Notifications)}
		jr.Unread.Highlight = max(0, jr.Unread.Highlight-int(c.Highlights))
		jr.Unread.Notification = max(0, jr.Unread.Notification-int(c.Notifications))
	}
	return nil
}

// currentState is a room's current state; with lazy, only the member
// events of wantMember among its members, not every member of a room that
// may have thousands.
func (s *SyncAPI) currentState(ctx context.Context, roomID string, lazy bool, wantMember map[string]bool) ([]*storage.StateEvent, error) {
	if !lazy {
		return s.store.CurrentState(ctx, roomID)
	}
	state, err := s.store.CurrentStateWithoutMembers(ctx, roomID)
	if err != nil {
		return nil, err
	}
	users := make([]string, 0, len(wantMember))
	for u := range wantMember {
		users = append(users, u)
	}
	members, err := s.store.MemberEvents(ctx, roomID, users)
	if err != nil {
		return nil, err
	}
	return append(state, members...), nil
}

// stateAfter is a joined room's state_after (use_state_after): the state
// at the end of its timeline, all of it when full, else what changed
// since from, timeline events included. A lazy-loading client gets the
// member events of wantMember alone, and those lazily added to its
// state (lazyAdded).
func (s *SyncAPI) stateAfter(ctx context.Context, req *syncRequest, roomID string, from int64, full bool, wantMember map[string]bool, lazyAdded []ClientEvent) ([]ClientEvent, error) {
	stateFilter := &req.filter.Room.State
	lazy := stateFilter.LazyLoadMembers
	out := []ClientEvent{}
	have := map[[2]string]bool{}
	add := func(ce ClientEvent) {
		if ce.StateKey == nil || have[[2]string{ce.Type, *ce.StateKey}] {
			return
		}
		if ce.Type == "m.room.member" && lazy && !wantMember[*ce.StateKey] {
			return
		}
		if stateFilter.AllowsEvent(ce.Type, ce.Sender, ce.Content) {
			have[[2]string{ce.Type, *ce.StateKey}] = true
			out = append(out, ce)
		}
	}
	if full {
		state, err := s.currentState(ctx, roomID, lazy, wantMember)
		if err != nil {
			return nil, err
		}
		for _, st := range state {
			add(req.fmt.state(st))
		}
		return out, nil
	}
	changes, err := s.gapState(ctx, roomID, from, req.to[pduStream]+1, nil)
	if err != nil {
		return nil, err
	}
	for _, c := range changes {
		add(req.fmt.event(c))
	}
	for _, ce := range lazyAdded {
		if ce.Type == "m.room.member" {
			add(ce)
		}
	}
	return out, nil
}

// prevBatch is the token to page back from a timeline. A timeline that
// starts with the room's create event has nothing before it; its token
// points just after the create event, so that paging back (which clients
// and sytest expect to return something) returns the create event again,
// as Dendrite does.
func prevBatch(events []*storage.Event, to Token) string {
	if len(events) == 0 {
		return to.String()
	}
	first := events[0]
	if first.Type == "m.room.create" && first.StateKey != nil && *first.StateKey == "" {
		return TopoToken{Depth: first.Depth, Pos: first.Pos + 1}.String()
	}
	return TopoToken{Depth: first.Depth, Pos: first.Pos}.String()
}

// timelineEvents returns up to limit events of roomID in (from, to] that
// pass the timeline filter and that the user may see, oldest first, and
// whether older ones were left out.
func (s *SyncAPI) timelineEvents(ctx context.Context, req *syncRequest, vis *visibility, from, to int64, limit int) ([]*storage.Event, bool, error) {
	roomID := vis.roomID
	tf := &req.filter.Room.Timeline
	if !req.filter.Room.AllowsRoom(roomID, tf) {
		return nil, false, nil
	}
	// The user's ignored users' events are left out (read once a build).
	ignored, err := s.ignored(ctx, req)
	if err != nil {
		return nil, false, err
	}
	vis.ignored = ignored
	var out []*storage.Event
	upper := to
	// Pages are larger than the limit so that a filter that drops most
	// events still fills the timeline in a few queries.
	page := max(limit+1, 100)
	for round := 0; round < 20; round++ {
		batch, more, err := s.store.Timeline(ctx, roomID, from, upper, page)
		if err != nil {
			return nil, false, err
		}
		var kept []*storage.Event
		for _, e := range batch {
			ok, err := vis.canSee(ctx, e)
			if err != nil {
				return nil, false, err
			}
			if ok && tf.AllowsEvent(e.Type, e.Sender, contentRaw(e.JSON)) {
				if e, err = vis.forErased(ctx, e); err != nil {
					return nil, false, err
				}
				kept = append(kept, e)
			}
		}
		out = append(kept, out...)
		if len(out) >= limit {
			return out[len(out)-limit:], more || len(out) > limit, nil
		}
		if !more || len(batch) == 0 {
			return out, false, nil
		}
		upper = batch[0].Pos - 1
	}
	return out, true, nil
}

// invitedRoom builds one room of rooms.invite from the invite event, and
// returns its sender.
func (s *SyncAPI) invitedRoom(ctx context.Context, roomID, userID string) (*invitedRoom, string, error) {
	st, err := s.store.StateEvent(ctx, roomID, "m.room.member", userID)
	if err != nil {
		if errors.Is(err, storage.ErrNotFound) {
			return nil, "", nil
		}
		return nil, "", err
	}
	ev, err := s.store.Event(ctx, st.EventID)
	if err != nil {
		if errors.Is(err, storage.ErrNotFound) {
			return nil, "", nil
		}
		return nil, "", err
	}
	ir := &invitedRoom{}
	ir.InviteState.Events = inviteState(ev)
	return ir, ev.Sender, nil
}

// leftRoom builds one room of rooms.leave: the events up to the user's
// leave that it has not seen, and the state at the leave: all of it
// (full), or what changed in a gap before the timeline.
func (s *SyncAPI) leftRoom(ctx context.Context, req *syncRequest, roomID string, from int64, full bool) (*leftRoom, error) {
	st, err := s.store.StateEvent(ctx, roomID, "m.room.member", req.dev.UserID)
	if err != nil {
		if errors.Is(err, storage.ErrNotFound) {
			return nil, nil
		}
		return nil, err
	}
	lr := &leftRoom{
		State:       stateList{Events: []ClientEvent{}},
		Timeline:    timeline{Events: []ClientEvent{}},
		AccountData: eventList{Events: []any{}},
	}
	if full {
		from = 0
	}
	vis := s.syncVisibility(req, roomID)
	events, limited, err := s.timelineEvents(ctx, req, vis, from, st.Pos, req.filter.timelineLimit())
	if err != nil {
		return nil, err
	}
	lr.Timeline.Limited = limited
	lr.Timeline.PrevBatch = prevBatch(events, Token{pduStream: st.Pos})
	inTimeline := map[string]bool{}
	for _, e := range events {
		inTimeline[e.EventID] = true
		lr.Timeline.Events = append(lr.Timeline.Events, req.fmt.event(e))
	}
	if err := s.bundleTimeline(ctx, req, vis, events, lr.Timeline.Events, limited); err != nil {
		return nil, err
	}
	stateFilter := &req.filter.Room.State
	switch {
	case full:
		// The state when the user left, from the roomserver: the room's
		// current state may have moved on since.
		before, err := s.rooms.StateBefore(ctx, st.EventID)
		if err != nil {
			return nil, err
		}
		for _, p := range before {
			if inTimeline[p.EventID()] || p.StateKey() == nil {
				continue
			}
			if stateFilter.LazyLoadMembers && p.Type() == "m.room.member" {
				continue
			}
			ce := req.fmt.base(string(p.JSON()), p.EventID(), roomID)
			if stateFilter.AllowsEvent(ce.Type, ce.Sender, ce.Content) {
				lr.State.Events = append(lr.State.Events, ce)
			}
		}
	case limited && len(events) > 0:
		changes, err := s.gapState(ctx, roomID, from, events[0].Pos, inTimeline)
		if err != nil {
			return nil, err
		}
		for _, c := range changes {
			ce := req.fmt.event(c)
			if stateFilter.AllowsEvent(c.Type, c.Sender, ce.Content) {
				lr.State.Events = append(lr.State.Events, ce)
			}
		}
	}
	return lr, nil
}

// summarise fills a room's summary: member counts and the heroes a client
// names an unnamed room after.
func (s *SyncAPI) summarise(ctx context.Context, roomID, userID string, sum *roomSummary) error {
	joined, invited, heroes, err := s.store.MemberSummary(ctx, roomID, userID)
	if err != nil {
		return err
	}
	sum.Joined, sum.Invited = &joined, &invited
	// Heroes are for clients to name a room that has no name of its own
	// (spec: RoomSummary, m.heroes); a named room needs none.
	named, err := s.hasName(ctx, roomID)
	if err != nil {
		return err
	}
	if !named {
		sum.Heroes = heroes
	}
	return nil
}

// hasName reports whether a room has a non-empty m.room.name or
// m.room.canonical_alias.
func (s *SyncAPI) hasName(ctx context.Context, roomID string) (bool, error) {
	state, err := s.store.CurrentState(ctx, roomID, "m.room.name", "m.room.canonical_alias")
	if err != nil {
		return false, err
	}
	for _, st := range state {
		if st.StateKey == "" && (gjsonString(st.JSON, "content.name") != "" || gjsonString(st.JSON, "content.alias") != "") {
			return true, nil
		}
	}
	return false, nil
}

func contentRaw(js string) json.RawMessage {
	c := json.RawMessage(gjsonGet(js, "content"))
	return c
}

// gapState returns the state events of roomID that changed in a gap of
// its timeline, between positions from and to: the latest of each type
// and state key, in order, leaving out those in the timeline.
func (s *SyncAPI) gapState(ctx context.Context, roomID string, from, to int64, inTimeline map[string]bool) ([]*storage.Event, error) {
	changes, err := s.store.StateEventsBetween(ctx, roomID, from, to)
	if err != nil {
		return nil, err
	}
	latest := map[[2]string]*storage.Event{}
	for _, c := range changes {
		latest[[2]string{c.Type, *c.StateKey}] = c
	}
	out := changes[:0:0]
	for _, c := range changes {
		if latest[[2]string{c.Type, *c.StateKey}] == c && !inTimeline[c.EventID] {
			out = append(out, c)
		}
	}
	return out, nil
}
