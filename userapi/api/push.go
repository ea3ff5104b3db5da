package uapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
)

// Push rules, pushers and notifications (spec: "Push Notifications").

// PushRuleKind is one of the five kinds of push rule, which are evaluated
// in the order of the constants below.
type PushRuleKind string

// The push rule kinds, highest priority first.
const (
	PushOverride  PushRuleKind = "override"
	PushContent   PushRuleKind = "content"
	PushRoom      PushRuleKind = "room"
	PushSender    PushRuleKind = "sender"
	PushUnderride PushRuleKind = "underride"
)

// PushRuleKinds lists the kinds in evaluation order.
var PushRuleKinds = []PushRuleKind{PushOverride, PushContent, PushRoom, PushSender, PushUnderride}

// Valid reports whether k is one of the five kinds.
func (k PushRuleKind) Valid() bool {
	switch k {
	case PushOverride, PushContent, PushRoom, PushSender, PushUnderride:
		return true
	}
	return false
}

// PushRuleset is a user's push rules of the "global" scope, each kind
// highest priority first. As JSON it is the spec's Ruleset and, wrapped in
// {"global": ...}, the content of the m.push_rules account data.
type PushRuleset struct {
	Override  []PushRule `json:"override"`
	Content   []PushRule `json:"content"`
	Room      []PushRule `json:"room"`
	Sender    []PushRule `json:"sender"`
	Underride []PushRule `json:"underride"`
}

// Kind returns the rules of kind k (nil for an unknown kind).
func (rs *PushRuleset) Kind(k PushRuleKind) *[]PushRule {
	switch k {
	case PushOverride:
		return &rs.Override
	case PushContent:
		return &rs.Content
	case PushRoom:
		return &rs.Room
	case PushSender:
		return &rs.Sender
	case PushUnderride:
		return &rs.Underride
	}
	return nil
}

// Find returns the rule of kind k called ruleID, or nil.
func (rs *PushRuleset) Find(k PushRuleKind, ruleID string) *PushRule {
	rules := rs.Kind(k)
	if rules == nil {
		return nil
	}
	for i := range *rules {
		if (*rules)[i].RuleID == ruleID {
			return &(*rules)[i]
		}
	}
	return nil
}

// PushRule is one push rule. Conditions are those of override and
// underride rules (room and sender rules match on their rule ID, content
// rules on Pattern); a nil Conditions is left out of the JSON, an empty one
// is sent as [] (as for .m.rule.master).
type PushRule struct {
	RuleID     string          `json:"rule_id"`
	Default    bool            `json:"default"`
	Enabled    bool            `json:"enabled"`
	Actions    []PushAction    `json:"actions"`
	Conditions []PushCondition `json:"-"`
	Pattern    *string         `json:"pattern,omitempty"`
}

type pushRuleJSON PushRule

// MarshalJSON writes conditions when they are set, even if empty.
func (r PushRule) MarshalJSON() ([]byte, error) {
	out := struct {
		pushRuleJSON
		Conditions *[]PushCondition `json:"conditions,omitempty"`
	}{pushRuleJSON: pushRuleJSON(r)}
	if r.Conditions != nil {
		out.Conditions = &r.Conditions
	}
	if out.Actions == nil {
		out.Actions = []PushAction{}
	}
	return json.Marshal(out)
}

// UnmarshalJSON reads a rule, keeping an empty conditions list apart from
// none.
func (r *PushRule) UnmarshalJSON(b []byte) error {
	var in struct {
		pushRuleJSON
		Conditions *[]PushCondition `json:"conditions"`
	}
	if err := json.Unmarshal(b, &in); err != nil {
		return err
	}
	*r = PushRule(in.pushRuleJSON)
	if in.Conditions != nil {
		r.Conditions = *in.Conditions
		if r.Conditions == nil {
			r.Conditions = []PushCondition{}
		}
	}
	return nil
}

// PushCondition is one condition of a push rule. Which fields matter
// depends on Kind: event_match (Key, Pattern), event_property_is and
// event_property_contains (Key, Value), room_member_count (Is),
// sender_notification_permission (Key), contains_display_name (none).
type PushCondition struct {
	Kind    string          `json:"kind"`
	Key     string          `json:"key,omitempty"`
	Pattern *string         `json:"pattern,omitempty"`
	Value   json.RawMessage `json:"value,omitempty"`
	Is      string          `json:"is,omitempty"`
}

// Push actions (spec: "Actions"). dont_notify and coalesce are deprecated:
// the first does nothing, the second is read as notify.
const (
	ActionNotify     = "notify"
	ActionDontNotify = "dont_notify"
	ActionCoalesce   = "coalesce"
)

// PushAction is an action of a push rule: a plain action ("notify") or a
// tweak ({"set_tweak": "sound", "value": "default"}). It is written back
// in the form it was read in, so clients get their actions back verbatim.
type PushAction struct {
	Action string          // a plain action; empty for a tweak
	Tweak  string          // the tweak's name
	Value  json.RawMessage // the tweak's value; nil when absent
}

// MarshalJSON writes a plain action as a string, a tweak as an object.
func (a PushAction) MarshalJSON() ([]byte, error) {
	if a.Tweak == "" {
		return json.Marshal(a.Action)
	}
	t := struct {
		SetTweak string          `json:"set_tweak"`
		Value    json.RawMessage `json:"value,omitempty"`
	}{a.Tweak, a.Value}
	return json.Marshal(t)
}

// UnmarshalJSON reads a string or a {"set_tweak": ...} object.
func (a *PushAction) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '"' {
		*a = PushAction{}
		return json.Unmarshal(b, &a.Action)
	}
	var t struct {
		SetTweak *string         `json:"set_tweak"`
		Value    json.RawMessage `json:"value"`
	}
	if len(b) == 0 || b[0] != '{' {
		return errors.New("a push action is a string or an object")
	}
	if err := json.Unmarshal(b, &t); err != nil {
		return err
	}
	if t.SetTweak == nil || *t.SetTweak == "" {
		return errors.New("a push action object needs set_tweak")
	}
	*a = PushAction{Tweak: *t.SetTweak, Value: t.Value}
	return nil
}

// Pusher is an HTTP pusher (spec: "POST /pushers/set"): where and how to
// send a user's notifications. Data holds at least "url" (and optionally
// "format"); it is shown to clients as it was set.
type Pusher struct {
	PushKey           string          `json:"pushkey"`
	Kind              string          `json:"kind"`
	AppID             string          `json:"app_id"`
	AppDisplayName    string          `json:"app_display_name"`
	DeviceDisplayName string          `json:"device_display_name"`
	ProfileTag        string          `json:"profile_tag,omitempty"`
	Lang              string          `json:"lang"`
	Data              json.RawMessage `json:"data"`
	// PushKeyTS is when the pushkey was last set, in Unix milliseconds.
	PushKeyTS int64 `json:"-"`
}

// Notification is one event that notified a user (GET /notifications).
// Event is in client format.
type Notification struct {
	Actions    []PushAction    `json:"actions"`
	Event      json.RawMessage `json:"event"`
	ProfileTag *string         `json:"profile_tag"`
	Read       bool            `json:"read"`
	RoomID     string          `json:"room_id"`
	TS         int64           `json:"ts"`
	// ID orders notifications; a page's last ID is the next page's from.
	ID int64 `json:"-"`
}

// NotificationCounts are a user's unread notifications in one room:
// the events that notified it since its last read receipt, and how many of
// them highlight.
type NotificationCounts struct {
	Notifications int64 `json:"notification_count"`
	Highlights    int64 `json:"highlight_count"`
}

// InvalidError is a request the userapi refuses because of a bad value
// (an invalid push rule, a pusher without a URL); Reason says which.
type InvalidError struct{ Reason string }

func (e *InvalidError) Error() string         { return e.Reason }
func (e *InvalidError) MatrixErrCode() string { return "M_INVALID_PARAM" }

// Invalidf returns an *InvalidError with a formatted reason.
func Invalidf(format string, args ...any) error {
	return &InvalidError{Reason: fmt.Sprintf(format, args...)}
}

// Push is the part of the userapi that concerns push notifications. The
// userapi evaluates every event of the OutputRoomEvent stream against the
// rules of the local users it may notify, records the notifications and
// sends them to the users' pushers.
type Push interface {
	// PushRules returns the user's effective rules: the spec's default
	// rules (with the user's changes to them) and the user's own. They are
	// also the user's m.push_rules global account data.
	PushRules(ctx context.Context, userID string) (*PushRuleset, error)
	// PutPushRule adds a user-defined rule of kind, or replaces the one of
	// that ID (keeping its place unless before or after is given). before
	// and after name a user-defined rule of the same kind to put it just
	// before or after (ErrNotFound if there is none); a new rule with
	// neither goes first. Bad rules are an *InvalidError.
	PutPushRule(ctx context.Context, userID string, kind PushRuleKind, rule PushRule, before, after string) error
	// DeletePushRule removes a user-defined rule (ErrNotFound if there is
	// none; an *InvalidError for a default rule).
	DeletePushRule(ctx context.Context, userID string, kind PushRuleKind, ruleID string) error
	// SetPushRuleEnabled and SetPushRuleActions change a rule, default or
	// not (ErrNotFound if there is none).
	SetPushRuleEnabled(ctx context.Context, userID string, kind PushRuleKind, ruleID string, enabled bool) error
	SetPushRuleActions(ctx context.Context, userID string, kind PushRuleKind, ruleID string, actions []PushAction) error

	// Pushers lists the user's pushers.
	Pushers(ctx context.Context, userID string) ([]Pusher, error)
	// SetPusher creates or updates the user's pusher of (p.AppID,
	// p.PushKey), or deletes it when p.Kind is empty. sessionID is the
	// device session setting it: the pusher goes when that device is
	// deleted. Unless appendOthers is set, the pushers of other users with
	// the same app ID and pushkey are deleted.
	SetPusher(ctx context.Context, userID string, sessionID int64, p Pusher, appendOthers bool) error

	// Notifications pages through the user's notifications, newest first:
	// those with an ID below from (all when from is 0), at most limit, only
	// highlights if onlyHighlight. next is the from of the next page, 0 at
	// the end.
	Notifications(ctx context.Context, userID string, from int64, limit int, onlyHighlight bool) (n []Notification, next int64, err error)
	// NotificationCounts are the user's unread notifications in roomID, for
	// /sync's unread_notifications.
	NotificationCounts(ctx context.Context, userID, roomID string) (NotificationCounts, error)
	// ThreadNotificationCounts are the user's unread notifications in each
	// thread of roomID that has some, by thread root, for /sync's
	// unread_thread_notifications; NotificationCounts counts them too.
	ThreadNotificationCounts(ctx context.Context, userID, roomID string) (map[string]NotificationCounts, error)
	// ClearNotifications marks the user's notifications in roomID as read
	// up to and including eventID, as a read receipt (m.read or
	// m.read.private) does. threadID is the receipt's thread: "" for an
	// unthreaded receipt (every notification up to the event), "main" for
	// the main timeline, or a thread root. The user's pushers are sent the
	// new unread count.
	ClearNotifications(ctx context.Context, userID, roomID, threadID, eventID string) error
}
