package syncapi

import (
	"context"
	"fmt"
	"net/http"
	"slices"

	"myelin/internal/mxhttp"
	uapi "myelin/userapi/api"
)

// deviceListsProvider is the device list stream, kept by the userapi:
// device_lists of an incremental sync (spec,
// "Tracking the device list for a user"): changed holds the users sharing
// a room with the syncing user (and the user itself) whose device lists
// changed, local or remote, and those who joined one of its rooms since,
// or were invited to one (their devices are new to it); left holds those who left one of its
// rooms, or were in a room it left, and share none with it any more.
type deviceListsProvider struct{ s *SyncAPI }

func (deviceListsProvider) id() streamID { return deviceListStream }

func (p deviceListsProvider) latest(ctx context.Context) (int64, error) {
	return p.s.users.DeviceListsPos(ctx)
}

func (dl *deviceLists) addTo(_ *syncRequest, resp *syncResponse) {
	resp.DeviceLists.Changed = append(resp.DeviceLists.Changed, dl.Changed...)
	resp.DeviceLists.Left = append(resp.DeviceLists.Left, dl.Left...)
}

func (p deviceListsProvider) load(ctx context.Context, req *syncRequest, from int64) (part, error) {
	if req.since == nil {
		return nil, nil
	}
	dl, err := p.s.deviceListChanges(ctx, req)
	if err != nil || len(dl.Changed)+len(dl.Left) == 0 {
		return nil, err
	}
	return dl, nil
}

// deviceListChanges computes device_lists for req's range.
func (s *SyncAPI) deviceListChanges(ctx context.Context, req *syncRequest) (*deviceLists, error) {
	user := req.dev.UserID
	since := *req.since
	out := &deviceLists{Changed: []string{}, Left: []string{}}
	// Candidates first, then one batched question of which of them share
	// a room with the user now: a user who joins a room of 10,000 costs a
	// few queries, not 10,000.
	var keysMoved, joined, invited, left []string
	// sure holds candidates known to share a room with the user now, so
	// the batched question leaves them out: the members of a room it is
	// joined to, everyone for a token below the stream's floor.
	sure := map[string]bool{}
	if req.to[deviceListStream] > since[deviceListStream] && !req.quiet(deviceListStream) {
		ids, all, err := s.users.DeviceListChanges(ctx, since[deviceListStream], req.to[deviceListStream])
		if err != nil {
			return nil, fmt.Errorf("device list changes: %w", err)
		}
		if all {
			// The token is older than the stream keeps: anyone sharing a
			// room may have changed, so all of them did, as far as the
			// client knows (it fetches their keys again).
			if ids, err = s.store.UsersSharing(ctx, user); err != nil {
				return nil, err
			}
			for _, id := range ids {
				sure[id] = true
			}
			ids = append(ids, user)
		}
		keysMoved = ids
	}
	if req.to[pduStream] > since[pduStream] && !req.quiet(pduStream) {
		mc, err := s.membersChanged(ctx, req)
		if err != nil {
			return nil, err
		}
		joined = append(joined, mc.joined...)
		invited = append(invited, mc.invited...)
		left = append(left, mc.left...)
		// The members of the rooms the user itself joined or left count
		// too: their devices are new to it, or none of its business.
		own, err := s.ownChanges(ctx, req)
		if err != nil {
			return nil, err
		}
		for _, c := range own {
			isJoin := c.Membership == "join"
			if !isJoin && c.Membership != "leave" && c.Membership != "ban" {
				continue
			}
			members, err := s.store.JoinedMembers(ctx, c.RoomID)
			if err != nil {
				return nil, err
			}
			if isJoin {
				joined = append(joined, members...)
				if slices.Contains(members, user) { // still joined: they all share it
					for _, id := range members {
						sure[id] = true
					}
				}
			} else {
				left = append(left, members...)
			}
		}
	}
	if len(keysMoved)+len(joined)+len(invited)+len(left) == 0 {
		return out, nil
	}
	candidates := make([]string, 0, len(keysMoved)+len(joined)+len(invited)+len(left))
	seen := map[string]bool{user: true}
	for _, list := range [][]string{keysMoved, joined, invited, left} {
		for _, id := range list {
			if !seen[id] && !sure[id] {
				seen[id] = true
				candidates = append(candidates, id)
			}
		}
	}
	shares := sure
	if len(candidates) > 0 {
		asked, err := s.store.SharingUsers(ctx, user, candidates)
		if err != nil {
			return nil, err
		}
		for id := range asked {
			shares[id] = true
		}
	}
	changed := map[string]bool{}
	for _, id := range keysMoved {
		if id == user || shares[id] {
			changed[id] = true
		}
	}
	// One who joined and left again since is only left.
	for _, id := range joined {
		if id != user && shares[id] {
			changed[id] = true
		}
	}
	// A newly invited user counts as one who joined, as in Synapse:
	// clients encrypt for invited members too (history visibility
	// "invited"), so they need its devices before it joins. It is still
	// invited, or joined since (its join may be past this sync's end, so
	// in no list here). Invites are few: one query each.
	for _, id := range invited {
		if id == user || changed[id] {
			continue
		}
		ok := shares[id]
		if !ok {
			var err error
			if ok, err = s.store.SharesRoomInvited(ctx, user, id); err != nil {
				return nil, err
			}
		}
		if ok {
			changed[id] = true
		}
	}
	listed := map[string]bool{}
	for _, id := range left {
		if id == user || changed[id] || shares[id] || listed[id] {
			continue
		}
		listed[id] = true
		out.Left = append(out.Left, id)
	}
	for id := range changed {
		out.Changed = append(out.Changed, id)
	}
	return out, nil
}

// keysChanges is GET /keys/changes: the users whose device lists changed,
// or who left, between two sync tokens, as /sync would list them.
func (s *SyncAPI) keysChanges(r *http.Request, dev *uapi.Device) (any, error) {
	q := r.URL.Query()
	from, err := ParseToken(q.Get("from"))
	if err != nil {
		return nil, mxhttp.InvalidParam("from is not a sync token")
	}
	to, err := ParseToken(q.Get("to"))
	if err != nil {
		return nil, mxhttp.InvalidParam("to is not a sync token")
	}
	req := &syncRequest{dev: dev, since: &from, to: to, b: &buildState{}}
	return s.deviceListChanges(r.Context(), req)
}

// membersChange is who joined and left the user's rooms in a sync's range.
type membersChange struct {
	joined, invited, left []string
}

// membersChanged reads, once per build, who joined and left the user's
// rooms between since and req.to.
func (s *SyncAPI) membersChanged(ctx context.Context, req *syncRequest) (*membersChange, error) {
	if req.b.members != nil {
		return req.b.members, nil
	}
	if req.b.moves != nil && !req.b.moves.members {
		req.b.members = &membersChange{}
		return req.b.members, nil
	}
	joined, invited, left, err := s.store.MembersChanged(ctx, req.dev.UserID, req.from(pduStream), req.to[pduStream])
	if err != nil {
		return nil, fmt.Errorf("members changed: %w", err)
	}
	req.b.members = &membersChange{joined: joined, invited: invited, left: left}
	return req.b.members, nil
}
