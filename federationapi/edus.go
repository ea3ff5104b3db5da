package federationapi

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"time"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/tidwall/gjson"

	"myelin/internal/bus"
	"myelin/internal/mxid"
	sapi "myelin/syncapi/api"
	uapi "myelin/userapi/api"
)

// EDU types (spec, Server-Server API, "Ephemeral Data Units").
const (
	eduTyping         = "m.typing"
	eduReceipt        = "m.receipt"
	eduPresence       = "m.presence"
	eduDeviceListUpd  = "m.device_list_update"
	eduDirectToDevice = "m.direct_to_device"
	eduSigningKeyUpd  = "m.signing_key_update"
)

// remoteTypingTimeout is how long a remote user shows as typing after
// its server said so: the EDU carries no timeout, and its server sends
// another while the user keeps typing (Synapse waits 60 s too).
const remoteTypingTimeout = 60 * time.Second

// startEDUs consumes the local streams whose changes other servers hear
// of as EDUs: typing, receipts, presence and device lists. Each consumer
// starts at the stream's end the first time (what happened before is
// stale for another server) and is durable after.
func (f *FederationAPI) startEDUs(ctx context.Context, b *bus.Bus) error {
	for _, c := range []struct {
		stream string
		handle bus.Handler
	}{
		{bus.OutputTyping, f.sendTyping},
		{bus.OutputReceipt, f.sendReceipt},
		{bus.OutputPresence, f.sendPresence},
		{bus.OutputDeviceListUpdate, f.sendDeviceListUpdate},
		{bus.OutputSendToDevice, f.sendToDevice},
		{bus.OutputSigningKeyUpdate, f.sendSigningKeyUpdate},
	} {
		cons, err := b.OpenConsumer(ctx, c.stream, bus.OutputConsumer("federationapi", jetstream.DeliverNewPolicy))
		if err != nil {
			return err
		}
		f.out.wg.Add(1)
		go func() {
			defer f.out.wg.Done()
			cons.Consume(ctx, f.log.WithField("stream", c.stream), c.handle)
		}()
	}
	return nil
}

// isLocal reports whether userID is of this server: only those changes
// are sent (the others came from their own servers).
func (f *FederationAPI) isLocal(userID string) bool {
	srv, ok := mxid.Server(userID)
	return ok && srv == string(f.key.ServerName)
}

// sendEDU queues an EDU of typ with content for dests.
func (f *FederationAPI) sendEDU(ctx context.Context, typ string, content any, dests []spec.ServerName) error {
	if len(dests) == 0 {
		return nil
	}
	raw, err := json.Marshal(content)
	if err != nil {
		return fmt.Errorf("encode %s: %w", typ, err)
	}
	return f.SendEDU(ctx, gmsl.EDU{Type: typ, Origin: string(f.key.ServerName), Content: raw}, dests)
}

// hostsOfUser lists the servers sharing a room with a local user: those
// with a member joined to one of the rooms the user is joined to. With
// catchUp, as of every event accepted before the call (catchUpHosts): an
// update a server must not miss waits for that, at the cost of a stream
// info request; presence need not, since a server that comes to share a
// room is sent the user's presence then (sendPresence's Destinations).
func (f *FederationAPI) hostsOfUser(ctx context.Context, userID string, catchUp bool) ([]spec.ServerName, error) {
	if f.rs == nil {
		return nil, nil
	}
	if catchUp {
		f.catchUpHosts(ctx)
	}
	rooms, err := f.rs.UserRooms(ctx, userID, spec.Join)
	if err != nil {
		return nil, fmt.Errorf("rooms of %s: %w", userID, err)
	}
	seen := map[spec.ServerName]bool{}
	for _, r := range rooms {
		hs, err := f.JoinedHosts(ctx, r)
		if err != nil {
			return nil, err
		}
		for _, h := range hs {
			seen[h] = true
		}
	}
	out := make([]spec.ServerName, 0, len(seen))
	for h := range seen {
		out = append(out, h)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out, nil
}

// hostsCatchUp bounds how long an update waits for the joined hosts.
const hostsCatchUp = 5 * time.Second

// catchUpHosts waits (bounded) until the joined hosts are as of every
// event accepted before the call: a user's update made just after it
// joined a room (its first keys, say) would otherwise miss the room's
// servers when the OutputRoomEvent consumer is behind the update's.
func (f *FederationAPI) catchUpHosts(ctx context.Context) {
	if f.bus == nil || f.out.events == nil {
		return
	}
	f.bus.CatchUp(ctx, bus.OutputRoomEvent, f.out.events, hostsCatchUp)
}

type typingContent struct {
	RoomID string `json:"room_id"`
	UserID string `json:"user_id"`
	Typing bool   `json:"typing"`
}

// sendTyping sends a local user's typing notification to the servers in
// the room.
func (f *FederationAPI) sendTyping(ctx context.Context, m jetstream.Msg) error {
	var u sapi.TypingUpdate
	if err := json.Unmarshal(m.Data(), &u); err != nil || !f.isLocal(u.UserID) {
		return nil
	}
	dests, err := f.JoinedHosts(ctx, u.RoomID)
	if err != nil {
		return err
	}
	return f.sendEDU(ctx, eduTyping, typingContent{RoomID: u.RoomID, UserID: u.UserID, Typing: u.Typing}, dests)
}

// receiptData is the data of one user's receipt in an m.receipt EDU.
type receiptData struct {
	TS       int64  `json:"ts"`
	ThreadID string `json:"thread_id,omitempty"`
}

type userReceipt struct {
	Data     receiptData `json:"data"`
	EventIDs []string    `json:"event_ids"`
}

// receiptContent is room ID -> receipt type -> user ID -> receipt.
type receiptContent map[string]map[string]map[string]userReceipt

// sendReceipt sends a local user's public read receipt to the servers in
// the room; private ones (m.read.private) stay here.
func (f *FederationAPI) sendReceipt(ctx context.Context, m jetstream.Msg) error {
	var u sapi.ReceiptUpdate
	if err := json.Unmarshal(m.Data(), &u); err != nil || !f.isLocal(u.UserID) || u.Type != "m.read" {
		return nil
	}
	dests, err := f.JoinedHosts(ctx, u.RoomID)
	if err != nil {
		return err
	}
	c := receiptContent{u.RoomID: {u.Type: {u.UserID: {Data: receiptData{TS: u.TS, ThreadID: u.ThreadID}, EventIDs: []string{u.EventID}}}}}
	return f.sendEDU(ctx, eduReceipt, c, dests)
}

type presenceItem struct {
	UserID          string  `json:"user_id"`
	Presence        string  `json:"presence"`
	StatusMsg       *string `json:"status_msg,omitempty"`
	LastActiveAgo   int64   `json:"last_active_ago"`
	CurrentlyActive bool    `json:"currently_active"`
}

type presenceContent struct {
	Push []presenceItem `json:"push"`
}

// sendPresence sends a local user's presence change to the servers
// sharing a room with the user.
func (f *FederationAPI) sendPresence(ctx context.Context, m jetstream.Msg) error {
	var u sapi.PresenceUpdate
	if err := json.Unmarshal(m.Data(), &u); err != nil || !f.isLocal(u.UserID) {
		return nil
	}
	var dests []spec.ServerName
	if len(u.Destinations) > 0 {
		// An unchanged presence for servers that just came to share a
		// room with the user.
		for _, d := range u.Destinations {
			if mxid.ServerName(d) == nil {
				dests = append(dests, spec.ServerName(d))
			}
		}
	} else {
		var err error
		if dests, err = f.hostsOfUser(ctx, u.UserID, false); err != nil {
			return err
		}
	}
	item := presenceItem{
		UserID: u.UserID, Presence: u.Presence, LastActiveAgo: max(0, f.now().UnixMilli()-u.LastActiveTS),
		CurrentlyActive: u.CurrentlyActive,
	}
	if !u.KeepStatus {
		item.StatusMsg = u.StatusMsg
		if item.StatusMsg == nil {
			empty := ""
			item.StatusMsg = &empty // cleared, not kept
		}
	}
	return f.sendEDU(ctx, eduPresence, presenceContent{Push: []presenceItem{item}}, dests)
}

// sendDeviceListUpdate sends a local user's device list change to the
// servers sharing a room with the user.
func (f *FederationAPI) sendDeviceListUpdate(ctx context.Context, m jetstream.Msg) error {
	var u uapi.DeviceListUpdate
	if err := json.Unmarshal(m.Data(), &u); err != nil || !f.isLocal(u.UserID) {
		return nil
	}
	dests, err := f.hostsOfUser(ctx, u.UserID, true)
	if err != nil {
		return err
	}
	return f.sendEDU(ctx, eduDeviceListUpd, u, dests)
}

// sendSigningKeyUpdate sends a local user's new cross-signing keys to the
// servers sharing a room with the user.
func (f *FederationAPI) sendSigningKeyUpdate(ctx context.Context, m jetstream.Msg) error {
	var u uapi.SigningKeyUpdate
	if err := json.Unmarshal(m.Data(), &u); err != nil || !f.isLocal(u.UserID) {
		return nil
	}
	dests, err := f.hostsOfUser(ctx, u.UserID, true)
	if err != nil {
		return err
	}
	return f.sendEDU(ctx, eduSigningKeyUpd, u, dests)
}

// sendToDevice sends a local user's send-to-device messages for devices
// of other servers to each server, as one m.direct_to_device holding its
// users' messages.
func (f *FederationAPI) sendToDevice(ctx context.Context, m jetstream.Msg) error {
	var u sapi.SendToDevice
	if err := json.Unmarshal(m.Data(), &u); err != nil || !f.isLocal(u.Sender) {
		return nil
	}
	byServer := map[spec.ServerName]map[string]map[string]json.RawMessage{}
	for userID, devs := range u.Messages {
		srv, ok := mxid.Server(userID)
		if !ok || srv == string(f.key.ServerName) {
			continue
		}
		if byServer[spec.ServerName(srv)] == nil {
			byServer[spec.ServerName(srv)] = map[string]map[string]json.RawMessage{}
		}
		byServer[spec.ServerName(srv)][userID] = devs
	}
	for srv, msgs := range byServer {
		c := sapi.SendToDevice{Sender: u.Sender, Type: u.Type, MessageID: u.MessageID, Messages: msgs}
		if err := f.sendEDU(ctx, eduDirectToDevice, c, []spec.ServerName{srv}); err != nil {
			return err
		}
	}
	return nil
}

// Inbound EDUs. Each handler takes the content of one EDU of a /send
// transaction from origin; what is malformed, of a user of another server
// than origin, or of a room origin is not in is dropped (an EDU has no
// answer), and only a failure to pass it on is an error.

// originJoined reports whether origin has a member joined to roomID and
// the room's server ACL lets it in: a room EDU (typing, receipts) of a
// server the ACL denies is dropped, as its PDUs are.
func (f *FederationAPI) originJoined(ctx context.Context, roomID string, origin spec.ServerName) (bool, error) {
	if f.rs == nil || mxid.RoomID(roomID) != nil {
		return false, nil
	}
	ok, err := f.rs.ServerJoined(ctx, roomID, origin)
	if err != nil {
		// An unknown room is no room origin is in.
		f.log.WithError(err).WithField("room_id", roomID).Debug("EDU for a room not known here")
		return false, nil
	}
	if !ok {
		return false, nil
	}
	return f.aclAllows(ctx, roomID, origin)
}

// ofOrigin reports whether userID is a user of origin.
func ofOrigin(userID string, origin spec.ServerName) bool {
	srv, ok := mxid.Server(userID)
	return ok && mxid.UserID(userID) == nil && srv == string(origin)
}

func (f *FederationAPI) publish(ctx context.Context, stream string, v any) error {
	if f.bus == nil {
		return fmt.Errorf("no bus to pass the EDU on")
	}
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s message: %w", stream, err)
	}
	return f.bus.Publish(ctx, bus.NewMsg(stream, data, ""))
}

// onTypingEDU passes a remote user's typing notification to syncapi.
func (f *FederationAPI) onTypingEDU(ctx context.Context, origin spec.ServerName, content json.RawMessage) error {
	var c typingContent
	if json.Unmarshal(content, &c) != nil || !ofOrigin(c.UserID, origin) {
		return nil
	}
	if ok, err := f.originJoined(ctx, c.RoomID, origin); !ok || err != nil {
		return err
	}
	u := sapi.TypingUpdate{RoomID: c.RoomID, UserID: c.UserID, Typing: c.Typing}
	if u.Typing {
		u.ExpiresTS = f.now().Add(remoteTypingTimeout).UnixMilli()
	}
	return f.publish(ctx, bus.OutputTyping, u)
}

// onReceiptEDU passes remote users' read receipts to syncapi, each at the
// last event it names.
func (f *FederationAPI) onReceiptEDU(ctx context.Context, origin spec.ServerName, content json.RawMessage) error {
	var c receiptContent
	if json.Unmarshal(content, &c) != nil {
		return nil
	}
	for roomID, byType := range c {
		ok, err := f.originJoined(ctx, roomID, origin)
		if err != nil {
			return err
		}
		if !ok {
			continue
		}
		for userID, r := range byType["m.read"] {
			if !ofOrigin(userID, origin) || len(r.EventIDs) == 0 {
				continue
			}
			eventID := r.EventIDs[len(r.EventIDs)-1]
			if mxid.EventID(eventID) != nil {
				continue
			}
			u := sapi.ReceiptUpdate{RoomID: roomID, UserID: userID, Type: "m.read", EventID: eventID, ThreadID: r.Data.ThreadID, TS: r.Data.TS}
			if err := f.publish(ctx, bus.OutputReceipt, u); err != nil {
				return err
			}
		}
	}
	return nil
}

// onPresenceEDU passes remote users' presence to syncapi.
func (f *FederationAPI) onPresenceEDU(ctx context.Context, origin spec.ServerName, content json.RawMessage) error {
	var c presenceContent
	if json.Unmarshal(content, &c) != nil {
		return nil
	}
	now := f.now().UnixMilli()
	for _, p := range c.Push {
		if !ofOrigin(p.UserID, origin) || !sapi.ValidPresence(p.Presence) {
			continue
		}
		u := sapi.PresenceUpdate{
			UserID: p.UserID, Presence: p.Presence, StatusMsg: p.StatusMsg, KeepStatus: p.StatusMsg == nil,
			LastActiveTS: now - max(0, p.LastActiveAgo), CurrentlyActive: p.CurrentlyActive,
		}
		if err := f.publish(ctx, bus.OutputPresence, u); err != nil {
			return err
		}
	}
	return nil
}

// onDeviceListUpdateEDU applies a remote user's device list change to the
// userapi's copy of the list.
func (f *FederationAPI) onDeviceListUpdateEDU(ctx context.Context, origin spec.ServerName, content json.RawMessage) error {
	var u uapi.DeviceListUpdate
	if json.Unmarshal(content, &u) != nil || !ofOrigin(u.UserID, origin) || f.userKeys == nil {
		return nil
	}
	if mxid.Opaque(u.DeviceID, mxid.MaxLen) != nil {
		return nil
	}
	return f.userKeys.DeviceListUpdate(ctx, string(origin), u)
}

// onDirectToDeviceEDU passes the send-to-device messages of a user of
// origin for local devices to syncapi.
func (f *FederationAPI) onDirectToDeviceEDU(ctx context.Context, origin spec.ServerName, content json.RawMessage) error {
	var c sapi.SendToDevice
	if json.Unmarshal(content, &c) != nil || !ofOrigin(c.Sender, origin) || c.Type == "" || c.MessageID == "" {
		return nil
	}
	if mxid.Opaque(c.Type, mxid.MaxLen) != nil || mxid.Opaque(c.MessageID, mxid.MaxLen) != nil {
		return nil
	}
	local := map[string]map[string]json.RawMessage{}
	for userID, devs := range c.Messages {
		if f.isLocal(userID) && mxid.UserID(userID) == nil {
			local[userID] = devs
		}
	}
	if len(local) == 0 {
		return nil
	}
	c.Messages = local
	return f.publish(ctx, bus.OutputSendToDevice, c)
}

// onSigningKeyUpdateEDU applies a remote user's new cross-signing keys to
// the userapi's copy.
func (f *FederationAPI) onSigningKeyUpdateEDU(ctx context.Context, origin spec.ServerName, content json.RawMessage) error {
	var u uapi.SigningKeyUpdate
	if json.Unmarshal(content, &u) != nil || !ofOrigin(u.UserID, origin) || f.userKeys == nil {
		return nil
	}
	for _, k := range []json.RawMessage{u.MasterKey, u.SelfSigningKey} {
		if len(k) > 0 && string(k) != "null" && !gjson.ParseBytes(k).IsObject() {
			return nil
		}
	}
	return f.userKeys.SigningKeyUpdate(ctx, string(origin), u)
}
