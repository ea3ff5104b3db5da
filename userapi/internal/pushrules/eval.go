package pushrules

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"

	uapi "myelin/userapi/api"
)

// Event is an event prepared once for evaluation against the rules of
// every user it may notify.
type Event struct {
	RoomID string
	Sender string
	// flat maps dotted keys (with '.' and '\' in property names escaped by
	// '\', spec: "Conditions", dotted keys) to the event's values: strings,
	// int64, bools, nil, and arrays ([]any of those).
	flat map[string]any
	// hasMentions: the content has m.mentions, which turns the legacy
	// mention rules off (MSC3952).
	hasMentions bool
	// body is content.body and lowerBody its lower case, for the word
	// searches of content rules and display names.
	body, lowerBody string
	hasBody         bool
}

// NewEvent prepares an event (PDU or client-format JSON) of roomID.
func NewEvent(roomID string, eventJSON []byte) (*Event, error) {
	d := json.NewDecoder(bytes.NewReader(eventJSON))
	d.UseNumber()
	var obj map[string]any
	if err := d.Decode(&obj); err != nil {
		return nil, fmt.Errorf("decode event: %w", err)
	}
	ev := &Event{RoomID: roomID, flat: map[string]any{}}
	flatten(ev.flat, "", obj)
	if _, ok := ev.flat["room_id"]; !ok {
		ev.flat["room_id"] = roomID
	}
	ev.Sender, _ = ev.flat["sender"].(string)
	if ev.body, ev.hasBody = ev.flat["content.body"].(string); ev.hasBody {
		ev.lowerBody = strings.ToLower(ev.body)
	}
	if content, ok := obj["content"].(map[string]any); ok {
		_, ev.hasMentions = content["m.mentions"]
	}
	return ev, nil
}

// String returns the string at key, "" if there is none.
func (e *Event) String(key string) string {
	s, _ := e.flat[key].(string)
	return s
}

func escapeKey(k string) string {
	if !strings.ContainsAny(k, `.\`) {
		return k
	}
	return strings.NewReplacer(`\`, `\\`, `.`, `\.`).Replace(k)
}

func flatten(out map[string]any, prefix string, obj map[string]any) {
	for k, v := range obj {
		key := escapeKey(k)
		if prefix != "" {
			key = prefix + "." + key
		}
		switch x := v.(type) {
		case map[string]any:
			flatten(out, key, x)
		case []any:
			vals := make([]any, 0, len(x))
			for _, el := range x {
				if n, ok := normalise(el); ok {
					vals = append(vals, n)
				}
			}
			out[key] = vals
		default:
			if n, ok := normalise(x); ok {
				out[key] = n
			}
		}
	}
}

// Context is what a rule may ask about the room and the user whose rules
// are evaluated.
type Context struct {
	// DisplayName is the user's display name in the room.
	DisplayName string
	// MemberCount is the number of joined members of the room.
	MemberCount int
	// SenderMayNotify reports whether the event's sender has the power
	// level for notifications of kind key ("room"); nil means no.
	SenderMayNotify func(key string) bool
}

// Evaluator evaluates events against rulesets. It caches compiled glob
// patterns; it is safe for concurrent use.
type Evaluator struct {
	mu    sync.Mutex
	globs map[globKey]*regexp.Regexp
}

type globKey struct {
	pattern string
	word    bool // matched against the words of a text
}

// maxCachedGlobs bounds the pattern cache; past it the cache starts over.
const maxCachedGlobs = 4096

// NewEvaluator returns an evaluator with an empty pattern cache.
func NewEvaluator() *Evaluator {
	return &Evaluator{globs: map[globKey]*regexp.Regexp{}}
}

// Evaluate returns the first enabled rule of rs that matches ev, in the
// order of kinds and then of rules, or nil when none does.
func (e *Evaluator) Evaluate(rs *uapi.PushRuleset, ev *Event, c *Context) *uapi.PushRule {
	for _, k := range uapi.PushRuleKinds {
		rules := *rs.Kind(k)
		for i := range rules {
			r := &rules[i]
			if !r.Enabled || (r.Default && ev.hasMentions && legacyMention[r.RuleID]) {
				continue
			}
			if e.ruleMatches(k, r, ev, c) {
				return r
			}
		}
	}
	return nil
}

func (e *Evaluator) ruleMatches(k uapi.PushRuleKind, r *uapi.PushRule, ev *Event, c *Context) bool {
	switch k {
	case uapi.PushRoom:
		return ev.RoomID == r.RuleID
	case uapi.PushSender:
		return ev.Sender == r.RuleID
	case uapi.PushContent:
		if r.Pattern == nil {
			return false
		}
		return ev.hasBody && e.findWords(ev, *r.Pattern)
	}
	for i := range r.Conditions {
		if !e.conditionMatches(&r.Conditions[i], ev, c) {
			return false
		}
	}
	return true
}

func (e *Evaluator) conditionMatches(cond *uapi.PushCondition, ev *Event, c *Context) bool {
	switch cond.Kind {
	case KindEventMatch:
		// Only string values match (spec v1.7, MSC3758 and MSC3966 made
		// non-strings the business of event_property_is).
		v, ok := ev.flat[cond.Key].(string)
		if !ok || cond.Pattern == nil {
			return false
		}
		// The body is searched for the pattern as a word, as content
		// rules do; other values must match as a whole.
		if cond.Key == "content.body" {
			return e.findWords(ev, *cond.Pattern)
		}
		if !strings.ContainsAny(*cond.Pattern, "*?") {
			return strings.EqualFold(v, *cond.Pattern)
		}
		return e.glob(*cond.Pattern, false).MatchString(v)
	case KindEventPropertyIs:
		want, ok := scalar(cond.Value)
		v, exists := ev.flat[cond.Key]
		if !ok || !exists {
			return false
		}
		if _, isArray := v.([]any); isArray {
			return false
		}
		return v == want
	case KindEventPropertyContains:
		want, ok := scalar(cond.Value)
		arr, isArray := ev.flat[cond.Key].([]any)
		if !ok || !isArray {
			return false
		}
		for _, el := range arr {
			if el == want {
				return true
			}
		}
		return false
	case KindContainsDisplayName:
		return ev.hasBody && c.DisplayName != "" && containsWord(ev.lowerBody, strings.ToLower(c.DisplayName))
	case KindRoomMemberCount:
		op, n, ok := parseMemberCount(cond.Is)
		if !ok {
			return false
		}
		return compareCount(op, c.MemberCount, n)
	case KindSenderNotificationPermission:
		return c.SenderMayNotify != nil && c.SenderMayNotify(cond.Key)
	}
	return false
}

// glob returns the compiled form of a glob pattern ('*' any run of
// characters, '?' one), matched case-insensitively against a whole value
// or, with word set, against any run of words in it.
func (e *Evaluator) glob(pattern string, word bool) *regexp.Regexp {
	return e.compile(globKey{pattern, word}, func() string {
		var b strings.Builder
		for _, r := range pattern {
			switch r {
			case '*':
				b.WriteString(".*?")
			case '?':
				b.WriteString(".")
			default:
				b.WriteString(regexp.QuoteMeta(string(r)))
			}
		}
		if word {
			return wordExpr(b.String())
		}
		return `(?is)\A` + b.String() + `\z`
	})
}

// wordExpr matches expr bounded by non-word characters or the ends of the
// text (Go's \b knows only ASCII).
func wordExpr(expr string) string {
	return `(?is)(?:\A|[^\p{L}\p{N}_])` + expr + `(?:[^\p{L}\p{N}_]|\z)`
}

// findWords reports whether the glob pattern matches a run of words of
// the event's body.
func (e *Evaluator) findWords(ev *Event, pattern string) bool {
	if !strings.ContainsAny(pattern, "*?") {
		// Most patterns (user names, keywords) are plain words: no
		// regexp needed.
		return containsWord(ev.lowerBody, strings.ToLower(pattern))
	}
	return e.glob(pattern, true).MatchString(ev.body)
}

// containsWord reports whether word occurs in text bounded by non-word
// characters or the ends of text; both are lower case.
func containsWord(text, word string) bool {
	if word == "" {
		return false
	}
	for i := 0; i <= len(text)-len(word); {
		j := strings.Index(text[i:], word)
		if j < 0 {
			return false
		}
		start, end := i+j, i+j+len(word)
		before, _ := utf8.DecodeLastRuneInString(text[:start])
		after, _ := utf8.DecodeRuneInString(text[end:])
		if (start == 0 || !isWordRune(before)) && (end == len(text) || !isWordRune(after)) {
			return true
		}
		_, size := utf8.DecodeRuneInString(text[start:])
		i = start + size
	}
	return false
}

func isWordRune(r rune) bool { return r == '_' || unicode.IsLetter(r) || unicode.IsNumber(r) }

// compile returns the cached regexp of key, compiling expr() if needed.
func (e *Evaluator) compile(key globKey, expr func() string) *regexp.Regexp {
	e.mu.Lock()
	defer e.mu.Unlock()
	if re, ok := e.globs[key]; ok {
		return re
	}
	re, err := regexp.Compile(expr())
	if err != nil {
		re = regexp.MustCompile(`\A\z.`) // matches nothing
	}
	if len(e.globs) >= maxCachedGlobs {
		clear(e.globs)
	}
	e.globs[key] = re
	return re
}

// parseMemberCount reads a room_member_count "is": an optional operator
// (==, <, >, <=, >=) and a non-negative integer.
func parseMemberCount(is string) (op string, n int, ok bool) {
	for _, p := range []string{"==", "<=", ">=", "<", ">"} {
		if strings.HasPrefix(is, p) {
			op, is = p, is[len(p):]
			break
		}
	}
	if op == "" {
		op = "=="
	}
	n, err := strconv.Atoi(is)
	if err != nil || n < 0 || is == "" || is[0] == '+' || is[0] == '-' {
		return "", 0, false
	}
	return op, n, true
}

func compareCount(op string, have, want int) bool {
	switch op {
	case "<":
		return have < want
	case ">":
		return have > want
	case "<=":
		return have <= want
	case ">=":
		return have >= want
	}
	return have == want
}

// Actions summarises the actions of the rule that matched an event.
type Actions struct {
	Notify    bool
	Highlight bool
	// Tweaks are the set_tweak actions by name, for the push gateway.
	Tweaks map[string]json.RawMessage
}

// Summarise reads a rule's actions; a nil rule notifies nobody.
func Summarise(r *uapi.PushRule) Actions {
	var a Actions
	if r == nil {
		return a
	}
	for _, act := range r.Actions {
		switch {
		case act.Action == uapi.ActionNotify || act.Action == uapi.ActionCoalesce:
			a.Notify = true
		case act.Tweak != "":
			if a.Tweaks == nil {
				a.Tweaks = map[string]json.RawMessage{}
			}
			v := act.Value
			if v == nil && act.Tweak == "highlight" {
				v = json.RawMessage("true")
			}
			a.Tweaks[act.Tweak] = v
			if act.Tweak == "highlight" {
				// A highlight tweak without a value means true.
				a.Highlight = act.Value == nil || bytes.Equal(bytes.TrimSpace(act.Value), []byte("true"))
			}
		}
	}
	return a
}

// NotificationPermitted reports whether sender may send notifications of
// kind key in a room with these power levels (content of
// m.room.power_levels, nil if there are none): its level (users, else
// users_default) must reach notifications.<key> (default 50). privileged
// marks a room creator of a room version where creators outrank everyone.
func NotificationPermitted(powerLevels json.RawMessage, sender, key string, privileged bool) bool {
	if privileged {
		return true
	}
	var pl struct {
		Users         map[string]json.Number `json:"users"`
		UsersDefault  json.Number            `json:"users_default"`
		Notifications map[string]json.Number `json:"notifications"`
	}
	if len(powerLevels) > 0 {
		d := json.NewDecoder(bytes.NewReader(powerLevels))
		d.UseNumber()
		if d.Decode(&pl) != nil {
			return false
		}
	}
	level := numberOr(pl.UsersDefault, 0)
	if n, ok := pl.Users[sender]; ok {
		level = numberOr(n, level)
	}
	return level >= numberOr(pl.Notifications[key], 50)
}

// numberOr reads a power level: an integer, or a string holding one (old
// room versions allowed those); def when absent or malformed.
func numberOr(n json.Number, def int64) int64 {
	if n == "" {
		return def
	}
	if v, err := n.Int64(); err == nil {
		return v
	}
	if f, err := strconv.ParseFloat(string(n), 64); err == nil {
		return int64(f)
	}
	return def
}
