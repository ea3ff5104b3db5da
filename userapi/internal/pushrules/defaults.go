// Package pushrules holds the push rule logic of the userapi (spec: "Push
// Rules"): the server-default rules, the merge of a user's stored rules
// with them, the validation of rules clients set, and the evaluation of an
// event against a ruleset. It does no I/O. Only package userapi imports it.
package pushrules

import (
	"encoding/json"
	"strings"

	uapi "myelin/userapi/api"
)

// Rule IDs of the server-default rules.
const (
	Master                = ".m.rule.master"
	SuppressNotices       = ".m.rule.suppress_notices"
	InviteForMe           = ".m.rule.invite_for_me"
	MemberEvent           = ".m.rule.member_event"
	IsUserMention         = ".m.rule.is_user_mention"
	ContainsDisplayName   = ".m.rule.contains_display_name"
	IsRoomMention         = ".m.rule.is_room_mention"
	RoomNotif             = ".m.rule.roomnotif"
	Tombstone             = ".m.rule.tombstone"
	Reaction              = ".m.rule.reaction"
	ServerACL             = ".m.rule.room.server_acl"
	SuppressEdits         = ".m.rule.suppress_edits"
	ContainsUserName      = ".m.rule.contains_user_name"
	Call                  = ".m.rule.call"
	EncryptedRoomOneToOne = ".m.rule.encrypted_room_one_to_one"
	RoomOneToOne          = ".m.rule.room_one_to_one"
	Message               = ".m.rule.message"
	Encrypted             = ".m.rule.encrypted"
)

const (
	defaultRulePrefix       = "."
	soundDefault, soundRing = `"default"`, `"ring"`
)

// IsDefaultID reports whether ruleID is reserved for server-default rules
// (spec: rule IDs starting with "." are).
func IsDefaultID(ruleID string) bool { return strings.HasPrefix(ruleID, defaultRulePrefix) }

// legacyMention lists the default rules that find mentions in the body
// text. The spec deprecated them in v1.7 (MSC3952: they apply only to
// events without m.mentions) and dropped them in v1.17 (MSC4210); they are
// still served because clients (Element's notification settings) read and
// write them, and events from older clients carry no m.mentions.
var legacyMention = map[string]bool{ContainsDisplayName: true, RoomNotif: true, ContainsUserName: true}

func notify() uapi.PushAction { return uapi.PushAction{Action: uapi.ActionNotify} }

func sound(v string) uapi.PushAction {
	return uapi.PushAction{Tweak: "sound", Value: json.RawMessage(v)}
}

// highlight has no value: a highlight tweak without one means true.
func highlight() uapi.PushAction { return uapi.PushAction{Tweak: "highlight"} }

func match(key, pattern string) uapi.PushCondition {
	return uapi.PushCondition{Kind: KindEventMatch, Key: key, Pattern: &pattern}
}

func propertyIs(key, value string) uapi.PushCondition {
	return uapi.PushCondition{Kind: KindEventPropertyIs, Key: key, Value: json.RawMessage(value)}
}

func rule(id string, actions []uapi.PushAction, conds ...uapi.PushCondition) uapi.PushRule {
	if actions == nil {
		actions = []uapi.PushAction{}
	}
	if conds == nil {
		conds = []uapi.PushCondition{}
	}
	return uapi.PushRule{RuleID: id, Default: true, Enabled: true, Actions: actions, Conditions: conds}
}

// Defaults returns the server-default rules of userID, in the spec's order
// (client-server API, "Predefined Rules"), plus the legacy mention rules
// at the places they had.
func Defaults(userID string) *uapi.PushRuleset {
	localpart := strings.TrimPrefix(userID, "@")
	if i := strings.IndexByte(localpart, ':'); i >= 0 {
		localpart = localpart[:i]
	}
	userJSON, _ := json.Marshal(userID)
	master := rule(Master, nil)
	master.Enabled = false
	contains := uapi.PushRule{
		RuleID: ContainsUserName, Default: true, Enabled: true, Pattern: &localpart,
		Actions: []uapi.PushAction{notify(), sound(soundDefault), highlight()},
	}
	return &uapi.PushRuleset{
		Override: []uapi.PushRule{
			master,
			rule(SuppressNotices, nil, match("content.msgtype", "m.notice")),
			rule(InviteForMe, []uapi.PushAction{notify(), sound(soundDefault)},
				match("type", "m.room.member"), match("content.membership", "invite"), match("state_key", userID)),
			rule(MemberEvent, nil, match("type", "m.room.member")),
			rule(IsUserMention, []uapi.PushAction{notify(), sound(soundDefault), highlight()},
				uapi.PushCondition{Kind: KindEventPropertyContains, Key: `content.m\.mentions.user_ids`, Value: userJSON}),
			rule(ContainsDisplayName, []uapi.PushAction{notify(), sound(soundDefault), highlight()},
				uapi.PushCondition{Kind: KindContainsDisplayName}),
			rule(IsRoomMention, []uapi.PushAction{notify(), highlight()},
				propertyIs(`content.m\.mentions.room`, "true"),
				uapi.PushCondition{Kind: KindSenderNotificationPermission, Key: "room"}),
			rule(RoomNotif, []uapi.PushAction{notify(), highlight()},
				uapi.PushCondition{Kind: KindSenderNotificationPermission, Key: "room"},
				match("content.body", "@room")),
			rule(Tombstone, []uapi.PushAction{notify(), highlight()},
				match("type", "m.room.tombstone"), match("state_key", "")),
			rule(Reaction, nil, match("type", "m.reaction")),
			rule(ServerACL, nil, match("type", "m.room.server_acl"), match("state_key", "")),
			rule(SuppressEdits, nil, propertyIs(`content.m\.relates_to.rel_type`, `"m.replace"`)),
		},
		Content: []uapi.PushRule{contains},
		Room:    []uapi.PushRule{},
		Sender:  []uapi.PushRule{},
		Underride: []uapi.PushRule{
			rule(Call, []uapi.PushAction{notify(), sound(soundRing)}, match("type", "m.call.invite")),
			rule(EncryptedRoomOneToOne, []uapi.PushAction{notify(), sound(soundDefault)},
				uapi.PushCondition{Kind: KindRoomMemberCount, Is: "2"}, match("type", "m.room.encrypted")),
			rule(RoomOneToOne, []uapi.PushAction{notify(), sound(soundDefault)},
				uapi.PushCondition{Kind: KindRoomMemberCount, Is: "2"}, match("type", "m.room.message")),
			rule(Message, []uapi.PushAction{notify()}, match("type", "m.room.message")),
			rule(Encrypted, []uapi.PushAction{notify()}, match("type", "m.room.encrypted")),
		},
	}
}

// Effective merges a user's stored rules (nil for none) with the current
// defaults: the defaults keep the user's enabled flag and actions, defaults
// the server no longer has are dropped, and the user's rules of a kind come
// before that kind's defaults, except .m.rule.master, which comes first of
// all (spec: "Push Rules", priority). Storing defaults with the user's
// rules, and merging here, lets a new server version change the defaults
// without touching stored rules.
func Effective(userID string, stored *uapi.PushRuleset) *uapi.PushRuleset {
	out := Defaults(userID)
	if stored == nil {
		return out
	}
	for _, k := range uapi.PushRuleKinds {
		defaults := *out.Kind(k)
		var own []uapi.PushRule
		for _, r := range *stored.Kind(k) {
			if !r.Default {
				own = append(own, r)
				continue
			}
			for i := range defaults {
				if defaults[i].RuleID == r.RuleID {
					defaults[i].Enabled = r.Enabled
					if r.Actions != nil {
						defaults[i].Actions = r.Actions
					}
				}
			}
		}
		merged := make([]uapi.PushRule, 0, len(own)+len(defaults))
		if k == uapi.PushOverride && len(defaults) > 0 && defaults[0].RuleID == Master {
			merged = append(merged, defaults[0])
			defaults = defaults[1:]
		}
		merged = append(merged, own...)
		merged = append(merged, defaults...)
		*out.Kind(k) = merged
	}
	return out
}

// AccountData is the m.push_rules account data content of a ruleset.
func AccountData(rs *uapi.PushRuleset) json.RawMessage {
	b, _ := json.Marshal(map[string]*uapi.PushRuleset{"global": rs})
	return b
}

// FromAccountData reads stored m.push_rules content (nil for none).
func FromAccountData(content json.RawMessage) (*uapi.PushRuleset, error) {
	if len(content) == 0 {
		return nil, nil
	}
	var doc struct {
		Global *uapi.PushRuleset `json:"global"`
	}
	if err := json.Unmarshal(content, &doc); err != nil {
		return nil, err
	}
	if doc.Global == nil {
		return nil, nil
	}
	return doc.Global, nil
}
