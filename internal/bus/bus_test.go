package bus

import (
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
)

func TestRoomSubject(t *testing.T) {
	long := "!" + strings.Repeat("a", 5000) + ":localhost"
	tests := []struct {
		name   string
		roomID string
	}{
		{"plain", "!abc:localhost"},
		{"dots and port", "!x.y.z:example.org:8448"},
		{"spaces and wildcards", "!a b*>\r\n:evil"},
		{"unicode", "!Ünïcødé:例え.jp"},
		{"5,000 characters", long},
		{"empty", ""},
	}
	seen := map[string]string{}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := RoomSubject(tc.roomID)
			if want := len(InputRoomEvent) + 1 + roomTokenLen; len(got) != want {
				t.Fatalf("RoomSubject is %d bytes, want %d: %q", len(got), want, got)
			}
			if err := checkSubject(got, false); err != nil {
				t.Fatal(err)
			}
			if again := RoomSubject(tc.roomID); again != got {
				t.Fatalf("not stable: %q then %q", got, again)
			}
			if other, dup := seen[got]; dup {
				t.Fatalf("%q and %q share subject %q", other, tc.roomID, got)
			}
			seen[got] = tc.roomID
		})
	}
}

func TestCheckSubject(t *testing.T) {
	tests := []struct {
		subject string
		wild    bool
		ok      bool
	}{
		{"OutputRoomEvent", false, true},
		{"InputRoomEvent.0123abcd", false, true},
		{"_INBOX.abcDEF123.*", true, true},
		{"InputRoomEvent.>", true, true},
		{"_INBOX.abc.*", false, false},
		{"a.>.b", true, false},
		{"a.b*", true, false},
		{"", false, false},
		{"a..b", false, false},
		{".a", false, false},
		{"a.", false, false},
		{"a b", false, false},
		{"a\r\nPUB x 1", false, false},
		{"!room:server", false, false},
		{strings.Repeat("a", maxSubject), false, true},
		{strings.Repeat("a", maxSubject+1), false, false},
		{"InputRoomEvent." + strings.Repeat("a", 5000), false, false},
	}
	for _, tc := range tests {
		name := tc.subject
		if len(name) > 40 {
			name = name[:40] + "..."
		}
		t.Run(name, func(t *testing.T) {
			err := checkSubject(tc.subject, tc.wild)
			if (err == nil) != tc.ok {
				t.Fatalf("checkSubject(%q, %v) = %v, want ok %v", tc.subject, tc.wild, err, tc.ok)
			}
		})
	}
}

func TestMsgID(t *testing.T) {
	tests := []struct {
		name, id string
		kept     bool
	}{
		{"event ID", "$Rqnc-F-dvnEYJTyHq_iKxU2bZ1CI92-kuZq3a5lr5Zg", true},
		{"request copy", "0123456789abcdef.2", true},
		{"with a space", "$a b", false},
		{"with a newline", "$a\r\nNats-Expected-Stream: x", false},
		{"unicode", "$ü", false},
		{"too long", "$" + strings.Repeat("a", maxMsgID), false},
		{"empty", "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := MsgID(tc.id)
			if (got == tc.id) != tc.kept {
				t.Fatalf("MsgID(%q) = %q, kept %v, want kept %v", tc.id, got, got == tc.id, tc.kept)
			}
			if !tc.kept && (len(got) > maxMsgID || !strings.HasPrefix(got, "sha256:")) {
				t.Fatalf("MsgID(%q) = %q: not a short digest", tc.id, got)
			}
		})
	}
}

// TestOutageLogs: one outage is logged when it happens, once more if it
// lasts, and when it ends, whatever the number of failed attempts.
func TestOutageLogs(t *testing.T) {
	log, hook := logtest.NewNullLogger()
	e := logrus.NewEntry(log)
	t0 := time.Unix(1000, 0)
	var o outage
	steps := []struct {
		name  string
		do    func()
		level logrus.Level // of the one line logged; 0: none
	}{
		{"lost", func() { o.lost(e, t0, errTest) }, logrus.WarnLevel},
		{"lost again while down", func() { o.lost(e, t0.Add(time.Second), errTest) }, 0},
		{"attempt fails", func() { o.failed(e, t0.Add(5*time.Second), errTest) }, 0},
		{"attempt fails after 30 s", func() { o.failed(e, t0.Add(31*time.Second), errTest) }, logrus.ErrorLevel},
		{"attempt fails later", func() { o.failed(e, t0.Add(90*time.Second), errTest) }, 0},
		{"healed", func() { o.healed(e, t0.Add(91*time.Second)) }, logrus.InfoLevel},
		{"healed while up", func() { o.healed(e, t0.Add(92*time.Second)) }, 0},
		{"first attempt fails", func() { o.failed(e, t0.Add(100*time.Second), errTest) }, logrus.WarnLevel},
	}
	for _, s := range steps {
		hook.Reset()
		s.do()
		entries := hook.AllEntries()
		switch {
		case s.level == 0 && len(entries) != 0:
			t.Fatalf("%s: logged %q, want nothing", s.name, entries[0].Message)
		case s.level != 0 && (len(entries) != 1 || entries[0].Level != s.level):
			t.Fatalf("%s: logged %d lines (%v), want one at %s", s.name, len(entries), entries, s.level)
		}
	}
}

type testError string

func (e testError) Error() string { return string(e) }

const errTest = testError("connection refused")
