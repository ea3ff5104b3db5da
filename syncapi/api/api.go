// Package sapi holds the messages of the per-user streams syncapi owns:
// typing, receipts, presence and send-to-device. Whoever produces them (syncapi's own
// HTTP handlers, later federationapi for remote users) publishes them on
// the bus stream named beside each type; syncapi consumes them, gives
// each change its stream position and wakes /sync. Other components
// import only this package of syncapi.
package sapi

import "encoding/json"

// Presence states (spec: "Presence").
const (
	Online      = "online"
	Offline     = "offline"
	Unavailable = "unavailable"
)

// ValidPresence reports whether p is one of the presence states.
func ValidPresence(p string) bool {
	return p == Online || p == Offline || p == Unavailable
}

// TypingUpdate is a message on bus.OutputTyping: userID started (until
// ExpiresTS, in Unix milliseconds) or stopped typing in roomID.
type TypingUpdate struct {
	RoomID    string `json:"room_id"`
	UserID    string `json:"user_id"`
	Typing    bool   `json:"typing"`
	ExpiresTS int64  `json:"expires_ts,omitempty"`
}

// ReceiptUpdate is a message on bus.OutputReceipt: userID read roomID up
// to EventID. Type is m.read or m.read.private; ThreadID is empty for an
// unthreaded receipt.
type ReceiptUpdate struct {
	RoomID   string `json:"room_id"`
	UserID   string `json:"user_id"`
	Type     string `json:"type"`
	EventID  string `json:"event_id"`
	ThreadID string `json:"thread_id,omitempty"`
	TS       int64  `json:"ts"`
}

// PresenceUpdate is a message on bus.OutputPresence: userID's presence
// as of LastActiveTS (Unix milliseconds). StatusMsg replaces the status
// message unless KeepStatus is set (a /sync only says the user is
// around; PUT /presence sets the whole status).
type PresenceUpdate struct {
	UserID          string  `json:"user_id"`
	Presence        string  `json:"presence"`
	StatusMsg       *string `json:"status_msg,omitempty"`
	KeepStatus      bool    `json:"keep_status,omitempty"`
	LastActiveTS    int64   `json:"last_active_ts"`
	CurrentlyActive bool    `json:"currently_active"`
	// Destinations, when set, makes this the user's unchanged presence
	// sent again to these servers alone (they just came to share a room
	// with the user, spec: "Presence" over federation); syncapi ignores
	// such an update, it changes nothing here.
	Destinations []string `json:"destinations,omitempty"`
}

// SendToDevice is a message on bus.OutputSendToDevice: Sender's
// send-to-device messages of type Type, by recipient user ID and device
// ID ("*": all the user's devices). syncapi delivers those for local
// users, the federationapi sends the others to their servers (when Sender
// is local) as m.direct_to_device. MessageID is unique per sender, for
// the EDU.
type SendToDevice struct {
	Sender    string                                `json:"sender"`
	Type      string                                `json:"type"`
	MessageID string                                `json:"message_id"`
	Messages  map[string]map[string]json.RawMessage `json:"messages"`
}
