package syncapi

import (
	"context"
	"fmt"

	"myelin/syncapi/storage"
	uapi "myelin/userapi/api"
)

// A stream is one stream of /sync: rooms (timelines and memberships),
// typing, receipts, account data, presence, device lists, to-device
// messages, one-time key counts. Each is one file: its provider, the
// consumer that moves it and wakes the notifier (OnRoom, OnUser, OnDevice,
// OnShared), and its part of the answer. build is a loop over them.
//
// load reads and part writes, so that simplified sliding sync can take
// the same parts into its extensions (to_device, e2ee, account_data,
// receipts, typing) without building a /sync answer; a stream that reads
// no rooms of its own (typing, receipts, account data) takes the rooms
// from req (memberships), which sliding sync limits to its window.
type stream interface {
	// id is the stream's position in a Token. A stream derived from
	// another, without a position of its own (one-time key counts), has
	// that one's.
	id() streamID
	// load reads what is new in the stream for req's user and device
	// after from (req.since's position; 0 in an initial sync) up to
	// req.to. It returns nil when nothing is. It may leave what later
	// streams need in req.b (the rooms newly joined, who joined and left).
	load(ctx context.Context, req *syncRequest, from int64) (part, error)
}

// positioned is a stream with a position of its own, read when syncapi
// starts.
type positioned interface {
	stream
	latest(ctx context.Context) (int64, error)
}

// A part is what one stream has for one request.
type part interface {
	// addTo puts the part into a /sync answer. It reads nothing: a room
	// it adds to that has nothing else is made by resp.room.
	addTo(req *syncRequest, resp *syncResponse)
}

// syncStreams are the streams of /sync in the order build loads them:
// typing, receipts and account data add to the rooms that the rooms
// stream put in the answer; presence and device lists use the rooms it
// found newly joined, and the key counts the to-device messages given.
func (s *SyncAPI) syncStreams() []stream {
	return []stream{
		roomsProvider{s},
		typingProvider{s},
		receiptsProvider{s},
		accountDataProvider{s},
		presenceProvider{s},
		deviceListsProvider{s},
		toDeviceProvider{s},
		keyCountsProvider{s},
	}
}

// latestPositions reads every stream's current position.
func latestPositions(ctx context.Context, streams []stream) (Token, error) {
	var t Token
	for _, st := range streams {
		p, ok := st.(positioned)
		if !ok {
			continue
		}
		pos, err := p.latest(ctx)
		if err != nil {
			return Token{}, fmt.Errorf("position of stream %d: %w", p.id(), err)
		}
		t[p.id()] = max(t[p.id()], pos)
	}
	return t, nil
}

// syncRequest is one /sync call.
type syncRequest struct {
	dev       *uapi.Device
	filter    *Filter
	since     *Token
	fullState bool
	// useStateAfter asks for the state at the end of each joined room's
	// timeline (state_after) rather than at its start (use_state_after).
	useStateAfter bool
	to            Token
	fmt           formatter
	// withRoomID puts room_id into events (the flat /events stream).
	withRoomID bool
	// concern, when the notifier knows it, is the latest positions that
	// concerned the user: a stream that has not moved past since for it
	// has nothing to read.
	concern *Token
	// b is what one build read and shares between its streams. It is
	// dropped when the build ends, so that a request waiting between
	// builds holds none of it.
	b *buildState
}

// buildState is what the streams of one build read once and share.
type buildState struct {
	// memberships and joinedAt are the user's membership of each room
	// and the position of its join, by room (memberships).
	memberships map[string]string
	joinedAt    map[string]int64
	// ownChanges is the user's own membership changes in the range;
	// non-nil once read.
	ownChanges []storage.MembershipChange
	// members is who joined and left the user's rooms since the token,
	// read once for presence and device lists (membersChanged).
	members *membersChange
	// newRooms are the rooms the user joined since the token (the rooms
	// stream), whose typing and members' presence are all new to it.
	newRooms map[string]bool
	// moves, when the notifier knows them, is what of the rooms stream
	// concerned the user since the token: an incremental sync whose user
	// neither changed membership nor shares a room where someone did
	// reads only the rooms that moved.
	moves *roomMoves
	// ignored is the users the user ignores; ignoredRead once read.
	ignored     map[string]bool
	ignoredRead bool
	// bundles are the limited timelines of the rooms stream, whose
	// aggregations are read for all rooms at once when it ends.
	bundles []pagePart
	// toDeviceGiven is how many to-device messages this answer gives.
	toDeviceGiven int
	// quietRooms are joined rooms in the answer for their ephemeral
	// events or account data alone: build adds their unread counts.
	quietRooms []string
}

// full reports whether the request wants everything: an initial sync or
// full_state.
func (req *syncRequest) full() bool { return req.since == nil || req.fullState }

// from is the request's position in stream id: 0 in an initial sync.
func (req *syncRequest) from(id streamID) int64 {
	if req.since == nil {
		return 0
	}
	return req.since[id]
}

// quiet reports whether stream id has nothing for the user after since,
// as far as the notifier knows.
func (req *syncRequest) quiet(id streamID) bool {
	return req.since != nil && !req.fullState && req.concern != nil && req.concern[id] <= req.since[id]
}

// moved reports whether stream id may have something for the user: an
// initial sync, or the stream moved past since and (as far as the
// notifier knows) concerned the user.
func (req *syncRequest) moved(id streamID) bool {
	return req.since == nil || (req.to[id] > req.since[id] && !req.quiet(id))
}

// memberships returns the user's membership of each room it has one in,
// read once per build.
func (s *SyncAPI) memberships(ctx context.Context, req *syncRequest) (map[string]string, error) {
	if req.b.memberships != nil {
		return req.b.memberships, nil
	}
	m, at, err := s.store.UserMembershipsAt(ctx, req.dev.UserID)
	if err != nil {
		return nil, fmt.Errorf("memberships of %s: %w", req.dev.UserID, err)
	}
	if m == nil {
		m = map[string]string{}
	}
	req.b.memberships, req.b.joinedAt = m, at
	return m, nil
}

// ignored returns the users the user ignores, read once per build.
func (s *SyncAPI) ignored(ctx context.Context, req *syncRequest) (map[string]bool, error) {
	if !req.b.ignoredRead {
		set, err := s.ignoredBy(ctx, req.dev.UserID)
		if err != nil {
			return nil, err
		}
		req.b.ignored, req.b.ignoredRead = set, true
	}
	return req.b.ignored, nil
}

// ownChanges returns the user's membership changes in (since, to], read
// once per build.
func (s *SyncAPI) ownChanges(ctx context.Context, req *syncRequest) ([]storage.MembershipChange, error) {
	if req.b.ownChanges != nil {
		return req.b.ownChanges, nil
	}
	if req.b.moves != nil && !req.b.moves.own {
		req.b.ownChanges = []storage.MembershipChange{}
		return req.b.ownChanges, nil
	}
	changes, err := s.store.MembershipChanges(ctx, req.dev.UserID, req.from(pduStream), req.to[pduStream])
	if err != nil {
		return nil, fmt.Errorf("membership changes of %s: %w", req.dev.UserID, err)
	}
	req.b.ownChanges = append([]storage.MembershipChange{}, changes...) // non-nil: read
	return req.b.ownChanges, nil
}

// build computes the response from req.since (nil: initial sync) to the
// current position: each stream's part, in order.
func (s *SyncAPI) build(ctx context.Context, req *syncRequest) (*syncResponse, error) {
	req.to = s.notifier.Current()
	req.fmt = formatter{sessionID: req.dev.SessionID, now: s.now(), withRoomID: req.withRoomID,
		federation: req.filter.EventFormat == "federation"}
	req.concern = nil
	if req.since != nil {
		// Read after req.to, so that it covers everything up to req.to.
		if c, ok := s.notifier.Concerning(req.dev.UserID, req.dev.DeviceID, *req.since); ok {
			req.concern = &c
		}
	}
	req.b = &buildState{}
	defer func() { req.b = nil }()
	if req.since != nil && !req.fullState {
		if m, ok := s.notifier.RoomMoves(req.dev.UserID, req.since[pduStream]); ok {
			req.b.moves = &m
		}
	}
	resp := newSyncResponse()
	for _, st := range s.streamList {
		p, err := st.load(ctx, req, req.from(st.id()))
		if err != nil {
			return nil, err
		}
		if p != nil {
			p.addTo(req, resp)
		}
	}
	if err := s.quietRoomCounts(ctx, req, resp); err != nil {
		return nil, err
	}
	resp.NextBatch = req.to.String()
	return resp, nil
}

// room returns the answer's joined room roomID, made for a room with
// nothing new in its timeline when it is not there yet.
func (resp *syncResponse) room(req *syncRequest, roomID string) *joinedRoom {
	jr := resp.Rooms.Join[roomID]
	if jr == nil {
		jr = newJoinedRoom()
		jr.Timeline.PrevBatch = req.to.String()
		resp.Rooms.Join[roomID] = jr
		req.b.quietRooms = append(req.b.quietRooms, roomID)
	}
	return jr
}

// quietRoomCounts adds the unread counts of the joined rooms that are in
// the answer only for their ephemeral events or account data (a receipt
// that clears them, say).
func (s *SyncAPI) quietRoomCounts(ctx context.Context, req *syncRequest, resp *syncResponse) error {
	for _, roomID := range req.b.quietRooms {
		if err := s.unread(ctx, req, roomID, resp.Rooms.Join[roomID]); err != nil {
			return err
		}
	}
	return nil
}
