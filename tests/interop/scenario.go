package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"myelin/internal/poll"
)

type scenarioParams struct {
	MyelinURL, DendriteURL   string
	MyelinName, DendriteName string
	// RoomVersion is the version of the rooms created; empty leaves it
	// to the creating server.
	RoomVersion string
	// Wait bounds each wait for one server to see what the other did.
	Wait time.Duration
}

// side is one server with its one user.
type side struct {
	label string // "myelin" or "dendrite", for the report
	name  string // server name
	url   string
	cli   *mautrix.Client
	e2e   *encryption // set by the encrypted steps
}

// room is what the steps of one room learn as they go.
type room struct {
	id      id.RoomID
	history []id.EventID // sent before the other side joined
}

// step is one line of the report. A step whose need did not pass is
// skipped: its failure would only repeat the first one.
type step struct {
	name string
	need string
	run  func(ctx context.Context) error
	// skip, when set, is why the step cannot run yet.
	skip string
}

type results struct{ passed, failed, skipped int }

func runScenario(ctx context.Context, p scenarioParams, out io.Writer) results {
	myelin := &side{label: "myelin", name: p.MyelinName, url: p.MyelinURL}
	dendrite := &side{label: "dendrite", name: p.DendriteName, url: p.DendriteURL}
	nonce := randomHex(4)
	const registered = "register a user on each server"
	steps := []step{{
		name: registered,
		run: func(ctx context.Context) error {
			for _, s := range []*side{myelin, dendrite} {
				if err := s.register(ctx, s.label+"-"+nonce); err != nil {
					return err
				}
			}
			return nil
		},
	}}
	steps = append(steps, roomSteps(p, myelin, dendrite, registered)...)
	steps = append(steps, roomSteps(p, dendrite, myelin, registered)...)
	steps = append(steps, inviteSteps(p, myelin, dendrite, registered)...)
	steps = append(steps, inviteSteps(p, dendrite, myelin, registered)...)
	steps = append(steps, ephemeralSteps(p, myelin, dendrite, registered)...)
	steps = append(steps, encryptedSteps(p, myelin, dendrite, registered)...)

	var res results
	passed := map[string]bool{}
	for _, s := range steps {
		switch {
		case s.skip != "":
			res.skipped++
			fmt.Fprintf(out, "SKIP  %s: %s\n", s.name, s.skip)
			continue
		case s.need != "" && !passed[s.need]:
			res.skipped++
			fmt.Fprintf(out, "SKIP  %s: needs %q\n", s.name, s.need)
			continue
		}
		start := time.Now()
		// A step waits at most three times (for each side, then for
		// what follows), each within p.Wait.
		sctx, cancel := context.WithTimeout(ctx, 3*p.Wait+30*time.Second)
		err := s.run(sctx)
		cancel()
		took := time.Since(start).Round(10 * time.Millisecond)
		if err != nil {
			res.failed++
			fmt.Fprintf(out, "FAIL  %s (%v): %v\n", s.name, took, err)
			continue
		}
		res.passed++
		passed[s.name] = true
		fmt.Fprintf(out, "PASS  %s (%v)\n", s.name, took)
	}
	fmt.Fprintf(out, "interop: %d passed, %d failed, %d skipped\n", res.passed, res.failed, res.skipped)
	return res
}

// roomSteps is the life of one room: created on owner's server with some
// history, joined from guest's server, then messages, state and a kick
// each way. Both rooms run the same steps with the roles swapped.
func roomSteps(p scenarioParams, owner, guest *side, need string) []step {
	r := &room{}
	prefix := owner.label + " room: "
	created := prefix + "created on " + owner.label + " with history"
	joined := prefix + guest.label + " user joins over federation"
	return []step{
		{name: created, need: need, run: func(ctx context.Context) error {
			version, err := owner.roomVersion(ctx, p.RoomVersion)
			if err != nil {
				return err
			}
			// The guest may change the name: a state change from the
			// other server needs power. The override replaces the whole
			// users map, so it names the owner too, except where creators
			// hold infinite power and must not be listed (room version 12,
			// MSC4289).
			users := map[id.UserID]int{guest.cli.UserID: 50}
			if !privilegedCreators(version) {
				users[owner.cli.UserID] = 100
			}
			req := &mautrix.ReqCreateRoom{
				Preset:             "public_chat",
				Name:               "interop " + owner.label,
				Topic:              "before the join",
				PowerLevelOverride: &event.PowerLevelsEventContent{Users: users},
				RoomVersion:        id.RoomVersion(version),
			}
			resp, err := owner.cli.CreateRoom(ctx, req)
			if err != nil {
				return fmt.Errorf("createRoom on %s: %w", owner.label, err)
			}
			r.id = resp.RoomID
			for i := 1; i <= 3; i++ {
				sent, err := owner.cli.SendText(ctx, r.id, fmt.Sprintf("history %d", i))
				if err != nil {
					return fmt.Errorf("send history %d on %s: %w", i, owner.label, err)
				}
				r.history = append(r.history, sent.EventID)
			}
			return nil
		}},
		{name: joined, need: created, run: func(ctx context.Context) error {
			resp, err := guest.cli.JoinRoom(ctx, r.id.String(), &mautrix.ReqJoinRoom{Via: []string{owner.name}})
			if err != nil {
				return fmt.Errorf("%s joins %s via %s: %w", guest.cli.UserID, r.id, owner.name, err)
			}
			if resp.RoomID != r.id {
				return fmt.Errorf("join answered room %s, want %s", resp.RoomID, r.id)
			}
			for _, s := range []*side{owner, guest} {
				if err := s.waitJoined(ctx, p.Wait, r.id, owner.cli.UserID, guest.cli.UserID); err != nil {
					return err
				}
			}
			return nil
		}},
		{name: prefix + "backfill: " + guest.label + " sees the history from before its join", need: joined, run: func(ctx context.Context) error {
			return guest.waitHistory(ctx, p.Wait, r.id, r.history)
		}},
		{name: prefix + "message " + owner.label + " -> " + guest.label, need: joined, run: func(ctx context.Context) error {
			return message(ctx, p.Wait, owner, guest, r.id)
		}},
		{name: prefix + "message " + guest.label + " -> " + owner.label, need: joined, run: func(ctx context.Context) error {
			return message(ctx, p.Wait, guest, owner, r.id)
		}},
		{name: prefix + "state (topic) " + owner.label + " -> " + guest.label, need: joined, run: func(ctx context.Context) error {
			return stateChange(ctx, p.Wait, owner, guest, r.id, event.StateTopic, "topic", "topic from "+owner.label)
		}},
		{name: prefix + "state (name) " + guest.label + " -> " + owner.label, need: joined, run: func(ctx context.Context) error {
			return stateChange(ctx, p.Wait, guest, owner, r.id, event.StateRoomName, "name", "name from "+guest.label)
		}},
		{name: prefix + owner.label + " user kicks the " + guest.label + " user", need: joined, run: func(ctx context.Context) error {
			if _, err := owner.cli.KickUser(ctx, r.id, &mautrix.ReqKickUser{UserID: guest.cli.UserID, Reason: "interop"}); err != nil {
				return fmt.Errorf("kick on %s: %w", owner.label, err)
			}
			if err := owner.waitMembership(ctx, p.Wait, r.id, guest.cli.UserID, event.MembershipLeave); err != nil {
				return err
			}
			// The kicked user's own server must learn it: the room leaves
			// its joined rooms.
			return poll.Wait(p.Wait, func() error {
				rooms, err := guest.cli.JoinedRooms(ctx)
				if err != nil {
					return fmt.Errorf("joined_rooms on %s: %w", guest.label, err)
				}
				if slices.Contains(rooms.JoinedRooms, r.id) {
					return fmt.Errorf("%s still lists %s in %s's joined rooms after the kick", guest.label, r.id, guest.cli.UserID)
				}
				return nil
			})
		}},
	}
}

// inviteSteps: owner invites guest into a private room, which guest's
// server shows with the room's stripped state, and guest accepts (a join
// with no server named: the invite says where the room is); then a second
// invite, which guest rejects (a leave through the owner's server).
func inviteSteps(p scenarioParams, owner, guest *side, need string) []step {
	var accepted, rejected id.RoomID
	prefix := owner.label + " private room: "
	invited := prefix + owner.label + " user invites the " + guest.label + " user"
	invitedAgain := prefix + owner.label + " user invites the " + guest.label + " user again"
	return []step{
		{name: invited, need: need, run: func(ctx context.Context) (err error) {
			accepted, err = invite(ctx, p, owner, guest)
			return err
		}},
		{name: prefix + guest.label + " user accepts the invite", need: invited, run: func(ctx context.Context) error {
			if _, err := guest.cli.JoinRoomByID(ctx, accepted); err != nil {
				return fmt.Errorf("%s joins %s on %s: %w", guest.cli.UserID, accepted, guest.label, err)
			}
			for _, s := range []*side{owner, guest} {
				if err := s.waitJoined(ctx, p.Wait, accepted, owner.cli.UserID, guest.cli.UserID); err != nil {
					return err
				}
			}
			return message(ctx, p.Wait, guest, owner, accepted)
		}},
		{name: invitedAgain, need: need, run: func(ctx context.Context) (err error) {
			rejected, err = invite(ctx, p, owner, guest)
			return err
		}},
		{name: prefix + guest.label + " user rejects the invite", need: invitedAgain, run: func(ctx context.Context) error {
			if _, err := guest.cli.LeaveRoom(ctx, rejected); err != nil {
				return fmt.Errorf("%s rejects the invite to %s on %s: %w", guest.cli.UserID, rejected, guest.label, err)
			}
			if err := owner.waitMembership(ctx, p.Wait, rejected, guest.cli.UserID, event.MembershipLeave); err != nil {
				return err
			}
			return poll.Wait(p.Wait, func() error {
				sync, err := guest.cli.SyncRequest(ctx, 0, "", "", false, "")
				if err != nil {
					return fmt.Errorf("/sync on %s: %w", guest.label, err)
				}
				if _, ok := sync.Rooms.Invite[rejected]; ok {
					return fmt.Errorf("%s's /sync still lists the rejected invite to %s", guest.label, rejected)
				}
				return nil
			})
		}},
	}
}

// invite makes a private room on owner's server and invites guest, then
// waits for guest's /sync to list the invite with the room's name in its
// stripped state.
func invite(ctx context.Context, p scenarioParams, owner, guest *side) (id.RoomID, error) {
	name := "private " + owner.label + " " + randomHex(4)
	resp, err := owner.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: name, RoomVersion: id.RoomVersion(p.RoomVersion)})
	if err != nil {
		return "", fmt.Errorf("createRoom on %s: %w", owner.label, err)
	}
	roomID := resp.RoomID
	if _, err := owner.cli.InviteUser(ctx, roomID, &mautrix.ReqInviteUser{UserID: guest.cli.UserID}); err != nil {
		return "", fmt.Errorf("invite %s on %s: %w", guest.cli.UserID, owner.label, err)
	}
	return roomID, poll.Wait(p.Wait, func() error {
		sync, err := guest.cli.SyncRequest(ctx, 0, "", "", false, "")
		if err != nil {
			return fmt.Errorf("/sync on %s: %w", guest.label, err)
		}
		inv, ok := sync.Rooms.Invite[roomID]
		if !ok {
			return fmt.Errorf("%s's /sync lists no invite to %s for %s", guest.label, roomID, guest.cli.UserID)
		}
		for _, ev := range inv.State.Events {
			if ev.Type == event.StateRoomName {
				if got, _ := ev.Content.Raw["name"].(string); got == name {
					return nil
				}
			}
		}
		return fmt.Errorf("%s's invite to %s lacks the room name %q in its stripped state (%d events)", guest.label, roomID, name, len(inv.State.Events))
	})
}

func (s *side) register(ctx context.Context, localpart string) error {
	cli, err := mautrix.NewClient(s.url, "", "")
	if err != nil {
		return fmt.Errorf("client for %s: %w", s.url, err)
	}
	resp, err := cli.RegisterDummy(ctx, &mautrix.ReqRegister[any]{Username: localpart, Password: "password-" + randomHex(8)})
	if err != nil {
		return fmt.Errorf("register %s on %s: %w", localpart, s.label, err)
	}
	cli.UserID, cli.AccessToken, cli.DeviceID = resp.UserID, resp.AccessToken, resp.DeviceID
	if got := resp.UserID.Homeserver(); got != s.name {
		return fmt.Errorf("%s registered %s: server name %q, want %q", s.label, resp.UserID, got, s.name)
	}
	s.cli = cli
	return nil
}

// roomVersion is the version a room made on s will have: want, or s's
// default when want is empty.
func (s *side) roomVersion(ctx context.Context, want string) (string, error) {
	if want != "" {
		return want, nil
	}
	caps, err := s.cli.Capabilities(ctx)
	if err != nil {
		return "", fmt.Errorf("capabilities of %s: %w", s.label, err)
	}
	if caps.RoomVersions == nil || caps.RoomVersions.Default == "" {
		return "", fmt.Errorf("%s's capabilities name no default room version", s.label)
	}
	return caps.RoomVersions.Default, nil
}

// privilegedCreators reports whether a room version gives its creators
// power above any power level (MSC4289): every version but 1 to 11.
func privilegedCreators(version string) bool {
	n, err := strconv.Atoi(version)
	return err != nil || n < 1 || n > 11
}

// waitJoined waits until s lists every one of users as joined to the room.
func (s *side) waitJoined(ctx context.Context, wait time.Duration, roomID id.RoomID, users ...id.UserID) error {
	return poll.Wait(wait, func() error {
		resp, err := s.cli.JoinedMembers(ctx, roomID)
		if err != nil {
			return fmt.Errorf("joined_members of %s on %s: %w", roomID, s.label, err)
		}
		for _, u := range users {
			if _, ok := resp.Joined[u]; !ok {
				return fmt.Errorf("%s does not list %s as joined to %s (joined: %v)", s.label, u, roomID, keys(resp.Joined))
			}
		}
		return nil
	})
}

func (s *side) waitMembership(ctx context.Context, wait time.Duration, roomID id.RoomID, user id.UserID, want event.Membership) error {
	return poll.Wait(wait, func() error {
		var m event.MemberEventContent
		if err := s.cli.StateEvent(ctx, roomID, event.StateMember, user.String(), &m); err != nil {
			return fmt.Errorf("member state of %s in %s on %s: %w", user, roomID, s.label, err)
		}
		if m.Membership != want {
			return fmt.Errorf("%s shows %s as %q in %s, want %q", s.label, user, m.Membership, roomID, want)
		}
		return nil
	})
}

// waitHistory pages s's /messages backwards from the newest event until
// it has seen every event of want, and checks they come newest first.
func (s *side) waitHistory(ctx context.Context, wait time.Duration, roomID id.RoomID, want []id.EventID) error {
	return poll.Wait(wait, func() error {
		var seen []id.EventID
		from := ""
		for page := 0; page < 20; page++ {
			resp, err := s.cli.Messages(ctx, roomID, from, "", mautrix.DirectionBackward, nil, 10)
			if err != nil {
				return fmt.Errorf("/messages of %s on %s: %w", roomID, s.label, err)
			}
			for _, ev := range resp.Chunk {
				seen = append(seen, ev.ID)
			}
			if len(resp.Chunk) == 0 || resp.End == "" || resp.End == from {
				break
			}
			from = resp.End
		}
		// Backwards: the newest history event first.
		last := -1
		for i := len(want) - 1; i >= 0; i-- {
			at := slices.Index(seen, want[i])
			if at < 0 {
				return fmt.Errorf("%s's /messages of %s lacks %s (history %d of %d); it has %d events: %v", s.label, roomID, want[i], i+1, len(want), len(seen), seen)
			}
			if at < last {
				return fmt.Errorf("%s's /messages of %s has the history out of order: %v", s.label, roomID, seen)
			}
			last = at
		}
		return nil
	})
}

// message sends a text from one side and waits for the other to show it
// in the room's /messages.
func message(ctx context.Context, wait time.Duration, from, to *side, roomID id.RoomID) error {
	body := "hello from " + from.label + " " + randomHex(4)
	sent, err := from.cli.SendText(ctx, roomID, body)
	if err != nil {
		return fmt.Errorf("send on %s: %w", from.label, err)
	}
	return poll.Wait(wait, func() error {
		resp, err := to.cli.Messages(ctx, roomID, "", "", mautrix.DirectionBackward, nil, 20)
		if err != nil {
			return fmt.Errorf("/messages of %s on %s: %w", roomID, to.label, err)
		}
		for _, ev := range resp.Chunk {
			if ev.ID != sent.EventID {
				continue
			}
			if got, _ := ev.Content.Raw["body"].(string); got != body {
				return fmt.Errorf("%s shows %s with body %q, want %q", to.label, ev.ID, got, body)
			}
			if ev.Sender != from.cli.UserID {
				return fmt.Errorf("%s shows %s sent by %s, want %s", to.label, ev.ID, ev.Sender, from.cli.UserID)
			}
			return nil
		}
		return fmt.Errorf("%s's latest %d events of %s lack %s (sent by %s on %s)", to.label, len(resp.Chunk), roomID, sent.EventID, from.cli.UserID, from.label)
	})
}

// stateChange sets a state event's field on one side and waits for the
// other to show it as the room's current state.
func stateChange(ctx context.Context, wait time.Duration, from, to *side, roomID id.RoomID, typ event.Type, field, value string) error {
	value += " " + randomHex(4)
	if _, err := from.cli.SendStateEvent(ctx, roomID, typ, "", map[string]string{field: value}); err != nil {
		return fmt.Errorf("set %s on %s: %w", typ.Type, from.label, err)
	}
	return poll.Wait(wait, func() error {
		var content map[string]any
		if err := to.cli.StateEvent(ctx, roomID, typ, "", &content); err != nil {
			return fmt.Errorf("%s of %s on %s: %w", typ.Type, roomID, to.label, err)
		}
		if got, _ := content[field].(string); got != value {
			return fmt.Errorf("%s shows %s %q, want %q", to.label, typ.Type, got, value)
		}
		return nil
	})
}

func keys[V any](m map[id.UserID]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k.String())
	}
	slices.Sort(out)
	return out
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		// crypto/rand does not fail on Linux; a fixed value only makes
		// names collide across runs.
		return strings.Repeat("0", 2*n)
	}
	return hex.EncodeToString(b)
}
