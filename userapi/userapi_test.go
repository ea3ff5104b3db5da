package userapi

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/sirupsen/logrus"

	"myelin/internal/bus"
	"myelin/internal/sqldb"
	"myelin/internal/sqldb/sqldbtest"
	"myelin/setup/config"
	uapi "myelin/userapi/api"
)

// testClock is a settable clock for last-seen tests.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func quietLog() *logrus.Entry {
	l := logrus.New()
	l.SetOutput(io.Discard)
	return logrus.NewEntry(l)
}

// newTestAPI opens a userapi on a fresh database at dbURL.
func newTestAPI(t testing.TB, dbURL string, b *bus.Bus) *UserAPI {
	t.Helper()
	ctx := context.Background()
	db, err := sqldb.Open(ctx, dbURL, sqldb.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	cfg := config.Defaults()
	cfg.ServerName = "test.local"
	cfg.Registration.BcryptCost = 4
	u, err := New(ctx, db, b, cfg, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func mustCreate(t testing.TB, u *UserAPI, localpart, password string) *uapi.Account {
	t.Helper()
	a, err := u.CreateAccount(context.Background(), uapi.CreateAccountRequest{Localpart: localpart, Password: password})
	if err != nil {
		t.Fatalf("create %s: %v", localpart, err)
	}
	return a
}

func mustLogin(t testing.TB, u *UserAPI, userID, deviceID string) (*uapi.Device, string) {
	t.Helper()
	dev, tok, err := u.CreateDevice(context.Background(), uapi.CreateDeviceRequest{UserID: userID, DeviceID: deviceID, IP: "10.0.0.1"})
	if err != nil {
		t.Fatalf("create device for %s: %v", userID, err)
	}
	return dev, tok.Access
}

func TestAccounts(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		ctx := context.Background()
		u := newTestAPI(t, dbURL, nil)
		mustCreate(t, u, "alice", "secret")
		long := strings.Repeat("x", 100)
		mustCreate(t, u, "longpw", long)

		create := []struct {
			name      string
			localpart string
			wantErr   error
			wantID    string
		}{
			{"new user", "bob", nil, "@bob:test.local"},
			{"all allowed characters", "a-z.0_9=/+", nil, "@a-z.0_9=/+:test.local"},
			{"taken", "alice", uapi.ErrUserInUse, ""},
			{"upper case", "Alice", uapi.ErrInvalidUsername, ""},
			{"space", "a b", uapi.ErrInvalidUsername, ""},
			{"colon", "a:b", uapi.ErrInvalidUsername, ""},
			{"non-ASCII", "zoë", uapi.ErrInvalidUsername, ""},
			{"user ID over 255 bytes", strings.Repeat("a", 255-len("@:test.local")+1), uapi.ErrInvalidUsername, ""},
			{"user ID of exactly 255 bytes", strings.Repeat("a", 255-len("@:test.local")), nil, "@" + strings.Repeat("a", 255-len("@:test.local")) + ":test.local"},
		}
		for _, tc := range create {
			t.Run("create "+tc.name, func(t *testing.T) {
				a, err := u.CreateAccount(ctx, uapi.CreateAccountRequest{Localpart: tc.localpart, Password: "pw"})
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
				if err == nil && a.UserID != tc.wantID {
					t.Fatalf("user ID %q, want %q", a.UserID, tc.wantID)
				}
			})
		}

		t.Run("generated localparts are numeric and distinct", func(t *testing.T) {
			seen := map[string]bool{}
			for i := 0; i < 3; i++ {
				a, err := u.CreateAccount(ctx, uapi.CreateAccountRequest{Password: "pw"})
				if err != nil {
					t.Fatal(err)
				}
				if strings.Trim(a.Localpart, "0123456789") != "" || seen[a.Localpart] {
					t.Fatalf("generated localpart %q (seen: %v)", a.Localpart, seen)
				}
				seen[a.Localpart] = true
			}
		})

		check := []struct {
			name     string
			userID   string
			password string
			wantErr  error
		}{
			{"right password", "@alice:test.local", "secret", nil},
			{"wrong password", "@alice:test.local", "Secret", uapi.ErrBadPassword},
			{"empty password", "@alice:test.local", "", uapi.ErrBadPassword},
			{"unknown user", "@nobody:test.local", "secret", uapi.ErrBadPassword},
			{"password over 72 bytes", "@longpw:test.local", long, nil},
			{"long password, last byte differs", "@longpw:test.local", long[:99] + "y", uapi.ErrBadPassword},
		}
		for _, tc := range check {
			t.Run("check "+tc.name, func(t *testing.T) {
				a, err := u.CheckPassword(ctx, tc.userID, tc.password)
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
				if err == nil && a.UserID != tc.userID {
					t.Fatalf("account %q, want %q", a.UserID, tc.userID)
				}
			})
		}

		t.Run("profile", func(t *testing.T) {
			p, err := u.Profile(ctx, "@alice:test.local")
			if err != nil || p.DisplayName != "alice" || p.AvatarURL != "" {
				t.Fatalf("new profile = %+v, %v; want display name alice", p, err)
			}
			name, avatar := "Alice A", "mxc://test.local/abc"
			if err := u.SetProfile(ctx, "@alice:test.local", nil, &avatar); err != nil {
				t.Fatal(err)
			}
			if err := u.SetProfile(ctx, "@alice:test.local", &name, nil); err != nil {
				t.Fatal(err)
			}
			p, err = u.Profile(ctx, "@alice:test.local")
			if err != nil || *p != (uapi.Profile{DisplayName: name, AvatarURL: avatar}) {
				t.Fatalf("profile = %+v, %v", p, err)
			}
			if _, err := u.Profile(ctx, "@nobody:test.local"); !uapi.IsNotFound(err) {
				t.Fatalf("unknown user's profile: err = %v, want not found", err)
			}
			if err := u.SetProfile(ctx, "@nobody:test.local", &name, nil); !uapi.IsNotFound(err) {
				t.Fatalf("unknown user's profile set: err = %v, want not found", err)
			}
		})

		t.Run("password change", func(t *testing.T) {
			mustCreate(t, u, "carol", "old")
			_, keepTok := mustLogin(t, u, "@carol:test.local", "KEEP")
			_, dropTok := mustLogin(t, u, "@carol:test.local", "DROP")
			if _, err := u.DeviceByToken(ctx, dropTok); err != nil {
				t.Fatal(err) // now cached: the change must invalidate it
			}
			if err := u.SetPassword(ctx, "@carol:test.local", "new", true, "KEEP"); err != nil {
				t.Fatal(err)
			}
			if _, err := u.CheckPassword(ctx, "@carol:test.local", "old"); !errors.Is(err, uapi.ErrBadPassword) {
				t.Fatalf("old password: err = %v", err)
			}
			if _, err := u.CheckPassword(ctx, "@carol:test.local", "new"); err != nil {
				t.Fatalf("new password: %v", err)
			}
			if _, err := u.DeviceByToken(ctx, keepTok); err != nil {
				t.Fatalf("kept device: %v", err)
			}
			if _, err := u.DeviceByToken(ctx, dropTok); !errors.Is(err, uapi.ErrUnknownToken) {
				t.Fatalf("other device: err = %v, want unknown token", err)
			}
		})

		t.Run("deactivation", func(t *testing.T) {
			mustCreate(t, u, "dave", "pw")
			_, tok := mustLogin(t, u, "@dave:test.local", "")
			if _, err := u.DeviceByToken(ctx, tok); err != nil {
				t.Fatal(err)
			}
			if err := u.Deactivate(ctx, "@dave:test.local", false); err != nil {
				t.Fatal(err)
			}
			if _, err := u.DeviceByToken(ctx, tok); !errors.Is(err, uapi.ErrUnknownToken) {
				t.Fatalf("token after deactivation: err = %v", err)
			}
			if _, err := u.CheckPassword(ctx, "@dave:test.local", "pw"); !errors.Is(err, uapi.ErrUserDeactivated) {
				t.Fatalf("login after deactivation: err = %v", err)
			}
			if _, _, err := u.CreateDevice(ctx, uapi.CreateDeviceRequest{UserID: "@dave:test.local"}); !errors.Is(err, uapi.ErrUserDeactivated) {
				t.Fatalf("device after deactivation: err = %v", err)
			}
			a, err := u.Account(ctx, "@dave:test.local")
			if err != nil || !a.Deactivated {
				t.Fatalf("account = %+v, %v", a, err)
			}
			if err := u.Deactivate(ctx, "@nobody:test.local", false); !uapi.IsNotFound(err) {
				t.Fatalf("deactivate unknown: err = %v", err)
			}
		})
	})
}

func TestDevices(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		ctx := context.Background()
		u := newTestAPI(t, dbURL, nil)
		alice := mustCreate(t, u, "alice", "pw").UserID
		bob := mustCreate(t, u, "bob", "pw").UserID

		d1, tok1 := mustLogin(t, u, alice, "")
		if len(d1.DeviceID) != 10 || len(tok1) < 43 || d1.SessionID == 0 {
			t.Fatalf("device %+v, token %q", d1, tok1)
		}
		d2, tok2 := mustLogin(t, u, alice, "PHONE")
		if d2.DeviceID != "PHONE" || d2.SessionID == d1.SessionID || tok2 == tok1 {
			t.Fatalf("second device %+v (first %+v)", d2, d1)
		}
		bobDev, bobTok := mustLogin(t, u, bob, "PHONE")
		if bobDev.SessionID == d2.SessionID {
			t.Fatal("two users' devices share a session ID")
		}
		if _, _, err := u.CreateDevice(ctx, uapi.CreateDeviceRequest{UserID: "@nobody:test.local"}); !uapi.IsNotFound(err) {
			t.Fatalf("device for unknown user: err = %v", err)
		}

		lookups := []struct {
			name       string
			token      string
			wantDevice string
			wantUser   string
		}{
			{"first device", tok1, d1.DeviceID, alice},
			{"first device again (cached)", tok1, d1.DeviceID, alice},
			{"named device", tok2, "PHONE", alice},
			{"other user's device of the same name", bobTok, "PHONE", bob},
			{"unknown token", "nope", "", ""},
			{"empty token", "", "", ""},
			{"overlong token", strings.Repeat("a", 10000), "", ""},
		}
		for _, tc := range lookups {
			t.Run(tc.name, func(t *testing.T) {
				dev, err := u.DeviceByToken(ctx, tc.token)
				if tc.wantUser == "" {
					if !errors.Is(err, uapi.ErrUnknownToken) {
						t.Fatalf("err = %v, want unknown token", err)
					}
					return
				}
				if err != nil || dev.DeviceID != tc.wantDevice || dev.UserID != tc.wantUser {
					t.Fatalf("device = %+v, %v", dev, err)
				}
			})
		}

		t.Run("logging in on an existing device replaces its token", func(t *testing.T) {
			d, tok := mustLogin(t, u, alice, "PHONE")
			if d.SessionID != d2.SessionID {
				t.Fatalf("session ID changed from %d to %d", d2.SessionID, d.SessionID)
			}
			if _, err := u.DeviceByToken(ctx, tok2); !errors.Is(err, uapi.ErrUnknownToken) {
				t.Fatalf("old token: err = %v", err)
			}
			if got, err := u.DeviceByToken(ctx, tok); err != nil || got.DeviceID != "PHONE" {
				t.Fatalf("new token: %+v, %v", got, err)
			}
			tok2 = tok
		})

		t.Run("rename", func(t *testing.T) {
			if err := u.SetDeviceName(ctx, alice, "PHONE", "My phone"); err != nil {
				t.Fatal(err)
			}
			d, err := u.Device(ctx, alice, "PHONE")
			if err != nil || d.DisplayName != "My phone" {
				t.Fatalf("device = %+v, %v", d, err)
			}
			if err := u.SetDeviceName(ctx, alice, "NOPE", "x"); !uapi.IsNotFound(err) {
				t.Fatalf("rename unknown: err = %v", err)
			}
			if _, err := u.Device(ctx, alice, "NOPE"); !uapi.IsNotFound(err) {
				t.Fatalf("get unknown: err = %v", err)
			}
		})

		t.Run("list", func(t *testing.T) {
			devs, err := u.Devices(ctx, alice)
			if err != nil || len(devs) != 2 {
				t.Fatalf("devices = %+v, %v", devs, err)
			}
		})

		t.Run("delete, and a new device of the same ID", func(t *testing.T) {
			if err := u.DeleteDevices(ctx, alice, []string{"PHONE", "UNKNOWN"}); err != nil {
				t.Fatal(err)
			}
			if _, err := u.DeviceByToken(ctx, tok2); !errors.Is(err, uapi.ErrUnknownToken) {
				t.Fatalf("deleted device's token: err = %v", err)
			}
			if _, err := u.DeviceByToken(ctx, tok1); err != nil {
				t.Fatalf("remaining device: %v", err)
			}
			d, _ := mustLogin(t, u, alice, "PHONE")
			if d.SessionID <= bobDev.SessionID {
				t.Fatalf("recreated device got session %d, not a new one", d.SessionID)
			}
			if d.DisplayName != "" {
				t.Fatalf("recreated device kept the old name %q", d.DisplayName)
			}
		})

		t.Run("delete all", func(t *testing.T) {
			if err := u.DeleteDevices(ctx, alice, nil); err != nil {
				t.Fatal(err)
			}
			if _, err := u.DeviceByToken(ctx, tok1); !errors.Is(err, uapi.ErrUnknownToken) {
				t.Fatalf("token after delete all: err = %v", err)
			}
			if _, err := u.DeviceByToken(ctx, bobTok); err != nil {
				t.Fatalf("other user's device: %v", err)
			}
		})
	})
}

func TestLastSeen(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		ctx := context.Background()
		u := newTestAPI(t, dbURL, nil)
		clock := &testClock{t: time.UnixMilli(1_700_000_000_000)}
		u.now = clock.now
		alice := mustCreate(t, u, "alice", "pw").UserID
		dev, tok := mustLogin(t, u, alice, "D")
		if dev.LastSeenTS != clock.now().UnixMilli() || dev.LastSeenIP != "10.0.0.1" {
			t.Fatalf("new device last seen %d %q", dev.LastSeenTS, dev.LastSeenIP)
		}
		start := clock.now().UnixMilli()
		steps := []struct {
			name    string
			advance time.Duration
			ip      string
			wantTS  int64
			wantIP  string
		}{
			{"soon after login: not written", 10 * time.Second, "10.0.0.2", start, "10.0.0.1"},
			{"still within the minute", 40 * time.Second, "10.0.0.3", start, "10.0.0.1"},
			{"a minute on: written", 15 * time.Second, "10.0.0.4", start + 65_000, "10.0.0.4"},
			{"right after: not written", time.Second, "10.0.0.5", start + 65_000, "10.0.0.4"},
			{"no IP known: time only", 2 * time.Minute, "", start + 186_000, "10.0.0.4"},
		}
		for _, s := range steps {
			clock.advance(s.advance)
			rctx := ctx
			if s.ip != "" {
				rctx = uapi.WithClientIP(ctx, s.ip)
			}
			if _, err := u.DeviceByToken(rctx, tok); err != nil {
				t.Fatalf("%s: %v", s.name, err)
			}
			d, err := u.Device(ctx, alice, "D")
			if err != nil {
				t.Fatal(err)
			}
			if d.LastSeenTS != s.wantTS || d.LastSeenIP != s.wantIP {
				t.Fatalf("%s: stored last seen %d %q, want %d %q", s.name, d.LastSeenTS, d.LastSeenIP, s.wantTS, s.wantIP)
			}
		}
	})
}

func TestAccountData(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		ctx := context.Background()
		u := newTestAPI(t, dbURL, nil)
		const alice, bob = "@alice:test.local", "@bob:test.local"

		if pos, err := u.AccountDataPos(ctx); err != nil || pos != 0 {
			t.Fatalf("initial position %d, %v", pos, err)
		}
		writes := []struct {
			user, room, typ, content string
			wantPos                  int64
		}{
			{alice, "", "m.direct", `{"a":1}`, 1},
			{alice, "!r:test.local", "m.tag", `{"tags":{}}`, 2},
			{bob, "", "m.direct", `{"b":1}`, 3},
			{alice, "", "m.direct", `{"a":2}`, 4},
			{alice, "", "im.vector.x", `{}`, 5},
		}
		for _, w := range writes {
			pos, err := u.SetAccountData(ctx, w.user, w.room, w.typ, json.RawMessage(w.content))
			if err != nil || pos != w.wantPos {
				t.Fatalf("set %s %s: pos %d, %v; want %d", w.user, w.typ, pos, err, w.wantPos)
			}
		}
		if _, err := u.SetAccountData(ctx, alice, "", "bad", json.RawMessage(`[1]`)); err == nil {
			t.Fatal("non-object content accepted")
		}
		if pos, err := u.AccountDataPos(ctx); err != nil || pos != 5 {
			t.Fatalf("position %d, %v; want 5", pos, err)
		}

		got, err := u.AccountData(ctx, alice, "", "m.direct")
		if err != nil || string(got) != `{"a":2}` {
			t.Fatalf("m.direct = %s, %v", got, err)
		}
		if _, err := u.AccountData(ctx, alice, "", "m.tag"); !uapi.IsNotFound(err) {
			t.Fatalf("global m.tag: err = %v, want not found (it is room data)", err)
		}
		if _, err := u.AccountData(ctx, alice, "!other:test.local", "m.tag"); !uapi.IsNotFound(err) {
			t.Fatalf("other room's m.tag: err = %v", err)
		}

		since := []struct {
			name     string
			user     string
			from, to int64
			want     []string // room/type@pos
		}{
			// From 0 (an initial sync) the push rules are always there,
			// stored or not.
			{"everything", alice, 0, 5, []string{"/m.push_rules@0", "!r:test.local/m.tag@2", "/m.direct@4", "/im.vector.x@5"}},
			{"after the first write", alice, 1, 5, []string{"!r:test.local/m.tag@2", "/m.direct@4", "/im.vector.x@5"}},
			{"a middle range", alice, 1, 3, []string{"!r:test.local/m.tag@2"}},
			{"only the latest version of a type", alice, 3, 4, []string{"/m.direct@4"}},
			{"nothing new", alice, 5, 5, nil},
			{"backwards", alice, 5, 2, nil},
			{"other user", bob, 0, 5, []string{"/m.push_rules@0", "/m.direct@3"}},
		}
		for _, tc := range since {
			t.Run(tc.name, func(t *testing.T) {
				items, err := u.AccountDataSince(ctx, tc.user, tc.from, tc.to)
				if err != nil {
					t.Fatal(err)
				}
				var gotKeys []string
				for _, it := range items {
					gotKeys = append(gotKeys, it.RoomID+"/"+it.Type+"@"+itoa(it.Pos))
				}
				if strings.Join(gotKeys, " ") != strings.Join(tc.want, " ") {
					t.Fatalf("got %v, want %v", gotKeys, tc.want)
				}
			})
		}

		t.Run("concurrent writes get distinct positions in order", func(t *testing.T) {
			const n = 20
			var wg sync.WaitGroup
			positions := make(chan int64, n)
			for i := 0; i < n; i++ {
				wg.Add(1)
				go func(i int) {
					defer wg.Done()
					pos, err := u.SetAccountData(ctx, alice, "", "t"+itoa(int64(i)), json.RawMessage(`{}`))
					if err != nil {
						t.Error(err)
						return
					}
					positions <- pos
				}(i)
			}
			wg.Wait()
			close(positions)
			seen := map[int64]bool{}
			for p := range positions {
				if p <= 5 || p > 5+n || seen[p] {
					t.Fatalf("position %d out of range or repeated", p)
				}
				seen[p] = true
			}
			if head, err := u.AccountDataPos(ctx); err != nil || head != 5+n {
				t.Fatalf("head %d, %v; want %d", head, err, 5+n)
			}
		})
	})
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func TestAccountDataAnnounced(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := bus.Open(ctx, bus.Options{StoreDir: t.TempDir(), Name: "test"})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	u := newTestAPI(t, sqldbtest.URL(t, "sqlite"), b)
	for _, typ := range []string{"m.direct", "m.ignored_user_list"} {
		if _, err := u.SetAccountData(ctx, "@alice:test.local", "", typ, json.RawMessage(`{}`)); err != nil {
			t.Fatal(err)
		}
	}

	cons, err := b.JetStream().OrderedConsumer(ctx, bus.OutputUserData, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	batch, err := cons.Fetch(2, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var got []uapi.UserDataUpdate
	for msg := range batch.Messages() {
		var upd uapi.UserDataUpdate
		if err := json.Unmarshal(msg.Data(), &upd); err != nil {
			t.Fatal(err)
		}
		got = append(got, upd)
	}
	want := []uapi.UserDataUpdate{
		{UserID: "@alice:test.local", Stream: "account_data", Pos: 1},
		{UserID: "@alice:test.local", Stream: "account_data", Pos: 2},
	}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("published %+v, want %+v", got, want)
	}
}
