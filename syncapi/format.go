package syncapi

import (
	"encoding/json"
	"time"

	"github.com/tidwall/gjson"

	"myelin/internal/clientevent"
	"myelin/syncapi/storage"
)

// ClientEvent is an event in client format.
type ClientEvent = clientevent.Event

// Unsigned is an event's unsigned data.
type Unsigned = clientevent.Unsigned

// formatter turns stored events into client events for one device.
type formatter struct {
	sessionID  int64
	now        time.Time
	withRoomID bool
	// federation gives events in federation format (a filter's
	// event_format), room_id and the PDU's fields included.
	federation bool
}

func (f formatter) base(js, eventID, roomID string) ClientEvent {
	if !f.withRoomID && !f.federation {
		roomID = ""
	}
	ce := clientevent.FromJSON(js, eventID, roomID)
	if f.federation {
		ce.WithPDUFields(js)
	}
	return ce
}

// event formats a timeline row.
func (f formatter) event(e *storage.Event) ClientEvent {
	ce := f.base(e.JSON, e.EventID, e.RoomID)
	ce.SetAge(f.now.UnixMilli())
	if ce.Unsigned == nil {
		ce.Unsigned = &Unsigned{}
	}
	u := ce.Unsigned
	if e.TxnID != "" && e.SessionID == f.sessionID && f.sessionID != 0 {
		u.TransactionID = e.TxnID
	}
	if e.PrevContent != "" {
		u.PrevContent = json.RawMessage(e.PrevContent)
		u.PrevSender = e.PrevSender
		u.ReplacesState = e.PrevEventID
	}
	if e.RedactedBecause != "" {
		u.RedactedBecause = json.RawMessage(e.RedactedBecause)
		u.RedactedBy = gjson.Get(e.RedactedBecause, "event_id").String()
	}
	return ce
}

// state formats a current-state row.
func (f formatter) state(s *storage.StateEvent) ClientEvent {
	ce := f.base(s.JSON, s.EventID, s.RoomID)
	ce.SetAge(f.now.UnixMilli())
	return ce
}

// StrippedEvent is a state event in an invite's stripped state.
type StrippedEvent struct {
	Content  json.RawMessage `json:"content"`
	StateKey string          `json:"state_key"`
	Type     string          `json:"type"`
	Sender   string          `json:"sender"`
}

// inviteState returns the stripped state of an invite: the stripped state
// that came with it, and the invite event itself.
func inviteState(e *storage.Event) []json.RawMessage {
	var out []json.RawMessage
	if e.InviteState != "" {
		_ = json.Unmarshal([]byte(e.InviteState), &out)
	}
	r := gjson.GetMany(e.JSON, "content", "sender", "type", "state_key")
	self, _ := json.Marshal(StrippedEvent{Content: json.RawMessage(r[0].Raw), Sender: r[1].String(), Type: r[2].String(), StateKey: r[3].String()})
	return append(out, self)
}
