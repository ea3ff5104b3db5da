package perform_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"myelin/internal/sqldb/sqldbtest"
	"myelin/roomserver"
	rsapi "myelin/roomserver/api"
	"myelin/roomserver/roomservertest"
)

const server = "perform.test"

// startRoomserver runs a real roomserver (embedded NATS, a fresh database
// of dialect) until the test ends.
func startRoomserver(t *testing.T, dialect string, opts ...roomserver.Option) *roomserver.Roomserver {
	t.Helper()
	rs, _ := roomservertest.Start(t, dialect, server, opts...)
	return rs
}

func user(local string) string { return "@" + local + ":" + server }

func stateProto(sender, evType, stateKey string, content any) rsapi.InputEvent {
	raw, _ := json.Marshal(content)
	return rsapi.InputEvent{Proto: &rsapi.ProtoEvent{Sender: sender, Type: evType, StateKey: &stateKey, Content: raw}}
}

// createRoom makes a room of version with alice as its creator (power
// 100) and the given join rule and extra state.
func createRoom(t *testing.T, rs rsapi.API, name, version, joinRule string, extra ...rsapi.InputEvent) string {
	t.Helper()
	alice := user("alice")
	create := map[string]any{"room_version": version}
	if version != "11" && version != "12" {
		create["creator"] = alice
	}
	users := map[string]int{alice: 100}
	if version == "12" {
		users = map[string]int{}
	}
	events := []rsapi.InputEvent{
		stateProto(alice, spec.MRoomCreate, "", create),
		stateProto(alice, spec.MRoomMember, alice, map[string]any{"membership": "join"}),
		stateProto(alice, spec.MRoomPowerLevels, "", map[string]any{"users": users}),
		stateProto(alice, spec.MRoomJoinRules, "", map[string]any{"join_rule": joinRule}),
	}
	events = append(events, extra...)
	req := &rsapi.InputRequest{RoomVersion: version, Events: events}
	if version != "12" {
		req.NewRoomID = "!" + name + ":" + server
	}
	resp, err := rs.Input(context.Background(), req)
	if err != nil {
		t.Fatalf("create room %s: %v", name, err)
	}
	return resp.RoomID
}

func errCode(err error) string {
	var coded interface{ MatrixErrCode() string }
	if errors.As(err, &coded) {
		return coded.MatrixErrCode()
	}
	var un interface{ Unavailable() bool }
	if errors.As(err, &un) && un.Unavailable() {
		return "unavailable"
	}
	if err != nil {
		return "uncoded: " + err.Error()
	}
	return ""
}

// membership returns userID's membership of roomID and its event's content.
func membership(t *testing.T, rs rsapi.API, roomID, userID string) (string, map[string]any) {
	t.Helper()
	m, err := rs.Membership(context.Background(), roomID, userID)
	if err != nil {
		t.Fatalf("membership of %s in %s: %v", userID, roomID, err)
	}
	if m.EventID == "" {
		return m.Membership, nil
	}
	evs, err := rs.Events(context.Background(), []string{m.EventID})
	if err != nil || len(evs) != 1 {
		t.Fatalf("member event %s: %v", m.EventID, err)
	}
	var content map[string]any
	_ = json.Unmarshal(evs[0].Content(), &content)
	return m.Membership, content
}

// profiles is the test's profile lookup: every local user is called by
// its localpart in capitals.
func profiles(_ context.Context, userID string) (string, string, error) {
	if id, err := spec.NewUserID(userID, true); err == nil && id.Domain() == server {
		return "Name of " + id.Local(), "mxc://" + server + "/" + id.Local(), nil
	}
	return "", "", errors.New("no such user")
}

// TestPerformMembership drives every membership operation through a real
// roomserver, in order, on both databases: each step's error code (none
// for success) and the membership it leaves.
func TestPerformMembership(t *testing.T) {
	for _, d := range sqldbtest.Dialects {
		t.Run(d, func(t *testing.T) {
			rs := startRoomserver(t, d, roomserver.WithProfiles(profiles))
			ctx := context.Background()
			alice, bob, carol, dave, guest := user("alice"), user("bob"), user("carol"), user("dave"), user("guest")
			public := createRoom(t, rs, "public", "10", "public")
			private := createRoom(t, rs, "private", "10", "invite")
			guests := createRoom(t, rs, "guests", "10", "public", stateProto(alice, spec.MRoomGuestAccess, "", map[string]any{"guest_access": "can_join"}))
			knock := createRoom(t, rs, "knock", "10", "knock")
			knock12 := createRoom(t, rs, "knock12", "12", "knock")
			oldKnock := createRoom(t, rs, "oldknock", "6", "knock")
			unknown := "!unknown:" + server

			var joinEvent string
			steps := []struct {
				name     string
				do       func() error
				wantCode string
				room     string
				user     string
				want     string // membership after the step
				check    func(t *testing.T, content map[string]any)
			}{
				{name: "join a public room", do: func() error {
					resp, err := rs.PerformJoin(ctx, &rsapi.JoinRequest{RoomID: public, UserID: bob, Reason: "hi", Content: map[string]any{"org.example": 1}})
					if err == nil {
						joinEvent = resp.EventID
					}
					return err
				}, room: public, user: bob, want: spec.Join, check: func(t *testing.T, c map[string]any) {
					if c["displayname"] != "Name of bob" || c["reason"] != "hi" || c["org.example"] != float64(1) {
						t.Errorf("join content %v: want the profile, the reason and the extra field", c)
					}
				}},
				{name: "join again answers with the same event", do: func() error {
					resp, err := rs.PerformJoin(ctx, &rsapi.JoinRequest{RoomID: public, UserID: bob, Reason: "hi", Content: map[string]any{"org.example": 1}})
					if err == nil && resp.EventID != joinEvent {
						return fmt.Errorf("second join made %s, want %s", resp.EventID, joinEvent)
					}
					return err
				}, room: public, user: bob, want: spec.Join},
				{name: "join with a reason too large for an event", do: func() error {
					_, err := rs.PerformJoin(ctx, &rsapi.JoinRequest{RoomID: public, UserID: carol, Reason: strings.Repeat("x", 70000)})
					return err
				}, wantCode: "M_TOO_LARGE", room: public, user: carol, want: spec.Leave},
				{name: "join a room not known here", do: func() error {
					_, err := rs.PerformJoin(ctx, &rsapi.JoinRequest{RoomID: unknown, UserID: bob, ServerNames: []string{"elsewhere.test"}})
					return err
				}, wantCode: "M_NOT_FOUND"},
				{name: "join an invite-only room uninvited", do: func() error {
					_, err := rs.PerformJoin(ctx, &rsapi.JoinRequest{RoomID: private, UserID: bob})
					return err
				}, wantCode: "M_FORBIDDEN", room: private, user: bob, want: spec.Leave},
				{name: "guest joins a room without guest access", do: func() error {
					_, err := rs.PerformJoin(ctx, &rsapi.JoinRequest{RoomID: public, UserID: guest, IsGuest: true})
					return err
				}, wantCode: "M_GUEST_ACCESS_FORBIDDEN", room: public, user: guest, want: spec.Leave},
				{name: "guest joins a room with guest access", do: func() error {
					_, err := rs.PerformJoin(ctx, &rsapi.JoinRequest{RoomID: guests, UserID: guest, IsGuest: true})
					return err
				}, room: guests, user: guest, want: spec.Join},
				{name: "invite", do: func() error {
					return rs.PerformInvite(ctx, &rsapi.InviteRequest{RoomID: private, Sender: alice, Invitee: carol, IsDirect: true})
				}, room: private, user: carol, want: spec.Invite, check: func(t *testing.T, c map[string]any) {
					if c["displayname"] != "Name of carol" || c["is_direct"] != true {
						t.Errorf("invite content %v: want the invitee's profile and is_direct", c)
					}
				}},
				{name: "invite by a non-member", do: func() error {
					return rs.PerformInvite(ctx, &rsapi.InviteRequest{RoomID: private, Sender: dave, Invitee: bob})
				}, wantCode: "M_FORBIDDEN", room: private, user: bob, want: spec.Leave},
				{name: "invite to a room not known here", do: func() error {
					return rs.PerformInvite(ctx, &rsapi.InviteRequest{RoomID: unknown, Sender: alice, Invitee: bob})
				}, wantCode: "M_FORBIDDEN"},
				{name: "reject the invite", do: func() error {
					return rs.PerformLeave(ctx, &rsapi.LeaveRequest{RoomID: private, UserID: carol, Reason: "no thanks"})
				}, room: private, user: carol, want: spec.Leave, check: func(t *testing.T, c map[string]any) {
					if c["reason"] != "no thanks" || c["displayname"] != nil {
						t.Errorf("leave content %v: want the reason and no profile", c)
					}
				}},
				{name: "leave again the same way", do: func() error {
					return rs.PerformLeave(ctx, &rsapi.LeaveRequest{RoomID: private, UserID: carol, Reason: "no thanks"})
				}, room: private, user: carol, want: spec.Leave},
				{name: "leave a room never joined", do: func() error {
					return rs.PerformLeave(ctx, &rsapi.LeaveRequest{RoomID: public, UserID: dave})
				}, wantCode: "M_FORBIDDEN", room: public, user: dave, want: spec.Leave},
				{name: "leave a room not known here", do: func() error {
					return rs.PerformLeave(ctx, &rsapi.LeaveRequest{RoomID: unknown, UserID: bob})
				}, wantCode: "M_FORBIDDEN"},
				{name: "kick without power", do: func() error {
					return rs.PerformMembership(ctx, &rsapi.MembershipRequest{RoomID: public, Sender: bob, Target: alice, Change: rsapi.Kick})
				}, wantCode: "M_FORBIDDEN", room: public, user: alice, want: spec.Join},
				{name: "kick", do: func() error {
					return rs.PerformMembership(ctx, &rsapi.MembershipRequest{RoomID: public, Sender: alice, Target: bob, Change: rsapi.Kick, Reason: "out"})
				}, room: public, user: bob, want: spec.Leave, check: func(t *testing.T, c map[string]any) {
					if c["reason"] != "out" {
						t.Errorf("kick content %v: want the reason", c)
					}
				}},
				{name: "kick someone not in the room", do: func() error {
					return rs.PerformMembership(ctx, &rsapi.MembershipRequest{RoomID: public, Sender: alice, Target: bob, Change: rsapi.Kick})
				}, wantCode: "M_FORBIDDEN", room: public, user: bob, want: spec.Leave},
				{name: "kick in a room not known here", do: func() error {
					return rs.PerformMembership(ctx, &rsapi.MembershipRequest{RoomID: unknown, Sender: alice, Target: bob, Change: rsapi.Kick})
				}, wantCode: "M_NOT_FOUND"},
				{name: "ban someone never in the room", do: func() error {
					return rs.PerformMembership(ctx, &rsapi.MembershipRequest{RoomID: public, Sender: alice, Target: dave, Change: rsapi.Ban})
				}, room: public, user: dave, want: spec.Ban},
				{name: "banned user joins", do: func() error {
					_, err := rs.PerformJoin(ctx, &rsapi.JoinRequest{RoomID: public, UserID: dave})
					return err
				}, wantCode: "M_FORBIDDEN", room: public, user: dave, want: spec.Ban},
				{name: "unban", do: func() error {
					return rs.PerformMembership(ctx, &rsapi.MembershipRequest{RoomID: public, Sender: alice, Target: dave, Change: rsapi.Unban})
				}, room: public, user: dave, want: spec.Leave},
				{name: "unban someone not banned", do: func() error {
					return rs.PerformMembership(ctx, &rsapi.MembershipRequest{RoomID: public, Sender: alice, Target: dave, Change: rsapi.Unban})
				}, wantCode: "M_FORBIDDEN", room: public, user: dave, want: spec.Leave},
				{name: "an unknown membership change", do: func() error {
					return rs.PerformMembership(ctx, &rsapi.MembershipRequest{RoomID: public, Sender: alice, Target: dave, Change: "smite"})
				}, wantCode: "M_INVALID_PARAM"},
				{name: "knock", do: func() error {
					_, err := rs.PerformKnock(ctx, &rsapi.KnockRequest{RoomID: knock, UserID: bob, Reason: "let me in"})
					return err
				}, room: knock, user: bob, want: spec.Knock, check: func(t *testing.T, c map[string]any) {
					if c["reason"] != "let me in" || c["displayname"] != "Name of bob" {
						t.Errorf("knock content %v: want the reason and the profile", c)
					}
				}},
				{name: "knock on a version 12 room", do: func() error {
					_, err := rs.PerformKnock(ctx, &rsapi.KnockRequest{RoomID: knock12, UserID: bob})
					return err
				}, room: knock12, user: bob, want: spec.Knock},
				{name: "the knock is accepted by an invite", do: func() error {
					return rs.PerformInvite(ctx, &rsapi.InviteRequest{RoomID: knock, Sender: alice, Invitee: bob})
				}, room: knock, user: bob, want: spec.Invite},
				{name: "knock on a public room", do: func() error {
					_, err := rs.PerformKnock(ctx, &rsapi.KnockRequest{RoomID: public, UserID: carol})
					return err
				}, wantCode: "M_FORBIDDEN", room: public, user: carol, want: spec.Leave},
				{name: "knock on a room joined", do: func() error {
					_, err := rs.PerformKnock(ctx, &rsapi.KnockRequest{RoomID: knock, UserID: alice})
					return err
				}, wantCode: "M_FORBIDDEN", room: knock, user: alice, want: spec.Join},
				{name: "knock in a room version without knocking", do: func() error {
					_, err := rs.PerformKnock(ctx, &rsapi.KnockRequest{RoomID: oldKnock, UserID: carol})
					return err
				}, wantCode: "M_FORBIDDEN", room: oldKnock, user: carol, want: spec.Leave},
				{name: "knock on a room not known here", do: func() error {
					_, err := rs.PerformKnock(ctx, &rsapi.KnockRequest{RoomID: unknown, UserID: carol, ServerNames: []string{"elsewhere.test"}})
					return err
				}, wantCode: "M_NOT_FOUND"},
				{name: "withdraw a knock", do: func() error {
					if _, err := rs.PerformKnock(ctx, &rsapi.KnockRequest{RoomID: knock, UserID: carol}); err != nil {
						return err
					}
					return rs.PerformLeave(ctx, &rsapi.LeaveRequest{RoomID: knock, UserID: carol})
				}, room: knock, user: carol, want: spec.Leave},
			}
			for _, s := range steps {
				t.Run(s.name, func(t *testing.T) {
					err := s.do()
					if got := errCode(err); got != s.wantCode {
						t.Fatalf("error %v (code %q), want code %q", err, got, s.wantCode)
					}
					if s.room == "" {
						return
					}
					got, content := membership(t, rs, s.room, s.user)
					if got != s.want {
						t.Fatalf("membership of %s is %q, want %q", s.user, got, s.want)
					}
					if s.check != nil {
						s.check(t, content)
					}
				})
			}
		})
	}
}

// TestPerformUpgrade checks the refusals of an upgrade and what a
// successful one leaves in both rooms, for an upgrade to a version whose
// room IDs the server picks and to version 12.
func TestPerformUpgrade(t *testing.T) {
	for _, d := range sqldbtest.Dialects {
		t.Run(d, func(t *testing.T) {
			rs := startRoomserver(t, d)
			ctx := context.Background()
			alice, bob, mallory := user("alice"), user("bob"), user("mallory")
			refusals := []struct {
				name     string
				req      rsapi.UpgradeRequest
				wantCode string
			}{
				{"unsupported version", rsapi.UpgradeRequest{Sender: alice, NewVersion: "13"}, "M_UNSUPPORTED_ROOM_VERSION"},
				{"experimental version", rsapi.UpgradeRequest{Sender: alice, NewVersion: "org.matrix.msc4242.12"}, "M_UNSUPPORTED_ROOM_VERSION"},
				{"unknown room", rsapi.UpgradeRequest{RoomID: "!nowhere:" + server, Sender: alice, NewVersion: "10"}, "M_NOT_FOUND"},
				{"not a member", rsapi.UpgradeRequest{Sender: mallory, NewVersion: "10"}, "M_FORBIDDEN"},
				{"no power", rsapi.UpgradeRequest{Sender: bob, NewVersion: "10"}, "M_FORBIDDEN"},
			}
			room := createRoom(t, rs, "refused", "9", "public")
			if _, err := rs.PerformJoin(ctx, &rsapi.JoinRequest{RoomID: room, UserID: bob}); err != nil {
				t.Fatal(err)
			}
			for _, r := range refusals {
				t.Run(r.name, func(t *testing.T) {
					req := r.req
					if req.RoomID == "" {
						req.RoomID = room
					}
					_, err := rs.PerformUpgrade(ctx, &req)
					if got := errCode(err); got != r.wantCode {
						t.Fatalf("error %v (code %q), want %q", err, got, r.wantCode)
					}
				})
			}
			if evs, err := rs.CurrentState(ctx, room, gmsl.StateKeyTuple{EventType: "m.room.tombstone"}); err != nil || len(evs) != 0 {
				t.Fatalf("a refused upgrade left a tombstone: %v %v", evs, err)
			}

			for _, version := range []string{"10", "12"} {
				t.Run("to "+version, func(t *testing.T) {
					old := createRoom(t, rs, "old"+version, "9", "public",
						stateProto(alice, spec.MRoomName, "", map[string]any{"name": "the room"}),
						stateProto(alice, spec.MRoomMember, mallory, map[string]any{"membership": "ban"}),
						stateProto(alice, spec.MRoomCanonicalAlias, "", map[string]any{}))
					alias := "#up" + version + ":" + server
					if err := rs.SetAlias(ctx, alias, old, alice); err != nil {
						t.Fatal(err)
					}
					if err := rs.SetPublished(ctx, old, true); err != nil {
						t.Fatal(err)
					}
					resp, err := rs.PerformUpgrade(ctx, &rsapi.UpgradeRequest{RoomID: old, Sender: alice, NewVersion: version, AdditionalCreators: []string{bob}})
					if err != nil {
						t.Fatalf("upgrade: %v", err)
					}
					newID := resp.NewRoomID
					if v, err := rs.RoomVersion(ctx, newID); err != nil || string(v) != version {
						t.Fatalf("new room %s: version %q, %v", newID, v, err)
					}
					tomb, err := rs.StateEvent(ctx, old, "m.room.tombstone", "")
					if err != nil || gjsonString(tomb.Content(), "replacement_room") != newID {
						t.Fatalf("tombstone: %v %v", tomb, err)
					}
					create, err := rs.StateEvent(ctx, newID, spec.MRoomCreate, "")
					if err != nil {
						t.Fatal(err)
					}
					var cc struct {
						Predecessor struct {
							RoomID  string `json:"room_id"`
							EventID string `json:"event_id"`
						} `json:"predecessor"`
						AdditionalCreators []string `json:"additional_creators"`
					}
					_ = json.Unmarshal(create.Content(), &cc)
					if cc.Predecessor.RoomID != old {
						t.Errorf("predecessor %+v, want room %s", cc.Predecessor, old)
					}
					if version == "10" && (cc.Predecessor.EventID != tomb.EventID() || cc.AdditionalCreators != nil) {
						t.Errorf("v10 create %s: want the tombstone %s as predecessor and no additional creators", create.Content(), tomb.EventID())
					}
					if version == "12" && (len(cc.AdditionalCreators) != 1 || cc.AdditionalCreators[0] != bob) {
						t.Errorf("v12 create %s: want bob as an additional creator", create.Content())
					}
					if name, err := rs.StateEvent(ctx, newID, spec.MRoomName, ""); err != nil || gjsonString(name.Content(), "name") != "the room" {
						t.Errorf("name not copied: %v", err)
					}
					if m, _ := membership(t, rs, newID, mallory); m != spec.Ban {
						t.Errorf("ban not copied: %q", m)
					}
					if m, _ := membership(t, rs, newID, alice); m != spec.Join {
						t.Errorf("upgrader is %q in the new room", m)
					}
					if target, err := rs.ResolveAlias(ctx, alias); err != nil || target != newID {
						t.Errorf("alias points to %q (%v), want %s", target, err, newID)
					}
					if pub, _ := rs.IsPublished(ctx, newID); !pub {
						t.Error("directory entry not moved")
					}
					pl, err := rs.StateEvent(ctx, old, spec.MRoomPowerLevels, "")
					if err != nil {
						t.Fatal(err)
					}
					var levels struct {
						EventsDefault int `json:"events_default"`
						Invite        int `json:"invite"`
					}
					_ = json.Unmarshal(pl.Content(), &levels)
					if levels.EventsDefault < 50 || levels.Invite < 50 {
						t.Errorf("old room not restricted: %s", pl.Content())
					}
				})
			}
		})
	}
}

func gjsonString(content []byte, key string) string {
	var m map[string]any
	_ = json.Unmarshal(content, &m)
	s, _ := m[key].(string)
	return s
}

// waitTimeout bounds a test's calls to the fake federation.
const waitTimeout = 30 * time.Second
