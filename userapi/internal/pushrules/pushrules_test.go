package pushrules

import (
	"encoding/json"
	"errors"
	"reflect"
	"testing"

	uapi "myelin/userapi/api"
)

const alice = "@alice:example.org"

func TestDefaultsWellFormed(t *testing.T) {
	rs := Defaults(alice)
	want := map[uapi.PushRuleKind][]string{
		uapi.PushOverride: {Master, SuppressNotices, InviteForMe, MemberEvent, IsUserMention, ContainsDisplayName,
			IsRoomMention, RoomNotif, Tombstone, Reaction, ServerACL, SuppressEdits},
		uapi.PushContent:   {ContainsUserName},
		uapi.PushRoom:      nil,
		uapi.PushSender:    nil,
		uapi.PushUnderride: {Call, EncryptedRoomOneToOne, RoomOneToOne, Message, Encrypted},
	}
	for _, k := range uapi.PushRuleKinds {
		var ids []string
		for _, r := range *rs.Kind(k) {
			ids = append(ids, r.RuleID)
			if !r.Default || !IsDefaultID(r.RuleID) || r.Actions == nil {
				t.Errorf("%s %s: default %v, actions %v", k, r.RuleID, r.Default, r.Actions)
			}
			if err := ValidateActions(r.Actions); err != nil {
				t.Errorf("%s: %v", r.RuleID, err)
			}
			hasConds := k == uapi.PushOverride || k == uapi.PushUnderride
			if (r.Conditions != nil) != hasConds || (r.Pattern != nil) != (k == uapi.PushContent) {
				t.Errorf("%s %s: conditions %v, pattern %v", k, r.RuleID, r.Conditions, r.Pattern)
			}
			for i := range r.Conditions {
				if err := validateCondition(&r.Conditions[i]); err != nil {
					t.Errorf("%s condition %d: %v", r.RuleID, i, err)
				}
			}
			if r.Enabled != (r.RuleID != Master) {
				t.Errorf("%s: enabled %v", r.RuleID, r.Enabled)
			}
		}
		if !reflect.DeepEqual(ids, want[k]) {
			t.Errorf("%s rules %v, want %v", k, ids, want[k])
		}
	}
	if p := *rs.Content[0].Pattern; p != "alice" {
		t.Errorf("contains_user_name pattern %q", p)
	}

	// The JSON clients see: every rule has rule_id, default, enabled and
	// actions; override and underride rules have conditions, even empty.
	raw, err := json.Marshal(map[string]any{"global": rs})
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]map[string][]map[string]json.RawMessage
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	for kind, rules := range doc["global"] {
		for _, r := range rules {
			for _, key := range []string{"rule_id", "default", "enabled", "actions"} {
				if _, ok := r[key]; !ok {
					t.Errorf("%s rule %s lacks %s", kind, r["rule_id"], key)
				}
			}
			_, hasConds := r["conditions"]
			if hasConds != (kind == "override" || kind == "underride") {
				t.Errorf("%s rule %s: conditions present %v", kind, r["rule_id"], hasConds)
			}
		}
	}
	if got := string(doc["global"]["override"][0]["conditions"]); got != "[]" {
		t.Errorf("master conditions %s, want []", got)
	}
	// And it reads back to the same rules.
	back, err := FromAccountData(AccountData(rs))
	if err != nil || !reflect.DeepEqual(back, rs) {
		t.Errorf("round trip: %v\n got %+v\nwant %+v", err, back, rs)
	}
}

func TestEffective(t *testing.T) {
	stored := Defaults(alice)
	stored.Override[0].Enabled = true // master
	stored.Underride[3].Actions = []uapi.PushAction{}
	stored.Underride[3].Enabled = false // .m.rule.message
	mine := uapi.PushRule{RuleID: "mine", Enabled: true, Actions: []uapi.PushAction{{Action: "notify"}}, Conditions: []uapi.PushCondition{}}
	stored.Override = append(stored.Override, mine) // stored after the defaults: order is fixed on read
	stored.Override = append(stored.Override, uapi.PushRule{RuleID: ".m.rule.gone", Default: true})
	stored.Room = append(stored.Room, uapi.PushRule{RuleID: "!room:x", Enabled: true, Actions: []uapi.PushAction{}})

	got := Effective(alice, stored)
	var ids []string
	for _, r := range got.Override {
		ids = append(ids, r.RuleID)
	}
	if ids[0] != Master || ids[1] != "mine" || ids[2] != SuppressNotices || len(ids) != len(Defaults(alice).Override)+1 {
		t.Errorf("override order %v", ids)
	}
	if !got.Override[0].Enabled {
		t.Error("master's enabled flag was not kept")
	}
	msg := got.Find(uapi.PushUnderride, Message)
	if msg.Enabled || len(msg.Actions) != 0 || msg.Conditions == nil {
		t.Errorf("changed default %+v", msg)
	}
	if got.Find(uapi.PushOverride, ".m.rule.gone") != nil {
		t.Error("a default the server no longer has was kept")
	}
	if got.Find(uapi.PushRoom, "!room:x") == nil {
		t.Error("room rule lost")
	}
	if Effective(alice, nil).Find(uapi.PushOverride, Master).Enabled {
		t.Error("no stored rules: master enabled")
	}
}

func str(s string) *string { return &s }

func TestValidate(t *testing.T) {
	notify := []uapi.PushAction{{Action: "notify"}}
	tests := []struct {
		name string
		kind uapi.PushRuleKind
		rule uapi.PushRule
		ok   bool
	}{
		{"room rule", uapi.PushRoom, uapi.PushRule{RuleID: "#spam:example.com", Actions: notify}, true},
		{"sender rule", uapi.PushSender, uapi.PushRule{RuleID: "@bob:example.com", Actions: notify}, true},
		{"content rule", uapi.PushContent, uapi.PushRule{RuleID: "c", Pattern: str("тест"), Actions: notify}, true},
		{"override rule", uapi.PushOverride, uapi.PushRule{RuleID: "o", Actions: notify,
			Conditions: []uapi.PushCondition{{Kind: "event_match", Key: "content.msgtype", Pattern: str("m.notice")}}}, true},
		{"unknown condition kinds are kept", uapi.PushUnderride, uapi.PushRule{RuleID: "u", Actions: notify,
			Conditions: []uapi.PushCondition{{Kind: "org.example.future"}}}, true},
		{"tweaks", uapi.PushRoom, uapi.PushRule{RuleID: "r", Actions: []uapi.PushAction{
			{Action: "notify"}, {Tweak: "sound", Value: json.RawMessage(`"default"`)}, {Tweak: "highlight"}}}, true},
		{"deprecated actions", uapi.PushRoom, uapi.PushRule{RuleID: "r", Actions: []uapi.PushAction{{Action: "dont_notify"}, {Action: "coalesce"}}}, true},
		{"no actions", uapi.PushRoom, uapi.PushRule{RuleID: "r"}, false},
		{"unknown action", uapi.PushRoom, uapi.PushRule{RuleID: "r", Actions: []uapi.PushAction{{Action: "not_an_action"}}}, false},
		{"msc2625 action", uapi.PushContent, uapi.PushRule{RuleID: "r", Pattern: str("*"), Actions: []uapi.PushAction{{Action: "org.matrix.msc2625.mark_unread"}}}, false},
		{"empty rule ID", uapi.PushRoom, uapi.PushRule{Actions: notify}, false},
		{"reserved rule ID", uapi.PushOverride, uapi.PushRule{RuleID: ".m.rule.mine", Actions: notify, Conditions: []uapi.PushCondition{}}, false},
		{"backslash", uapi.PushRoom, uapi.PushRule{RuleID: `#fo\o:example.com`, Actions: notify}, false},
		{"override without conditions", uapi.PushOverride, uapi.PushRule{RuleID: "o", Actions: notify}, false},
		{"underride without conditions", uapi.PushUnderride, uapi.PushRule{RuleID: "u", Actions: notify}, false},
		{"condition without kind", uapi.PushUnderride, uapi.PushRule{RuleID: "u", Actions: notify, Conditions: []uapi.PushCondition{{}}}, false},
		{"event_match without pattern", uapi.PushOverride, uapi.PushRule{RuleID: "o", Actions: notify, Conditions: []uapi.PushCondition{{Kind: "event_match", Key: "type"}}}, false},
		{"property_is with an object", uapi.PushOverride, uapi.PushRule{RuleID: "o", Actions: notify,
			Conditions: []uapi.PushCondition{{Kind: "event_property_is", Key: "k", Value: json.RawMessage(`{}`)}}}, false},
		{"property_is with a float", uapi.PushOverride, uapi.PushRule{RuleID: "o", Actions: notify,
			Conditions: []uapi.PushCondition{{Kind: "event_property_is", Key: "k", Value: json.RawMessage(`1.5`)}}}, false},
		{"bad member count", uapi.PushOverride, uapi.PushRule{RuleID: "o", Actions: notify,
			Conditions: []uapi.PushCondition{{Kind: "room_member_count", Is: "=>2"}}}, false},
		{"content rule without pattern", uapi.PushContent, uapi.PushRule{RuleID: "c", Actions: notify}, false},
		{"unknown kind", "not_a_template", uapi.PushRule{RuleID: "x", Actions: notify}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Validate(tt.kind, &tt.rule)
			if (err == nil) != tt.ok {
				t.Fatalf("Validate = %v, want ok %v", err, tt.ok)
			}
			var inv *uapi.InvalidError
			if err != nil && !errors.As(err, &inv) {
				t.Errorf("error %T is not an *InvalidError", err)
			}
		})
	}
}

func TestActionJSON(t *testing.T) {
	in := `["notify",{"set_tweak":"sound","value":"default"},{"set_tweak":"highlight"},{"set_tweak":"highlight","value":false}]`
	var acts []uapi.PushAction
	if err := json.Unmarshal([]byte(in), &acts); err != nil {
		t.Fatal(err)
	}
	out, _ := json.Marshal(acts)
	if string(out) != in {
		t.Errorf("round trip %s, want %s", out, in)
	}
	for _, bad := range []string{`[1]`, `[{"value":1}]`, `[[]]`, `[{"set_tweak":""}]`} {
		if err := json.Unmarshal([]byte(bad), &acts); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
	sum := Summarise(&uapi.PushRule{Actions: acts[:3]})
	if !sum.Notify || !sum.Highlight || string(sum.Tweaks["sound"]) != `"default"` || string(sum.Tweaks["highlight"]) != "true" {
		t.Errorf("summary %+v", sum)
	}
	if sum := Summarise(&uapi.PushRule{Actions: acts[3:]}); sum.Notify || sum.Highlight {
		t.Errorf("highlight false: %+v", sum)
	}
}

// event builds an event in roomID from sender with content.
func event(t *testing.T, typ, sender, content string, extra ...string) *Event {
	t.Helper()
	js := `{"type":"` + typ + `","sender":"` + sender + `","room_id":"!r:example.org","content":` + content
	for i := 0; i+1 < len(extra); i += 2 {
		js += `,"` + extra[i] + `":` + extra[i+1]
	}
	ev, err := NewEvent("!r:example.org", []byte(js+"}"))
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

func TestConditions(t *testing.T) {
	msg := func(body string) string { return `{"msgtype":"m.text","body":` + mustJSON(body) + `}` }
	type tc struct {
		name    string
		cond    uapi.PushCondition
		ev      *Event
		ctx     Context
		matches bool
	}
	bob := "@bob:example.org"
	match := func(key, pattern string) uapi.PushCondition {
		return uapi.PushCondition{Kind: KindEventMatch, Key: key, Pattern: str(pattern)}
	}
	is := func(key, value string) uapi.PushCondition {
		return uapi.PushCondition{Kind: KindEventPropertyIs, Key: key, Value: json.RawMessage(value)}
	}
	contains := func(key, value string) uapi.PushCondition {
		return uapi.PushCondition{Kind: KindEventPropertyContains, Key: key, Value: json.RawMessage(value)}
	}
	count := func(s string) uapi.PushCondition { return uapi.PushCondition{Kind: KindRoomMemberCount, Is: s} }
	permitted := func(key string) bool { return key == "room" }
	tests := []tc{
		// event_match: globs, case, whole values, words in the body.
		{"match exact", match("type", "m.room.message"), event(t, "m.room.message", bob, msg("hi")), Context{}, true},
		{"match is case-insensitive", match("type", "M.ROOM.*"), event(t, "m.room.message", bob, msg("hi")), Context{}, true},
		{"match glob star", match("type", "m.room.*"), event(t, "m.room.message", bob, msg("hi")), Context{}, true},
		{"match glob question mark", match("type", "m.room.m?ssage"), event(t, "m.room.message", bob, msg("hi")), Context{}, true},
		{"match is whole value", match("type", "m.room"), event(t, "m.room.message", bob, msg("hi")), Context{}, false},
		{"match missing key", match("state_key", ""), event(t, "m.room.message", bob, msg("hi")), Context{}, false},
		{"match empty state key", match("state_key", ""), event(t, "m.room.tombstone", bob, `{}`, "state_key", `""`), Context{}, true},
		{"match nested key", match("content.msgtype", "m.notice"), event(t, "m.room.message", bob, `{"msgtype":"m.notice","body":"x"}`), Context{}, true},
		{"match body word", match("content.body", "cake"), event(t, "m.room.message", bob, msg("I like cake!")), Context{}, true},
		{"match body not inside a word", match("content.body", "cake"), event(t, "m.room.message", bob, msg("cupcakes")), Context{}, false},
		{"match body glob word", match("content.body", "cake*"), event(t, "m.room.message", bob, msg("cupcakes or cakes")), Context{}, true},
		{"match body unicode word", match("content.body", "тест"), event(t, "m.room.message", bob, msg("это тест.")), Context{}, true},
		{"match only strings", match("content.n", "1"), event(t, "m.room.message", bob, `{"n":1}`), Context{}, false},
		{"match escaped dot", match(`content.m\.relates_to.rel_type`, "m.thread"),
			event(t, "m.room.message", bob, `{"m.relates_to":{"rel_type":"m.thread"}}`), Context{}, true},
		{"match unescaped dot misses", match(`content.m.relates_to.rel_type`, "m.thread"),
			event(t, "m.room.message", bob, `{"m.relates_to":{"rel_type":"m.thread"}}`), Context{}, false},
		// event_property_is: exact values of each type.
		{"is true", is(`content.m\.mentions.room`, "true"), event(t, "m.room.message", bob, `{"m.mentions":{"room":true}}`), Context{}, true},
		{"is false vs true", is(`content.m\.mentions.room`, "true"), event(t, "m.room.message", bob, `{"m.mentions":{"room":false}}`), Context{}, false},
		{"is string", is("content.msgtype", `"m.text"`), event(t, "m.room.message", bob, msg("x")), Context{}, true},
		{"is string is case-sensitive", is("content.msgtype", `"M.TEXT"`), event(t, "m.room.message", bob, msg("x")), Context{}, false},
		{"is integer", is("content.n", "3"), event(t, "m.room.message", bob, `{"n":3}`), Context{}, true},
		{"is integer vs string", is("content.n", `"3"`), event(t, "m.room.message", bob, `{"n":3}`), Context{}, false},
		{"is null", is("content.n", "null"), event(t, "m.room.message", bob, `{"n":null}`), Context{}, true},
		{"is null vs missing", is("content.n", "null"), event(t, "m.room.message", bob, `{}`), Context{}, false},
		{"is not an array", is("content.a", `"x"`), event(t, "m.room.message", bob, `{"a":["x"]}`), Context{}, false},
		// event_property_contains: arrays.
		{"contains", contains(`content.m\.mentions.user_ids`, mustJSON(alice)),
			event(t, "m.room.message", bob, `{"m.mentions":{"user_ids":["@x:y","`+alice+`"]}}`), Context{}, true},
		{"contains not", contains(`content.m\.mentions.user_ids`, mustJSON(alice)),
			event(t, "m.room.message", bob, `{"m.mentions":{"user_ids":["@x:y"]}}`), Context{}, false},
		{"contains needs an array", contains("content.a", `"x"`), event(t, "m.room.message", bob, `{"a":"x"}`), Context{}, false},
		{"contains integer", contains("content.a", `2`), event(t, "m.room.message", bob, `{"a":[1,2]}`), Context{}, true},
		// contains_display_name.
		{"display name", uapi.PushCondition{Kind: KindContainsDisplayName}, event(t, "m.room.message", bob, msg("hey Alice Smith, look")), Context{DisplayName: "Alice Smith"}, true},
		{"display name is a word", uapi.PushCondition{Kind: KindContainsDisplayName}, event(t, "m.room.message", bob, msg("Malice")), Context{DisplayName: "Alice"}, false},
		{"display name with regexp characters", uapi.PushCondition{Kind: KindContainsDisplayName}, event(t, "m.room.message", bob, msg("hi a.b (c)!")), Context{DisplayName: "a.b (c)"}, true},
		{"no display name", uapi.PushCondition{Kind: KindContainsDisplayName}, event(t, "m.room.message", bob, msg("hi")), Context{}, false},
		// room_member_count.
		{"count bare", count("2"), event(t, "m.room.message", bob, msg("x")), Context{MemberCount: 2}, true},
		{"count ==", count("==2"), event(t, "m.room.message", bob, msg("x")), Context{MemberCount: 3}, false},
		{"count <", count("<3"), event(t, "m.room.message", bob, msg("x")), Context{MemberCount: 2}, true},
		{"count >", count(">3"), event(t, "m.room.message", bob, msg("x")), Context{MemberCount: 3}, false},
		{"count >=", count(">=3"), event(t, "m.room.message", bob, msg("x")), Context{MemberCount: 3}, true},
		{"count <=", count("<=1"), event(t, "m.room.message", bob, msg("x")), Context{MemberCount: 2}, false},
		{"count malformed", count("two"), event(t, "m.room.message", bob, msg("x")), Context{MemberCount: 2}, false},
		// sender_notification_permission.
		{"permission", uapi.PushCondition{Kind: KindSenderNotificationPermission, Key: "room"}, event(t, "m.room.message", bob, msg("x")), Context{SenderMayNotify: permitted}, true},
		{"permission other key", uapi.PushCondition{Kind: KindSenderNotificationPermission, Key: "other"}, event(t, "m.room.message", bob, msg("x")), Context{SenderMayNotify: permitted}, false},
		{"permission unknown", uapi.PushCondition{Kind: KindSenderNotificationPermission, Key: "room"}, event(t, "m.room.message", bob, msg("x")), Context{}, false},
		// Unknown (and legacy device) conditions never match.
		{"unknown kind", uapi.PushCondition{Kind: "org.example.future"}, event(t, "m.room.message", bob, msg("x")), Context{}, false},
		{"device", uapi.PushCondition{Kind: "device", Key: "profile_tag"}, event(t, "m.room.message", bob, msg("x")), Context{}, false},
	}
	e := NewEvaluator()
	notify := []uapi.PushAction{{Action: "notify"}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs := &uapi.PushRuleset{Override: []uapi.PushRule{{RuleID: "r", Enabled: true, Actions: notify, Conditions: []uapi.PushCondition{tt.cond}}}}
			got := e.Evaluate(rs, tt.ev, &tt.ctx) != nil
			if got != tt.matches {
				t.Errorf("matches = %v, want %v", got, tt.matches)
			}
		})
	}
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// TestDefaultRules evaluates typical events against the default rules.
func TestDefaultRules(t *testing.T) {
	bob := "@bob:example.org"
	text := func(body string) string { return `{"msgtype":"m.text","body":` + mustJSON(body) + `}` }
	two := Context{DisplayName: "Alice", MemberCount: 2}
	many := Context{DisplayName: "Alice", MemberCount: 10, SenderMayNotify: func(string) bool { return true }}
	powerless := Context{DisplayName: "Alice", MemberCount: 10, SenderMayNotify: func(string) bool { return false }}
	tests := []struct {
		name      string
		ev        *Event
		ctx       Context
		rule      string
		notify    bool
		highlight bool
	}{
		{"message in a 1:1 room", event(t, "m.room.message", bob, text("hello")), two, RoomOneToOne, true, false},
		{"message in a group", event(t, "m.room.message", bob, text("hello")), many, Message, true, false},
		{"notice", event(t, "m.room.message", bob, `{"msgtype":"m.notice","body":"bot"}`), two, SuppressNotices, false, false},
		{"invite for me", event(t, "m.room.member", bob, `{"membership":"invite"}`, "state_key", mustJSON(alice)), many, InviteForMe, true, false},
		{"invite for another", event(t, "m.room.member", bob, `{"membership":"invite"}`, "state_key", `"@carol:x"`), many, MemberEvent, false, false},
		{"join", event(t, "m.room.member", bob, `{"membership":"join"}`, "state_key", mustJSON(bob)), two, MemberEvent, false, false},
		{"intentional mention", event(t, "m.room.message", bob, `{"msgtype":"m.text","body":"hi","m.mentions":{"user_ids":["`+alice+`"]}}`), many, IsUserMention, true, true},
		{"display name in body", event(t, "m.room.message", bob, text("hi Alice")), many, ContainsDisplayName, true, true},
		{"display name with m.mentions elsewhere", event(t, "m.room.message", bob, `{"msgtype":"m.text","body":"hi Alice","m.mentions":{}}`), many, Message, true, false},
		{"localpart in body", event(t, "m.room.message", bob, text("ping @alice:example.org")), Context{MemberCount: 10}, ContainsUserName, true, true},
		{"room mention", event(t, "m.room.message", bob, `{"msgtype":"m.text","body":"all","m.mentions":{"room":true}}`), many, IsRoomMention, true, true},
		{"room mention without power", event(t, "m.room.message", bob, `{"msgtype":"m.text","body":"all","m.mentions":{"room":true}}`), powerless, Message, true, false},
		{"legacy @room", event(t, "m.room.message", bob, text("@room wake up")), many, RoomNotif, true, true},
		{"tombstone", event(t, "m.room.tombstone", bob, `{"body":"gone","replacement_room":"!n:x"}`, "state_key", `""`), many, Tombstone, true, true},
		{"reaction", event(t, "m.reaction", bob, `{"m.relates_to":{"rel_type":"m.annotation","event_id":"$e","key":"👍"}}`), two, Reaction, false, false},
		{"server ACL", event(t, "m.room.server_acl", bob, `{"allow":["*"]}`, "state_key", `""`), two, ServerACL, false, false},
		{"edit", event(t, "m.room.message", bob, `{"msgtype":"m.text","body":"* x","m.relates_to":{"rel_type":"m.replace","event_id":"$e"}}`), two, SuppressEdits, false, false},
		{"call", event(t, "m.call.invite", bob, `{"call_id":"c"}`), many, Call, true, false},
		{"encrypted 1:1", event(t, "m.room.encrypted", bob, `{"algorithm":"x"}`), two, EncryptedRoomOneToOne, true, false},
		{"encrypted group", event(t, "m.room.encrypted", bob, `{"algorithm":"x"}`), many, Encrypted, true, false},
		{"topic", event(t, "m.room.topic", bob, `{"topic":"t"}`, "state_key", `""`), two, "", false, false},
	}
	e := NewEvaluator()
	rs := Defaults(alice)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := e.Evaluate(rs, tt.ev, &tt.ctx)
			id := ""
			if r != nil {
				id = r.RuleID
			}
			if id != tt.rule {
				t.Fatalf("rule %q, want %q", id, tt.rule)
			}
			a := Summarise(r)
			if a.Notify != tt.notify || a.Highlight != tt.highlight {
				t.Errorf("notify %v highlight %v, want %v %v", a.Notify, a.Highlight, tt.notify, tt.highlight)
			}
		})
	}

	// The master rule, once enabled, silences everything.
	muted := Effective(alice, Defaults(alice))
	muted.Override[0].Enabled = true
	if r := e.Evaluate(muted, event(t, "m.room.message", bob, text("hello Alice")), &many); r == nil || r.RuleID != Master || Summarise(r).Notify {
		t.Errorf("master: %+v", r)
	}
	// Room and sender rules match on their IDs.
	own := Effective(alice, &uapi.PushRuleset{
		Room:   []uapi.PushRule{{RuleID: "!r:example.org", Enabled: true, Actions: []uapi.PushAction{{Action: "dont_notify"}}}},
		Sender: []uapi.PushRule{{RuleID: bob, Enabled: true, Actions: []uapi.PushAction{{Action: "notify"}}}},
	})
	if r := e.Evaluate(own, event(t, "m.room.message", bob, text("hello")), &many); r == nil || r.RuleID != "!r:example.org" || Summarise(r).Notify {
		t.Errorf("room rule: %+v", r)
	}
	// ... but content rules (the user name) come first.
	if r := e.Evaluate(own, event(t, "m.room.message", bob, text("hello alice")), &many); r == nil || r.RuleID != ContainsDisplayName {
		t.Errorf("mention in a muted room: %+v", r)
	}
}

func TestNotificationPermitted(t *testing.T) {
	pl := json.RawMessage(`{"users":{"@mod:x":50,"@str:x":"60"},"users_default":0,"notifications":{"room":50}}`)
	tests := []struct {
		pl         json.RawMessage
		sender     string
		privileged bool
		want       bool
	}{
		{pl, "@mod:x", false, true},
		{pl, "@str:x", false, true},
		{pl, "@nobody:x", false, false},
		{pl, "@nobody:x", true, true},
		{json.RawMessage(`{"users_default":50}`), "@a:x", false, true},
		{json.RawMessage(`{"notifications":{"room":0}}`), "@a:x", false, true},
		{nil, "@a:x", false, false},
	}
	for i, tt := range tests {
		if got := NotificationPermitted(tt.pl, tt.sender, "room", tt.privileged); got != tt.want {
			t.Errorf("%d: got %v, want %v", i, got, tt.want)
		}
	}
}

func BenchmarkEvaluateDefaults(b *testing.B) {
	e := NewEvaluator()
	rs := Defaults(alice)
	ev, err := NewEvent("!r:example.org", []byte(`{"type":"m.room.message","sender":"@bob:x","content":{"msgtype":"m.text","body":"just a message in a big room"}}`))
	if err != nil {
		b.Fatal(err)
	}
	c := Context{DisplayName: "Alice", MemberCount: 100}
	b.ReportAllocs()
	for b.Loop() {
		e.Evaluate(rs, ev, &c)
	}
}
