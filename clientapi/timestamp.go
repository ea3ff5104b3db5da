package clientapi

import (
	"errors"
	"net/http"

	"github.com/gorilla/mux"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"myelin/internal/mxhttp"
	rsapi "myelin/roomserver/api"
	uapi "myelin/userapi/api"
)

// v1Routes registers the endpoints the spec serves under
// /_matrix/client/v1 only.
func (c *ClientAPI) v1Routes(r *mux.Router) {
	r.Handle("/rooms/{roomId}/timestamp_to_event", c.authedGuest(c.timestampToEvent)).Methods(http.MethodGet)
	r.Handle("/rooms/{roomId}/hierarchy", c.authedGuest(c.hierarchy)).Methods(http.MethodGet)
}

// timestampToEvent is GET /_matrix/client/v1/rooms/{roomId}/timestamp_to_event:
// the event nearest to ts in the direction asked. This server's own
// answer when it has one; otherwise (it joined later, or holds no
// history from then) the other servers in the room are asked, as
// Synapse does, over federation.
func (c *ClientAPI) timestampToEvent(r *http.Request, dev *uapi.Device) (any, error) {
	ctx := r.Context()
	roomID := mxhttp.Var(r, "roomId")
	ts, backward, err := mxhttp.TimeQuery(r.URL.Query())
	if err != nil {
		return nil, err
	}
	if err := c.mayPeek(r, roomID, dev.UserID); err != nil {
		return nil, err
	}
	te, err := c.rooms.EventNearTime(ctx, roomID, ts, backward)
	if errors.Is(err, rsapi.ErrEventNotFound) && c.fed != nil {
		te, err = c.fed.TimestampToEvent(ctx, roomID, ts, backward)
		var coded mxhttp.Coded
		if err != nil && !errors.Is(err, rsapi.ErrEventNotFound) && !errors.As(err, &coded) {
			return nil, remoteFailed("the room's servers", err)
		}
	}
	if errors.Is(err, rsapi.ErrEventNotFound) {
		return nil, mxhttp.NotFound("No event found")
	}
	if err != nil {
		return nil, err
	}
	return te, nil
}

// mayPeek checks that userID may read roomID's timeline now: joined to
// it, or the room's history is world_readable (M_FORBIDDEN otherwise,
// M_NOT_FOUND for a room unknown here).
func (c *ClientAPI) mayPeek(r *http.Request, roomID, userID string) error {
	ctx := r.Context()
	m, err := c.rooms.Membership(ctx, roomID, userID)
	if errors.Is(err, rsapi.ErrRoomNotFound) {
		return mxhttp.NotFound("Room not found")
	}
	if err != nil {
		return err
	}
	if m.Membership == spec.Join {
		return nil
	}
	hv, err := c.rooms.StateEvent(ctx, roomID, spec.MRoomHistoryVisibility, "")
	if err != nil && !errors.Is(err, rsapi.ErrStateNotFound) {
		return err
	}
	if hv != nil {
		if v, err := hv.HistoryVisibility(); err == nil && v == "world_readable" {
			return nil
		}
	}
	return mxhttp.Forbidden("You are not in room %s", roomID)
}
