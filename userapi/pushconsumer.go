package userapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strings"
	"time"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/tidwall/gjson"

	"myelin/internal/bus"
	"myelin/internal/sqldb"
	rsapi "myelin/roomserver/api"
	sapi "myelin/syncapi/api"
	uapi "myelin/userapi/api"
	"myelin/userapi/internal/pushgw"
	"myelin/userapi/internal/pushrules"
	"myelin/userapi/storage"
)

// The evaluation of events for notifications: a durable consumer of the
// OutputRoomEvent stream keeps the userapi's view of room membership and
// evaluates each event against the rules of the local users it may notify;
// another, of the OutputReceipt stream, clears what read receipts cover.

const (
	// readRetention is how long read notifications are kept for GET
	// /notifications; unreadRetention bounds what a user who never reads
	// a room accumulates.
	readRetention   = 30 * 24 * time.Hour
	unreadRetention = 365 * 24 * time.Hour
	pruneEvery      = time.Hour
)

// Start consumes the OutputRoomEvent stream and sends pushes until ctx
// ends; rooms answers the state questions push rules and gateways ask,
// gateways sends the requests to push gateways (nil: Go's default
// transport).
func (u *UserAPI) Start(ctx context.Context, rooms Rooms, gateways http.RoundTripper) error {
	if u.bus == nil {
		return errors.New("userapi: Start needs a bus")
	}
	p := u.push
	p.rooms = rooms
	// Open the consumers before returning so that nothing published after
	// start is missed.
	events, err := u.bus.OpenConsumer(ctx, bus.OutputRoomEvent, bus.OutputConsumer("userapi", jetstream.DeliverAllPolicy))
	if err != nil {
		return err
	}
	p.events.Mark(events.AckFloor())
	// Receipts of before the consumer existed cleared nothing that was
	// recorded since.
	receipts, err := u.bus.OpenConsumer(ctx, bus.OutputReceipt, bus.OutputConsumer("userapi", jetstream.DeliverNewPolicy))
	if err != nil {
		return err
	}
	p.sender = pushgw.New(pushgw.Options{OnRejected: u.onRejected, Transport: gateways}, u.log.WithField("part", "push"))
	p.sender.Start(ctx)
	p.wg.Add(3)
	go func() {
		defer p.wg.Done()
		events.ConsumeBatch(ctx, u.log.WithField("stream", bus.OutputRoomEvent), eventBatch, eventLinger, p.events.Marking(u.onRoomEvents))
	}()
	go func() {
		defer p.wg.Done()
		receipts.Consume(ctx, u.log.WithField("stream", bus.OutputReceipt), u.onReceipt)
	}()
	go func() {
		defer p.wg.Done()
		u.pruneNotifications(ctx)
	}()
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		u.writeLastSeen(ctx)
	}()
	return u.resyncs.start(ctx)
}

// Wait waits for what Start started to stop after its context ended.
func (u *UserAPI) Wait() {
	u.resyncs.stop()
	u.push.wg.Wait()
	if u.push.sender != nil {
		u.push.sender.Wait()
	}
}

func (u *UserAPI) pruneNotifications(ctx context.Context) {
	t := time.NewTicker(pruneEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			now := u.now()
			err := u.store.PruneNotifications(ctx, now.Add(-readRetention).UnixMilli(), now.Add(-unreadRetention).UnixMilli())
			if err != nil && ctx.Err() == nil {
				u.log.WithError(err).Warn("pruning old notifications")
			}
			if err := u.PruneDeviceLists(ctx, now); err != nil && ctx.Err() == nil {
				u.log.WithError(err).Warn("pruning the device-list stream")
			}
		}
	}
}

func (u *UserAPI) onRejected(ctx context.Context, r pushgw.Request) {
	if err := u.store.DeletePusher(ctx, r.UserID, r.AppID, r.PushKey); err != nil && ctx.Err() == nil {
		u.log.WithError(err).WithField("user_id", r.UserID).Warn("deleting a rejected pusher")
	}
}

// onReceipt clears the notifications a local user's read receipt covers
// (spec: "Receipts": m.read and m.read.private both clear them).
func (u *UserAPI) onReceipt(ctx context.Context, m jetstream.Msg) error {
	var r sapi.ReceiptUpdate
	if err := json.Unmarshal(m.Data(), &r); err != nil {
		u.log.WithError(err).Warn("dropping malformed receipt")
		return nil
	}
	if !u.isLocal(r.UserID) || (r.Type != "m.read" && r.Type != "m.read.private") {
		return nil
	}
	return u.ClearNotifications(ctx, r.UserID, r.RoomID, r.ThreadID, r.EventID)
}

// receiptCatchUp bounds how long a receipt waits for events.
const receiptCatchUp = 10 * time.Second

// catchUpEvents waits, at most max, until every event in the
// OutputRoomEvent stream when called has been evaluated.
func (u *UserAPI) catchUpEvents(ctx context.Context, max time.Duration) {
	u.bus.CatchUp(ctx, bus.OutputRoomEvent, u.push.events, max)
}

func (u *UserAPI) isLocal(userID string) bool { return strings.HasSuffix(userID, ":"+u.serverName) }

// eventBatch bounds how many events one write of notifications covers;
// eventLinger is how long a batch waits for more: a steady stream of
// events otherwise came one a batch, each paying a commit, and a push or
// an unread count may well be that late.
const (
	eventBatch  = 64
	eventLinger = 20 * time.Millisecond
)

// onRoomEvents handles accepted events, in order. A redelivered event
// changes nothing: membership is set, not counted, and a notification
// already recorded is neither recorded nor pushed again. The
// notifications of all the events are stored in one write transaction
// (a room of N local members took a transaction per event, with N
// statements in it), and only then acked (by ConsumeBatch) and pushed.
func (u *UserAPI) onRoomEvents(ctx context.Context, ms []jetstream.Msg) error {
	b := notifyBatch{members: map[string]roomMembers{}}
	for _, m := range ms {
		var out rsapi.OutputEvent
		if err := json.Unmarshal(m.Data(), &out); err != nil {
			u.log.WithError(err).Warn("dropping malformed output event")
			continue
		}
		if out.Historical {
			continue // backfilled history: no member changes, nothing to notify
		}
		if len(out.AddsState) > 0 || len(out.RemovesState) > 0 {
			// The notifications so far were evaluated against the
			// membership before this event: store them before it changes,
			// so that a retry cannot evaluate them against a later one.
			if err := u.flush(ctx, &b); err != nil {
				return err
			}
			delete(b.members, out.RoomID)
		}
		if err := u.trackMembers(ctx, &out); err != nil {
			return err
		}
		if err := u.removeGuests(ctx, &out); err != nil {
			return err
		}
		if err := u.notifyMembers(ctx, &out, &b); err != nil {
			return err
		}
	}
	return u.flush(ctx, &b)
}

// notifyBatch is the notifications of a batch of events, not yet stored.
type notifyBatch struct {
	ns   []storage.NewNotification
	acts []pushrules.Actions
	evs  []*pushEvent
	// members caches each room's local members and member count for the
	// batch, until an event of the batch changes them.
	members map[string]roomMembers
}

type roomMembers struct {
	local []storage.Member
	count int
}

// flush stores the batch's notifications and pushes the new ones.
func (u *UserAPI) flush(ctx context.Context, b *notifyBatch) error {
	if len(b.ns) == 0 {
		return nil
	}
	// No request waits on this write: when others wait for the SQLite
	// writer beside it, they go first (the roomserver's input, the
	// syncapi's appends). It stays one transaction: split into chunks,
	// each commit rewrote the scattered index pages again (twice the
	// CPU per event in BenchmarkNotifyMembers at 200 members).
	inserted, err := u.store.InsertNotifications(sqldb.Background(ctx), b.ns)
	if err != nil {
		return err
	}
	for i, n := range b.ns {
		if inserted[i] {
			u.pushNotification(ctx, n.UserID, b.evs[i], b.acts[i])
		}
	}
	b.ns, b.acts, b.evs = b.ns[:0], b.acts[:0], b.evs[:0]
	return nil
}

// removeGuests makes the local guests of a room leave once its
// m.room.guest_access stops being can_join (spec: "Guest Access"; Synapse
// does the same), whichever server changed it: the userapi is where
// accounts and the room's local members meet. A redelivery finds them
// gone already.
func (u *UserAPI) removeGuests(ctx context.Context, out *rsapi.OutputEvent) error {
	g := gjson.GetManyBytes(out.Event, "type", "state_key", "content.guest_access")
	if g[0].String() != spec.MRoomGuestAccess || !g[1].Exists() || g[1].String() != "" || g[2].String() == "can_join" {
		return nil
	}
	if !slices.Contains(out.AddsState, out.EventID) || u.push.rooms == nil {
		return nil // not the room's guest access now
	}
	members, err := u.store.LocalJoined(ctx, out.RoomID)
	if err != nil {
		return err
	}
	for _, m := range members {
		acct, err := u.Account(ctx, m.UserID)
		if err != nil || !acct.IsGuest {
			continue
		}
		if err := u.push.rooms.PerformLeave(ctx, &rsapi.LeaveRequest{RoomID: out.RoomID, UserID: m.UserID}); err != nil {
			u.log.WithError(err).WithField("room_id", out.RoomID).WithField("user_id", m.UserID).Warn("could not remove a guest from a room closed to guests")
		}
	}
	return nil
}

// trackMembers applies the event's state delta to the membership table.
func (u *UserAPI) trackMembers(ctx context.Context, out *rsapi.OutputEvent) error {
	var added []storage.Member
	addMember := func(id string, raw []byte) {
		g := gjson.GetManyBytes(raw, "type", "state_key", "content.membership", "content.displayname")
		if g[0].String() != "m.room.member" || !g[1].Exists() {
			return
		}
		added = append(added, storage.Member{
			UserID: g[1].String(), Membership: g[2].String(), DisplayName: g[3].String(),
			EventID: id, IsLocal: u.isLocal(g[1].String()),
		})
	}
	adds := make(map[string]bool, len(out.AddsState))
	for _, id := range out.AddsState {
		adds[id] = true
	}
	if adds[out.EventID] {
		addMember(out.EventID, out.Event)
	}
	for _, raw := range out.AddsStateJSON {
		if gjson.GetBytes(raw, "type").String() != "m.room.member" {
			continue
		}
		if id := out.StateEventID(raw); adds[id] {
			addMember(id, raw)
		}
	}
	if err := u.store.ApplyMembers(ctx, out.RoomID, out.RemovesState, added); err != nil {
		return err
	}
	return u.staleUnshared(ctx, out.RoomID, added)
}

// staleUnshared marks stale the cached device lists of the remote users
// who, after these membership changes, share no room with a local user:
// their servers stop telling us of their changes, so the copy must be
// fetched again should a room be shared again (a remote user who left,
// changed devices and rejoined; this server leaving and rejoining).
func (u *UserAPI) staleUnshared(ctx context.Context, roomID string, added []storage.Member) error {
	var remote []string
	serverLeft := false
	for _, m := range added {
		if m.Membership == "join" {
			continue
		}
		if m.IsLocal {
			serverLeft = true
		} else {
			remote = append(remote, m.UserID)
		}
	}
	if serverLeft {
		// While a local user is still joined, every remote member still
		// shares this room with one.
		joined, err := u.store.LocalJoined(ctx, roomID)
		if err != nil {
			return err
		}
		if len(joined) == 0 {
			remote = nil // all tracked members of the room
		} else if len(remote) == 0 {
			return nil
		}
	} else if len(remote) == 0 {
		return nil
	}
	gone, err := u.store.UnsharedTracked(ctx, roomID, remote)
	if err != nil {
		return err
	}
	for _, id := range gone {
		if err := u.store.MarkDeviceListStale(ctx, id); err != nil {
			return err
		}
	}
	return nil
}

// pushEvent is an event being evaluated, with what its pushes need,
// looked up once for all the users it notifies.
type pushEvent struct {
	out                            *rsapi.OutputEvent
	typ, sender, stateKey, content string
	membership, threadID           string
	depth                          int64
	ev                             *pushrules.Event

	looked                  bool
	senderName, roomName    string
	roomAlias               string
	mayNotify               map[string]bool
	powerLevels, createJSON []byte
	powerLoaded             bool
}

// notifyMembers evaluates the event for every local user who may be
// notified of it (the joined members but the sender, and an invited
// user), adding their notifications to b.
func (u *UserAPI) notifyMembers(ctx context.Context, out *rsapi.OutputEvent, b *notifyBatch) error {
	g := gjson.GetManyBytes(out.Event, "type", "sender", "state_key", "depth", "content",
		"content.membership", `content.m\.relates_to.rel_type`, `content.m\.relates_to.event_id`)
	pe := &pushEvent{
		out: out, typ: g[0].String(), sender: g[1].String(), stateKey: g[2].String(),
		depth: g[3].Int(), content: g[4].Raw, membership: g[5].String(),
	}
	if g[6].String() == "m.thread" {
		pe.threadID = g[7].String()
	}
	rm, ok := b.members[out.RoomID]
	if !ok {
		var err error
		if rm.local, err = u.store.LocalJoined(ctx, out.RoomID); err != nil {
			return err
		}
		if rm.count, err = u.store.JoinedCount(ctx, out.RoomID); err != nil {
			return err
		}
		b.members[out.RoomID] = rm
	}
	candidates := make([]storage.Member, 0, len(rm.local)+1)
	for _, m := range rm.local {
		if m.UserID == pe.sender {
			continue
		}
		// An ignored user's events notify nobody who ignores it, its
		// state events aside (spec: "Ignoring Users").
		if !g[2].Exists() {
			ignored, err := u.ignores(ctx, m.UserID, pe.sender)
			if err != nil {
				return err
			}
			if ignored {
				continue
			}
		}
		candidates = append(candidates, m)
	}
	if pe.typ == "m.room.member" && g[2].Exists() && pe.membership == "invite" && u.isLocal(pe.stateKey) && pe.stateKey != pe.sender {
		invited := true
		for _, m := range candidates {
			invited = invited && m.UserID != pe.stateKey
		}
		if invited {
			// Invites from ignored users are dropped, so notify nobody.
			ignored, err := u.ignores(ctx, pe.stateKey, pe.sender)
			if err != nil {
				return err
			}
			invited = !ignored
		}
		if invited {
			name := gjson.Get(pe.content, "displayname").String()
			candidates = append(candidates, storage.Member{UserID: pe.stateKey, DisplayName: name})
		}
	}
	if len(candidates) == 0 {
		return nil
	}
	var err error
	if pe.ev, err = pushrules.NewEvent(out.RoomID, out.Event); err != nil {
		u.log.WithError(err).WithField("event_id", out.EventID).Warn("cannot evaluate event for push")
		return nil
	}
	ts := u.now().UnixMilli()
	for _, m := range candidates {
		rs, err := u.rulesFor(ctx, m.UserID)
		if err != nil {
			return err
		}
		rc := pushrules.Context{
			DisplayName:     m.DisplayName,
			MemberCount:     rm.count,
			SenderMayNotify: func(key string) bool { return u.senderMayNotify(ctx, pe, key) },
		}
		rule := u.push.eval.Evaluate(rs, pe.ev, &rc)
		acts := pushrules.Summarise(rule)
		if !acts.Notify {
			continue
		}
		actions, err := json.Marshal(rule.Actions)
		if err != nil {
			return err
		}
		b.ns = append(b.ns, storage.NewNotification{
			UserID: m.UserID, RoomID: out.RoomID, EventID: out.EventID, ThreadID: pe.threadID,
			Depth: pe.depth, TS: ts, Actions: actions, Highlight: acts.Highlight,
		})
		b.acts = append(b.acts, acts)
		b.evs = append(b.evs, pe)
	}
	return nil
}

// senderMayNotify answers sender_notification_permission from the room's
// current power levels.
func (u *UserAPI) senderMayNotify(ctx context.Context, pe *pushEvent, key string) bool {
	if v, ok := pe.mayNotify[key]; ok {
		return v
	}
	if !pe.powerLoaded {
		pe.powerLoaded = true
		if ev, err := u.push.rooms.StateEvent(ctx, pe.out.RoomID, "m.room.power_levels", ""); err == nil {
			pe.powerLevels = ev.Content()
		}
		if ev, err := u.push.rooms.StateEvent(ctx, pe.out.RoomID, "m.room.create", ""); err == nil {
			pe.createJSON = ev.JSON()
		}
	}
	privileged := false
	if verImpl, err := gmsl.GetRoomVersion(gmsl.RoomVersion(pe.out.RoomVersion)); err == nil && verImpl.PrivilegedCreators() && pe.createJSON != nil {
		// From room version 12 the creators outrank every power level.
		c := gjson.GetManyBytes(pe.createJSON, "sender", "content.additional_creators")
		privileged = c[0].String() == pe.sender
		for _, a := range c[1].Array() {
			privileged = privileged || a.String() == pe.sender
		}
	}
	v := pushrules.NotificationPermitted(pe.powerLevels, pe.sender, key, privileged)
	if pe.mayNotify == nil {
		pe.mayNotify = map[string]bool{}
	}
	pe.mayNotify[key] = v
	return v
}

// lookUp fills in the names a push shows: the sender's display name and
// the room's name or alias (for an invite to a room this server is not
// in, from the invite's stripped state).
func (u *UserAPI) lookUp(ctx context.Context, pe *pushEvent) {
	if pe.looked {
		return
	}
	pe.looked = true
	roomID := pe.out.RoomID
	if name, err := u.store.MemberDisplayName(ctx, roomID, pe.sender); err == nil {
		pe.senderName = name
	}
	if ev, err := u.push.rooms.StateEvent(ctx, roomID, "m.room.name", ""); err == nil {
		pe.roomName = gjson.GetBytes(ev.Content(), "name").String()
	}
	if ev, err := u.push.rooms.StateEvent(ctx, roomID, "m.room.canonical_alias", ""); err == nil {
		pe.roomAlias = gjson.GetBytes(ev.Content(), "alias").String()
	}
	for _, raw := range pe.out.InviteRoomState {
		g := gjson.GetManyBytes(raw, "type", "content.name", "content.alias")
		switch {
		case g[0].String() == "m.room.name" && pe.roomName == "":
			pe.roomName = g[1].String()
		case g[0].String() == "m.room.canonical_alias" && pe.roomAlias == "":
			pe.roomAlias = g[2].String()
		}
	}
}

// gatewayDevice is one entry of a push's devices (spec: Push Gateway API,
// Device).
type gatewayDevice struct {
	AppID     string                     `json:"app_id"`
	PushKey   string                     `json:"pushkey"`
	PushKeyTS int64                      `json:"pushkey_ts"`
	Data      map[string]json.RawMessage `json:"data"`
	Tweaks    map[string]json.RawMessage `json:"tweaks"`
}

func deviceOf(p uapi.Pusher, tweaks map[string]json.RawMessage) gatewayDevice {
	data := map[string]json.RawMessage{}
	_ = json.Unmarshal(p.Data, &data)
	delete(data, "url") // the gateway's own address is not its business
	if tweaks == nil {
		tweaks = map[string]json.RawMessage{}
	}
	return gatewayDevice{AppID: p.AppID, PushKey: p.PushKey, PushKeyTS: p.PushKeyTS / 1000, Data: data, Tweaks: tweaks}
}

// pushNotification sends a notification to each of the user's pushers.
// Failures are logged, never returned: a push is best effort, and the
// notification is recorded whatever happens to it.
func (u *UserAPI) pushNotification(ctx context.Context, userID string, pe *pushEvent, acts pushrules.Actions) {
	pushers, err := u.store.Pushers(ctx, userID)
	if err != nil || len(pushers) == 0 {
		if err != nil {
			u.log.WithError(err).WithField("user_id", userID).Warn("loading pushers")
		}
		return
	}
	badge, err := u.store.UnreadRooms(ctx, userID)
	if err != nil {
		u.log.WithError(err).WithField("user_id", userID).Warn("counting unread rooms")
	}
	u.lookUp(ctx, pe)
	prio := "low"
	if _, ok := acts.Tweaks["sound"]; ok || acts.Highlight || pe.typ == "m.room.encrypted" {
		prio = "high"
	}
	out := pe.out
	for _, p := range pushers {
		gw, idOnly, ok := pusherURL(p)
		if !ok {
			continue
		}
		n := map[string]any{
			// "id" is the event ID under its old name, which gateways
			// (and sytest) still read.
			"id": out.EventID, "event_id": out.EventID, "room_id": out.RoomID, "prio": prio,
			"counts":  map[string]int64{"unread": badge},
			"devices": []gatewayDevice{deviceOf(p, acts.Tweaks)},
		}
		if !idOnly {
			n["type"], n["sender"] = pe.typ, pe.sender
			if pe.content != "" {
				n["content"] = json.RawMessage(pe.content)
			}
			if pe.senderName != "" {
				n["sender_display_name"] = pe.senderName
			}
			if pe.roomName != "" {
				n["room_name"] = pe.roomName
			} else if pe.roomAlias != "" {
				n["room_name"] = pe.roomAlias
			}
			if pe.roomAlias != "" {
				n["room_alias"] = pe.roomAlias
			}
			if pe.typ == "m.room.member" {
				n["membership"] = pe.membership
				n["user_is_target"] = pe.stateKey == userID
			}
		}
		u.enqueuePush(userID, p, gw, n)
	}
}

// pushBadge sends the user's pushers the number of rooms with unread
// notifications, after some were read.
func (u *UserAPI) pushBadge(ctx context.Context, userID string) {
	if u.push.sender == nil {
		return
	}
	pushers, err := u.store.Pushers(ctx, userID)
	if err != nil || len(pushers) == 0 {
		return
	}
	badge, err := u.store.UnreadRooms(ctx, userID)
	if err != nil {
		u.log.WithError(err).WithField("user_id", userID).Warn("counting unread rooms")
		return
	}
	for _, p := range pushers {
		if gw, _, ok := pusherURL(p); ok {
			u.enqueuePush(userID, p, gw, map[string]any{
				"id": "", "type": nil, "sender": "", "prio": "high",
				"counts":  map[string]int64{"unread": badge},
				"devices": []gatewayDevice{deviceOf(p, nil)},
			})
		}
	}
}

func (u *UserAPI) enqueuePush(userID string, p uapi.Pusher, gw string, notification map[string]any) {
	body, err := json.Marshal(map[string]any{"notification": notification})
	if err != nil {
		u.log.WithError(err).Warn("encoding a push")
		return
	}
	u.push.sender.Enqueue(pushgw.Request{URL: gw, Body: body, UserID: userID, AppID: p.AppID, PushKey: p.PushKey})
}
