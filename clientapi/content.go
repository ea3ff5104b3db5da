package clientapi

import (
	"encoding/json"

	gmsl "github.com/matrix-org/gomatrixserverlib"

	"myelin/internal/mxhttp"
	"myelin/internal/mxid"
	rsapi "myelin/roomserver/api"
)

const (
	// maxEventBytes is the spec's limit on a whole event, in the
	// federation format as canonical JSON, signatures included
	// (client-server API, "Size limits").
	maxEventBytes = 65536

	// minEventOverhead is less than what building an event adds to its
	// content, sender and type: the other keys, the content hash (43
	// bytes) and one signature (86 bytes) come to about 285 bytes before
	// the room ID, prev_events, auth_events and the server's name are
	// counted. checkEvent's estimate stays a lower bound, so that it never
	// refuses an event that would fit; the roomserver, which knows the
	// final size, refuses the rest.
	minEventOverhead = 256

	// maxInputBytes bounds the events of one request (a /createRoom with a
	// long initial_state) well under the 8 MiB the embedded bus carries in
	// one message.
	maxInputBytes = 4 << 20
)

// checkEvent refuses a proto-event the spec's size limits rule out before
// it goes to the roomserver: content that is not a JSON object, that
// cannot fit in a 64 KiB event once built, or a type or state key over 255
// bytes (Synapse answers all of these M_TOO_LARGE).
func checkEvent(p *rsapi.ProtoEvent) error {
	if len(p.Type) > mxid.MaxLen {
		return mxhttp.New("M_TOO_LARGE", "event type is longer than %d bytes", mxid.MaxLen)
	}
	if p.StateKey != nil && len(*p.StateKey) > mxid.MaxLen {
		return mxhttp.New("M_TOO_LARGE", "state key is longer than %d bytes", mxid.MaxLen)
	}
	c := mxhttp.TrimJSONSpace(p.Content)
	if len(c) == 0 || c[0] != '{' || !json.Valid(c) {
		return mxhttp.BadJSON("content must be a JSON object")
	}
	fixed := len(p.Sender) + len(p.Type) + minEventOverhead
	if p.StateKey != nil {
		fixed += len(`,"state_key":""`) + len(*p.StateKey)
	}
	if len(c)+fixed <= maxEventBytes {
		// Canonical JSON is never longer than the JSON it is made
		// from: the event may still be too large once built, which the
		// roomserver knows, but no cheaper check can tell.
		return nil
	}
	// What counts is the canonical form: it drops whitespace and turns
	// escapes such as \u00e9 into the UTF-8 they stand for, so a body
	// over the limit may still fit.
	canon, err := gmsl.CanonicalJSON(c)
	if err != nil {
		return mxhttp.BadJSON("content is not valid JSON")
	}
	if len(canon)+fixed > maxEventBytes {
		return mxhttp.New("M_TOO_LARGE", "the event would be larger than %d bytes", maxEventBytes)
	}
	return nil
}
