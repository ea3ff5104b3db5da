package pushrules

import (
	"bytes"
	"encoding/json"
	"strconv"
	"strings"
	"unicode/utf8"

	uapi "myelin/userapi/api"
)

// Condition kinds (spec: "Conditions"). Kinds not listed here are kept
// but never match, as the spec asks of unrecognised conditions.
const (
	KindEventMatch                   = "event_match"
	KindEventPropertyIs              = "event_property_is"
	KindEventPropertyContains        = "event_property_contains"
	KindContainsDisplayName          = "contains_display_name"
	KindRoomMemberCount              = "room_member_count"
	KindSenderNotificationPermission = "sender_notification_permission"
)

// maxRuleIDLen bounds rule IDs; room and user IDs, the longest natural
// ones, are at most 255 bytes.
const maxRuleIDLen = 255

// ValidateRuleID checks the ID of a rule a client adds.
func ValidateRuleID(ruleID string) error {
	switch {
	case ruleID == "":
		return uapi.Invalidf("the rule ID must not be empty")
	case IsDefaultID(ruleID):
		return uapi.Invalidf("rule IDs starting with '.' are reserved for server-default rules")
	case strings.ContainsAny(ruleID, `/\`):
		return uapi.Invalidf("rule IDs must not contain slashes")
	case len(ruleID) > maxRuleIDLen:
		return uapi.Invalidf("the rule ID is longer than %d bytes", maxRuleIDLen)
	}
	return nil
}

// Validate checks a user-defined rule of kind k as a client sends it and
// clears the fields that kind does not use.
func Validate(k uapi.PushRuleKind, r *uapi.PushRule) error {
	if !k.Valid() {
		return uapi.Invalidf("unknown rule kind %q", k)
	}
	if err := ValidateRuleID(r.RuleID); err != nil {
		return err
	}
	if r.Actions == nil {
		return uapi.Invalidf("actions are required")
	}
	if err := ValidateActions(r.Actions); err != nil {
		return err
	}
	switch k {
	case uapi.PushOverride, uapi.PushUnderride:
		if r.Conditions == nil {
			return uapi.Invalidf("%s rules need conditions", k)
		}
		for i := range r.Conditions {
			if err := validateCondition(&r.Conditions[i]); err != nil {
				return err
			}
		}
		r.Pattern = nil
	case uapi.PushContent:
		if r.Pattern == nil || *r.Pattern == "" {
			return uapi.Invalidf("content rules need a pattern")
		}
		r.Conditions = nil
	default: // room and sender rules match on their ID
		r.Conditions, r.Pattern = nil, nil
	}
	return nil
}

// ValidateActions checks a rule's actions: the plain actions the spec
// defines and tweaks.
func ValidateActions(actions []uapi.PushAction) error {
	for _, a := range actions {
		if a.Tweak != "" {
			continue
		}
		switch a.Action {
		case uapi.ActionNotify, uapi.ActionDontNotify, uapi.ActionCoalesce:
		default:
			return uapi.Invalidf("unknown action %q", a.Action)
		}
	}
	return nil
}

func validateCondition(c *uapi.PushCondition) error {
	switch c.Kind {
	case "":
		return uapi.Invalidf("a condition needs a kind")
	case KindEventMatch:
		if c.Key == "" || c.Pattern == nil {
			return uapi.Invalidf("event_match needs a key and a pattern")
		}
	case KindEventPropertyIs, KindEventPropertyContains:
		if c.Key == "" || len(c.Value) == 0 {
			return uapi.Invalidf("%s needs a key and a value", c.Kind)
		}
		if _, ok := scalar(c.Value); !ok {
			return uapi.Invalidf("%s values are strings, integers, booleans or null", c.Kind)
		}
	case KindRoomMemberCount:
		if _, _, ok := parseMemberCount(c.Is); !ok {
			return uapi.Invalidf("room_member_count needs an 'is' such as \"2\" or \">=10\"")
		}
	case KindSenderNotificationPermission:
		if c.Key == "" {
			return uapi.Invalidf("sender_notification_permission needs a key")
		}
	}
	return nil
}

// scalar decodes a condition value: a string, an integer (int64), a
// boolean or null (nil). ok is false for anything else. It runs for every
// condition of every evaluation, so the common forms skip encoding/json.
func scalar(raw json.RawMessage) (v any, ok bool) {
	t := bytes.TrimSpace(raw)
	switch string(t) {
	case "true":
		return true, true
	case "false":
		return false, true
	case "null":
		return nil, true
	}
	if len(t) >= 2 && t[0] == '"' && t[len(t)-1] == '"' && bytes.IndexByte(t, '\\') < 0 && utf8.Valid(t) {
		return string(t[1 : len(t)-1]), true
	}
	if n, err := strconv.ParseInt(string(t), 10, 64); err == nil {
		return n, true
	}
	var s string
	if json.Unmarshal(t, &s) == nil {
		return s, true
	}
	return nil, false
}

// normalise turns a decoded JSON value into the form values are compared
// in: strings, int64, bool and nil; ok is false for other values (floats,
// arrays, objects).
func normalise(v any) (any, bool) {
	switch x := v.(type) {
	case nil, string, bool:
		return x, true
	case json.Number:
		n, err := x.Int64()
		if err != nil {
			return nil, false
		}
		return n, true
	}
	return nil, false
}
