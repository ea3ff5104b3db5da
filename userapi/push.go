package userapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"time"

	gmsl "github.com/matrix-org/gomatrixserverlib"

	"myelin/internal/bus"
	"myelin/internal/clientevent"
	rsapi "myelin/roomserver/api"
	uapi "myelin/userapi/api"
	"myelin/userapi/internal/pushgw"
	"myelin/userapi/internal/pushrules"
	"myelin/userapi/storage"
)

// Push rules, pushers and notifications (uapi.Push).
//
// A user's rules are stored as their m.push_rules global account data, so
// /sync delivers every change; what is stored is merged with the current
// server-default rules whenever it is read (pushrules.Effective).
//
// Lock order: push.rulesMu, then accountDataMu.

const pushRulesType = "m.push_rules"

// PushGatewayPath is the only path a pusher's URL may have (spec: Push
// Gateway API).
const PushGatewayPath = "/_matrix/push/v1/notify"

// Rooms is what the userapi asks the roomserver to evaluate and send
// notifications.
type Rooms interface {
	// StateEvent returns a current state event of a room.
	StateEvent(ctx context.Context, roomID, evType, stateKey string) (gmsl.PDU, error)
	// Events returns the known events among eventIDs.
	Events(ctx context.Context, eventIDs []string) ([]gmsl.PDU, error)
	// PerformLeave makes a user leave a room (the guests of a room
	// closed to them).
	PerformLeave(ctx context.Context, req *rsapi.LeaveRequest) error
}

// pushState is the userapi's push machinery.
type pushState struct {
	eval *pushrules.Evaluator

	// rulesMu serialises changes of push rules (read, change, write).
	rulesMu sync.Mutex

	// cacheMu guards cache: users' effective rules, for the evaluation of
	// every event. Entries are never changed, only replaced or dropped.
	cacheMu sync.Mutex
	cache   map[string]*uapi.PushRuleset
	// ignored caches users' ignore lists alike (nil: ignores nobody), so
	// that an ignored sender's events notify nobody who ignores it.
	ignored map[string]map[string]bool
	// gen counts invalidations: a reader caches what it read only if none
	// came between its read and its store, else a read from before a
	// change, stored after the change's invalidation, would stay.
	gen uint64

	// events is how far the OutputRoomEvent consumer got.
	events *bus.Progress

	// Set by Start.
	rooms  Rooms
	sender *pushgw.Sender
	wg     sync.WaitGroup
}

// maxCachedRulesets bounds the rules cache; past it the cache starts over.
const maxCachedRulesets = 10_000

func newPushState() *pushState {
	return &pushState{eval: pushrules.NewEvaluator(), cache: map[string]*uapi.PushRuleset{},
		ignored: map[string]map[string]bool{}, events: bus.NewProgress()}
}

func (p *pushState) forget(userID string) {
	p.cacheMu.Lock()
	delete(p.cache, userID)
	p.gen++
	p.cacheMu.Unlock()
}

func (p *pushState) forgetIgnored(userID string) {
	p.cacheMu.Lock()
	delete(p.ignored, userID)
	p.gen++
	p.cacheMu.Unlock()
}

// ignores reports whether userID ignores sender (its m.ignored_user_list).
func (u *UserAPI) ignores(ctx context.Context, userID, sender string) (bool, error) {
	p := u.push
	p.cacheMu.Lock()
	set, ok := p.ignored[userID]
	gen := p.gen
	p.cacheMu.Unlock()
	if !ok {
		raw, err := u.store.AccountData(ctx, userID, "", uapi.IgnoredUserListType)
		if err != nil && !uapi.IsNotFound(err) {
			return false, err
		}
		set = uapi.IgnoredUsers(raw)
		p.cacheMu.Lock()
		if len(p.ignored) >= maxCachedRulesets {
			clear(p.ignored)
		}
		if p.gen == gen {
			p.ignored[userID] = set
		}
		p.cacheMu.Unlock()
	}
	return set[sender], nil
}

// PushRules returns the user's effective push rules.
func (u *UserAPI) PushRules(ctx context.Context, userID string) (*uapi.PushRuleset, error) {
	raw, err := u.store.AccountData(ctx, userID, "", pushRulesType)
	if err != nil && !uapi.IsNotFound(err) {
		return nil, err
	}
	stored, err := pushrules.FromAccountData(raw)
	if err != nil {
		// Stored rules are written only here; if they cannot be read, the
		// defaults are better than no notifications at all.
		u.log.WithError(err).WithField("user_id", userID).Warn("unreadable push rules; using the defaults")
		stored = nil
	}
	return pushrules.Effective(userID, stored), nil
}

// rulesFor returns the user's effective rules from the cache.
func (u *UserAPI) rulesFor(ctx context.Context, userID string) (*uapi.PushRuleset, error) {
	p := u.push
	p.cacheMu.Lock()
	rs, ok := p.cache[userID]
	gen := p.gen
	p.cacheMu.Unlock()
	if ok {
		return rs, nil
	}
	rs, err := u.PushRules(ctx, userID)
	if err != nil {
		return nil, err
	}
	p.cacheMu.Lock()
	if len(p.cache) >= maxCachedRulesets {
		clear(p.cache)
	}
	if p.gen == gen {
		p.cache[userID] = rs
	}
	p.cacheMu.Unlock()
	return rs, nil
}

// changePushRules applies change to the user's rules and stores them.
func (u *UserAPI) changePushRules(ctx context.Context, userID string, change func(rs *uapi.PushRuleset) error) error {
	u.push.rulesMu.Lock()
	defer u.push.rulesMu.Unlock()
	rs, err := u.PushRules(ctx, userID)
	if err != nil {
		return err
	}
	if err := change(rs); err != nil {
		return err
	}
	_, err = u.SetAccountData(ctx, userID, "", pushRulesType, pushrules.AccountData(rs))
	return err
}

// PutPushRule adds or replaces a user-defined rule.
func (u *UserAPI) PutPushRule(ctx context.Context, userID string, kind uapi.PushRuleKind, rule uapi.PushRule, before, after string) error {
	if err := pushrules.Validate(kind, &rule); err != nil {
		return err
	}
	rule.Default, rule.Enabled = false, true
	return u.changePushRules(ctx, userID, func(rs *uapi.PushRuleset) error {
		rules := rs.Kind(kind)
		at := -1 // where the rule is now
		for i, r := range *rules {
			if r.RuleID == rule.RuleID {
				at = i
				rule.Enabled = r.Enabled
			}
		}
		if at >= 0 && before == "" && after == "" {
			(*rules)[at] = rule
			return nil
		}
		if at >= 0 {
			*rules = append((*rules)[:at], (*rules)[at+1:]...)
		}
		pos := 0 // a new rule comes first of the user's rules of its kind
		if kind == uapi.PushOverride && len(*rules) > 0 && (*rules)[0].RuleID == pushrules.Master {
			pos = 1
		}
		anchor, behind := before, false
		if anchor == "" {
			anchor, behind = after, true
		}
		if anchor != "" {
			pos = -1
			for i, r := range *rules {
				if r.RuleID == anchor && !r.Default {
					pos = i
					if behind {
						pos++
					}
				}
			}
			if pos < 0 {
				return fmt.Errorf("%w: no rule %q of kind %s to put the rule next to", uapi.ErrNotFound, anchor, kind)
			}
		}
		*rules = append((*rules)[:pos], append([]uapi.PushRule{rule}, (*rules)[pos:]...)...)
		return nil
	})
}

// DeletePushRule removes a user-defined rule.
func (u *UserAPI) DeletePushRule(ctx context.Context, userID string, kind uapi.PushRuleKind, ruleID string) error {
	if pushrules.IsDefaultID(ruleID) {
		return uapi.Invalidf("server-default rules cannot be deleted")
	}
	return u.changePushRules(ctx, userID, func(rs *uapi.PushRuleset) error {
		rules := rs.Kind(kind)
		if rules == nil {
			return uapi.ErrNotFound
		}
		for i, r := range *rules {
			if r.RuleID == ruleID {
				*rules = append((*rules)[:i], (*rules)[i+1:]...)
				return nil
			}
		}
		return uapi.ErrNotFound
	})
}

// SetPushRuleEnabled enables or disables a rule.
func (u *UserAPI) SetPushRuleEnabled(ctx context.Context, userID string, kind uapi.PushRuleKind, ruleID string, enabled bool) error {
	return u.changePushRules(ctx, userID, func(rs *uapi.PushRuleset) error {
		r := rs.Find(kind, ruleID)
		if r == nil {
			return uapi.ErrNotFound
		}
		r.Enabled = enabled
		return nil
	})
}

// SetPushRuleActions replaces a rule's actions.
func (u *UserAPI) SetPushRuleActions(ctx context.Context, userID string, kind uapi.PushRuleKind, ruleID string, actions []uapi.PushAction) error {
	if actions == nil {
		return uapi.Invalidf("actions are required")
	}
	if err := pushrules.ValidateActions(actions); err != nil {
		return err
	}
	return u.changePushRules(ctx, userID, func(rs *uapi.PushRuleset) error {
		r := rs.Find(kind, ruleID)
		if r == nil {
			return uapi.ErrNotFound
		}
		r.Actions = actions
		return nil
	})
}

// Pushers lists the user's pushers.
func (u *UserAPI) Pushers(ctx context.Context, userID string) ([]uapi.Pusher, error) {
	return u.store.Pushers(ctx, userID)
}

// SetPusher creates, updates or (with an empty kind) deletes a pusher.
// Only http pushers are supported; their data.url must be an http(s) URL
// of a push gateway.
func (u *UserAPI) SetPusher(ctx context.Context, userID string, sessionID int64, p uapi.Pusher, appendOthers bool) error {
	if p.Kind == "" {
		return u.store.DeletePusher(ctx, userID, p.AppID, p.PushKey)
	}
	if p.Kind != "http" {
		return uapi.Invalidf("unsupported pusher kind %q: only http pushers are supported", p.Kind)
	}
	var data struct {
		URL    *string `json:"url"`
		Format *string `json:"format"` // spec: only "event_id_only" is defined
	}
	if err := json.Unmarshal(p.Data, &data); err != nil {
		return uapi.Invalidf("data must be an object whose url and format are strings")
	}
	if data.URL == nil {
		return uapi.Invalidf("http pushers need data.url")
	}
	gw, err := url.Parse(*data.URL)
	if err != nil || (gw.Scheme != "http" && gw.Scheme != "https") || gw.Host == "" {
		return uapi.Invalidf("data.url must be an absolute http or https URL")
	}
	if gw.Path != PushGatewayPath {
		return uapi.Invalidf("data.url must have the path %s", PushGatewayPath)
	}
	p.PushKeyTS = u.now().UnixMilli()
	return u.store.UpsertPusher(ctx, userID, sessionID, p, appendOthers)
}

// Notifications pages through the user's notifications, newest first.
// Events the roomserver no longer has are left out.
func (u *UserAPI) Notifications(ctx context.Context, userID string, from int64, limit int, onlyHighlight bool) ([]uapi.Notification, int64, error) {
	// The events sent before the request are evaluated first (bounded):
	// the push consumer takes events in batches, a little behind them.
	if u.bus != nil && u.push.rooms != nil {
		u.catchUpEvents(ctx, notificationsCatchUp)
	}
	rows, err := u.store.Notifications(ctx, userID, from, limit, onlyHighlight)
	if err != nil {
		return nil, 0, err
	}
	var next int64
	if len(rows) == limit && limit > 0 {
		next = rows[len(rows)-1].ID
	}
	out := []uapi.Notification{}
	if len(rows) == 0 || u.push.rooms == nil {
		return out, next, nil
	}
	ids := make([]string, len(rows))
	for i, r := range rows {
		ids[i] = r.EventID
	}
	pdus, err := u.push.rooms.Events(ctx, ids)
	if err != nil {
		return nil, 0, fmt.Errorf("events of notifications of %s: %w", userID, err)
	}
	byID := make(map[string]gmsl.PDU, len(pdus))
	for _, p := range pdus {
		byID[p.EventID()] = p
	}
	for _, r := range rows {
		pdu, ok := byID[r.EventID]
		if !ok {
			continue
		}
		ev, err := json.Marshal(clientevent.FromJSON(string(pdu.JSON()), r.EventID, r.RoomID))
		if err != nil {
			return nil, 0, fmt.Errorf("encode event %s: %w", r.EventID, err)
		}
		var actions []uapi.PushAction
		if err := json.Unmarshal(r.Actions, &actions); err != nil {
			actions = []uapi.PushAction{}
		}
		out = append(out, uapi.Notification{
			Actions: actions, Event: ev, Read: r.IsRead, RoomID: r.RoomID, TS: r.TS, ID: r.ID,
		})
	}
	return out, next, nil
}

// NotificationCounts are the user's unread notifications in a room.
func (u *UserAPI) NotificationCounts(ctx context.Context, userID, roomID string) (uapi.NotificationCounts, error) {
	return u.store.NotificationCounts(ctx, userID, roomID)
}

// ThreadNotificationCounts implements uapi.UserAPI.
func (u *UserAPI) ThreadNotificationCounts(ctx context.Context, userID, roomID string) (map[string]uapi.NotificationCounts, error) {
	return u.store.ThreadNotificationCounts(ctx, userID, roomID)
}

// notificationsCatchUp bounds how long GET /notifications waits for the
// events sent before it to be evaluated.
const notificationsCatchUp = 2 * time.Second

// ClearNotifications marks the user's notifications in a room read up to
// eventID (by depth, the room's order) and, when that changed anything,
// sends the user's pushers the new badge count.
func (u *UserAPI) ClearNotifications(ctx context.Context, userID, roomID, threadID, eventID string) error {
	rooms := u.push.rooms
	if rooms == nil {
		return errors.New("clear notifications: the userapi is not started")
	}
	// The event read was accepted before the receipt was sent, but this
	// component may not have evaluated it yet: its notification would be
	// recorded after the receipt and stay unread. So first catch up with
	// the events (bounded: a stuck consumer must not stop receipts).
	if u.bus != nil {
		u.catchUpEvents(ctx, receiptCatchUp)
	}
	pdus, err := rooms.Events(ctx, []string{eventID})
	if err != nil {
		return fmt.Errorf("clear notifications of %s up to %s: %w", userID, eventID, err)
	}
	if len(pdus) == 0 || pdus[0].RoomID().String() != roomID {
		return nil // an event we do not know cannot be ordered
	}
	thread := threadID
	switch threadID {
	case "":
		thread = storage.AllThreads
	case "main":
		thread = storage.MainThread
	}
	n, err := u.store.MarkRead(ctx, userID, roomID, thread, pdus[0].Depth())
	if err != nil || n == 0 {
		return err
	}
	u.pushBadge(ctx, userID)
	return nil
}

// pusherURL returns a pusher's gateway URL and whether it wants only
// event IDs; ok is false for a pusher without a usable URL.
func pusherURL(p uapi.Pusher) (gateway string, idOnly, ok bool) {
	var data struct {
		URL    string `json:"url"`
		Format string `json:"format"`
	}
	if json.Unmarshal(p.Data, &data) != nil || !strings.HasPrefix(data.URL, "http") {
		return "", false, false
	}
	return data.URL, data.Format == "event_id_only", true
}
