package syncapi

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strconv"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/tidwall/gjson"

	"myelin/internal/bus"
	"myelin/internal/mxhttp"
	"myelin/internal/mxid"
	sapi "myelin/syncapi/api"
	"myelin/syncapi/storage"
	uapi "myelin/userapi/api"
)

const (
	// maxToDevicePerSync bounds the to-device messages of one /sync; the
	// rest come with the next (Synapse sends 100 too).
	maxToDevicePerSync = 100
	// maxToDeviceRecipients bounds the devices one PUT /sendToDevice
	// names (a room key shared with a room of thousands of devices fits).
	maxToDeviceRecipients = 10_000
)

type sendToDeviceRequest struct {
	Messages map[string]map[string]json.RawMessage `json:"messages"`
}

func (q *sendToDeviceRequest) Validate() error {
	if q.Messages == nil {
		return mxhttp.MissingParam("messages is required")
	}
	n := 0
	for userID, devs := range q.Messages {
		if err := mxhttp.CheckParam("messages", userID, mxid.UserID); err != nil {
			return err
		}
		for dev, content := range devs {
			if dev != "*" {
				if err := mxhttp.CheckParam("messages", dev, func(s string) error { return mxid.Opaque(s, mxid.MaxLen) }); err != nil {
					return err
				}
			}
			if !gjson.ParseBytes(content).IsObject() {
				return mxhttp.BadJSON("the message for %s %s must be an object", userID, dev)
			}
			n++
		}
	}
	if n > maxToDeviceRecipients {
		return mxhttp.InvalidParam("at most %d devices may be sent to at once", maxToDeviceRecipients)
	}
	return nil
}

// sendToDevice is PUT /sendToDevice/{eventType}/{txnId}: the messages go
// on the bus, for syncapi (local devices) and the federationapi (devices
// of other servers). A retry with the same transaction ID is published
// with the same message ID, which the stream drops (within its window),
// and stored once in any case (message_id).
func (s *SyncAPI) sendToDevice(r *http.Request, dev *uapi.Device) (any, error) {
	var req sendToDeviceRequest
	if err := mxhttp.ReadJSON(r, &req); err != nil {
		return nil, err
	}
	msg := sapi.SendToDevice{
		Sender: dev.UserID, Type: mxhttp.Var(r, "eventType"),
		MessageID: strconv.FormatInt(dev.SessionID, 10) + "-" + mxhttp.Var(r, "txnId"),
		Messages:  req.Messages,
	}
	data, err := json.Marshal(msg)
	if err != nil {
		return nil, err
	}
	if err := s.bus.Publish(r.Context(), bus.NewMsg(bus.OutputSendToDevice, data, "td:"+msg.MessageID)); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

// onSendToDevice stores the messages for local devices ("*": every device
// of the user) and wakes their users.
func (s *SyncAPI) onSendToDevice(ctx context.Context, m jetstream.Msg) error {
	var u sapi.SendToDevice
	if err := json.Unmarshal(m.Data(), &u); err != nil {
		s.log.WithError(err).Warn("dropping malformed send-to-device message")
		return nil
	}
	var msgs []storage.ToDevice
	for userID, devs := range u.Messages {
		if srv, ok := mxid.Server(userID); !ok || srv != s.cfg.ServerName {
			continue
		}
		known, err := s.users.Devices(ctx, userID)
		if err != nil {
			return err
		}
		for _, d := range known {
			content, ok := devs[d.DeviceID]
			if !ok {
				content, ok = devs["*"]
			}
			if ok && gjson.ParseBytes(content).IsObject() {
				msgs = append(msgs, storage.ToDevice{
					UserID: userID, DeviceID: d.DeviceID, SessionID: d.SessionID, Sender: u.Sender, MessageID: u.MessageID,
					Type: u.Type, Content: string(content),
				})
			}
		}
	}
	if len(msgs) == 0 {
		return nil
	}
	pos, err := s.store.PutToDevice(ctx, msgs)
	if err != nil || pos == 0 {
		return err
	}
	// Each device is woken at the batch's last position, which covers its
	// messages; a (user, device) appears once per message in msgs.
	for _, msg := range msgs {
		s.notifier.OnDevice(toDeviceStream, msg.UserID, msg.DeviceID, pos)
	}
	return nil
}

// dropGoneDevices deletes the to-device messages waiting for devices of
// userID that no longer exist (its device list changed), and those stored
// for an earlier device of an ID a new device has now: a deleted device
// never syncs them away. (A new device under the ID never gets them
// either way: /sync reads only its own session's; this frees the rows.)
func (s *SyncAPI) dropGoneDevices(ctx context.Context, userID string) error {
	waiting, err := s.store.ToDeviceDevices(ctx, userID)
	if err != nil || len(waiting) == 0 {
		return err
	}
	devs, err := s.users.Devices(ctx, userID)
	if err != nil {
		return fmt.Errorf("devices of %s: %w", userID, err)
	}
	session := make(map[string]int64, len(devs))
	for _, d := range devs {
		session[d.DeviceID] = d.SessionID
	}
	for d, stored := range waiting {
		keep, ok := session[d]
		if !ok {
			keep = -1
		} else if !slices.ContainsFunc(stored, func(s int64) bool { return s != 0 && s != keep }) {
			continue // all for the device that has the ID now
		}
		if err := s.store.DeleteDeviceToDevice(ctx, userID, d, keep); err != nil {
			return err
		}
	}
	return nil
}

// toDeviceProvider is the to-device stream: the device's send-to-device
// messages after the token, at most maxToDevicePerSync (next_batch then
// stops after the last one given). Syncing from a token acknowledges the
// messages before it: they are deleted then (spec), when the stream moved
// for the device, so a sync with nothing new writes nothing.
type toDeviceProvider struct{ s *SyncAPI }

func (toDeviceProvider) id() streamID { return toDeviceStream }

func (p toDeviceProvider) latest(ctx context.Context) (int64, error) {
	return p.s.store.MaxToDevicePos(ctx)
}

// toDevicePart is the to-device messages of one answer.
type toDevicePart []any

func (t toDevicePart) addTo(_ *syncRequest, resp *syncResponse) {
	resp.ToDevice.Events = append(resp.ToDevice.Events, t...)
}

func (p toDeviceProvider) load(ctx context.Context, req *syncRequest, from int64) (part, error) {
	if !req.moved(toDeviceStream) {
		return nil, nil
	}
	user, dev := req.dev.UserID, req.dev.DeviceID
	if req.since != nil && from > 0 {
		if err := p.s.store.DeleteToDevice(ctx, user, dev, from); err != nil {
			return nil, fmt.Errorf("delete to-device messages of %s %s: %w", user, dev, err)
		}
	}
	msgs, err := p.s.store.ToDeviceFor(ctx, user, dev, req.dev.SessionID, from, req.to[toDeviceStream], maxToDevicePerSync)
	if err != nil {
		return nil, fmt.Errorf("to-device messages of %s %s: %w", user, dev, err)
	}
	if len(msgs) == 0 {
		return nil, nil
	}
	if len(msgs) == maxToDevicePerSync {
		req.to[toDeviceStream] = msgs[len(msgs)-1].Pos
	}
	req.b.toDeviceGiven = len(msgs)
	out := make(toDevicePart, 0, len(msgs))
	for _, m := range msgs {
		out = append(out, toDeviceEvent(m))
	}
	return out, nil
}

// keyCountsProvider gives the device's one-time key counts and unused
// fallback key types. They have no position of their own: they are
// counted when they may have been claimed, in an initial sync and in one
// that gives to-device messages (a claim comes before the to-device
// message that uses the key). Not counting them in every sync spares a
// woken long-poll a query; an absent count is an unchanged one to clients.
type keyCountsProvider struct{ s *SyncAPI }

func (keyCountsProvider) id() streamID { return toDeviceStream }

// keyCountsPart is the device's key counts.
type keyCountsPart uapi.KeyCounts

func (k *keyCountsPart) addTo(_ *syncRequest, resp *syncResponse) {
	resp.OTKCounts, resp.UnusedFallback = k.OneTime, &k.UnusedFallback
}

func (p keyCountsProvider) load(ctx context.Context, req *syncRequest, _ int64) (part, error) {
	if req.since != nil && req.b.toDeviceGiven == 0 {
		return nil, nil
	}
	counts, err := p.s.users.KeyCounts(ctx, req.dev.UserID, req.dev.DeviceID)
	if err != nil {
		return nil, fmt.Errorf("key counts of %s %s: %w", req.dev.UserID, req.dev.DeviceID, err)
	}
	if counts.OneTime == nil {
		counts.OneTime = map[string]int{}
	}
	if _, ok := counts.OneTime["signed_curve25519"]; !ok {
		counts.OneTime["signed_curve25519"] = 0
	}
	return (*keyCountsPart)(counts), nil
}

// toDeviceEvent is a stored to-device message as clients get it.
func toDeviceEvent(m storage.ToDevice) any {
	return map[string]any{"sender": m.Sender, "type": m.Type, "content": json.RawMessage(m.Content)}
}

// dehydratedEventsRequest is the body of POST .../dehydrated_device/{deviceId}/events.
type dehydratedEventsRequest struct {
	NextBatch string `json:"next_batch"`
}

// dehydratedEvents is MSC3814's POST /dehydrated_device/{deviceId}/events:
// the to-device messages of the user's dehydrated device, a batch at a
// time. Unlike /sync it deletes nothing, so that a rehydration that breaks
// off can be started again from another device; a batch past the last
// message is empty, which tells the client it has them all.
func (s *SyncAPI) dehydratedEvents(r *http.Request, dev *uapi.Device) (any, error) {
	var req dehydratedEventsRequest
	if r.ContentLength != 0 {
		if err := mxhttp.ReadJSON(r, &req); err != nil {
			return nil, err
		}
	}
	deviceID := mxhttp.Var(r, "deviceId")
	d, err := s.users.DehydratedDevice(r.Context(), dev.UserID)
	if uapi.IsNotFound(err) || (err == nil && d.DeviceID != deviceID) {
		return nil, mxhttp.Forbidden("%s is not your dehydrated device", deviceID)
	}
	if err != nil {
		return nil, err
	}
	var from int64
	if req.NextBatch != "" {
		if from, err = strconv.ParseInt(req.NextBatch, 10, 64); err != nil || from < 0 {
			return nil, mxhttp.InvalidParam("next_batch is not a token of this endpoint")
		}
	}
	// Any session: the dehydrated device is the user's one by that ID.
	msgs, err := s.store.ToDeviceFor(r.Context(), dev.UserID, deviceID, 0, from, math.MaxInt64, maxToDevicePerSync)
	if err != nil {
		return nil, err
	}
	events := make([]any, 0, len(msgs))
	for _, m := range msgs {
		events = append(events, toDeviceEvent(m))
		from = m.Pos
	}
	return map[string]any{"events": events, "next_batch": strconv.FormatInt(from, 10)}, nil
}
