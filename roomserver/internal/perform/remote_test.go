package perform_test

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"myelin/internal/sqldb/sqldbtest"
	"myelin/roomserver"
	rsapi "myelin/roomserver/api"
)

// remoteServer is how one server of the test federation answers.
type remoteServer struct {
	down     bool             // answers nothing
	refuse   string           // answers make_* with this Matrix error code
	version  gmsl.RoomVersion // room version of its templates
	badState bool             // its template is for another user
}

// codedErr is a refusal a remote server answered with.
type codedErr struct{ code string }

func (e codedErr) Error() string         { return "remote says " + e.code }
func (e codedErr) MatrixErrCode() string { return e.code }

// testFederation is a perform.Federation whose servers answer from a
// table: what the performer asks, and of whom, is recorded.
type testFederation struct {
	servers map[spec.ServerName]remoteServer
	key     ed25519.PrivateKey // what the servers sign with

	mu    sync.Mutex
	calls []string   // "make_join server", "send_join server", ...
	sent  []gmsl.PDU // events sent with send_*
}

func (f *testFederation) record(call string, s spec.ServerName, ev gmsl.PDU) (remoteServer, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, call+" "+string(s))
	if ev != nil {
		f.sent = append(f.sent, ev)
	}
	rs, ok := f.servers[s]
	if !ok || rs.down {
		return rs, errors.New("connection refused")
	}
	if rs.refuse != "" {
		return rs, codedErr{rs.refuse}
	}
	return rs, nil
}

func (f *testFederation) template(rs remoteServer, roomID, userID, membership string) gmsl.ProtoEvent {
	sk := userID
	if rs.badState {
		sk = user("someone-else")
	}
	content, _ := json.Marshal(map[string]string{"membership": membership})
	return gmsl.ProtoEvent{
		SenderID: userID, RoomID: roomID, Type: spec.MRoomMember, StateKey: &sk,
		PrevEvents: []string{"$prev"}, AuthEvents: []string{"$create", "$pl", "$rules"},
		Depth: 7, Content: content,
	}
}

func (f *testFederation) MakeJoin(_ context.Context, s spec.ServerName, roomID, userID string) (fclient.RespMakeJoin, error) {
	rs, err := f.record("make_join", s, nil)
	if err != nil {
		return fclient.RespMakeJoin{}, err
	}
	return fclient.RespMakeJoin{JoinEvent: f.template(rs, roomID, userID, spec.Join), RoomVersion: rs.version}, nil
}

func (f *testFederation) SendJoin(_ context.Context, s spec.ServerName, ev gmsl.PDU) (fclient.RespSendJoin, error) {
	_, err := f.record("send_join", s, ev)
	return fclient.RespSendJoin{Origin: s}, err
}

func (f *testFederation) MakeLeave(_ context.Context, s spec.ServerName, roomID, userID string) (fclient.RespMakeLeave, error) {
	rs, err := f.record("make_leave", s, nil)
	if err != nil {
		return fclient.RespMakeLeave{}, err
	}
	return fclient.RespMakeLeave{LeaveEvent: f.template(rs, roomID, userID, spec.Leave), RoomVersion: rs.version}, nil
}

func (f *testFederation) SendLeave(_ context.Context, s spec.ServerName, ev gmsl.PDU) error {
	_, err := f.record("send_leave", s, ev)
	return err
}

func (f *testFederation) MakeKnock(_ context.Context, s spec.ServerName, roomID, userID string, versions []gmsl.RoomVersion) (fclient.RespMakeKnock, error) {
	rs, err := f.record("make_knock", s, nil)
	if err != nil {
		return fclient.RespMakeKnock{}, err
	}
	if len(versions) == 0 || versions[0] != "7" {
		return fclient.RespMakeKnock{}, codedErr{"M_INCOMPATIBLE_ROOM_VERSION"}
	}
	return fclient.RespMakeKnock{KnockEvent: f.template(rs, roomID, userID, spec.Knock), RoomVersion: rs.version}, nil
}

func (f *testFederation) SendKnock(_ context.Context, s spec.ServerName, ev gmsl.PDU) (fclient.RespSendKnock, error) {
	_, err := f.record("send_knock", s, ev)
	return fclient.RespSendKnock{}, err
}

func (f *testFederation) Invite(_ context.Context, s spec.ServerName, ev gmsl.PDU, stripped []gmsl.InviteStrippedState) (gmsl.PDU, error) {
	if _, err := f.record("invite", s, ev); err != nil {
		return nil, err
	}
	if len(stripped) == 0 {
		return nil, codedErr{"M_BAD_JSON"} // the invitee's server must see the room
	}
	// The invitee's server signs the invite as itself.
	return ev.Sign(string(s), "ed25519:remote", f.key), nil
}

// TestPerformRemote checks the path of a membership change in a room this
// server is not in: which servers are asked, in which order, what is sent
// to them, and what the client is told. The roomserver's input does not
// store a room joined elsewhere yet (its fetch step will), so a join or
// knock the remote server accepted ends in the input's refusal, and no
// other server is asked to repeat it.
func TestPerformRemote(t *testing.T) {
	const roomID = "!room:resident.test"
	domainless := "!" + strings.Repeat("A", 43)
	cases := []struct {
		name      string
		servers   map[spec.ServerName]remoteServer
		nilFed    bool
		do        func(ctx context.Context, rs rsapi.API) error
		wantCode  string
		wantErr   bool
		wantCalls []string
		wantSent  string // membership of the events sent
		// wantVersion is the room version of the events sent, or the
		// room_version of an M_INCOMPATIBLE_ROOM_VERSION refusal.
		wantVersion gmsl.RoomVersion
	}{
		{
			name:   "no federation: a join is refused as before",
			nilFed: true,
			do: func(ctx context.Context, rs rsapi.API) error {
				_, err := rs.PerformJoin(ctx, &rsapi.JoinRequest{RoomID: roomID, UserID: user("bob"), ServerNames: []string{"via.test"}})
				return err
			},
			wantCode: "M_NOT_FOUND", wantErr: true,
		},
		{
			name: "no server to ask",
			do: func(ctx context.Context, rs rsapi.API) error {
				_, err := rs.PerformJoin(ctx, &rsapi.JoinRequest{RoomID: domainless, UserID: user("bob"), ServerNames: []string{server, "not a server"}})
				return err
			},
			wantCode: "M_NOT_FOUND", wantErr: true,
		},
		{
			name: "join: via first, then the room's server; a down server is skipped",
			servers: map[spec.ServerName]remoteServer{
				"down.test": {down: true}, "resident.test": {version: "10"},
			},
			do: func(ctx context.Context, rs rsapi.API) error {
				_, err := rs.PerformJoin(ctx, &rsapi.JoinRequest{RoomID: roomID, UserID: user("bob"), ServerNames: []string{"down.test", server}, Reason: "hello"})
				return err
			},
			wantCode: "M_NOT_FOUND", wantErr: true, // the input's "unknown room", after send_join
			wantCalls: []string{"make_join down.test", "make_join resident.test", "send_join resident.test"},
			wantSent:  spec.Join,
		},
		{
			name: "join: a bad template is not signed, the next server is asked",
			servers: map[spec.ServerName]remoteServer{
				"liar.test": {version: "10", badState: true}, "resident.test": {refuse: "M_FORBIDDEN"},
			},
			do: func(ctx context.Context, rs rsapi.API) error {
				_, err := rs.PerformJoin(ctx, &rsapi.JoinRequest{RoomID: roomID, UserID: user("bob"), ServerNames: []string{"liar.test"}})
				return err
			},
			wantCode: "M_FORBIDDEN", wantErr: true, // the last server's refusal
			wantCalls: []string{"make_join liar.test", "make_join resident.test"},
		},
		{
			name:    "join: a room version this server does not support",
			servers: map[spec.ServerName]remoteServer{"resident.test": {version: "org.matrix.msc4242.12"}},
			do: func(ctx context.Context, rs rsapi.API) error {
				_, err := rs.PerformJoin(ctx, &rsapi.JoinRequest{RoomID: roomID, UserID: user("bob")})
				return err
			},
			wantCode: "M_INCOMPATIBLE_ROOM_VERSION", wantErr: true,
			wantCalls:   []string{"make_join resident.test"},
			wantVersion: "org.matrix.msc4242.12",
		},
		{
			// The spec's default is "1", but a template referencing
			// events by bare ID cannot be of version 1 or 2.
			name:    "join: a template naming no room version, with bare event IDs",
			servers: map[spec.ServerName]remoteServer{"resident.test": {}},
			do: func(ctx context.Context, rs rsapi.API) error {
				_, err := rs.PerformJoin(ctx, &rsapi.JoinRequest{RoomID: roomID, UserID: user("bob")})
				return err
			},
			wantCode: "M_NOT_FOUND", wantErr: true, // the input's "unknown room", after send_join
			wantCalls:   []string{"make_join resident.test", "send_join resident.test"},
			wantSent:    spec.Join,
			wantVersion: gmsl.RoomVersionV4,
		},
		{
			// A restricted room: a server with no member who may invite
			// cannot vouch for the join; another may (spec: "Restricted
			// rooms").
			name: "join: a server that cannot grant a restricted join, then one that can",
			servers: map[spec.ServerName]remoteServer{
				"nogrant.test": {refuse: "M_UNABLE_TO_GRANT_JOIN"}, "resident.test": {version: "10"},
			},
			do: func(ctx context.Context, rs rsapi.API) error {
				_, err := rs.PerformJoin(ctx, &rsapi.JoinRequest{RoomID: roomID, UserID: user("bob"), ServerNames: []string{"nogrant.test"}})
				return err
			},
			wantCode: "M_NOT_FOUND", wantErr: true, // the input's "unknown room", after send_join
			wantCalls: []string{"make_join nogrant.test", "make_join resident.test", "send_join resident.test"},
			wantSent:  spec.Join,
		},
		{
			name:    "join: every server down",
			servers: map[spec.ServerName]remoteServer{"resident.test": {down: true}},
			do: func(ctx context.Context, rs rsapi.API) error {
				_, err := rs.PerformJoin(ctx, &rsapi.JoinRequest{RoomID: roomID, UserID: user("bob")})
				return err
			},
			wantCode: "unavailable", wantErr: true,
			wantCalls: []string{"make_join resident.test"},
		},
		{
			name:    "join: a guest with no invite showing guest access stays on this server",
			servers: map[spec.ServerName]remoteServer{"resident.test": {version: "10"}},
			do: func(ctx context.Context, rs rsapi.API) error {
				_, err := rs.PerformJoin(ctx, &rsapi.JoinRequest{RoomID: roomID, UserID: user("guest"), IsGuest: true})
				return err
			},
			wantCode: "M_GUEST_ACCESS_FORBIDDEN", wantErr: true,
		},
		{
			name:    "knock through the room's server",
			servers: map[spec.ServerName]remoteServer{"resident.test": {version: "10"}},
			do: func(ctx context.Context, rs rsapi.API) error {
				_, err := rs.PerformKnock(ctx, &rsapi.KnockRequest{RoomID: roomID, UserID: user("bob"), Reason: "knock knock"})
				return err
			},
			wantCode: "M_NOT_FOUND", wantErr: true,
			wantCalls: []string{"make_knock resident.test", "send_knock resident.test"},
			wantSent:  spec.Knock,
		},
		{
			name:    "leave a room not known here through its server",
			servers: map[spec.ServerName]remoteServer{"resident.test": {version: "10"}},
			do: func(ctx context.Context, rs rsapi.API) error {
				return rs.PerformLeave(ctx, &rsapi.LeaveRequest{RoomID: roomID, UserID: user("bob")})
			},
			wantCalls: []string{"make_leave resident.test", "send_leave resident.test"},
			wantSent:  spec.Leave,
		},
		{
			name:    "leave refused by the room's server",
			servers: map[spec.ServerName]remoteServer{"resident.test": {refuse: "M_FORBIDDEN"}},
			do: func(ctx context.Context, rs rsapi.API) error {
				return rs.PerformLeave(ctx, &rsapi.LeaveRequest{RoomID: roomID, UserID: user("bob")})
			},
			wantCode: "M_FORBIDDEN", wantErr: true,
			wantCalls: []string{"make_leave resident.test"},
		},
	}
	for _, d := range sqldbtest.Dialects {
		t.Run(d, func(t *testing.T) {
			for _, c := range cases {
				t.Run(c.name, func(t *testing.T) {
					fed := &testFederation{servers: c.servers}
					var opts []roomserver.Option
					if !c.nilFed {
						opts = append(opts, roomserver.WithFederation(fed))
					}
					rs := startRoomserver(t, d, opts...)
					ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
					defer cancel()
					err := c.do(ctx, rs)
					if (err != nil) != c.wantErr {
						t.Fatalf("error %v, want an error: %v", err, c.wantErr)
					}
					if c.wantCode != "" && errCode(err) != c.wantCode {
						t.Fatalf("error %v (code %q), want %q", err, errCode(err), c.wantCode)
					}
					fed.mu.Lock()
					defer fed.mu.Unlock()
					if strings.Join(fed.calls, ", ") != strings.Join(c.wantCalls, ", ") {
						t.Fatalf("calls %q, want %q", fed.calls, c.wantCalls)
					}
					for _, ev := range fed.sent {
						checkSent(t, ev, roomID, c.wantSent)
						if c.wantVersion != "" && ev.Version() != c.wantVersion {
							t.Errorf("sent an event of room version %s, want %s", ev.Version(), c.wantVersion)
						}
					}
					var pe *rsapi.PerformError
					if c.wantCode == "M_INCOMPATIBLE_ROOM_VERSION" && (!errors.As(err, &pe) || pe.Extra["room_version"] != string(c.wantVersion)) {
						t.Errorf("refusal %#v does not name room version %s", err, c.wantVersion)
					}
				})
			}
		})
	}
}

// checkSent checks an event sent to a resident server: the template's
// room, prev events and depth, the membership asked for, and a signature
// of this server.
func checkSent(t *testing.T, ev gmsl.PDU, roomID, membership string) {
	t.Helper()
	if m, _ := ev.Membership(); m != membership || ev.RoomID().String() != roomID {
		t.Errorf("sent %s in %s, want %s in %s", m, ev.RoomID().String(), membership, roomID)
	}
	if prev := ev.PrevEventIDs(); len(prev) != 1 || prev[0] != "$prev" || ev.Depth() != 7 {
		t.Errorf("sent event prev %v depth %d: not the template's", prev, ev.Depth())
	}
	var sigs struct {
		Signatures map[string]map[string]string `json:"signatures"`
	}
	if err := json.Unmarshal(ev.JSON(), &sigs); err != nil || len(sigs.Signatures[server]) != 1 {
		t.Errorf("sent event is not signed by %s: %s", server, ev.JSON())
	}
}

// TestPerformInviteRemote invites users of other servers to a room of this
// one: the invitee's server signs the invite before it enters the room,
// and a refusal, by the auth rules here or by that server, leaves the
// room as it was.
func TestPerformInviteRemote(t *testing.T) {
	_, key, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	alice, bob, zed := user("alice"), user("bob"), "@zed:remote.test"
	cases := []struct {
		name      string
		servers   map[spec.ServerName]remoteServer
		sender    string
		invitee   string
		room      string // default: the test's room
		wantCode  string
		wantCalls []string
		want      string // the invitee's membership after
	}{
		{name: "the invitee's server signs", servers: map[spec.ServerName]remoteServer{"remote.test": {}},
			sender: alice, invitee: zed, wantCalls: []string{"invite remote.test"}, want: spec.Invite},
		{name: "the invitee's server refuses", servers: map[spec.ServerName]remoteServer{"remote.test": {refuse: "M_FORBIDDEN"}},
			sender: alice, invitee: zed, wantCode: "M_FORBIDDEN", wantCalls: []string{"invite remote.test"}, want: spec.Leave},
		{name: "the invitee's server is down", servers: map[spec.ServerName]remoteServer{"remote.test": {down: true}},
			sender: alice, invitee: zed, wantCode: "unavailable", wantCalls: []string{"invite remote.test"}, want: spec.Leave},
		{name: "the sender may not invite", servers: map[spec.ServerName]remoteServer{"remote.test": {}},
			sender: bob, invitee: zed, wantCode: "M_FORBIDDEN", want: spec.Leave},
		{name: "a room not known here", servers: map[spec.ServerName]remoteServer{"remote.test": {}},
			sender: alice, invitee: zed, room: "!nowhere:" + server, wantCode: "M_FORBIDDEN"},
		{name: "a local invitee asks no one", servers: map[spec.ServerName]remoteServer{},
			sender: alice, invitee: user("carol"), want: spec.Invite},
	}
	for _, d := range sqldbtest.Dialects {
		t.Run(d, func(t *testing.T) {
			for _, c := range cases {
				t.Run(c.name, func(t *testing.T) {
					fed := &testFederation{servers: c.servers, key: key}
					rs := startRoomserver(t, d, roomserver.WithFederation(fed))
					ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
					defer cancel()
					room := createRoom(t, rs, "room", "10", "public",
						stateProto(alice, spec.MRoomPowerLevels, "", map[string]any{"users": map[string]int{alice: 100}, "invite": 50}),
						stateProto(alice, spec.MRoomName, "", map[string]any{"name": "a room"}))
					if _, err := rs.PerformJoin(ctx, &rsapi.JoinRequest{RoomID: room, UserID: bob}); err != nil {
						t.Fatal(err)
					}
					if c.room != "" {
						room = c.room
					}
					err := rs.PerformInvite(ctx, &rsapi.InviteRequest{RoomID: room, Sender: c.sender, Invitee: c.invitee})
					if got := errCode(err); got != c.wantCode {
						t.Fatalf("error %v (code %q), want %q", err, got, c.wantCode)
					}
					fed.mu.Lock()
					calls := strings.Join(fed.calls, ", ")
					fed.mu.Unlock()
					if calls != strings.Join(c.wantCalls, ", ") {
						t.Fatalf("calls %q, want %q", calls, c.wantCalls)
					}
					if c.want == "" {
						return
					}
					m, err := rs.Membership(ctx, room, c.invitee)
					if err != nil || m.Membership != c.want {
						t.Fatalf("membership of %s: %+v %v, want %s", c.invitee, m, err, c.want)
					}
					if c.want != spec.Invite || c.invitee != zed {
						return
					}
					evs, err := rs.Events(ctx, []string{m.EventID})
					if err != nil || len(evs) != 1 {
						t.Fatalf("the invite %s: %v", m.EventID, err)
					}
					var sigs struct {
						Signatures map[string]map[string]string `json:"signatures"`
					}
					_ = json.Unmarshal(evs[0].JSON(), &sigs)
					if len(sigs.Signatures[server]) != 1 || len(sigs.Signatures["remote.test"]) != 1 {
						t.Fatalf("the stored invite is not signed by both servers: %s", evs[0].JSON())
					}
				})
			}
		})
	}
}
