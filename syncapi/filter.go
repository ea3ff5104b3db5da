package syncapi

import (
	"encoding/json"
	"strings"

	"myelin/internal/mxhttp"
	"myelin/internal/mxid"
)

// Filter is a client's sync filter (spec: "Filtering").
type Filter struct {
	EventFields []string    `json:"event_fields,omitempty"`
	EventFormat string      `json:"event_format,omitempty"`
	Presence    EventFilter `json:"presence"`
	AccountData EventFilter `json:"account_data"`
	Room        RoomFilter  `json:"room"`
}

// EventFilter selects events by type and sender.
type EventFilter struct {
	Limit      *int      `json:"limit,omitempty"` // nil: the default; 0 is a real limit
	Types      *[]string `json:"types,omitempty"`
	NotTypes   []string  `json:"not_types,omitempty"`
	Senders    *[]string `json:"senders,omitempty"`
	NotSenders []string  `json:"not_senders,omitempty"`
}

// RoomFilter selects rooms and what of them to send.
type RoomFilter struct {
	Rooms        *[]string       `json:"rooms,omitempty"`
	NotRooms     []string        `json:"not_rooms,omitempty"`
	IncludeLeave bool            `json:"include_leave,omitempty"`
	Ephemeral    RoomEventFilter `json:"ephemeral"`
	State        RoomEventFilter `json:"state"`
	Timeline     RoomEventFilter `json:"timeline"`
	AccountData  RoomEventFilter `json:"account_data"`
}

// RoomEventFilter is an EventFilter for room events.
type RoomEventFilter struct {
	EventFilter
	Rooms                   *[]string `json:"rooms,omitempty"`
	NotRooms                []string  `json:"not_rooms,omitempty"`
	LazyLoadMembers         bool      `json:"lazy_load_members,omitempty"`
	IncludeRedundantMembers bool      `json:"include_redundant_members,omitempty"`
	ContainsURL             *bool     `json:"contains_url,omitempty"`
	// UnreadThreadNotifications (on the timeline filter) asks for each
	// thread's unread counts apart from the main timeline's.
	UnreadThreadNotifications bool `json:"unread_thread_notifications,omitempty"`
}

// defaultTimelineLimit is the timeline length without a filter (as Synapse).
const defaultTimelineLimit = 10

// maxLimit caps any limit a client asks for.
const maxLimit = 1000

// Validate implements mxhttp.Validator.
func (f *Filter) Validate() error {
	if f.EventFormat != "" && f.EventFormat != "client" && f.EventFormat != "federation" {
		return mxhttp.BadJSON("event_format must be 'client' or 'federation'")
	}
	for _, ef := range []*EventFilter{&f.Presence, &f.AccountData} {
		if err := ef.validate(); err != nil {
			return err
		}
	}
	if err := checkIDs("rooms", f.Room.Rooms, f.Room.NotRooms, mxid.RoomID); err != nil {
		return err
	}
	for _, rf := range []*RoomEventFilter{&f.Room.Timeline, &f.Room.State, &f.Room.Ephemeral, &f.Room.AccountData} {
		if err := rf.Validate(); err != nil {
			return err
		}
	}
	return nil
}

// Validate implements mxhttp.Validator (a filter of /messages and
// /context is one of these).
func (f *RoomEventFilter) Validate() error {
	if err := f.EventFilter.validate(); err != nil {
		return err
	}
	return checkIDs("rooms", f.Rooms, f.NotRooms, mxid.RoomID)
}

// validate checks the limit and that senders are user IDs (spec:
// "Filtering"), as Synapse's filter schema does.
func (f *EventFilter) validate() error {
	if f.Limit != nil && *f.Limit < 0 {
		return mxhttp.BadJSON("limit must not be negative")
	}
	return checkIDs("senders", f.Senders, f.NotSenders, mxid.UserID)
}

// checkIDs checks the IDs of a filter's list and its not_ list.
func checkIDs(name string, list *[]string, notList []string, check func(string) error) error {
	if list != nil {
		for _, id := range *list {
			if err := mxhttp.CheckParam(name, id, check); err != nil {
				return err
			}
		}
	}
	for _, id := range notList {
		if err := mxhttp.CheckParam("not_"+name, id, check); err != nil {
			return err
		}
	}
	return nil
}

// parseFilter decodes a filter given inline as JSON.
func parseFilter(raw []byte) (*Filter, error) {
	var f Filter
	if err := mxhttp.DecodeJSON(raw, &f); err != nil {
		return nil, err
	}
	return &f, nil
}

func (f *Filter) timelineLimit() int {
	if f.Room.Timeline.Limit == nil {
		return defaultTimelineLimit
	}
	return min(*f.Room.Timeline.Limit, maxLimit)
}

// matchType matches an event type against a pattern where '*' matches any
// run of characters.
func matchType(pattern, s string) bool {
	if !strings.Contains(pattern, "*") {
		return pattern == s
	}
	parts := strings.Split(pattern, "*")
	if !strings.HasPrefix(s, parts[0]) {
		return false
	}
	s = s[len(parts[0]):]
	for i, p := range parts[1:] {
		if i == len(parts)-2 {
			return strings.HasSuffix(s, p)
		}
		j := strings.Index(s, p)
		if j < 0 {
			return false
		}
		s = s[j+len(p):]
	}
	return true
}

func anyMatch(patterns []string, s string) bool {
	for _, p := range patterns {
		if matchType(p, s) {
			return true
		}
	}
	return false
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Allows reports whether an event of type evType from sender passes.
func (f *EventFilter) Allows(evType, sender string) bool {
	if anyMatch(f.NotTypes, evType) || contains(f.NotSenders, sender) {
		return false
	}
	if f.Types != nil && !anyMatch(*f.Types, evType) {
		return false
	}
	if f.Senders != nil && !contains(*f.Senders, sender) {
		return false
	}
	return true
}

// AllowsType reports whether the filter's types admit evType, whoever
// sent it (for events without a sender, such as typing and receipts).
func (f *EventFilter) AllowsType(evType string) bool {
	return !anyMatch(f.NotTypes, evType) && (f.Types == nil || anyMatch(*f.Types, evType))
}

// AllowsEvent applies the room-event filter, including contains_url.
func (f *RoomEventFilter) AllowsEvent(evType, sender string, content json.RawMessage) bool {
	if !f.Allows(evType, sender) {
		return false
	}
	if f.ContainsURL != nil {
		var c struct {
			URL *string `json:"url"`
		}
		_ = json.Unmarshal(content, &c)
		if (c.URL != nil) != *f.ContainsURL {
			return false
		}
	}
	return true
}

// AllowsRoom applies the room lists of the room filter and of one of its
// event filters.
func (f *RoomFilter) AllowsRoom(roomID string, ef *RoomEventFilter) bool {
	if contains(f.NotRooms, roomID) || (f.Rooms != nil && !contains(*f.Rooms, roomID)) {
		return false
	}
	if ef != nil && (contains(ef.NotRooms, roomID) || (ef.Rooms != nil && !contains(*ef.Rooms, roomID))) {
		return false
	}
	return true
}
