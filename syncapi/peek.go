package syncapi

import (
	"context"
	"errors"
	"net/http"
	"sort"
	"strings"

	"myelin/internal/mxhttp"
	rsapi "myelin/roomserver/api"
	"myelin/syncapi/storage"
	uapi "myelin/userapi/api"
)

// Peeking (MSC2753, the /sync form of the deprecated room initialSync
// and /events?room_id=): a device follows a world-readable room of this
// server without joining it. Its syncs, and only its, give the room in
// rooms.peek: whole the first time, then what is new. Peeks are stored,
// so they last across restarts (a restart gives each room whole once
// more), and the notifier wakes the peeking device on the room's events.

// postPeek starts a peek (POST /peek/{roomIdOrAlias}).
func (s *SyncAPI) postPeek(r *http.Request, dev *uapi.Device) (any, error) {
	ctx := r.Context()
	roomID, err := s.peekRoomID(ctx, mxhttp.Var(r, "roomIdOrAlias"))
	if err != nil {
		return nil, err
	}
	s.catchUp(ctx)
	if _, err := s.store.StateEvent(ctx, roomID, "m.room.create", ""); errors.Is(err, storage.ErrNotFound) {
		return nil, mxhttp.NotFound("Room %s is not known to this server", roomID)
	} else if err != nil {
		return nil, err
	}
	hv, err := s.store.StateEvent(ctx, roomID, "m.room.history_visibility", "")
	if err != nil && !errors.Is(err, storage.ErrNotFound) {
		return nil, err
	}
	if hv == nil || gjsonString(hv.JSON, "content.history_visibility") != "world_readable" {
		return nil, mxhttp.Forbidden("Only world-readable rooms can be peeked into")
	}
	pos, err := s.store.MaxPos(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.store.AddPeek(ctx, storage.Peek{UserID: dev.UserID, DeviceID: dev.DeviceID, RoomID: roomID, Pos: pos}); err != nil {
		return nil, err
	}
	s.notifier.Peek(dev.UserID, dev.DeviceID, roomID)
	return map[string]string{"room_id": roomID}, nil
}

// postUnpeek ends a peek (POST /unpeek/{roomId}).
func (s *SyncAPI) postUnpeek(r *http.Request, dev *uapi.Device) (any, error) {
	roomID := mxhttp.Var(r, "roomId")
	if err := s.store.DeletePeek(r.Context(), dev.UserID, dev.DeviceID, roomID); err != nil {
		return nil, err
	}
	s.notifier.Unpeek(dev.UserID, dev.DeviceID, roomID)
	return struct{}{}, nil
}

// peekRoomID resolves a room ID or a local alias.
func (s *SyncAPI) peekRoomID(ctx context.Context, idOrAlias string) (string, error) {
	if !strings.HasPrefix(idOrAlias, "#") {
		return idOrAlias, nil
	}
	roomID, err := s.rooms.ResolveAlias(ctx, idOrAlias)
	if errors.Is(err, rsapi.ErrAliasNotFound) {
		return "", mxhttp.NotFound("Room alias %s not found", idOrAlias)
	}
	return roomID, err
}

// loadPeeks restores the stored peeks into the notifier.
func (s *SyncAPI) loadPeeks(ctx context.Context) error {
	peeks, err := s.store.Peeks(ctx)
	if err != nil {
		return err
	}
	for _, p := range peeks {
		s.notifier.Peek(p.UserID, p.DeviceID, p.RoomID)
	}
	return nil
}

// addPeeks adds the rooms the device peeks into to out: whole when no
// sync gave them yet, else what is new since from. A room the user has
// joined since is in rooms.join instead.
func (p roomsProvider) addPeeks(ctx context.Context, req *syncRequest, from int64, peeks map[string]bool, out *roomsPart) error {
	s := p.s
	memberships, err := s.memberships(ctx, req)
	if err != nil {
		return err
	}
	roomIDs := make([]string, 0, len(peeks))
	for id := range peeks {
		roomIDs = append(roomIDs, id)
	}
	sort.Strings(roomIDs)
	for _, roomID := range roomIDs {
		served := peeks[roomID]
		if !served {
			// Marked first, so that a room this answer leaves out does
			// not keep waking the device.
			s.notifier.PeekServed(req.dev.UserID, req.dev.DeviceID, roomID)
		}
		if memberships[roomID] == "join" || !req.filter.Room.AllowsRoom(roomID, nil) {
			continue
		}
		full := !served || req.full()
		if !full && !req.moved(pduStream) {
			continue
		}
		jr, err := s.joinedRoom(ctx, req, roomID, from, full, !served)
		if err != nil {
			return err
		}
		if !full && jr.empty() {
			continue
		}
		out.peek[roomID] = jr
	}
	return nil
}
