package syncapi

import (
	"context"
	"fmt"

	uapi "myelin/userapi/api"
)

// accountDataProvider is the account data stream: the user's global and
// room account data changed since the token, kept by the userapi.
type accountDataProvider struct{ s *SyncAPI }

func (accountDataProvider) id() streamID { return accountDataStream }

func (p accountDataProvider) latest(ctx context.Context) (int64, error) {
	return p.s.users.AccountDataPos(ctx)
}

// accountDataPart is the account data of one answer: the global items,
// and those of the user's joined rooms by room.
type accountDataPart struct {
	global []any
	rooms  map[string][]any
}

func (p accountDataProvider) load(ctx context.Context, req *syncRequest, from int64) (part, error) {
	if !req.moved(accountDataStream) {
		return nil, nil
	}
	items, err := p.s.users.AccountDataSince(ctx, req.dev.UserID, from, req.to[accountDataStream])
	if err != nil {
		return nil, fmt.Errorf("account data of %s: %w", req.dev.UserID, err)
	}
	out := &accountDataPart{}
	var roomItems []uapi.AccountData
	for _, it := range items {
		ev := map[string]any{"type": it.Type, "content": it.Content}
		switch {
		case it.RoomID == "":
			if req.filter.AccountData.Allows(it.Type, "") {
				out.global = append(out.global, ev)
			}
		case req.filter.Room.AccountData.Allows(it.Type, ""):
			roomItems = append(roomItems, it)
		}
	}
	if len(roomItems) > 0 {
		// Only the rooms the user is joined to.
		memberships, err := p.s.memberships(ctx, req)
		if err != nil {
			return nil, err
		}
		for _, it := range roomItems {
			if memberships[it.RoomID] != "join" {
				continue
			}
			if out.rooms == nil {
				out.rooms = map[string][]any{}
			}
			out.rooms[it.RoomID] = append(out.rooms[it.RoomID], map[string]any{"type": it.Type, "content": it.Content})
		}
	}
	if len(out.global) == 0 && len(out.rooms) == 0 {
		return nil, nil
	}
	return out, nil
}

func (a *accountDataPart) addTo(req *syncRequest, resp *syncResponse) {
	resp.AccountData.Events = append(resp.AccountData.Events, a.global...)
	for roomID, evs := range a.rooms {
		jr := resp.room(req, roomID)
		jr.AccountData.Events = append(jr.AccountData.Events, evs...)
	}
}
