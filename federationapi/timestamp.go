package federationapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"

	"myelin/internal/mxhttp"
	"myelin/internal/mxid"
	rsapi "myelin/roomserver/api"
)

// timestampToEvent is GET /_matrix/federation/v1/timestamp_to_event/{roomId}:
// the event of the room this server has nearest to ts in the direction
// asked, if the origin may see it (404 otherwise, as when there is none).
func (f *FederationAPI) timestampToEvent(r *http.Request) (any, error) {
	ctx := r.Context()
	ts, backward, err := mxhttp.TimeQuery(r.URL.Query())
	if err != nil {
		return nil, err
	}
	rs, err := f.memberRooms()
	if err != nil {
		return nil, err
	}
	te, err := rs.EventNearTime(ctx, mxhttp.Var(r, "roomId"), ts, backward)
	if errors.Is(err, rsapi.ErrRoomNotFound) || errors.Is(err, rsapi.ErrEventNotFound) {
		return nil, mxhttp.NotFound("No event found")
	}
	if err != nil {
		return nil, err
	}
	ev, err := f.event(ctx, "", te.EventID)
	if err != nil {
		return nil, err
	}
	// An event the origin may not see is not named (the spec answers
	// only 200 or 404 here).
	if ok, err := f.visible(ctx, Origin(ctx), ev); err != nil || !ok {
		if err != nil {
			return nil, err
		}
		return nil, mxhttp.NotFound("No event found")
	}
	return te, nil
}

// TimestampToEvent asks the other servers in roomID, one after the other,
// for their event nearest to ts: what a client gets when this server has
// none (it joined after that time, or holds no history from then).
func (r *Remote) TimestampToEvent(ctx context.Context, roomID string, ts int64, backward bool) (*rsapi.TimeEvent, error) {
	hosts, err := r.f.JoinedHosts(ctx, roomID)
	if err != nil {
		return nil, err
	}
	dir := "f"
	if backward {
		dir = "b"
	}
	path := "/_matrix/federation/v1/timestamp_to_event/" + url.PathEscape(roomID) + "?ts=" + strconv.FormatInt(ts, 10) + "&dir=" + dir
	err = rsapi.ErrEventNotFound
	for _, h := range hosts {
		if h == r.origin() || !r.f.policy.Allowed(h) {
			continue
		}
		var te rsapi.TimeEvent
		e := r.f.signed(ctx, http.MethodGet, h, path, nil, &te)
		if e == nil && mxid.EventID(te.EventID) != nil {
			e = fmt.Errorf("%s answered a bad event ID %q", h, te.EventID)
		}
		if e == nil {
			return &te, nil
		}
		err = e
		if ctx.Err() != nil {
			break
		}
	}
	return nil, err
}
