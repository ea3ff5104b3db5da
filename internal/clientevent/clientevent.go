// Package clientevent turns stored event JSON into events as the
// Client-Server API shows them (ClientEvent and ClientEventWithoutRoomID).
package clientevent

import (
	"encoding/json"

	"github.com/tidwall/gjson"
)

// Event is an event in client format.
type Event struct {
	Content        json.RawMessage `json:"content"`
	EventID        string          `json:"event_id"`
	OriginServerTS int64           `json:"origin_server_ts"`
	RoomID         string          `json:"room_id,omitempty"`
	Sender         string          `json:"sender"`
	StateKey       *string         `json:"state_key,omitempty"`
	Type           string          `json:"type"`
	Redacts        string          `json:"redacts,omitempty"`
	Unsigned       *Unsigned       `json:"unsigned,omitempty"`

	// The PDU's own fields, set only in the federation format a /sync
	// filter may ask for (event_format: federation; see WithPDUFields).
	AuthEvents json.RawMessage `json:"auth_events,omitempty"`
	PrevEvents json.RawMessage `json:"prev_events,omitempty"`
	Depth      *int64          `json:"depth,omitempty"`
	Hashes     json.RawMessage `json:"hashes,omitempty"`
	Signatures json.RawMessage `json:"signatures,omitempty"`
	Origin     string          `json:"origin,omitempty"`
}

// WithPDUFields adds to e the fields of its PDU js that the client format
// leaves out, making it the event in federation format (with event_id and
// unsigned, as Synapse gives it).
func (e *Event) WithPDUFields(js string) {
	r := gjson.GetMany(js, "auth_events", "prev_events", "depth", "hashes", "signatures", "origin", "room_id")
	e.AuthEvents = rawOrNil(r[0])
	e.PrevEvents = rawOrNil(r[1])
	if r[2].Exists() {
		d := r[2].Int()
		e.Depth = &d
	}
	e.Hashes = rawOrNil(r[3])
	e.Signatures = rawOrNil(r[4])
	e.Origin = r[5].String()
	if r[6].Exists() {
		e.RoomID = r[6].String()
	}
}

func rawOrNil(r gjson.Result) json.RawMessage {
	if !r.Exists() {
		return nil
	}
	return json.RawMessage(r.Raw)
}

// Unsigned is the unsigned data the server adds to an event.
type Unsigned struct {
	Age             *int64          `json:"age,omitempty"`
	TransactionID   string          `json:"transaction_id,omitempty"`
	PrevContent     json.RawMessage `json:"prev_content,omitempty"`
	PrevSender      string          `json:"prev_sender,omitempty"`
	ReplacesState   string          `json:"replaces_state,omitempty"`
	RedactedBecause json.RawMessage `json:"redacted_because,omitempty"`
	// RedactedBy is the ID of the redaction, as Synapse gives it beside
	// redacted_because (clients and sytest read it).
	RedactedBy string `json:"redacted_by,omitempty"`
	// Membership is the requesting user's membership at the event, the
	// event's own change included (spec v1.11, MSC4115).
	Membership string `json:"membership,omitempty"`
	// Relations is the event's bundled aggregations (spec:
	// "Aggregations of child events").
	Relations *Relations `json:"m.relations,omitempty"`
}

// Relations is unsigned.m.relations: the aggregations of an event's
// children, by rel_type.
type Relations struct {
	Replace   *Event           `json:"m.replace,omitempty"`
	Thread    *ThreadSummary   `json:"m.thread,omitempty"`
	Reference *ReferenceChunks `json:"m.reference,omitempty"`
}

// ThreadSummary is the m.thread aggregation of a thread root.
type ThreadSummary struct {
	LatestEvent             *Event `json:"latest_event"`
	Count                   int    `json:"count"`
	CurrentUserParticipated bool   `json:"current_user_participated"`
}

// ReferenceChunks is the m.reference aggregation: the referencing events.
type ReferenceChunks struct {
	Chunk []EventRef `json:"chunk"`
}

// EventRef names an event in an m.reference aggregation.
type EventRef struct {
	EventID string `json:"event_id"`
}

// FromJSON formats event JSON (a PDU) whose ID is eventID. roomID is set
// in the result when non-empty (v12 create events carry no room_id).
func FromJSON(js, eventID, roomID string) Event {
	r := gjson.GetMany(js, "content", "origin_server_ts", "sender", "type", "state_key", "redacts")
	ev := Event{
		Content:        json.RawMessage(r[0].Raw),
		EventID:        eventID,
		OriginServerTS: r[1].Int(),
		Sender:         r[2].String(),
		Type:           r[3].String(),
		RoomID:         roomID,
	}
	if len(ev.Content) == 0 {
		ev.Content = json.RawMessage("{}")
	}
	if r[4].Exists() {
		sk := r[4].String()
		ev.StateKey = &sk
	}
	if r[5].Exists() {
		ev.Redacts = r[5].String()
	} else if ev.Type == "m.room.redaction" {
		// From room v11 the target is in the content; clients written
		// against older versions of the spec read it at the top level.
		ev.Redacts = gjson.Get(r[0].Raw, "redacts").String()
	}
	return ev
}

// SetAge records the event's age at nowMS in its unsigned data.
func (e *Event) SetAge(nowMS int64) {
	if e.OriginServerTS <= 0 {
		return
	}
	if e.Unsigned == nil {
		e.Unsigned = &Unsigned{}
	}
	age := max(nowMS-e.OriginServerTS, 0)
	e.Unsigned.Age = &age
}
