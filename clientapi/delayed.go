package clientapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/gorilla/mux"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"myelin/internal/mxhttp"
	rsapi "myelin/roomserver/api"
	uapi "myelin/userapi/api"
)

// Delayed events (MSC4140): a send or state request with a delay (the
// unstable org.matrix.msc4140.delay query parameter, or delay) is stored
// by the roomserver and sent as the user when the delay has passed,
// unless the user cancels it first; restarting it makes it wait its whole
// delay again (Element Call's heartbeat), and send sends it at once.

const delayedPrefix = "/_matrix/client/unstable/org.matrix.msc4140/delayed_events"

func (c *ClientAPI) delayedRoutes(root *mux.Router) {
	root.Handle(delayedPrefix, c.authed(c.listDelayed)).Methods(http.MethodGet)
	root.Handle(delayedPrefix+"/{delayId}", c.authed(c.updateDelayed)).Methods(http.MethodPost)
	root.Handle(delayedPrefix+"/{delayId}/{delayAction}", c.authed(c.updateDelayed)).Methods(http.MethodPost)
}

// delayParam reads a send's delay; ok is false when it has none.
func (c *ClientAPI) delayParam(r *http.Request) (delay time.Duration, ok bool, err error) {
	q := r.URL.Query()
	v := q.Get("org.matrix.msc4140.delay")
	if v == "" {
		v = q.Get("delay")
	}
	if v == "" {
		return 0, false, nil
	}
	ms, err := strconv.ParseInt(v, 10, 64)
	if err != nil || ms < 0 {
		return 0, false, mxhttp.InvalidParam("delay must be a non-negative number of milliseconds")
	}
	maxDelay := c.cfg.ClientAPI.MaxDelayedEventDelay
	if maxDelay <= 0 {
		return 0, false, mxhttp.InvalidParam("delayed events are not enabled on this server")
	}
	if ms > maxDelay.Milliseconds() {
		return 0, false, mxhttp.New("M_MAX_DELAY_EXCEEDED", "the delay is longer than the %d ms allowed", maxDelay.Milliseconds()).
			With("max_delay", maxDelay.Milliseconds()).WithStatus(http.StatusBadRequest)
	}
	return time.Duration(ms) * time.Millisecond, true, nil
}

// scheduleDelayed stores a delayed event of a user joined to the room.
func (c *ClientAPI) scheduleDelayed(ctx context.Context, dev *uapi.Device, roomID string, proto *rsapi.ProtoEvent, delay time.Duration) (any, error) {
	if err := checkEvent(proto); err != nil {
		return nil, err
	}
	m, err := c.rooms.Membership(ctx, roomID, dev.UserID)
	if err != nil && !errors.Is(err, rsapi.ErrRoomNotFound) {
		return nil, fmt.Errorf("membership of %s in %s: %w", dev.UserID, roomID, err)
	}
	if err != nil || m.Membership != spec.Join {
		return nil, mxhttp.Forbidden("You are not in this room")
	}
	if err := allow(c.limits.send, dev.UserID); err != nil {
		return nil, err
	}
	id, err := c.rooms.ScheduleDelayedEvent(ctx, rsapi.DelayedEvent{Sender: dev.UserID, RoomID: roomID, Type: proto.Type,
		StateKey: proto.StateKey, Content: proto.Content, Delay: delay.Milliseconds()})
	if err != nil {
		return nil, err
	}
	return map[string]string{"delay_id": id}, nil
}

// delayedView is a delayed event as its user sees it.
type delayedView struct {
	DelayID      string          `json:"delay_id"`
	RoomID       string          `json:"room_id"`
	Type         string          `json:"type"`
	StateKey     *string         `json:"state_key,omitempty"`
	Delay        int64           `json:"delay"`
	RunningSince int64           `json:"running_since"`
	Content      json.RawMessage `json:"content"`
}

// listDelayed is GET .../delayed_events: the user's scheduled events.
func (c *ClientAPI) listDelayed(r *http.Request, dev *uapi.Device) (any, error) {
	evs, err := c.rooms.DelayedEvents(r.Context(), dev.UserID)
	if err != nil {
		return nil, err
	}
	out := make([]delayedView, 0, len(evs))
	for _, d := range evs {
		out = append(out, delayedView{DelayID: d.DelayID, RoomID: d.RoomID, Type: d.Type, StateKey: d.StateKey,
			Delay: d.Delay, RunningSince: d.RunningSince, Content: d.Content})
	}
	return map[string]any{"delayed_events": out}, nil
}

// updateDelayed is POST .../delayed_events/{delayId} with an action in
// the body (the MSC's first form), or .../{delayId}/{action}.
func (c *ClientAPI) updateDelayed(r *http.Request, dev *uapi.Device) (any, error) {
	action := mxhttp.Var(r, "delayAction")
	if action == "" {
		var body struct {
			Action *string `json:"action"`
		}
		if err := mxhttp.ReadJSON(r, &body); err != nil {
			return nil, err
		}
		if body.Action == nil {
			return nil, mxhttp.MissingParam("action is required")
		}
		action = *body.Action
	}
	switch action {
	case rsapi.DelayedCancel, rsapi.DelayedRestart, rsapi.DelayedSend:
	default:
		return nil, mxhttp.InvalidParam("action must be cancel, restart or send")
	}
	if err := c.rooms.UpdateDelayedEvent(r.Context(), dev.UserID, mxhttp.Var(r, "delayId"), action); err != nil {
		return nil, roomError(err)
	}
	return struct{}{}, nil
}
