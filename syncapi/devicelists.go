package syncapi

import (
	"context"
	"net/http"

	"myelin/internal/mxhttp"
	uapi "myelin/userapi/api"
)

// addDeviceLists fills device_lists of an incremental sync (spec,
// "Tracking the device list for a user"): changed holds the users sharing
// a room with the syncing user (and the user itself) whose device lists
// changed, local or remote, and those who joined one of its rooms since,
// or were invited to one (their devices are new to it); left holds those who left one of its
// rooms, or were in a room it left, and share none with it any more.
func (s *SyncAPI) addDeviceLists(ctx context.Context, req *syncRequest, since Token, resp *syncResponse) error {
	if req.since == nil {
		return nil
	}
	user := req.dev.UserID
	// Candidates first, then one batched question of which of them share
	// a room with the user now: a user who joins a room of 10,000 costs a
	// few queries, not 10,000.
	var keysMoved, joined, invited, left []string
	if req.to.DeviceLists > since.DeviceLists && !req.quiet(deviceListsPos) {
		ids, err := s.users.DeviceListChanges(ctx, since.DeviceLists, req.to.DeviceLists)
		if err != nil {
			return err
		}
		keysMoved = ids
	}
	if req.to.PDU > since.PDU && !req.quiet(pduPos) {
		mc, err := s.membersChanged(ctx, req, since)
		if err != nil {
			return err
		}
		joined = append(joined, mc.joined...)
		invited = append(invited, mc.invited...)
		left = append(left, mc.left...)
		// The members of the rooms the user itself joined or left count
		// too: their devices are new to it, or none of its business.
		own := req.ownChanges
		if req.ownChanges == nil {
			if own, err = s.store.MembershipChanges(ctx, user, since.PDU, req.to.PDU); err != nil {
				return err
			}
		}
		for _, c := range own {
			isJoin := c.Membership == "join"
			if !isJoin && c.Membership != "leave" && c.Membership != "ban" {
				continue
			}
			members, err := s.store.JoinedMembers(ctx, c.RoomID)
			if err != nil {
				return err
			}
			if isJoin {
				joined = append(joined, members...)
			} else {
				left = append(left, members...)
			}
		}
	}
	if len(keysMoved)+len(joined)+len(invited)+len(left) == 0 {
		return nil
	}
	candidates := make([]string, 0, len(keysMoved)+len(joined)+len(invited)+len(left))
	seen := map[string]bool{user: true}
	for _, list := range [][]string{keysMoved, joined, invited, left} {
		for _, id := range list {
			if !seen[id] {
				seen[id] = true
				candidates = append(candidates, id)
			}
		}
	}
	shares, err := s.store.SharingUsers(ctx, user, candidates)
	if err != nil {
		return err
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
			if ok, err = s.store.SharesRoomInvited(ctx, user, id); err != nil {
				return err
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
		resp.DeviceLists.Left = append(resp.DeviceLists.Left, id)
	}
	for id := range changed {
		resp.DeviceLists.Changed = append(resp.DeviceLists.Changed, id)
	}
	return nil
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
	req := &syncRequest{dev: dev, since: &from, to: to}
	resp := newSyncResponse()
	if err := s.addDeviceLists(r.Context(), req, from, resp); err != nil {
		return nil, err
	}
	return resp.DeviceLists, nil
}

// membersChange is who joined and left the user's rooms in a sync's range.
type membersChange struct {
	joined, invited, left []string
}

// membersChanged reads, once per sync, who joined and left the user's
// rooms between since and req.to.
func (s *SyncAPI) membersChanged(ctx context.Context, req *syncRequest, since Token) (*membersChange, error) {
	if req.members != nil {
		return req.members, nil
	}
	joined, invited, left, err := s.store.MembersChanged(ctx, req.dev.UserID, since.PDU, req.to.PDU)
	if err != nil {
		return nil, err
	}
	req.members = &membersChange{joined: joined, invited: invited, left: left}
	return req.members, nil
}
