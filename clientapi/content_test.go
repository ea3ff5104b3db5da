package clientapi

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	gmsl "github.com/matrix-org/gomatrixserverlib"

	"myelin/internal/mxhttp"
	rsapi "myelin/roomserver/api"
)

func TestCheckEvent(t *testing.T) {
	sk := func(s string) *string { return &s }
	str := func(n int, s string) string { return strings.Repeat(s, n) }
	for _, tc := range []struct {
		name     string
		evType   string
		stateKey *string
		content  string
		want     string // errcode, "" to accept
	}{
		{"message", "m.room.message", nil, `{"msgtype":"m.text","body":"hi"}`, ""},
		{"empty object", "m.room.message", nil, `{}`, ""},
		{"spaces around", "m.room.message", nil, " {} \n", ""},
		{"state", "m.room.topic", sk(""), `{"topic":"t"}`, ""},
		{"not an object", "m.room.message", nil, `[1]`, "M_BAD_JSON"},
		{"not JSON", "m.room.message", nil, `{`, "M_BAD_JSON"},
		{"empty", "m.room.message", nil, ``, "M_BAD_JSON"},
		{"type 255 bytes", str(255, "t"), nil, `{}`, ""},
		{"type 256 bytes", str(256, "t"), nil, `{}`, "M_TOO_LARGE"},
		{"state key 256 bytes", "m.x", sk(str(256, "k")), `{}`, "M_TOO_LARGE"},
		{"70 KB string", "m.room.message", nil, `{"body":"` + str(70<<10, "x") + `"}`, "M_TOO_LARGE"},
		{"64 KiB content", "m.room.message", nil, `{"body":"` + str(65536, "x") + `"}`, "M_TOO_LARGE"},
		// 100 KB of escapes that are 33 KB of UTF-8: the event fits.
		{"escaped UTF-8 that fits", "m.room.message", nil, `{"body":"` + str(16<<10, `\u00e9`) + `"}`, ""},
		{"pretty-printed that fits", "m.room.message", nil, "{\n" + str(40000, " ") + `"body":"` + str(40000, "x") + `"}`, ""},
		{"escaped UTF-8 that does not", "m.room.message", nil, `{"body":"` + str(33<<10, `\u00e9`) + `"}`, "M_TOO_LARGE"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkEvent(&rsapi.ProtoEvent{Sender: "@alice:localhost", Type: tc.evType, StateKey: tc.stateKey, Content: json.RawMessage(tc.content)})
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || mxhttp.ToError(err).Code != tc.want {
				t.Fatalf("got %v, want %s", err, tc.want)
			}
		})
	}
}

// TestMinEventOverhead checks checkEvent's estimate is a lower bound: the
// smallest event gomatrixserverlib builds (no prev_events, no auth_events,
// short IDs) adds more than minEventOverhead to its content, sender and
// type, in every room version Myelin creates rooms in.
func TestMinEventOverhead(t *testing.T) {
	for _, ver := range []gmsl.RoomVersion{"1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12"} {
		size, err := builtSize(ver, []byte(`{}`))
		if err != nil {
			t.Fatalf("v%s: %v", ver, err)
		}
		over := size - len(`{}`) - len(testSender) - len(testType)
		if over < minEventOverhead {
			t.Errorf("v%s: an event adds %d bytes, less than minEventOverhead (%d)", ver, over, minEventOverhead)
		}
		t.Logf("v%s: the smallest event adds %d bytes", ver, over)
	}
}

const (
	testSender = "@a:b"
	testType   = "m.room.message"
)

var testKey = ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize))

// builtSize builds the smallest event with content in room version ver and
// returns its size as the spec counts it.
func builtSize(ver gmsl.RoomVersion, content []byte) (int, error) {
	impl, err := gmsl.GetRoomVersion(ver)
	if err != nil {
		return 0, err
	}
	roomID := "!r:b"
	if impl.DomainlessRoomIDs() {
		roomID = "!" + strings.Repeat("A", 43)
	}
	b := impl.NewEventBuilderFromProtoEvent(&gmsl.ProtoEvent{
		SenderID: testSender, RoomID: roomID, Type: testType,
		PrevEvents: []string{}, AuthEvents: []string{}, Depth: 1,
		Content: content,
	})
	pdu, err := b.Build(time.UnixMilli(0), "b", "ed25519:a", testKey)
	if err != nil {
		var ve gmsl.EventValidationError
		if errors.As(err, &ve) && ve.Code == gmsl.EventValidationTooLarge {
			return maxEventBytes + 1, nil
		}
		return 0, err
	}
	return len(pdu.JSON()), nil
}

// FuzzCheckEvent checks what checkEvent says of any content: what it
// accepts is a JSON object, and what it refuses as too large is too large
// once built, even as the smallest event of the least wordy room version,
// so that no event that would fit is ever refused.
func FuzzCheckEvent(f *testing.F) {
	for _, s := range []string{
		`{}`, `{"msgtype":"m.text","body":"hello"}`, `[]`, `{`, `"x"`, `{"a":1.5}`,
		`{"body":"\u00e9\ud83d\ude00\/"}`, `{"a":"\u0000"}`, " {\"a\" : [ 1 , 2 ] } ",
	} {
		f.Add([]byte(s), 0)
	}
	f.Fuzz(func(t *testing.T, content []byte, pad int) {
		// pad grows the content towards the limit, where the size check
		// decides: a string of that many bytes, escaped half the time.
		if pad != 0 && len(content) > 0 && content[0] == '{' && json.Valid(content) {
			n := (pad & 0xffff) + 60000
			filler := strings.Repeat("x", n)
			if pad < 0 {
				filler = strings.Repeat(`\u00e9`, n/6)
			}
			content = append([]byte(`{"pad":"`+filler+`",`), content[1:]...)
			if string(content[len(content)-2:]) == ",}" {
				content = append(content[:len(content)-2], '}')
			}
		}
		err := checkEvent(&rsapi.ProtoEvent{Sender: testSender, Type: testType, Content: content})
		if err == nil {
			var obj map[string]json.RawMessage
			if json.Unmarshal(content, &obj) != nil {
				t.Fatalf("accepted content that is not a JSON object: %.200q", content)
			}
			return
		}
		if mxhttp.ToError(err).Code != "M_TOO_LARGE" {
			return
		}
		// Version 5 enforces nothing of canonical JSON's number ranges:
		// it builds whatever JSON it is given.
		size, berr := builtSize("5", content)
		if berr != nil {
			t.Fatalf("refused as too large, but does not build: %v", berr)
		}
		if size <= maxEventBytes {
			t.Fatalf("refused as too large an event of %d bytes: %.200q", size, content)
		}
	})
}
